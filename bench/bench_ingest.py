"""NDJSON ingest over HTTP on loopback: events/s into the durable log (DESIGN §7 target: >= 100,000/s).

A real uvicorn server (a subprocess running `stream.http_ingest.ingest_app` over an EmbeddedLog in
a temporary directory) receives POST /ingest/web from a few concurrent clients, each posting
~2 MiB bodies of web-log events for a fixed time. Every request is acknowledged only after its
fsynced commit, so the number includes durability. At the end the log is reopened and its event
count is checked against the acknowledged total.

    python3 bench/bench_ingest.py [--seconds 10] [--clients 4] [--body-mib 2]
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "bench" / "out" / "events-20000.ndjson"
TOKEN = "bench-token"


def serve(data_dir: str, port: int) -> None:
    """The server process: the ingest app alone, one uvicorn worker."""
    import uvicorn
    from starlette.requests import Request

    from stream.http_ingest import Unauthenticated, ingest_app
    from stream.log import EmbeddedLog

    def authenticate(request: Request) -> tuple[str, str]:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            raise Unauthenticated("unknown token")
        return "bench", "ingest"

    uvicorn.run(ingest_app(EmbeddedLog(data_dir), authenticate), host="127.0.0.1", port=port,
                log_level="warning", access_log=False)


def _bodies(body_bytes: int) -> list[tuple[bytes, int]]:
    if SAMPLE.exists():
        lines = SAMPLE.read_bytes().splitlines(keepends=True)
    else:  # same shape as the sample, if bench/out was cleaned
        lines = [(f'{{"ts":{1767225600 + i // 50},"host":"web-{i % 50:02d}","ip":"10.0.{i % 256}.{i % 97}",'
                  f'"method":"GET","path":"/api/v1/orders/{i}","status":{200 + (i % 7) * 50},'
                  f'"bytes":{i * 37 % 90000},"ua":"Mozilla/5.0","referer":"-"}}\n').encode()
                 for i in range(20_000)]
    bodies, current, size = [], [], 0
    for line in lines * 4:
        current.append(line)
        size += len(line)
        if size >= body_bytes:
            bodies.append((b"".join(current), len(current)))
            current, size = [], 0
    return bodies


def _client(url: str, bodies: list[tuple[bytes, int]], stop: float, offset: int,
            results: list[tuple[int, float]], errors: list[str]) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/x-ndjson"}
    with httpx.Client(timeout=60) as http:
        i = offset
        while time.perf_counter() < stop:
            body, count = bodies[i % len(bodies)]
            started = time.perf_counter()
            response = http.post(f"{url}/ingest/web", content=body, headers=headers)
            if response.status_code != 200 or response.json()["accepted"] != count:
                errors.append(f"{response.status_code}: {response.text[:200]}")
                return
            results.append((count, time.perf_counter() - started))
            i += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--body-mib", type=float, default=2.0)
    parser.add_argument("--serve", nargs=2, metavar=("DIR", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return

    bodies = _bodies(int(args.body_mib * (1 << 20)))
    with tempfile.TemporaryDirectory(prefix="logbus-bench-") as data_dir:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        server = subprocess.Popen([sys.executable, __file__, "--serve", data_dir, str(port)], cwd=ROOT,
                                  env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_for(url)
            warm: list[tuple[int, float]] = []
            _client(url, bodies, time.perf_counter() + 1.0, 0, warm, [])  # first requests create the stream
            results: list[tuple[int, float]] = []
            errors: list[str] = []
            started = time.perf_counter()
            stop = started + args.seconds
            threads = [threading.Thread(target=_client, args=(url, bodies, stop, k * 7, results, errors))
                       for k in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
        finally:
            server.terminate()
            server.wait(timeout=30)
        if errors:
            raise SystemExit(f"requests failed: {errors[:3]}")

        from stream.log import EmbeddedLog

        with EmbeddedLog(data_dir, readonly=True) as log:
            stored = log.end_offset("bench", "web")
        events = sum(count for count, _ in results)
        acked = events + sum(count for count, _ in warm)
        assert stored == acked, f"log holds {stored:,} events, {acked:,} were acknowledged"
        latencies = sorted(seconds for _, seconds in results)
        body_mib = sum(len(b) for b, _ in bodies) / len(bodies) / (1 << 20)
        print(f"command: python3 {shlex.join(['bench/bench_ingest.py', *sys.argv[1:]])}")
        print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        per_body = events // max(len(results), 1)
        print(f"clients: {args.clients}, body: {body_mib:.1f} MiB (~{per_body:,} events), "
              f"requests: {len(results):,} in {elapsed:.1f} s")
        print(f"latency per request: p50 {statistics.median(latencies) * 1000:.0f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} ms")
        print(f"ingest over HTTP: {events / elapsed:,.0f} events/s "
              f"({events / elapsed * body_mib / (events / len(results)):,.1f} MiB/s), "
              f"all {acked:,} acknowledged events in the log (target >= 100,000 events/s)")


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.post(f"{url}/ingest/web", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


if __name__ == "__main__":
    main()
