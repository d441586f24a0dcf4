"""`logbus serve` as an operator runs it: real server processes on 127.0.0.1, the real CLI, kill -9.

Each test starts its own server(s) on a free port over its own data directory and stops them
(SIGTERM, or SIGKILL where the test is about a crash) before it ends.
"""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from server.operator import status as operator_status
from stream.log import EmbeddedLog

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def logbus(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LOGBUS_DATA": str(data)}
    done = subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    if check:
        assert done.returncode == 0, f"logbus {' '.join(args)} -> {done.returncode}\n{done.stderr}"
    return done


class Served:
    """One `logbus serve` process; `url` once healthy."""

    def __init__(self, data: Path, port: int, *extra: str) -> None:
        self.data, self.port = data, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(data.parent / f"serve-{data.name}-{port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--data", str(data),
                                      "--port", str(port), *extra], cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.kill()
        raise AssertionError(f"logbus serve did not become healthy:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return (self.data.parent / f"serve-{self.data.name}-{self.port}.log").read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM: the clean shutdown; returns the exit status."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            self.log.close()

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: kill -9
        self.proc.wait(30)
        self.log.close()


@contextmanager
def served(data: Path, *extra: str, port: int | None = None) -> Iterator[Served]:
    server = Served(data, port or free_port(), *extra)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.kill()


def wait_caught_up(data: Path, name: str, end: int, timeout: float = 60.0, tenant: str = "default") -> None:
    deadline = time.monotonic() + timeout
    pipeline: dict[str, Any] = {}
    while time.monotonic() < deadline:
        found = [p for p in operator_status(data, tenant)["pipelines"] if p["name"] == name]
        pipeline = found[0] if found else {}
        if pipeline.get("position") == end and pipeline.get("lag") == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"pipeline {name} did not catch up to offset {end}: {pipeline}")


def query(data: Path, sql: str) -> list[list[Any]]:
    rows: list[list[Any]] = json.loads(logbus(data, "query", sql, "--json").stdout)["rows"]
    return rows


def events(start: int, stop: int) -> list[dict[str, Any]]:
    """Errors come in bursts (the last 50 s of every 150 s), with quiet gaps longer than the rule's
    window + suppress, so the alerts a restart rebuilds are exact (see stream.runner's docstring)."""
    return [{"n": i, "ts": T0 + i, "host": f"h{i % 3}",
             "status": 500 if i % 150 >= 100 and i % 4 == 0 else 200} for i in range(start, stop)]


def ndjson(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


PIPELINE = """name: web-errors
source: web
start: earliest
time: ts
steps:
  - rule:
      code: |
        def rule(event):
            return event["status"] >= 500
        def dedup(event):
            return event["host"]
        def title(event):
            return "errors on " + event["host"]
      threshold: 2
      window: 30s
      suppress: 60s
      severity: high
  - aggregate:
      window: 10s
      by: [host]
      measures: {requests: "count(*)", errors: "count(*) FILTER (WHERE status >= 500)"}
      lateness: 2s
"""

TOTAL, CHUNK = 1800, 150


def post(url: str, token: str, body: bytes, key: str) -> httpx.Response:
    return httpx.post(f"{url}/ingest/web", content=body, timeout=30, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson", "Idempotency-Key": key})


def test_kill_9_mid_stream_then_restart_gives_the_outputs_and_signals_of_an_uninterrupted_run(
        tmp_path: Path) -> None:
    spec = tmp_path / "web_errors.yaml"
    spec.write_text(PIPELINE)
    chunks = [ndjson(events(i, i + CHUNK)) for i in range(0, TOTAL, CHUNK)]
    keys = [f"chunk-{i}" for i in range(len(chunks))]
    # Small batches: the kill lands among many batch boundaries, with alerts and windows open.
    opts = ("--batch-size", "40")

    def prepare(data: Path) -> str:
        logbus(data, "pipelines", "apply", str(spec))  # stream not there yet: validated only
        return logbus(data, "token", "create", "--tenant", "default", "--role", "ingest").stdout.strip()

    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    token = prepare(clean)
    with served(clean, *opts) as server:
        for chunk, key in zip(chunks, keys, strict=True):
            assert post(server.url, token, chunk, key).status_code == 200
        wait_caught_up(clean, "web-errors", TOTAL)
        assert server.stop() == 0

    token = prepare(crashed)
    port = free_port()
    with served(crashed, *opts, port=port) as server:
        for i in range(6):
            assert post(server.url, token, chunks[i], keys[i]).status_code == 200
        time.sleep(0.3)  # the executor is working through the first 900 events
        in_flight = threading.Thread(target=_ignore_transport, args=(server.url, token, chunks[6], keys[6]))
        in_flight.start()
        time.sleep(0.01)
        server.kill()
        in_flight.join()
    with served(crashed, *opts, port=port) as server:
        retry = post(server.url, token, chunks[6], keys[6])  # the retry of the request the kill cut off
        assert retry.status_code == 200 and retry.json()["accepted"] == CHUNK
        for chunk, key in zip(chunks[7:], keys[7:], strict=True):
            assert post(server.url, token, chunk, key).status_code == 200
        wait_caught_up(crashed, "web-errors", TOTAL)
        # the server publishes its live status about once a second: give the snapshot time to turn over
        deadline = time.monotonic() + 15
        while True:
            status = json.loads(logbus(crashed, "status", "--json").stdout)
            if status["pipelines"][0]["state"] == "running" or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status["server"]["running"] is True
        assert status["pipelines"][0]["state"] == "running" and status["pipelines"][0]["lag"] == 0
        assert server.stop() == 0

    with EmbeddedLog(crashed / "log", readonly=True) as log:
        assert log.end_offset("default", "web") == TOTAL  # the retried request was stored once

    rows_sql = "SELECT host, window_start, requests, errors FROM web_errors ORDER BY window_start, host"
    clean_rows, crashed_rows = query(clean, rows_sql), query(crashed, rows_sql)
    assert crashed_rows == clean_rows
    keys_seen = [(r[0], r[1]) for r in crashed_rows]
    assert len(keys_seen) == len(set(keys_seen))  # no window row doubled
    # Every closed window holds exactly the events sent for it: none lost, none counted twice.
    truth: dict[tuple[str, int], int] = {}
    for event in events(0, TOTAL):
        window = (event["host"], (event["ts"] - T0) // 10)
        truth[window] = truth.get(window, 0) + 1
    assert len(crashed_rows) >= 3 * (TOTAL // 10 - 2)
    for host, window_start, requests, _ in crashed_rows:
        start = calendar.timegm(time.strptime(window_start[:19], "%Y-%m-%dT%H:%M:%S"))
        assert requests == truth[(host, (start - T0) // 10)]

    signal_sql = "SELECT id, dedup, first_seen, count FROM signals ORDER BY id"
    clean_signals, crashed_signals = query(clean, signal_sql), query(crashed, signal_sql)
    assert crashed_signals == clean_signals
    assert len(clean_signals) == 3 * (TOTAL // 150)  # one alert per host and burst


def _ignore_transport(url: str, token: str, body: bytes, key: str) -> None:
    with contextlib.suppress(httpx.TransportError):  # the server died under it: retried below
        post(url, token, body, key)


class Receiver:
    """A webhook receiver on 127.0.0.1 that records every delivery."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append((self.headers["Idempotency-Key"], body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_alerts_fired_while_the_webhook_is_down_are_delivered_exactly_once_across_a_restart(
        tmp_path: Path) -> None:
    data = tmp_path / "data"
    hook_port = free_port()
    spec = tmp_path / "alerting.yaml"
    rule_only = PIPELINE.split("  - aggregate:")[0].replace("name: web-errors", "name: alerting")
    spec.write_text(rule_only + f"alerts:\n  - webhook: {{url: 'http://127.0.0.1:{hook_port}/hook'}}\n")
    first, second = tmp_path / "first.ndjson", tmp_path / "second.ndjson"
    first.write_bytes(ndjson(events(0, 600)))
    second.write_bytes(ndjson(events(600, 1200)))
    logbus(data, "pipelines", "apply", str(spec))
    token = logbus(data, "token", "create", "--tenant", "default", "--role", "ingest").stdout.strip()
    receiver = Receiver(hook_port)
    opts = ("--alert-retry-cap", "1")
    try:
        with served(data, *opts) as server:
            done = logbus(data, "ingest", "web", str(first), "--url", server.url, "--token", token, "--json")
            assert json.loads(done.stdout)["accepted"] == 600
            wait_caught_up(data, "alerting", 600)
            wait_for(lambda: json.loads(logbus(data, "status", "--json").stdout)["outbox"]["pending"] == 12,
                     20, "12 pending alerts")  # 4 bursts x 3 hosts, the receiver refusing connections
            assert server.stop() == 0
        receiver.start()
        with served(data, *opts) as server:
            wait_for(lambda: len(receiver.received) == 12, 30, "the pending alerts after the restart")
            done = logbus(data, "ingest", "web", str(second), "--url", server.url, "--token", token, "--json")
            assert json.loads(done.stdout)["accepted"] == 600
            wait_caught_up(data, "alerting", 1200)
            wait_for(lambda: len(receiver.received) >= 24, 30, "the alerts of the second half")
            time.sleep(1.5)  # anything doubled would arrive now
            assert server.stop() == 0
    finally:
        receiver.stop()
    keys = [key for key, _ in receiver.received]
    assert len(keys) == len(set(keys)) == 24  # every (signal id, count) state once
    signals = {row[0]: row[1] for row in query(data, "SELECT id, count FROM signals")}
    assert {body["id"]: body["count"] for _, body in receiver.received} == signals
    outbox = json.loads(logbus(data, "status", "--json").stdout)["outbox"]
    assert outbox["pending"] == 0 and outbox["failed"] == 0 and outbox["delivered"] == 24


TRANSFORM = """name: doubler
source: web
start: earliest
steps:
  - transform: |
      def transform(event):
          event["double"] = event["n"] * 2
          return event
"""


def test_health_metrics_auth_and_cli_changes_reach_the_running_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    spec = tmp_path / "doubler.yaml"
    spec.write_text(TRANSFORM)
    ingest = logbus(data, "token", "create", "--tenant", "default", "--role", "ingest").stdout.strip()
    author = logbus(data, "token", "create", "--tenant", "default", "--role", "author").stdout.strip()
    body = ndjson(events(0, 300))
    with served(data) as server:
        health = httpx.get(f"{server.url}/healthz")
        assert health.status_code == 200
        report = health.json()
        assert report["ok"] and report["log"]["ok"] and report["executor"]["watching_registry"]
        assert report["deliverer"]["running"] is True

        none = httpx.post(f"{server.url}/ingest/web", content=body)
        assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
        bogus = httpx.post(f"{server.url}/ingest/web", content=body, headers={"Authorization": "Bearer lb_x"})
        assert bogus.status_code == 401
        wrong_role = post(server.url, author, body, "k1")
        assert wrong_role.status_code == 403 and "ingest" in wrong_role.json()["message"]
        assert post(server.url, ingest, body, "k1").status_code == 200

        logbus(data, "pipelines", "apply", str(spec))  # tested on the 300 events, then deployed
        wait_caught_up(data, "doubler", 300)
        wait_for(lambda: "logbus_step_events_in_total" in httpx.get(f"{server.url}/metrics").text, 10,
                 "step metrics")
        metrics = httpx.get(f"{server.url}/metrics")
        assert metrics.headers["content-type"].startswith("text/plain")
        samples = _samples(metrics.text)
        pipe = '{pipeline="doubler",tenant="default"}'
        assert samples[f"logbus_pipeline_events_in_total{pipe}"] == 300
        assert samples[f"logbus_pipeline_events_out_total{pipe}"] == 300
        assert samples[f"logbus_pipeline_lag_events{pipe}"] == 0
        assert samples[f"logbus_pipeline_sandbox_kills_total{pipe}"] == 0
        assert samples[f"logbus_pipeline_batch_seconds_total{pipe}"] > 0
        assert samples[f"logbus_pipeline_running{pipe}"] == 1
        step = [k for k in samples if k.startswith("logbus_step_events_in_total{")]
        assert len(step) == 1 and 'kind="transform"' in step[0] and samples[step[0]] == 300
        assert any(k.startswith("logbus_step_errors_total{") for k in samples)
        assert samples['logbus_ingest_events_total{outcome="accepted",stream="web",tenant="default"}'] == 300
        assert samples['logbus_ingest_requests_total{status="401"}'] == 2
        assert samples['logbus_ingest_requests_total{status="403"}'] == 1
        assert samples['logbus_alert_deliveries_total{outcome="delivered"}'] == 0
        assert 'logbus_alert_outbox{state="pending"}' in samples

        shown = logbus(data, "status").stdout
        assert "running, pid" in shown and "doubler" in shown and "300" in shown

        # A pause through the CLI (another process) stops the live pipeline at its position: the
        # server follows the registry every second (poll_s), so the pause is in effect after that.
        logbus(data, "pipelines", "pause", "doubler", "--reason", "maintenance")
        assert _samples(httpx.get(f"{server.url}/metrics").text)[f"logbus_pipeline_running{pipe}"] == 0
        time.sleep(2.5)
        assert post(server.url, ingest, ndjson(events(300, 400)), "k2").status_code == 200
        time.sleep(1.5)
        paused = operator_status(data)["pipelines"][0]
        assert paused["state"] == "paused" and paused["position"] == 300 and paused["lag"] == 100
        assert paused["reason"] == "maintenance"
        # ...and a resume continues from there.
        logbus(data, "pipelines", "resume", "doubler")
        wait_caught_up(data, "doubler", 400)
        assert server.stop() == 0
    rows = query(data, "SELECT count(*), count(DISTINCT n), sum(double) FROM doubler")
    assert rows == [[400, 400, sum(2 * i for i in range(400))]]


def test_a_second_server_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with served(data) as server:
        second = logbus(data, "serve", "--port", str(free_port()), check=False)
        assert second.returncode == 1
        assert f"pid {server.proc.pid}" in second.stderr and "another `logbus serve`" in second.stderr
        assert server.stop() == 0


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out

