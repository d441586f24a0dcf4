"""Agent tool latency over streamable HTTP: `validate_pipeline` and `test_pipeline` under `logbus serve`.

Run: python3 bench/bench_mcp.py [--validate-calls 200] [--events 10000] [--runs 5]

A real `logbus serve` (`python3 -m server.cli serve`) on a free 127.0.0.1 port and a temporary
data directory, an author token from `logbus token create --tenant default --role author`, and
the MCP SDK's client (`mcp.client.Client` over `streamable_http_client`) with that bearer token:
one MCP session for the whole run, so each timed call is one `tools/call` POST and its answer
(the server is stateless: every POST is authenticated and served on its own).

1. `validate_pipeline` on a realistic pipeline (a syslog parse, a filter, a Python transform),
   `--validate-calls` times; p50/p95/p99 in ms (target: p50 < 30 ms).
2. `test_pipeline` with one Python transform on `--events` events. The events are ingested once
   into stream `web` (POST /ingest/web, ingest token) and the tool reads them with `stream` +
   `limit`: that is how agents call it, and it keeps a 2 MB argument out of what is timed.
   Cold: a new code hash each call (a constant in the code changes), so a fresh sandbox worker
   must start; warm: the last pipeline again. Median of `--runs` each (targets: cold < 1.5 s,
   warm < 0.5 s). Every call must answer ok with `events_read` equal to `--events`.

The Markdown report goes to stdout; the exit status is 1 when a call fails or a check does not hold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH / "peers"))

from events import _event  # noqa: E402

VALIDATE_PIPELINE = """\
name: bench-validate
description: Failed SSH logins, with the user and the source address pulled out
source: auth
time: timestamp
steps:
  - id: syslog
    parse:
      field: message
      format: syslog
      year: 2024
  - id: failed_only
    filter: "message LIKE 'Failed password for %'"
  - id: user_and_ip
    transform: |
      SUFFIX = " port "

      def transform(event):
          text = event["message"]
          rest = text.split(" from ", 1)
          event["src_ip"] = rest[1].split(SUFFIX, 1)[0] if len(rest) == 2 else None
          event["invalid_user"] = "invalid user" in text
          return event
"""

# One Python step; `{tag}` is the constant changed for every cold call (a new code hash).
TEST_PIPELINE = """\
name: bench-mcp-test
description: Lower-case the method, flag server errors, strip the query string
source: web
time: ts
steps:
  - transform: |
      TAG = {tag}

      def transform(event):
          event["method"] = event["method"].lower()
          event["is_error"] = event["status"] >= 500
          event["route"] = event["path"].split("?")[0]
          event["tag"] = TAG
          return event
"""


# ---------------------------------------------------------------- machine and server

def machine() -> str:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (f"nproc {os.cpu_count()}, CPU {model}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def logbus(data: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "LOGBUS_DATA": str(data)}, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"logbus {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def served(data: Path) -> Iterator[str]:
    """A `logbus serve` on a free port until the block ends (SIGTERM, then kill after 60 s)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = data.parent / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--data", str(data),
                                 "--port", str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"logbus serve exited {proc.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"logbus serve did not become healthy in 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def ingest_web(url: str, token: str, count: int) -> None:
    import random

    rng = random.Random(42)
    body = "".join(json.dumps(_event(rng, i), separators=(",", ":")) + "\n" for i in range(count))
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
    response = httpx.post(f"{url}/ingest/web", content=body.encode(), timeout=120, headers=headers)
    if response.status_code != 200 or response.json().get("accepted") != count:
        raise RuntimeError(f"ingest answered {response.status_code}: {response.text[:300]}")


# ---------------------------------------------------------------- measures

def _text(result: CallToolResult) -> str:
    block = result.content[0] if result.content else None
    return block.text if isinstance(block, TextContent) else repr(result.content)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def measure(url: str, token: str, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120.0)) as http, \
            Client(streamable_http_client(f"{url}/mcp", http_client=http)) as client:

        async def timed(tool: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
            start = time.perf_counter()
            result = await client.call_tool(tool, arguments)
            seconds = time.perf_counter() - start
            if result.is_error or result.structured_content is None:
                raise RuntimeError(f"{tool} failed: {_text(result)[:800]}")
            return seconds, dict(result.structured_content)

        await timed("validate_pipeline", {"pipeline": VALIDATE_PIPELINE})  # warm-up, not counted
        validate: list[float] = []
        for _ in range(args.validate_calls):
            seconds, out = await timed("validate_pipeline", {"pipeline": VALIDATE_PIPELINE})
            if out.get("valid") is not True:
                raise RuntimeError(f"validate_pipeline did not answer valid: {out}")
            validate.append(seconds)

        def checked(out: dict[str, Any]) -> None:
            if out.get("ok") is not True or out.get("events_read") != args.events:
                raise RuntimeError(f"test_pipeline: ok={out.get('ok')}, events_read={out.get('events_read')} "
                                   f"(expected {args.events})")

        test_args = {"stream": "web", "limit": args.events}
        cold: list[float] = []
        server_cold: list[float] = []
        hashes: set[str] = set()
        tag = time.time_ns()  # never a hash an earlier call of this server has seen
        for i in range(args.runs):
            pipeline = TEST_PIPELINE.format(tag=tag + i)
            seconds, out = await timed("test_pipeline", {"pipeline": pipeline, **test_args})
            checked(out)
            hashes.add(str(out["code_hash"]))
            cold.append(seconds)
            server_cold.append(float(out["seconds"]))
        if len(hashes) != args.runs:
            raise RuntimeError(f"cold calls shared a code hash ({len(hashes)} distinct of {args.runs})")
        warm: list[float] = []
        server_warm: list[float] = []
        for _ in range(args.runs):
            seconds, out = await timed("test_pipeline", {"pipeline": pipeline, **test_args})
            checked(out)
            warm.append(seconds)
            server_warm.append(float(out["seconds"]))
    return {"validate": validate, "cold": cold, "warm": warm, "server_cold": server_cold,
            "server_warm": server_warm}


# ---------------------------------------------------------------- report

def report(args: argparse.Namespace, r: dict[str, Any]) -> list[str]:
    v = [s * 1000 for s in r["validate"]]
    p50, p95, p99 = _pct(v, 0.50), _pct(v, 0.95), _pct(v, 0.99)
    cold, warm = statistics.median(r["cold"]), statistics.median(r["warm"])

    def met(ok: bool) -> str:
        return "met" if ok else "**not met**"

    return [
        "## MCP tools over streamable HTTP (`logbus serve`)",
        "",
        f"- machine: {machine()}",
        f"- command: `{shlex.join([Path(sys.executable).name, *sys.argv])}`",
        f"- one SDK client session, author token, {args.events:,} events ingested into stream `web`; "
        "test_pipeline reads them with `stream` + `limit`",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| validate_pipeline, {len(v)} calls (syslog parse, filter, Python transform) | p50 {p50:.1f} ms, "
        f"p95 {p95:.1f} ms, p99 {p99:.1f} ms | p50 < 30 ms | {met(p50 < 30)} |",
        f"| test_pipeline cold (new code hash), {args.events:,} events, median of {len(r['cold'])} | "
        f"{cold:.3f} s (server's run {statistics.median(r['server_cold']):.3f} s; "
        f"min {min(r['cold']):.3f}, max {max(r['cold']):.3f}) | < 1.5 s | {met(cold < 1.5)} |",
        f"| test_pipeline warm (same pipeline), {args.events:,} events, median of {len(r['warm'])} | "
        f"{warm:.3f} s (server's run {statistics.median(r['server_warm']):.3f} s; "
        f"min {min(r['warm']):.3f}, max {max(r['warm']):.3f}) | < 0.5 s | {met(warm < 0.5)} |",
        "",
        "Times are the client's: the `tools/call` POST to its last byte, over loopback. \"Server's run\" is "
        "the tool's own `seconds` (the sandboxed run, without reading the stream and the HTTP/MCP layers).",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--validate-calls", type=int, default=200,
                        help="validate_pipeline calls (default 200)")
    parser.add_argument("--events", type=int, default=10_000,
                        help="test_pipeline events, 1-10000 (default 10000)")
    parser.add_argument("--runs", type=int, default=5,
                        help="cold and warm test_pipeline calls (default 5)")
    args = parser.parse_args()
    if not 1 <= args.events <= 10_000:
        parser.error(f"--events must be 1-10000 (test_pipeline's limit); got {args.events}")
    if args.validate_calls < 1 or args.runs < 1:
        parser.error("--validate-calls and --runs must be at least 1")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-mcp-") as tmp:
            data = Path(tmp) / "data"
            with served(data) as url:
                author = logbus(data, "token", "create", "--tenant", "default", "--role", "author")
                ingest = logbus(data, "token", "create", "--tenant", "default", "--role", "ingest")
                ingest_web(url, ingest, args.events)
                results = anyio.run(measure, url, author, args)
    except RuntimeError as exc:
        print(f"bench_mcp: {exc}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(report(args, results)))


if __name__ == "__main__":
    main()
