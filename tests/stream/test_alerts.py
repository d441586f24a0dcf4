"""The alert outbox and its deliverer, against a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import io
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from stream.alerts import USER_AGENT, Deliverer, Outbox, slack_payload
from stream.alerts.delivery import _retry_after


class Receiver:
    """A threaded HTTP server on a free loopback port; `script` lists the answers to give before 200s."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.script: list[tuple[int, dict[str, str]]] = []
        self.always: tuple[int, dict[str, str]] | None = None
        self.delay_s = 0.0
        self.requests: list[tuple[int, dict[str, str], Any]] = []
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(receiver.delay_s)
                with receiver.lock:
                    default = receiver.always or (200, {})
                    status, headers = receiver.script.pop(0) if receiver.script else default
                    receiver.requests.append((status, dict(self.headers), body))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[Any]:
        """Bodies the receiver answered with 2xx, in arrival order."""
        with self.lock:
            return [body for status, _, body in self.requests if 200 <= status < 300]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def sig(n: int, count: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": f"sig{n:04d}", "pipeline": "ssh-brute-force", "version": 1, "step": "rule",
            "severity": "high", "title": f"SSH brute force from 10.0.0.{n}", "dedup": f"10.0.0.{n}",
            "count": count, "first_seen": "2026-11-01T00:00:00Z", "last_seen": "2026-11-01T00:00:05Z",
            "context": {}, "samples": [], **extra}


def fast_deliverer(outbox: Outbox, **options: Any) -> Deliverer:
    """A Deliverer whose backoff is milliseconds, so retries happen within a test."""
    return Deliverer(outbox, backoff_base_s=0.001, backoff_cap_s=0.004, **options)


def hook(url: str, **options: Any) -> dict[str, Any]:
    return {"webhook": {"url": url, **options}}


def drain(deliverer: Deliverer, *, until: Callable[[], bool] | None = None, timeout_s: float = 10.0) -> None:
    """Run rounds until nothing is pending (or `until` holds), failing the test past the timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        deliverer.run_once()
        if until() if until else deliverer.outbox.status()["counts"]["pending"] == 0:
            return
        time.sleep(0.002)
    raise AssertionError(f"outbox not drained: {deliverer.status()}")


def ids(bodies: list[Any]) -> list[tuple[str, int]]:
    return [(b["id"], b["count"]) for b in bodies]


def test_alerts_reach_a_receiver_that_refuses_then_fails_then_recovers_exactly_once(
        tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    assert outbox.enqueue_many("default", "p", [hook(receiver.url)], [sig(n) for n in range(10)]) == 10
    deliverer = fast_deliverer(outbox, max_attempts=100)

    assert deliverer.run_once() == 0  # connection refused: one attempt, the other nine deferred with it
    assert deliverer.metrics["attempts"] == 1 and deliverer.metrics["deferred"] == 9
    status = outbox.status()
    assert status["counts"]["pending"] == 10
    assert any("ConnectError" in (p["last_error"] or "") for p in status["pending"])

    receiver.script = [(500, {}) for _ in range(5)]
    receiver.start()
    drain(deliverer)
    assert Counter(ids(receiver.accepted())) == Counter((f"sig{n:04d}", 1) for n in range(10))
    assert [status for status, _, _ in receiver.requests].count(500) == 5
    assert outbox.status()["counts"] == {"pending": 0, "delivered": 10, "failed": 0, "superseded": 0}


def test_a_restart_mid_way_resumes_pending_deliveries_and_replays_do_not_redeliver(
        tmp_path: Path, receiver: Receiver) -> None:
    path = tmp_path / "outbox.sqlite3"
    signals = [sig(n) for n in range(10)]
    receiver.script = [(status, {}) for status in (200, 200, 200, 200, 503)]
    receiver.start()
    outbox = Outbox(path)
    outbox.enqueue_many("default", "p", [hook(receiver.url)], signals)
    first = fast_deliverer(outbox, batch_size=5)
    assert first.run_once() == 4  # the fifth got a 503 and stays pending with one attempt
    first.close()
    outbox.close()

    reopened = Outbox(path)
    # The executor replays the same batch after its own restart: the outbox drops every state.
    assert reopened.enqueue_many("default", "p", [hook(receiver.url)], signals) == 0
    pending = reopened.status()["pending"]
    assert len(pending) == 6 and sorted(p["attempts"] for p in pending) == [0, 0, 0, 0, 0, 1]
    drain(fast_deliverer(reopened))
    assert Counter(ids(receiver.accepted())) == Counter((s["id"], 1) for s in signals)
    assert len(receiver.accepted()) == 10


def test_retry_after_on_429_sets_the_next_attempt(tmp_path: Path, receiver: Receiver) -> None:
    receiver.script = [(429, {"Retry-After": "1"})]
    receiver.start()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.enqueue("default", "p", hook(receiver.url), sig(1))
    deliverer = fast_deliverer(outbox)
    before = time.time()
    assert deliverer.run_once() == 0
    (pending,) = outbox.status()["pending"]
    assert before + 0.9 <= pending["next_attempt_at"] <= time.time() + 1.1
    assert "HTTP 429" in pending["last_error"]
    assert deliverer.run_once() == 0 and len(receiver.requests) == 1  # not due yet, despite tiny backoff
    time.sleep(max(0.0, pending["next_attempt_at"] - time.time()) + 0.02)
    assert deliverer.run_once() == 1
    assert ids(receiver.accepted()) == [("sig0001", 1)]


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = 1_800_000_000.0
    assert _retry_after("120", now) == 120.0
    assert _retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 60)), now) == 60.0
    assert _retry_after("soon", now) is None and _retry_after(None, now) is None


def test_a_permanent_400_is_failed_once_and_a_flapping_500_gives_up_after_max_attempts(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.always = (400, {})
    receiver.start()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.enqueue("default", "p", hook(receiver.url), sig(1))
    deliverer = fast_deliverer(outbox, max_attempts=3)
    for _ in range(5):
        deliverer.run_once()
    assert len(receiver.requests) == 1
    (failed,) = outbox.status()["failed"]
    assert failed["attempts"] == 1
    assert "HTTP 400" in failed["last_error"] and "not retried" in failed["last_error"]

    receiver.always = (500, {})
    outbox.enqueue("default", "p", hook(receiver.url), sig(2))
    drain(deliverer)
    assert len(receiver.requests) == 4  # one 400, then three 500s
    status = outbox.status()
    assert status["counts"]["failed"] == 2
    assert "gave up after 3 attempts" in status["failed"][0]["last_error"]
    assert deliverer.status()["metrics"]["failed"] == 2


def test_redirects_are_not_followed(tmp_path: Path, receiver: Receiver) -> None:
    elsewhere = Receiver()
    elsewhere.start()
    try:
        receiver.always = (307, {"Location": elsewhere.url})
        receiver.start()
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        outbox.enqueue("default", "p", hook(receiver.url), sig(1))
        drain(fast_deliverer(outbox))
        assert elsewhere.requests == [] and len(receiver.requests) == 1
        (failed,) = outbox.status()["failed"]
        assert "redirects are not followed" in failed["last_error"]
        assert f"127.0.0.1:{elsewhere.port}" in failed["last_error"]
    finally:
        elsewhere.stop()


def test_slack_format_sends_a_slack_message_with_headers_and_marks_updates(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    headers = {"Authorization": "Bearer s3cret", "User-Agent": "spoof"}
    dest = hook(receiver.url, format="slack", headers=headers)
    outbox.enqueue("default", "p", dest, sig(1, title="<script> & co", context={"src_ip": "10.0.0.1"}))
    deliverer = fast_deliverer(outbox)
    drain(deliverer)
    outbox.enqueue("default", "p", dest, sig(1, count=7))
    drain(deliverer)

    (_, h1, first), (_, h2, second) = receiver.requests
    assert h1["Authorization"] == "Bearer s3cret" and h1["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("logbus/")
    assert h1["Idempotency-Key"] == "sig0001:1" and h1["X-LogBus-Signal-State"] == "new"
    assert h2["Idempotency-Key"] == "sig0001:7" and h2["X-LogBus-Signal-State"] == "update"
    assert set(first) == {"text", "blocks"}
    assert first["text"] == "[HIGH] &lt;script&gt; &amp; co (1 event)"
    assert [b["type"] for b in first["blocks"]] == ["header", "section", "section", "context"]
    # plain_text is not parsed by Slack, so the header keeps the title as written
    assert first["blocks"][0]["text"] == {"type": "plain_text", "text": "🟠 <script> & co", "emoji": True}
    assert "*Events*\n1" in [f["text"] for f in first["blocks"][1]["fields"]]
    assert "10.0.0.1" in first["blocks"][2]["text"]["text"]
    assert second["text"].startswith("Updated: [HIGH]") and "(7 events)" in second["text"]


def test_slack_payload_respects_slack_length_limits() -> None:
    payload = slack_payload(sig(1, title="x" * 500, context={"blob": "y" * 10_000}))
    assert len(payload["blocks"][0]["text"]["text"]) <= 150
    assert len(payload["blocks"][2]["text"]["text"]) <= 3000
    assert all(len(f["text"]) <= 2000 for f in payload["blocks"][1]["fields"])


def test_file_destination_appends_fsynced_json_lines_inside_the_tenant_directory(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.enqueue_many("acme", "p", [{"file": "ssh/alerts.jsonl"}], [sig(1), sig(2)])
    drain(fast_deliverer(outbox))
    outbox.enqueue("acme", "p", {"file": "ssh/alerts.jsonl"}, sig(1, count=3))
    drain(fast_deliverer(outbox))
    lines = (tmp_path / "tenants/acme/alerts/ssh/alerts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [sig(1), sig(2), sig(1, count=3)]

    outbox.enqueue("acme", "p", {"file": "../../other/alerts.jsonl"}, sig(4))
    (tmp_path / "tenants/acme/alerts/link").symlink_to(tmp_path)
    outbox.enqueue("acme", "p", {"file": "link/escape.jsonl"}, sig(5))
    drain(fast_deliverer(outbox))
    errors = sorted(f["last_error"] for f in outbox.status()["failed"])
    assert "without '..'" in errors[0] and "symbolic link" in errors[1]
    assert not (tmp_path / "escape.jsonl").exists() and not (tmp_path / "tenants/other").exists()


def test_stdout_destination_prints_one_json_line_per_state(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    out = io.StringIO()
    outbox.enqueue("default", "p", {"stdout": {}}, sig(1))
    drain(fast_deliverer(outbox, stdout=out))
    assert [json.loads(line) for line in out.getvalue().splitlines()] == [sig(1)]


def test_replayed_or_older_states_are_dropped_and_a_later_fold_is_delivered_as_an_update(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    deliverer = fast_deliverer(outbox)
    assert outbox.enqueue("default", "p", hook(receiver.url), sig(1, count=1))
    drain(deliverer)
    assert not outbox.enqueue("default", "p", hook(receiver.url), sig(1, count=1))  # replay
    assert outbox.enqueue("default", "p", hook(receiver.url), sig(1, count=3))
    # an older state, replayed late
    assert not outbox.enqueue("default", "p", hook(receiver.url), sig(1, count=2))
    # The same signal in another tenant, or for another destination, is its own delivery.
    assert outbox.enqueue("other", "p", hook(receiver.url), sig(1, count=1))
    assert outbox.enqueue("default", "p", hook(receiver.url + "?b"), sig(1, count=1))
    drain(deliverer)
    assert Counter(ids(receiver.accepted())) == Counter({("sig0001", 1): 3, ("sig0001", 3): 1})


def test_pending_updates_coalesce_into_the_latest_state_with_the_backoff_carried_over(
        tmp_path: Path, receiver: Receiver) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    deliverer = fast_deliverer(outbox)
    outbox.enqueue("default", "p", hook(receiver.url), sig(1, count=1))
    deliverer.run_once()  # refused
    for count in (2, 3, 4):
        outbox.enqueue("default", "p", hook(receiver.url), sig(1, count=count))
    status = outbox.status()
    assert status["counts"]["superseded"] == 3
    assert [(p["count"], p["attempts"]) for p in status["pending"]] == [(4, 1)]
    receiver.start()
    drain(deliverer)
    assert ids(receiver.accepted()) == [("sig0001", 4)]


def test_two_deliverers_on_one_outbox_file_never_deliver_an_item_twice(
        tmp_path: Path, receiver: Receiver) -> None:
    receiver.delay_s = 0.002
    receiver.start()
    path = tmp_path / "outbox.sqlite3"
    first, second = Outbox(path), Outbox(path)
    first.enqueue_many("default", "p", [hook(receiver.url)], [sig(n) for n in range(60)])
    deliverers = [fast_deliverer(first, batch_size=5), fast_deliverer(second, batch_size=5),
                  fast_deliverer(first, batch_size=5)]
    threads = [threading.Thread(target=drain, args=(d,)) for d in deliverers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(receiver.accepted()) == 60
    assert Counter(ids(receiver.accepted())) == Counter((f"sig{n:04d}", 1) for n in range(60))
    assert sum(d.metrics["delivered"] for d in deliverers) == 60


def test_an_expired_lease_passes_the_item_to_another_deliverer(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.enqueue("default", "p", {"stdout": {}}, sig(1))
    (stale,) = outbox.claim(limit=10, lease_s=0.05)
    assert outbox.claim(limit=10, lease_s=0.05) == []
    time.sleep(0.06)
    (fresh,) = outbox.claim(limit=10, lease_s=30)
    assert fresh.id == stale.id and fresh.token != stale.token
    assert not outbox.delivered(stale)  # the dead deliverer's late report changes nothing
    assert outbox.delivered(fresh)
    assert outbox.status()["counts"]["delivered"] == 1


def test_private_networks_can_be_refused(tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.enqueue("default", "p", hook(receiver.url), sig(1))
    drain(fast_deliverer(outbox, allow_private_networks=False))
    assert receiver.requests == []
    (failed,) = outbox.status()["failed"]
    assert "127.0.0.1" in failed["last_error"] and "allow_private_networks=False" in failed["last_error"]


def test_the_background_thread_delivers_soon_after_enqueue(tmp_path: Path, receiver: Receiver) -> None:
    receiver.start()
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    deliverer = fast_deliverer(outbox, poll_interval_s=5.0)
    deliverer.start()
    try:
        time.sleep(0.05)  # the thread is now waiting out its 5 s poll
        outbox.enqueue("default", "p", hook(receiver.url), sig(1))
        deadline = time.monotonic() + 2.0
        while not receiver.accepted() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ids(receiver.accepted()) == [("sig0001", 1)]
        assert deliverer.status()["running"] is True
    finally:
        deliverer.close()
    assert deliverer.status()["running"] is False


def test_status_never_shows_webhook_paths_or_headers(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.enqueue("default", "p", hook("https://hooks.slack.com/services/T0/B0/s3cret?token=s3cret",
                                        headers={"X-Token": "s3cret"}), sig(1))
    status = outbox.status()
    assert status["pending"][0]["destination"] == "webhook https://hooks.slack.com/…"
    assert "s3cret" not in json.dumps(status)


def test_enqueue_rejects_bad_input_with_the_field_named(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    with pytest.raises(ValueError, match="not an http"):
        outbox.enqueue("default", "p", hook("ftp://example.com/x"), sig(1))
    with pytest.raises(ValueError, match="field 'id'"):
        outbox.enqueue("default", "p", {"stdout": {}}, {"count": 1})
    with pytest.raises(ValueError, match="field 'count'"):
        outbox.enqueue("default", "p", {"stdout": {}}, sig(1, count=0))
    with pytest.raises(ValueError, match="tenant name"):
        outbox.enqueue("../etc", "p", {"stdout": {}}, sig(1))
    assert outbox.status()["counts"]["pending"] == 0
