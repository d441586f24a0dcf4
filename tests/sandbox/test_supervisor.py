"""Poison events are isolated by bisection; every other event of the batch still succeeds.

These snippets are ordinary agent code that passes the static policy: the harm they do (loops,
catastrophic backtracking, huge allocations) is only stoppable at run time, by the deadline kill
and the rlimits, and the supervisor must pin it on the one event that caused it.
"""

from __future__ import annotations

import time

import pytest

from sandbox.isolation import Launcher
from sandbox.limits import Limits
from sandbox.pool import SandboxPool
from sandbox.supervisor import Supervisor
from sandbox.worker import WorkerProcess

LOOP_ON_POISON = """
def transform(event):
    if event["n"] == POISON:
        while True:
            pass
    event["seen"] = True
    return event
"""


def test_one_infinite_loop_in_1000_events_fails_alone_in_bounded_time(pool: SandboxPool) -> None:
    events = [{"n": i} for i in range(1000)]
    started = time.perf_counter()
    result = pool.run("t1", "transform", LOOP_ON_POISON.replace("POISON", "617"), events)
    elapsed = time.perf_counter() - started
    assert elapsed < 20, f"bisection took {elapsed:.1f} s"
    assert [(e.index, e.reason) for e in result.errors] == [(617, "timeout")]
    assert result.values[617] is None
    ok = [v for v in result.values if v is not None]
    assert len(ok) == 999
    assert all(v == [{"n": v[0]["n"], "seen": True}] for v in ok)
    assert result.stats.kills >= 10  # log2(1000) levels, each killing one stuck worker


def test_c_level_computation_is_killed_by_the_deadline(pool: SandboxPool) -> None:
    """A huge bignum power runs inside one C call: only killing the process stops it."""
    source = (
        "def transform(event):\n    if event['n'] == 1:\n        return {'s': 7 ** (10**8) > 0}\n"
        "    return event\n"
    )
    result = pool.run("t1", "transform", source, [{"n": 0}, {"n": 1}, {"n": 2}])
    assert [(e.index, e.reason) for e in result.errors] == [(1, "timeout")]
    assert result.values[0] == [{"n": 0}] and result.values[2] == [{"n": 2}]


def test_c_level_sum_over_huge_range_is_killed_without_the_runtime_guards(raw_pool: SandboxPool) -> None:
    """The runtime refuses range(10**12); with the runtime bypassed, the deadline kill still holds."""
    source = "def transform(event):\n    return {'s': sum(range(10**12))}\n"
    result = raw_pool.run("t1", "transform", source, [{"n": 0}])
    assert [(e.index, e.reason) for e in result.errors] == [(0, "timeout")]


def test_catastrophic_regex_backtracking_times_out_only_its_event(pool: SandboxPool) -> None:
    source = "import re\n\ndef keep(event):\n    return re.match(r'(a+)+$', event['s']) is not None\n"
    events = [{"s": "aaa"}, {"s": "a" * 40 + "b"}, {"s": "b"}]
    result = pool.run("t1", "keep", source, events)
    assert [(e.index, e.reason) for e in result.errors] == [(1, "timeout")]
    assert result.values[0] is True and result.values[2] is False


def test_busy_wait_instead_of_sleep_times_out(pool: SandboxPool) -> None:
    source = "def transform(event):\n    n = 0\n    while n >= 0:\n        n = n + 1\n    return event\n"
    result = pool.run("t1", "transform", source, [{"n": 1}])
    assert [(e.index, e.reason) for e in result.errors] == [(0, "timeout")]


@pytest.mark.parametrize("expr", ["'x' * 10**10", "[0] * 10**10"])
def test_memory_bomb_fails_its_event_with_reason_memory(pool: SandboxPool, expr: str) -> None:
    source = (
        f"def transform(event):\n    if event['n'] == 1:\n        event['big'] = {expr}\n    return event\n"
    )
    result = pool.run("t1", "transform", source, [{"n": 0}, {"n": 1}, {"n": 2}])
    assert [(e.index, e.reason) for e in result.errors] == [(1, "memory")]
    assert result.values[0] == [{"n": 0}] and result.values[2] == [{"n": 2}]


def test_list_growth_until_exhaustion_fails_with_reason_memory(pool: SandboxPool) -> None:
    source = (
        "def transform(event):\n    items = []\n    while True:\n        items.append('y' * 1000000)\n"
        "    return event\n"
    )
    result = pool.run("t1", "transform", source, [{"n": 0}])
    assert [(e.index, e.reason) for e in result.errors] == [(0, "memory")]
    after = pool.run("t1", "transform", "def transform(event):\n    return event\n", [{"n": 5}])
    assert after.values == [[{"n": 5}]]


def test_deep_recursion_is_an_ordinary_error_with_a_line(pool: SandboxPool) -> None:
    source = (
        "def transform(event):\n    return deeper(event, 0)\n\n"
        "def deeper(event, n):\n    return deeper(event, n + 1)\n"
    )
    result = pool.run("t1", "transform", source, [{"n": 0}])
    assert len(result.errors) == 1
    error = result.errors[0]
    assert (error.reason, error.error_type) == ("error", "RecursionError")
    assert error.line == 5


def test_every_event_hanging_is_bounded_by_the_bisection_budget(small_limits: Limits, spec: Launcher) -> None:
    limits = Limits(
        memory_bytes=small_limits.memory_bytes,
        batch_deadline_base_s=0.5,
        event_deadline_s=0.2,
        batch_deadline_per_event_s=0.001,
        bisect_budget_s=3.0,
    )
    source = "def transform(event):\n    while True:\n        pass\n"
    with SandboxPool(limits, _launcher=spec) as pool:
        started = time.perf_counter()
        result = pool.run("t1", "transform", source, [{"n": i} for i in range(64)])
        elapsed = time.perf_counter() - started
    assert elapsed < 3.0 + 0.5 + 0.3 * 2 + 3, f"took {elapsed:.1f} s"
    assert len(result.errors) == 64 and {e.reason for e in result.errors} == {"timeout"}
    assert any("not isolated" in e.message for e in result.errors)


def test_supervisor_returns_workers_only_after_clean_batches(small_limits: Limits, spec: Launcher) -> None:
    released: list[bool] = []
    workers: list[WorkerProcess] = []

    def acquire() -> WorkerProcess:
        worker = WorkerProcess(
            "transform", LOOP_ON_POISON.replace("POISON", "2"), uid=None, limits=small_limits, spec=spec
        )
        workers.append(worker)
        return worker

    def release(worker: WorkerProcess, healthy: bool) -> None:
        released.append(healthy)
        worker.close()

    run = Supervisor(small_limits, acquire, release).run([{"n": i} for i in range(4)])
    assert [(e.index, e.reason) for e in run.errors] == [(2, "timeout")]
    # [0..4) fails, [0..2) ok, [2..4) fails, [2] fails, [3] ok
    assert released == [False, True, False, False, True]
    assert all(not w.alive for w in workers)
