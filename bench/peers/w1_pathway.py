"""W1 in Pathway 0.33: static jsonlines read, filter, tumbling 60 s windowby per host, reduce.

usage: python w1_pathway.py EVENTS.ndjson > result.ndjson
`mode="static"` reads the whole file as one commit, so each window × host row is written once
(with Pathway's `time` and `diff` columns; the harness applies `diff`).
"""

import sys

import pathway as pw


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


def build(path: str) -> None:
    events = pw.io.jsonlines.read(path, schema=Event, mode="static")
    errors = events.filter(pw.this.status >= 400)
    windows = errors.windowby(
        pw.this.ts, window=pw.temporal.tumbling(duration=60, origin=0), instance=pw.this.host
    ).reduce(
        window=pw.this._pw_window_start,
        host=pw.this._pw_instance,
        events=pw.reducers.count(),
        bytes=pw.reducers.sum(pw.this.bytes),
    )
    pw.io.jsonlines.write(windows, "/dev/stdout")


if __name__ == "__main__":
    build(sys.argv[1])
    pw.run(monitoring_level=pw.MonitoringLevel.NONE)
