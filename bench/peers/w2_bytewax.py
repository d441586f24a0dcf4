"""W2 in Bytewax 0.21: the shared transform as a `map` step, NDJSON in and out.

usage: python w2_bytewax.py EVENTS.ndjson > out.ndjson
One worker in this process (`run_main`).
"""

import json
import sys

import bytewax.operators as op
from bytewax.connectors.files import FileSource
from bytewax.connectors.stdio import StdOutSink
from bytewax.dataflow import Dataflow
from bytewax.testing import run_main
from transform import transform


def build(path: str) -> Dataflow:
    flow = Dataflow("w2_python_transform")
    lines = op.input("read", flow, FileSource(path))
    events = op.map("transform", lines, lambda line: json.dumps(transform(json.loads(line))))
    op.output("write", events, StdOutSink())
    return flow


if __name__ == "__main__":
    run_main(build(sys.argv[1]))
