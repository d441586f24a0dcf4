"""W1 in DuckDB: `read_json_auto` + WHERE + GROUP BY over the NDJSON file, all rows fetched.

usage: python w1_duckdb.py EVENTS.ndjson > result.ndjson
DuckDB gets as many threads as CPUs this process may run on (the harness pins it with taskset).
"""

import json
import os
import sys

import duckdb

QUERY = """
SELECT ts // 60 * 60 AS window, host, count(*) AS events, sum(bytes) AS bytes
FROM read_json_auto({path})
WHERE status >= 400
GROUP BY ALL
"""


def main(path: str) -> None:
    con = duckdb.connect()
    con.execute(f"SET threads = {len(os.sched_getaffinity(0))}")
    literal = "'" + path.replace("'", "''") + "'"
    rows = con.execute(QUERY.format(path=literal)).fetchall()
    write = sys.stdout.write
    for window, host, count, total in rows:
        write(json.dumps({"window": window, "host": host, "events": count, "bytes": int(total)}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
