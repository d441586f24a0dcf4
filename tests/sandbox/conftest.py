"""Fixtures for the process-isolation tests: a host that can notice being harmed.

`canary` listens on loopback TCP and UDP and records anything that reaches it; `secret` puts a
value in this process's environment that no worker may ever see; `small_limits` keeps deadlines
short so hostile cases finish fast.
"""

from __future__ import annotations

import secrets
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from sandbox.isolation import Launcher, launcher
from sandbox.limits import Limits
from sandbox.pool import SandboxPool

MiB = 1024 * 1024


@dataclass
class Canary:
    port: int
    hits: list[str] = field(default_factory=list)


@pytest.fixture
def canary() -> Iterator[Canary]:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", port))
    tcp.listen(8)
    tcp.settimeout(0.2)
    udp.settimeout(0.2)
    found = Canary(port)
    stop = threading.Event()

    def watch_tcp() -> None:
        while not stop.is_set():
            try:
                conn, peer = tcp.accept()
            except OSError:
                continue
            found.hits.append(f"tcp from {peer}")
            conn.close()

    def watch_udp() -> None:
        while not stop.is_set():
            try:
                data, peer = udp.recvfrom(65536)
            except OSError:
                continue
            found.hits.append(f"udp {data!r} from {peer}")

    threads = [
        threading.Thread(target=watch_tcp, daemon=True),
        threading.Thread(target=watch_udp, daemon=True),
    ]
    for thread in threads:
        thread.start()
    yield found
    stop.set()
    for thread in threads:
        thread.join(2)
    tcp.close()
    udp.close()


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    value = "s3cr3t-" + secrets.token_hex(16)
    monkeypatch.setenv("LOGBUS_TEST_SECRET", value)
    return value


@pytest.fixture(scope="session")
def spec() -> Launcher:
    return launcher()


@pytest.fixture
def small_limits() -> Limits:
    return Limits(
        memory_bytes=256 * MiB,
        batch_deadline_base_s=1.0,
        batch_deadline_per_event_s=0.001,
        event_deadline_s=0.3,
        bisect_budget_s=15.0,
        output_bytes_per_batch=4 * MiB,
        max_kills_before_quarantine=3,
    )


@pytest.fixture
def raw_pool(small_limits: Limits, spec: Launcher) -> Iterator[SandboxPool]:
    """A pool whose workers exec snippets as plain Python: no static check, no RestrictedPython.
    Only the process layer stands between these snippets and the host."""
    with SandboxPool(small_limits, _launcher=spec, _unsafe_raw_exec_for_tests=True) as pool:
        yield pool


@pytest.fixture
def pool(small_limits: Limits, spec: Launcher) -> Iterator[SandboxPool]:
    with SandboxPool(small_limits, _launcher=spec) as pool:
        yield pool
