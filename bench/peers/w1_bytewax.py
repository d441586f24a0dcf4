"""W1 in Bytewax 0.21: filter, key by host, fold_window over 60 s tumbling event-time windows.

usage: python w1_bytewax.py EVENTS.ndjson > result.ndjson
One worker in this process (`run_main`). Event time comes from `ts` through an EventClock that
waits for nothing (the file is in time order); windows are aligned to the epoch, so window id N
starts at N * 60 s. End of input closes every open window.
"""

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
from bytewax.connectors.files import FileSource
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.operators.windowing import EventClock, TumblingWindower, fold_window
from bytewax.testing import run_main

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time(event: dict[str, Any]) -> datetime:
    return EPOCH + timedelta(seconds=event["ts"])


def add(acc: list[int], event: dict[str, Any]) -> list[int]:
    acc[0] += 1
    acc[1] += event["bytes"]
    return acc


def row(item: tuple[str, tuple[int, list[int]]]) -> str:
    host, (window_id, (count, total)) = item
    return json.dumps({"window": window_id * 60, "host": host, "events": count, "bytes": total})


def build(path: str) -> Dataflow:
    flow = Dataflow("w1_filter_aggregate")
    lines = op.input("read", flow, FileSource(path))
    events = op.map("parse", lines, json.loads)
    errors = op.filter("status", events, lambda e: e["status"] >= 400)
    keyed = op.key_on("host", errors, lambda e: e["host"])
    clock = EventClock(event_time, wait_for_system_duration=timedelta(0))
    windower = TumblingWindower(length=timedelta(seconds=60), align_to=EPOCH)
    windows = fold_window("window", keyed, clock, windower, builder=lambda: [0, 0], folder=add,
                          merger=lambda a, b: [a[0] + b[0], a[1] + b[1]])
    op.output("write", op.map("format", windows.down, row), StdOutSink())
    return flow


if __name__ == "__main__":
    run_main(build(sys.argv[1]))
