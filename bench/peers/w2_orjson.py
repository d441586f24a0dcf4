"""W2 in CPython with `orjson` in and out: the shared transform over every event, NDJSON out.

usage: python w2_orjson.py EVENTS.ndjson > out.ndjson
"""

import sys

import orjson
from transform import transform


def main(path: str) -> None:
    write = sys.stdout.buffer.write
    with open(path, "rb") as lines:
        for line in lines:
            write(orjson.dumps(transform(orjson.loads(line))) + b"\n")


if __name__ == "__main__":
    main(sys.argv[1])
