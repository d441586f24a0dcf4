"""W1 in plain CPython with `json`: keep status >= 400, count and sum(bytes) per host per 60 s window.

usage: python w1_python.py EVENTS.ndjson > result.ndjson
"""

import json
import sys


def main(path: str) -> None:
    groups: dict[tuple[int, str], list[int]] = {}
    with open(path, "rb") as lines:
        for line in lines:
            event = json.loads(line)
            if event["status"] >= 400:
                key = (event["ts"] // 60 * 60, event["host"])
                acc = groups.get(key)
                if acc is None:
                    groups[key] = [1, event["bytes"]]
                else:
                    acc[0] += 1
                    acc[1] += event["bytes"]
    write = sys.stdout.write
    for (window, host), (count, total) in groups.items():
        write(json.dumps({"window": window, "host": host, "events": count, "bytes": total}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
