"""Delivering the outbox: webhook (httpx), file (one JSON line, fsynced) and stdout, with retries.

A delivery that fails for a reason that may pass (connection refused, timeout, 408, 429, 5xx, a
full disk) is retried with exponential backoff and full jitter, `uniform(0, min(cap, base * 2**n))`,
so many alerts to one recovering receiver do not arrive in lockstep; a `Retry-After` on 429 and 503
sets the next attempt instead (capped, so a receiver cannot park an alert for a day). After
`max_attempts`, or at once for a failure that will not pass (another 4xx, a redirect, a refused
address or path), the delivery is marked failed with its last error, visible in `status()`.

Redirects are never followed: a 301/302 turns a POST into a GET in most clients, and following
one would send the alert and its headers (often a token) to wherever the receiver points. A 3xx
is a permanent failure that names the target, so the operator can put the final URL in the spec.

Items are claimed one at a time, each under a lease a little longer than one request can take,
so a slow receiver never lets another deliverer's claim on a later item run out. When a host
does not answer, the rest of this round's items for that host are put back unattempted with the
same backoff, so one dead receiver costs one timeout per round, not one per alert.
"""

from __future__ import annotations

import contextlib
import email.utils
import importlib.metadata
import ipaddress
import logging
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import httpx

from stream.alerts.outbox import Claim, Outbox, destination_label
from stream.alerts.payloads import json_line, json_payload, slack_payload

__all__ = ["USER_AGENT", "Deliverer", "DeliveryError"]

log = logging.getLogger("logbus.alerts")

try:
    USER_AGENT = f"logbus/{importlib.metadata.version('logbus')}"
except importlib.metadata.PackageNotFoundError:  # running from a source tree that is not installed
    USER_AGENT = "logbus/0+unknown"

# Headers a spec may not set: they describe the body or the connection, which LogBus owns.
_RESERVED = {"content-length", "transfer-encoding", "connection", "host", "content-type", "user-agent"}
_RESPONSE_SNIPPET = 300
METRICS = ("attempts", "delivered", "retried", "failed", "deferred", "lost_lease")


class DeliveryError(Exception):
    """One failed attempt. `retryable` failures are tried again; `host_down` ones defer the host."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 host_down: bool = False) -> None:
        super().__init__(message)
        self.retryable, self.retry_after, self.host_down = retryable, retry_after, host_down


class Deliverer:
    """Drains an Outbox. `run_once()` for a synchronous round; `start()`/`stop()` for a background thread.

    `allow_private_networks=False` refuses webhooks whose host resolves to a loopback, private,
    link-local or otherwise non-global address (SSRF from a spec into the server's network). It is
    checked at resolution time: a DNS answer that changes between the check and the connection is
    not caught, so a hard boundary still needs an egress firewall.
    `file` destinations are relative to `<data_dir>/tenants/<tenant>/alerts/` and cannot leave it.
    """

    def __init__(self, outbox: Outbox, *, http_client: httpx.Client | None = None,
                 data_dir: str | Path | None = None, max_attempts: int = 12, backoff_base_s: float = 1.0,
                 backoff_cap_s: float = 300.0, retry_after_cap_s: float = 3600.0, timeout_s: float = 10.0,
                 lease_s: float | None = None, batch_size: int = 100, poll_interval_s: float = 1.0,
                 allow_private_networks: bool = True, stdout: TextIO | None = None,
                 rng: random.Random | None = None) -> None:
        if max_attempts < 1 or backoff_base_s < 0 or backoff_cap_s < backoff_base_s or timeout_s <= 0:
            raise ValueError("Deliverer needs max_attempts >= 1, 0 <= backoff_base_s <= backoff_cap_s "
                             "and timeout_s > 0")
        self.outbox = outbox
        self.data_dir = Path(data_dir) if data_dir is not None else outbox.path.parent
        self.max_attempts = max_attempts
        self.backoff_base_s, self.backoff_cap_s = backoff_base_s, backoff_cap_s
        self.retry_after_cap_s, self.timeout_s = retry_after_cap_s, timeout_s
        self.lease_s = lease_s if lease_s is not None else 2 * timeout_s + 30
        self.batch_size, self.poll_interval_s = batch_size, poll_interval_s
        self.allow_private_networks = allow_private_networks
        self._stdout = stdout
        self._rng = rng or random.Random()
        self._owns_client = http_client is None
        self._client = http_client or httpx.Client(timeout=timeout_s, follow_redirects=False)
        self._io_lock = threading.Lock()
        self._metrics_lock = threading.Lock()
        self.metrics = dict.fromkeys(METRICS, 0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- rounds ---------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Deliver up to `batch_size` due items; returns how many were delivered."""
        delivered = 0
        held: dict[str, float] = {}  # host -> when its deliveries are due again, after it failed
        started = time.time()
        for _ in range(self.batch_size):
            if self._stop.is_set():
                break
            claims = self.outbox.claim(limit=1, lease_s=self.lease_s, due_by=started)
            if not claims:
                break
            claim = claims[0]
            host = _host_of(claim.destination)
            if host in held:
                self.outbox.release(claim, at=held[host])
                self._count("deferred")
                continue
            retry_at = self._attempt(claim)
            if retry_at is None:
                delivered += 1
            elif host is not None and retry_at > 0:
                held[host] = retry_at
        return delivered

    def _attempt(self, claim: Claim) -> float | None:
        """Deliver one claim and record the outcome: None if delivered, else when to try the host again
        (0 when the host itself is not known to be down)."""
        self._count("attempts")
        try:
            self._deliver(claim)
        except DeliveryError as err:
            return self._record_failure(claim, err)
        except Exception as exc:  # a bug here must not stop delivery of everything else
            log.exception("alert delivery %s crashed", claim.id)
            return self._record_failure(claim, DeliveryError(f"internal error: {exc!r}", retryable=True))
        self._count("delivered" if self.outbox.delivered(claim) else "lost_lease")
        return None

    def _record_failure(self, claim: Claim, err: DeliveryError) -> float:
        attempts = claim.attempts + 1
        if not err.retryable or attempts >= self.max_attempts:
            reason = str(err) if not err.retryable else f"gave up after {attempts} attempts; last: {err}"
            log.warning("alert delivery to %s failed for good: %s",
                        destination_label(claim.destination), reason)
            self.outbox.failed(claim, error=reason)
            self._count("failed")
            return 0.0
        if err.retry_after is not None:
            delay = min(err.retry_after, self.retry_after_cap_s)
        else:
            delay = self._rng.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempts - 1)))
        at = time.time() + delay
        self.outbox.retry(claim, at=at, error=str(err))
        self._count("retried")
        return at if err.host_down or err.retry_after is not None else 0.0

    def _count(self, name: str) -> None:
        with self._metrics_lock:
            self.metrics[name] += 1

    def status(self) -> dict[str, Any]:
        """The outbox's counts, failed and pending deliveries, plus this deliverer's counters."""
        with self._metrics_lock:
            metrics = dict(self.metrics)
        return {**self.outbox.status(), "metrics": metrics, "running": self._thread is not None}

    # -- destinations ---------------------------------------------------------------------------

    def _deliver(self, claim: Claim) -> None:
        dest = claim.destination
        if "webhook" in dest:
            self._webhook(claim, dest["webhook"])
        elif "file" in dest:
            self._file(claim.tenant, dest["file"], json_line(claim.signal))
        elif "stdout" in dest:
            with self._io_lock:
                out = self._stdout or sys.stdout
                out.write(json_line(claim.signal))
                out.flush()
        else:
            raise DeliveryError(f"unknown destination {sorted(dest)}", retryable=False)

    def _webhook(self, claim: Claim, hook: dict[str, Any]) -> None:
        url = httpx.URL(hook["url"])
        where = destination_label({"webhook": hook})
        if url.scheme not in ("http", "https") or not url.host:
            raise DeliveryError(f"{where}: only http(s) URLs with a host are delivered", retryable=False)
        if not self.allow_private_networks:
            self._check_public(url.host, url.port or (443 if url.scheme == "https" else 80), where)
        if hook.get("format") == "slack":
            body = json_payload(slack_payload(claim.signal, update=claim.update))
        else:
            body = json_payload(claim.signal)
        headers = {k: v for k, v in (hook.get("headers") or {}).items() if k.lower() not in _RESERVED}
        headers.update({
            "Content-Type": "application/json", "User-Agent": USER_AGENT,
            # The same state of the same alert always carries the same key: a receiver that saw it
            # (and whose answer was lost) can drop the retry.
            "Idempotency-Key": f"{claim.signal['id']}:{claim.signal['count']}",
            "X-LogBus-Signal-State": "update" if claim.update else "new",
        })
        try:
            with self._client.stream("POST", url, content=body, headers=headers, timeout=self.timeout_s,
                                     follow_redirects=False) as response:
                snippet = _read_snippet(response)
        except httpx.TimeoutException as exc:
            raise DeliveryError(f"{where}: no answer within {self.timeout_s:g}s ({type(exc).__name__})",
                                retryable=True, host_down=True) from exc
        except httpx.TransportError as exc:
            raise DeliveryError(f"{where}: {type(exc).__name__}: {str(exc)[:200]}", retryable=True,
                                host_down=True) from exc
        _check_response(response, snippet, where, time.time())

    def _check_public(self, host: str, port: int, where: str) -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise DeliveryError(f"{where}: cannot resolve {host}: {exc}", retryable=True,
                                host_down=True) from exc
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            if not address.is_global:
                raise DeliveryError(
                    f"{where}: refused, {host} resolves to {address}, a loopback/private/link-local address, "
                    "and this deliverer runs with allow_private_networks=False; use a public URL",
                    retryable=False)

    def _file(self, tenant: str, name: str, line: str) -> None:
        root = (self.data_dir / "tenants" / tenant / "alerts").resolve()
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            raise DeliveryError(f"file destination {name!r} must be a relative path without '..'; it is "
                                f"written under the tenant's alerts directory", retryable=False)
        try:
            root.mkdir(parents=True, exist_ok=True)
            target = (root / relative).resolve()
            if not target.is_relative_to(root):
                raise DeliveryError(f"file destination {name!r} leads outside the tenant's alerts directory "
                                    "(through a symbolic link); refused", retryable=False)
            target.parent.mkdir(parents=True, exist_ok=True)
            # One write() with O_APPEND: concurrent deliverers' lines never interleave.
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
            try:
                data = line.encode()
                if os.write(fd, data) != len(data):
                    raise DeliveryError(f"file destination {name!r}: short write", retryable=True)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DeliveryError(f"file destination {name!r}: {exc.strerror or exc}", retryable=True) from exc

    # -- background thread ----------------------------------------------------------------------

    def start(self) -> None:
        """Deliver in a daemon thread until `stop()`; wakes on enqueue, else at the next due time."""
        if self._thread is not None:
            raise RuntimeError("this Deliverer is already running; call stop() first")
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="logbus-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread after its current delivery; what is left stays pending in the outbox."""
        self._stop.set()
        self.outbox.changed.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def close(self) -> None:
        """Stop, and close the HTTP client if this Deliverer made it."""
        self.stop()
        if self._owns_client:
            self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.outbox.changed.clear()
            try:
                self.run_once()
                due = self.outbox.next_due_at()
            except Exception:
                log.exception("alert delivery round failed; retrying in %ss", self.poll_interval_s)
                due = None
            wait = self.poll_interval_s
            if due is not None:
                wait = min(max(due - time.time(), 0.0), wait)
            if wait > 0:
                self.outbox.changed.wait(wait)


def _host_of(destination: dict[str, Any]) -> str | None:
    webhook = destination.get("webhook")
    if not isinstance(webhook, dict):
        return None
    with contextlib.suppress(Exception):
        url = httpx.URL(webhook["url"])
        return f"{url.host}:{url.port}"
    return None


def _read_snippet(response: httpx.Response) -> str:
    """At most a few hundred bytes of the answer: a receiver cannot make us read a gigabyte."""
    chunk = b""
    for part in response.iter_raw(chunk_size=_RESPONSE_SNIPPET):
        chunk += part
        if len(chunk) >= _RESPONSE_SNIPPET:
            break
    return chunk[:_RESPONSE_SNIPPET].decode("utf-8", "replace").strip()


def _check_response(response: httpx.Response, snippet: str, where: str, now: float) -> None:
    code = response.status_code
    if 200 <= code < 300:
        return
    detail = f"{where} answered HTTP {code}" + (f": {snippet}" if snippet else "")
    if 300 <= code < 400:
        target = response.headers.get("location", "?")
        with contextlib.suppress(Exception):
            target = destination_label({"webhook": {"url": str(response.url.join(target))}})
        raise DeliveryError(f"{where} answered HTTP {code}, a redirect to {target}; redirects are not "
                            "followed (they would carry the alert and its headers elsewhere): put the "
                            "final URL in the spec", retryable=False)
    if code in (408, 429) or code >= 500:
        retry_after = _retry_after(response.headers.get("retry-after"), now) if code in (429, 503) else None
        raise DeliveryError(detail, retryable=True, retry_after=retry_after)
    raise DeliveryError(detail + " (not retried: a 4xx other than 408/429 will not pass by itself)",
                        retryable=False)


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now) if when.tzinfo else None
