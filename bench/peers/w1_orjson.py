"""W1 in CPython with `orjson`: keep status >= 400, count and sum(bytes) per host per 60 s window.

usage: python w1_orjson.py EVENTS.ndjson > result.ndjson
"""

import sys

import orjson


def main(path: str) -> None:
    groups: dict[tuple[int, str], list[int]] = {}
    with open(path, "rb") as lines:
        for line in lines:
            event = orjson.loads(line)
            if event["status"] >= 400:
                key = (event["ts"] // 60 * 60, event["host"])
                acc = groups.get(key)
                if acc is None:
                    groups[key] = [1, event["bytes"]]
                else:
                    acc[0] += 1
                    acc[1] += event["bytes"]
    write = sys.stdout.buffer.write
    for (window, host), (count, total) in groups.items():
        write(orjson.dumps({"window": window, "host": host, "events": count, "bytes": total}) + b"\n")


if __name__ == "__main__":
    main(sys.argv[1])
