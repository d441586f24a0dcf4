"""Sandbox benchmarks: worker cold start, sandboxed transform throughput, static check latency.

Run: python3 bench/bench_sandbox.py [--events 200000] [--batch 8192] [--starts 10]

Throughput compares, over the same Arrow batches of web-log events and in one run, the sandboxed
path (SandboxPool.run_table: columns to the worker, output columns back, an Arrow table out,
round trips pipelined) with the same function run unsandboxed in-process (to_pylist -> plain
Python call per event -> from_pylist). The older row path (to_pylist -> SandboxPool.run ->
from_pylist) is measured too, for comparison. Each is timed --repeat times; the table shows the
median, min and max (the machine may be shared). Targets (DESIGN §7): cold start < 100 ms,
>= 150,000 events/s and >= 0.4x in-process, check p50 < 10 ms.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa

from sandbox.isolation import launcher, tenant_uid
from sandbox.limits import Limits
from sandbox.pool import SandboxPool
from sandbox.worker import WorkerProcess

TRANSFORM = """import re

API = re.compile(r"^/api/(v[0-9]+)/([a-z]+)")


def transform(event):
    match = API.match(event["path"])
    event["api_version"] = match.group(1) if match else None
    event["resource"] = match.group(2) if match else None
    event["is_error"] = event["status"] >= 500
    event["kb"] = round(event["bytes"] / 1024, 1)
    return event
"""


def web_events(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    paths = ["/api/v1/users", "/api/v2/orders", "/static/app.js", "/login", "/api/v1/items?page=2"]
    agents = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "Go-http-client/1.1"]
    return [
        {
            "ts": f"2026-11-24T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
            "host": f"web-{i % 8}",
            "client_ip": f"10.{i % 256}.{i // 256 % 256}.{rng.randrange(256)}",
            "method": rng.choice(["GET", "GET", "GET", "POST"]),
            "path": rng.choice(paths),
            "status": rng.choice([200, 200, 200, 301, 404, 500, 503]),
            "bytes": rng.randrange(100, 50000),
            "duration_ms": round(rng.random() * 300, 2),
            "user_agent": rng.choice(agents),
            "referer": "-",
        }
        for i in range(n)
    ]


def bench_cold_start(starts: int) -> float:
    spec, limits = launcher(), Limits()
    times = []
    for _ in range(starts):
        began = time.perf_counter()
        worker = WorkerProcess("transform", TRANSFORM, uid=tenant_uid("bench"), limits=limits, spec=spec)
        outcome = worker.run_batch(web_events(1), 5.0)
        times.append(time.perf_counter() - began)
        assert outcome.status == "ok", outcome
        worker.close()
    return statistics.median(times) * 1e3


def bench_throughput(events: list[dict[str, Any]], batch: int, repeat: int) -> dict[str, list[float]]:
    """Events/s of each path, `repeat` times each, interleaved so that load hits all alike."""
    table = pa.Table.from_pylist(events)
    batches = [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=batch)]
    namespace: dict[str, Any] = {}
    exec(compile(TRANSFORM, "<plain>", "exec"), namespace)
    plain = namespace["transform"]
    rates: dict[str, list[float]] = {"table": [], "rows": [], "in_process": []}

    def in_process() -> None:
        for piece in batches:
            pa.Table.from_pylist([plain(e) for e in piece.to_pylist()])

    with SandboxPool(Limits(max_events_per_batch=batch)) as pool:

        def sandboxed_table() -> None:
            for piece in batches:
                result = pool.run_table("bench", "transform", TRANSFORM, piece)
                assert not result.errors and result.table is not None, result.errors[:3]
                assert result.table.num_rows == piece.num_rows

        def sandboxed_rows() -> None:
            for piece in batches:
                result = pool.run("bench", "transform", TRANSFORM, piece.to_pylist())
                assert not result.errors, result.errors[:3]
                pa.Table.from_pylist([row for value in result.values for row in value])

        pool.run("bench", "transform", TRANSFORM, events[:10])  # warm the worker
        for _ in range(repeat):
            paths = (("table", sandboxed_table), ("in_process", in_process), ("rows", sandboxed_rows))
            for name, work in paths:
                began = time.perf_counter()
                work()
                rates[name].append(len(events) / (time.perf_counter() - began))
    return rates


def bench_check(runs: int) -> float | None:
    try:
        from sandbox.checker import check
    except ImportError:
        return None
    body = "".join(
        f"    if event.get('f{i}') is not None:\n        event['g{i}'] = str(event['f{i}']).lower()\n"
        for i in range(48)
    )
    source = "def transform(event):\n" + body + "    return event\n"
    assert 95 <= source.count("\n") <= 105
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        report = check(source, "transform")
        times.append(time.perf_counter() - began)
        assert report.ok, report.diagnostics
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} cpus, Python {sys.version.split()[0]}")
    cold = bench_cold_start(args.starts)
    rates = bench_throughput(web_events(args.events), args.batch, args.repeat)
    check_p50 = bench_check(200)
    median = {name: statistics.median(values) for name, values in rates.items()}
    low = {name: min(values) for name, values in rates.items()}
    best = {name: max(values) for name, values in rates.items()}
    ratios = [t / p for t, p in zip(rates["table"], rates["in_process"], strict=True)]

    def rate(name: str) -> str:
        return f"{median[name]:,.0f} (min {low[name]:,.0f}, max {best[name]:,.0f}) ev/s"

    rows = [
        ("worker cold start (spawn to first result), median", f"{cold:.1f} ms", "< 100 ms"),
        ("sandboxed transform, run_table (columnar, pipelined)", rate("table"), ">= 150,000 ev/s"),
        ("sandboxed transform, run on rows (to_pylist/from_pylist)", rate("rows"), ""),
        ("same function in-process over Arrow batches", rate("in_process"), ""),
        ("ratio run_table / in-process, median of runs", f"{statistics.median(ratios):.2f}x "
         f"(min {min(ratios):.2f}x, max {max(ratios):.2f}x)", ">= 0.4x"),
        (
            "static check of a 100-line snippet, p50",
            f"{check_p50:.2f} ms" if check_p50 is not None else "n/a (sandbox.checker missing)",
            "< 10 ms",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'result':>40}  target")
    for name, result, target in rows:
        print(f"{name:<{width}}  {result:>40}  {target}")
    print(
        f"({args.events:,} web-log events of 10 fields, batches of {args.batch}, {args.repeat} runs "
        f"of each path, interleaved; bubblewrap: "
        f"{'yes' if launcher().bwrap else 'no'})"
    )


if __name__ == "__main__":
    main()
