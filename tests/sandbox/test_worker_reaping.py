"""A worker's process group is signalled only while its leader is unreaped.

Once the host has reaped a dead worker, its pid (and so its process group id) is free, and the
kernel hands it to the next new process: with pid_max at 32768 that happens within minutes on a
busy host. Cleanup that still calls killpg on the old id then SIGKILLs whoever holds it now, as
root any process on the host, and in the pool typically a freshly started worker, whose healthy
batch then fails as "the sandbox worker died". These tests prove the cleanup never does that.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import pytest

import sandbox.worker as worker_module
from sandbox.isolation import Launcher, tenant_uid
from sandbox.limits import Limits
from sandbox.worker import WorkerProcess

HEALTHY = "def transform(event):\n    return {'ok': event['n']}\n"
# Raw test mode: plain Python, so the snippet can end its own worker.
EXITS = "import os\ndef transform(event):\n    os._exit(7)\n"
NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"


def _worker(spec: Launcher, limits: Limits, source: str, tenant: str) -> WorkerProcess:
    return WorkerProcess(
        "transform", source, uid=tenant_uid(tenant), limits=limits, spec=spec, raw_exec_for_tests=True
    )


def test_cleanup_of_a_reaped_worker_sends_no_signal(
    small_limits: Limits, spec: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead = _worker(spec, small_limits, EXITS, "reaping-dead")
    outcome = dead.run_batch([{"n": 1}], deadline_s=5.0)
    assert outcome.status == "crash" and "status 7" in outcome.message, outcome
    sent: list[tuple[int, int]] = []

    def recording_killpg(pgid: int, sig: int) -> None:
        sent.append((pgid, sig))

    monkeypatch.setattr(os, "killpg", recording_killpg)
    dead.close()  # what the pool does when it takes the dead worker back
    dead.kill()
    assert sent == [], f"signalled the reaped worker's group {sent}: the id may be another process's"


def _spawn_on_pid(spec: Launcher, limits: Limits, pid: int) -> WorkerProcess:
    """Start a healthy worker whose process (bubblewrap or the worker itself) gets `pid`."""
    for _ in range(20):  # another process on the host may take the pid first; then try again
        try:
            with open(NS_LAST_PID, "w", encoding="ascii") as handle:
                handle.write(str(pid - 1))
        except OSError as exc:
            raise AssertionError(
                f"this test needs root to choose the next pid through {NS_LAST_PID} ({exc}); the "
                "sandbox runs as root to give each tenant its own uid"
            ) from None
        fresh = _worker(spec, limits, HEALTHY, "reaping-fresh")
        if fresh.pid == pid:
            return fresh
        fresh.close()
    raise AssertionError(f"could not start a worker on pid {pid} in 20 attempts")


def test_a_new_worker_on_a_reused_pid_survives_cleanup_of_the_old_one(
    small_limits: Limits, spec: Launcher
) -> None:
    dead = _worker(spec, small_limits, EXITS, "reaping-dead")
    assert dead.run_batch([{"n": 1}], deadline_s=5.0).status == "crash"
    fresh = _spawn_on_pid(spec, small_limits, dead.pid)
    try:
        dead.close()  # the old worker's cleanup, after the kernel reused its pid
        # A SIGKILL to bubblewrap's group reaches the worker through bubblewrap's death
        # (--die-with-parent, then the pid namespace's end): give that chain time to land.
        time.sleep(0.5)
        assert fresh.alive, "the new worker was killed by the old one's cleanup"
        outcome = fresh.run_batch([{"n": 7}], deadline_s=5.0)
        assert outcome.status == "ok" and outcome.values == [{"ok": 7}], outcome
    finally:
        fresh.close()


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        (signal.SIGSYS, "worker killed by SIGSYS: seccomp killed it for a forbidden system call"),
        (signal.SIGKILL, "worker killed by SIGKILL, not by a deadline of the pool"),
        (signal.SIGSEGV, "worker killed by SIGSEGV: the interpreter crashed"),
        (signal.SIGTERM, "worker killed by SIGTERM"),
        (signal.SIGRTMIN + 3, f"worker killed by signal {signal.SIGRTMIN + 3}"),
    ],
)
def test_a_death_by_signal_names_the_signal(number: int, expected: str) -> None:
    assert worker_module._signal_death(number).startswith(expected)


def _interpreter_pid(pid: int) -> int:
    """The worker interpreter's host pid: `pid` itself, or its descendant inside bubblewrap."""
    pending = [pid]
    while pending:
        current = pending.pop()
        with open(f"/proc/{current}/comm", encoding="ascii") as handle:
            if handle.read().strip().startswith("python"):
                return current
        with open(f"/proc/{current}/task/{current}/children", encoding="ascii") as handle:
            pending += [int(child) for child in handle.read().split()]
    raise AssertionError(f"no worker interpreter under pid {pid}")


def test_a_worker_killed_by_a_signal_reports_it(small_limits: Limits, spec: Launcher) -> None:
    worker = _worker(spec, small_limits, HEALTHY, "reaping-signal")
    assert worker.run_batch([{"n": 1}], deadline_s=5.0).status == "ok"
    # stands for the out-of-memory killer, which picks the interpreter (the largest process)
    os.kill(_interpreter_pid(worker.pid), signal.SIGKILL)
    outcome: Any = worker.run_batch([{"n": 2}], deadline_s=5.0)
    assert outcome.status == "crash", outcome
    assert outcome.message.startswith("worker killed by SIGKILL, not by a deadline of the pool"), outcome
