"""How fast can the W1 input be read at all? Floors of the NDJSON readers LogBus could use.

    python3 bench/bench_readers.py [--events N] [--cpus 0|all] [--runs 3]

On the file of bench_pipeline.py (generated there first), in this process, best of --runs:

- `stream.inputs.read_events`, the reader `logbus test` uses: 8 MiB chunks of whole lines,
  parsed by Arrow one chunk per thread, side by side, with the line, UTF-8 and float checks that
  make it exact (see stream/inputs.py);
- Arrow's parse alone, the same chunks side by side, every field (the reader less its checks);
- Arrow's own multi-threaded reader over the whole file in one call (what the reader did before
  the chunks went side by side);
- Arrow's parse of the same chunks with an explicit schema of only the 4 fields W1 needs
  (projection; exact: a value of another type is an error, as in the full read);
- DuckDB's `read_json` with those 4 columns typed (fast, but it casts loosely: the report shows
  what it makes of "42", 1.5 and 2 in columns of the wrong type);
- DuckDB reading them as JSON and checking each value's type in the same scan (exact again):
  counts only, and then with the checked values cast and handed over as an Arrow table, which is
  what an exact DuckDB reader for the engine would have to do.

It also shows that DuckDB's `json_transform_strict` is strict about missing and duplicate keys but
not about types, so it is no way around the loose casts either.

BENCHMARKS.md (W1) uses these floors to explain why `logbus test` cannot get within 1.5x of
DuckDB's whole run with an exact parse. Imports are not timed here (see `python -X importtime`).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.json as pa_json

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_pipeline import OUT, generate  # noqa: E402 - the same generated file as bench_pipeline

sys.path.insert(0, str(ROOT))
from stream import inputs  # noqa: E402 - the reader itself, from this checkout

W1_FIELDS = {"ts": ("BIGINT", pa.int64()), "host": ("VARCHAR", pa.string()),
             "status": ("BIGINT", pa.int64()), "bytes": ("BIGINT", pa.int64())}


def best(run: Callable[[], Any], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400_000, help="events in the file (400000)")
    parser.add_argument("--seed", type=int, default=42, help="data generator seed (42)")
    parser.add_argument("--cpus", default="0", help="'0' for one core (default), 'all' for the machine")
    parser.add_argument("--runs", type=int, default=3, help="runs per reader; the best is shown (3)")
    args = parser.parse_args()
    if args.cpus != "all":
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    threads = len(os.sched_getaffinity(0))
    OUT.mkdir(exist_ok=True)
    path = OUT / f"events-{args.events}-seed{args.seed}.ndjson"
    if not path.exists():
        generate(path, args.events, args.seed)
    data = path.read_bytes()
    # Arrow's own threads in one call: 2 MiB blocks in parallel with threads, one block without
    options = pa_json.ReadOptions(use_threads=threads > 1,
                                  block_size=1 << 21 if threads > 1 else len(data) + 1)
    schema = pa.schema([(name, kind) for name, (_, kind) in W1_FIELDS.items()])
    projected = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    chunks = split_chunks(data, inputs.CHUNK_BYTES)
    pool = ThreadPoolExecutor(threads)

    def side_by_side(parse: pa_json.ParseOptions | None = None) -> list[pa.Table]:
        def one(chunk: bytes) -> pa.Table:
            single = pa_json.ReadOptions(use_threads=False, block_size=len(chunk) + 1)
            return pa_json.read_json(io.BytesIO(chunk), read_options=single, parse_options=parse)
        return list(pool.map(one, chunks))
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    literal = "'" + str(path).replace("'", "''") + "'"
    typed = ", ".join(f"{name}: '{sql}'" for name, (sql, _) in W1_FIELDS.items())
    as_json = ", ".join(f"{name}: 'JSON'" for name in W1_FIELDS)
    def exact(name: str, sql: str) -> str:
        kinds = "'BIGINT', 'UBIGINT'" if sql == "BIGINT" else f"'{sql}'"
        return (f"CASE WHEN json_type({name}) IN ({kinds}) THEN {name}::{sql} "
                f"ELSE error('{name} has another type') END AS {name}")

    checked_values = (f"SELECT {', '.join(exact(n, sql) for n, (sql, _) in W1_FIELDS.items())} "
                      f"FROM read_json({literal}, columns={{{as_json}}})")
    checked = (f"SELECT count(*) FILTER (WHERE json_type(ts) NOT IN ('BIGINT', 'UBIGINT')), "
               f"count(*) FILTER (WHERE json_type(host) <> 'VARCHAR'), "
               f"count(*) FILTER (WHERE json_type(status) NOT IN ('BIGINT', 'UBIGINT')), "
               f"count(*) FILTER (WHERE json_type(bytes) NOT IN ('BIGINT', 'UBIGINT')) "
               f"FROM read_json({literal}, columns={{{as_json}}})")
    readers: dict[str, Callable[[], Any]] = {
        "stream.inputs.read_events, every field, with its checks (what `logbus test` does)": lambda: [
            batch.table for batch in inputs.read_events(path)],
        "Arrow read_json, every field, chunks side by side (parse only)": side_by_side,
        "Arrow read_json, every field, one call with Arrow's threads": lambda: pa_json.read_json(
            io.BytesIO(data), read_options=options),
        "Arrow read_json, 4 fields by explicit schema, chunks side by side (exact)": lambda: side_by_side(
            projected),
        "DuckDB read_json, 4 typed columns (loose casts)": lambda: con.sql(
            f"SELECT * FROM read_json({literal}, columns={{{typed}}})").to_arrow_table(),
        "DuckDB read_json, 4 JSON columns + type check, counts only (exact)": lambda: con.sql(
            checked).fetchall(),
        "DuckDB read_json, 4 JSON columns + type check, values out as Arrow (exact)": lambda: con.sql(
            checked_values).to_arrow_table(),
    }
    print(f"# NDJSON reader floors: {path.name} ({len(data) / 1e6:.1f} MB, {args.events:,} events), "
          f"{threads} thread(s), best of {args.runs}\n")
    print("| reader | seconds | events/s |\n|---|---:|---:|")
    for name, run in readers.items():
        seconds = best(run, args.runs)
        print(f"| {name} | {seconds:.3f} | {args.events / seconds:,.0f} |")
    sample = OUT / "loose-casts.ndjson"
    sample.write_text('{"n": "42"}\n{"n": 1.5}\n{"s": 2}\n')
    loose = f"SELECT n, s FROM read_json('{sample}', columns={{n: 'BIGINT', s: 'VARCHAR'}})"
    rows = con.sql(loose).fetchall()
    print(f"\nDuckDB's typed read (n BIGINT, s VARCHAR) of {sample.read_text().splitlines()}: {rows} "
          "-- a string and a float taken as BIGINT, a number as VARCHAR, and no error")
    documents = ['{"n": "42"}', '{"n": 1.5}']
    strict = [con.execute("""SELECT json_transform_strict(?::JSON, '{"n": "BIGINT"}')""", [doc]).fetchone()
              for doc in documents]
    print(f"DuckDB's json_transform_strict (n BIGINT) of {documents}: {[row[0] for row in strict if row]} "
          "-- strict about missing and duplicate keys, not about types")
    pool.shutdown()
    return 0


def split_chunks(data: bytes, size: int) -> list[bytes]:
    """`data` in pieces of about `size` bytes, each ending at a line end (as stream.inputs reads)."""
    pieces, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + size) + 1 if start + size < len(data) else len(data)
        if end <= start:  # a line longer than `size`: take it whole
            end = data.find(b"\n", start + size) + 1 or len(data)
        pieces.append(data[start:end])
        start = end
    return pieces


if __name__ == "__main__":
    sys.exit(main())
