"""The pool: warm workers per (tenant, code), never shared, recycled, quarantined, thread-safe."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pyarrow as pa
import pytest

from primitives.runtime import CodeError
from sandbox.isolation import Launcher, tenant_uid
from sandbox.limits import Limits
from sandbox.pool import QuarantinedError, SandboxLoadError, SandboxPool

IDENTITY = "def transform(event):\n    return event\n"
# Mutable default: state that survives from one call to the next inside one worker.
COUNTER = "def transform(event, seen=[]):\n    seen.append(1)\n    return {'calls': len(seen)}\n"
HANG = "def transform(event):\n    while True:\n        pass\n"


def calls(values: list[Any]) -> list[int]:
    return [v[0]["calls"] for v in values]


def test_warm_worker_is_reused_for_the_same_tenant_and_code(pool: SandboxPool) -> None:
    first = pool.run("acme", "transform", IDENTITY, [{"a": 1}])
    second = pool.run("acme", "transform", IDENTITY, [{"a": 2}])
    assert first.values == [[{"a": 1}]] and second.values == [[{"a": 2}]]
    assert (first.stats.worker_starts, second.stats.worker_starts) == (1, 0)


def test_a_worker_is_never_shared_between_tenants(pool: SandboxPool) -> None:
    a1 = pool.run("acme", "transform", COUNTER, [{}, {}])
    b = pool.run("globex", "transform", COUNTER, [{}])
    a2 = pool.run("acme", "transform", COUNTER, [{}])
    assert calls(a1.values) == [1, 2]
    assert calls(b.values) == [1], "tenant globex saw tenant acme's worker state"
    assert b.stats.worker_starts == 1
    assert calls(a2.values) == [3]
    assert tenant_uid("acme") != tenant_uid("globex")


def test_workers_are_recycled_after_max_batches(small_limits: Limits, spec: Launcher) -> None:
    limits = Limits(memory_bytes=small_limits.memory_bytes, max_batches_per_worker=2)
    with SandboxPool(limits, _launcher=spec) as pool:
        runs = [pool.run("acme", "transform", COUNTER, [{}]) for _ in range(3)]
    assert [calls(r.values) for r in runs] == [[1], [2], [1]]
    assert [r.stats.worker_starts for r in runs] == [1, 0, 1]


def test_worker_is_replaced_after_a_kill(pool: SandboxPool) -> None:
    source = (
        "def transform(event, seen=[]):\n    seen.append(1)\n    while event['n'] == 1:\n        pass\n"
        "    return {'calls': len(seen)}\n"
    )
    pool.run("acme", "transform", source, [{"n": 0}])
    result = pool.run("acme", "transform", source, [{"n": 1}])
    assert result.errors[0].reason == "timeout"
    after = pool.run("acme", "transform", source, [{"n": 0}])
    assert calls(after.values) == [1] and after.stats.worker_starts == 1


def test_code_is_quarantined_after_repeated_kills(pool: SandboxPool) -> None:
    for _ in range(pool.limits.max_kills_before_quarantine):
        result = pool.run("acme", "transform", HANG, [{"n": 1}])
        assert result.errors[0].reason == "timeout"
    assert pool.quarantined("acme", "transform", HANG)
    with pytest.raises(QuarantinedError, match="quarantined"):
        pool.run("acme", "transform", HANG, [{"n": 1}])
    # Only that tenant's copy of that code: another tenant and other code still run.
    assert not pool.quarantined("globex", "transform", HANG)
    assert pool.run("acme", "transform", IDENTITY, [{"n": 2}]).values == [[{"n": 2}]]


def test_load_error_names_the_line(pool: SandboxPool) -> None:
    with pytest.raises(SandboxLoadError) as info:
        pool.run("acme", "transform", "def transform(event)\n    return event\n", [{"a": 1}])
    assert info.value.line == 1 and "syntax" in info.value.message
    with pytest.raises(SandboxLoadError):  # cached: no second worker for known-bad code
        pool.run("acme", "transform", "def transform(event)\n    return event\n", [{"a": 1}])


def test_large_inputs_are_split_into_max_size_batches(small_limits: Limits, spec: Launcher) -> None:
    limits = Limits(memory_bytes=small_limits.memory_bytes, max_events_per_batch=100)
    source = (
        "def transform(event):\n    if event['n'] % 97 == 0:\n        raise ValueError('bad')\n"
        "    return event\n"
    )
    with SandboxPool(limits, _launcher=spec) as pool:
        result = pool.run("acme", "transform", source, [{"n": i} for i in range(350)])
    assert result.stats.batches == 4
    assert [v[0]["n"] for v in result.values if v is not None] == [i for i in range(350) if i % 97]
    assert [e.index for e in result.errors] == [0, 97, 194, 291]
    assert all(
        isinstance(e, CodeError) and e.line == 3 and e.error_type == "ValueError" for e in result.errors
    )


def test_concurrent_callers_get_correct_results(pool: SandboxPool) -> None:
    source = "def transform(event):\n    return {'n': event['n'] * 2}\n"
    results: dict[int, list[Any]] = {}

    def work(tid: int) -> None:
        events = [{"n": tid * 1000 + i} for i in range(200)]
        results[tid] = pool.run(f"tenant{tid % 2}", "transform", source, events).values

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == list(range(6))
    for tid, values in results.items():
        assert values == [[{"n": 2 * (tid * 1000 + i)}] for i in range(200)]


def test_arrow_rows_with_timestamps_reach_the_snippet_as_iso_strings(pool: SandboxPool) -> None:
    table = pa.table({"ts": [dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)], "n": [1]})
    result = pool.run(
        "acme", "transform", "def transform(event):\n    return {'ts': event['ts']}\n", table.to_pylist()
    )
    assert result.values == [[{"ts": "2024-05-01T12:00:00+00:00"}]]


def test_prints_come_back_as_logs(pool: SandboxPool) -> None:
    source = "def transform(event):\n    print('saw', event['n'])\n    return event\n"
    result = pool.run("acme", "transform", source, [{"n": 1}, {"n": 2}])
    assert result.logs == ["event 0: saw 1", "event 1: saw 2"]


def test_closed_pool_refuses_work(small_limits: Limits, spec: Launcher) -> None:
    pool = SandboxPool(small_limits, _launcher=spec)
    pool.run("acme", "transform", IDENTITY, [{"a": 1}])
    pool.close()
    with pytest.raises(RuntimeError, match="closed"):
        pool.run("acme", "transform", IDENTITY, [{"a": 1}])


def test_bad_arguments_are_rejected(pool: SandboxPool) -> None:
    with pytest.raises(ValueError, match="unknown code kind"):
        pool.run("acme", "map", IDENTITY, [])
    with pytest.raises(ValueError, match="tenant"):
        pool.run("", "transform", IDENTITY, [])
