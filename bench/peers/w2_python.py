"""W2 in plain CPython with `json` in and out: the shared transform over every event, NDJSON out.

usage: python w2_python.py EVENTS.ndjson > out.ndjson
"""

import json
import sys

from transform import transform


def main(path: str) -> None:
    write = sys.stdout.write
    with open(path, "rb") as lines:
        for line in lines:
            write(json.dumps(transform(json.loads(line))) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
