"""W2 in Pathway 0.33: the shared transform as a row-wise Python UDF, jsonlines in and out.

usage: python w2_pathway.py EVENTS.ndjson > out.ndjson
Pathway tables are typed columns, not dicts, so the UDF takes the event's columns, rebuilds the
event dict, calls the very same `transform`, and returns the fields it sets as a tuple, which
become columns again. `deterministic=True` tells Pathway it need not store UDF results to replay
retractions (the fastest correct setting for a pure function).
"""

import sys

import pathway as pw
from transform import transform


class Event(pw.Schema):  # type: ignore[misc]
    ts: int
    host: str
    ip: str
    method: str
    path: str
    status: int
    bytes: int
    ua: str
    referer: str


@pw.udf(deterministic=True)  # type: ignore[untyped-decorator]
def apply(ts: int, host: str, ip: str, method: str, path: str, status: int, size: int, ua: str,
          referer: str) -> tuple[str, bool, str]:
    event = transform({"ts": ts, "host": host, "ip": ip, "method": method, "path": path, "status": status,
                       "bytes": size, "ua": ua, "referer": referer})
    return event["method"], event["is_error"], event["route"]


def build(path: str) -> None:
    t = pw.io.jsonlines.read(path, schema=Event, mode="static")
    with_result = t.with_columns(result=apply(t.ts, t.host, t.ip, t.method, t.path, t.status, t.bytes,
                                              t.ua, t.referer))
    out = with_result.select(
        *pw.this.without(pw.this.result, pw.this.method),
        method=pw.this.result[0],
        is_error=pw.this.result[1],
        route=pw.this.result[2],
    )
    pw.io.jsonlines.write(out, "/dev/stdout")


if __name__ == "__main__":
    build(sys.argv[1])
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
