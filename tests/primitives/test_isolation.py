"""Isolating the events an aggregate's measures fail on: exact, and in a few queries.

A window whose GROUP BY fails sends only the events it fails on to the dead letters. The search
for them used to halve rows until each failing event stood alone: 2,000 events with
`"bytes": "x"` in one window cost 29 s of the executor's time (bench/bench_isolation.py), which
anyone with an ingest token could send. These tests count the queries (a number, not a time) and check the
result against that halving search, kept as the step's fallback, given all the queries it wants.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pytest

from primitives.batch import from_events, to_events
from primitives.isolation import MAX_SEARCH_QUERIES, QueryBudget, kind_classes
from primitives.runtime import BuildContext, DeadLetter
from primitives.sqlcheck import aggregate_inputs
from primitives.steps.aggregate import AggregateOptions, AggregateRuntime

CTX = BuildContext("isolation", 1, "agg", "ts")


def make(measures: dict[str, str], by: list[str] | None = None) -> AggregateRuntime:
    options = {"window": "60s", "by": ["host"] if by is None else by, "measures": measures, "lateness": "0s"}
    return AggregateRuntime(AggregateOptions.model_validate(options), CTX)


def counted(runtime: AggregateRuntime) -> list[str]:
    """The SQL texts the runtime's queries run, appended as they run."""
    seen: list[str] = []
    query: Callable[[pa.Table, str], pa.Table] = runtime.sql.query

    def counting(table: pa.Table, sql: str) -> pa.Table:
        seen.append(sql)
        return query(table, sql)

    runtime.sql.query = counting  # type: ignore[method-assign]
    return seen


Rows = list[dict[str, Any]]


def close(runtime: AggregateRuntime, events: Rows) -> tuple[Rows, list[DeadLetter]]:
    first = runtime.process(from_events(events))
    last = runtime.finish()
    out = [row for result in (first, last) if result.events is not None for row in to_events(result.events)]
    return out, first.dead_letters + last.dead_letters


def ev(i: int, **fields: Any) -> dict[str, Any]:
    return {"ts": f"2024-01-01T00:00:{i % 60:02d}Z", **fields}


def test_a_flood_of_wrongly_typed_values_costs_a_few_queries() -> None:
    events = [ev(i, host=f"h{i % 20}", bytes="x" if i % 11 == 0 else i) for i in range(22_000)]
    runtime = make({"n": "count(*)", "total": "sum(bytes)"})
    queries = counted(runtime)
    out, dead = close(runtime, events)
    bad = [e for e in events if e["bytes"] == "x"]
    # the step buffers only the fields it needs: a dead letter holds those
    assert [d.event for d in dead] == [{"host": e["host"], "bytes": "x"} for e in bad]
    assert {d.reason for d in dead} == {"error"} and all("sum(VARCHAR)" in d.message for d in dead)
    good = [e for e in events if e["bytes"] != "x"]
    expected = {f"h{h}": (sum(1 for e in good if e["host"] == f"h{h}"),
                          sum(e["bytes"] for e in good if e["host"] == f"h{h}")) for h in range(20)}
    assert {r["host"]: (r["n"], r["total"]) for r in out} == expected
    assert len(queries) <= 6, queries  # the whole close, the int class, the text class, the rest


def test_a_flood_of_values_a_cast_fails_on_costs_a_few_queries() -> None:
    """Parsed web logs hold "-" for the bytes of a 304: CAST("-" AS BIGINT) fails on each one."""
    events = [ev(i, host=f"h{i % 5}", size="-" if i % 3 == 0 else str(i)) for i in range(6_000)]
    runtime = make({"n": "count(*)", "bytes": "sum(CAST(size AS BIGINT))",
                    "big": "count(*) FILTER (WHERE CAST(size AS BIGINT) > 100)"})
    queries = counted(runtime)
    out, dead = close(runtime, events)
    assert [d.event["size"] for d in dead if d.event] == ["-"] * 2_000
    assert "Could not convert string '-' to INT64" in dead[0].message
    assert all("CAST(size AS BIGINT) fails on its value" in d.message for d in dead[1:])
    good = [e for e in events if e["size"] != "-"]
    assert sorted((r["host"], r["n"], r["bytes"], r["big"]) for r in out) == sorted(
        (f"h{h}", len(mine), sum(int(e["size"]) for e in mine), sum(int(e["size"]) > 100 for e in mine))
        for h in range(5) for mine in [[e for e in good if e["host"] == f"h{h}"]])
    assert len(queries) <= 6, queries


def test_windows_that_fail_only_as_a_whole_are_found_by_halving_within_the_budget() -> None:
    """A cast of a sum fails on no event alone, only on a window and key whose sum is too large:
    those lose their row, the others keep theirs."""
    events = [ev(i, host=f"h{i % 40}", n=100 if (i % 40) % 8 == 0 else 1) for i in range(400)]
    runtime = make({"small": "CAST(sum(n) AS TINYINT)"})
    queries = counted(runtime)
    out, dead = close(runtime, events)
    failing_hosts = {f"h{h}" for h in range(40) if h % 8 == 0}
    assert sorted(r["host"] for r in out) == sorted(f"h{h}" for h in range(40) if h % 8)
    assert all(r["small"] == 10 for r in out)
    assert {d.event["host"] for d in dead if d.event} == failing_hosts and len(dead) == 50
    assert "Overflow" in dead[0].message or "out of range" in dead[0].message.lower()
    assert len(queries) <= MAX_SEARCH_QUERIES + 8


def test_past_the_budget_what_is_left_fails_together_and_says_so() -> None:
    events = [ev(i, host=f"h{i}", n=100) for i in range(2 * MAX_SEARCH_QUERIES)]  # every key overflows
    runtime = make({"small": "CAST(sum(n) * 2 AS TINYINT)"})
    queries = counted(runtime)
    out, dead = close(runtime, events)
    assert out == [] and len(dead) == len(events)
    assert any(f"stopped after {MAX_SEARCH_QUERIES} queries" in d.message for d in dead)
    assert len(queries) <= MAX_SEARCH_QUERIES + 8


def test_kind_classes_group_rows_whose_values_type_alike() -> None:
    table = from_events([{"b": 1}, {"b": "x"}, {"b": 2}, {"b": None}, {"b": 1.5}, {"b": 2**70},
                         {"b": {"k": 1}}, {"b": True}, {"b": "y"}, {"b": {"k": 2}}, {"b": {"j": 1}}])
    assert kind_classes(table, ["b"]) == [[0, 2], [1, 8], [3], [4], [5], [6, 9], [7], [10]]
    plain = from_events([{"b": 1}, {"b": 2}])
    assert kind_classes(plain, ["b", "missing"]) == [[0, 1]]


def test_aggregate_inputs_are_what_each_aggregate_call_evaluates_per_event() -> None:
    assert aggregate_inputs("count(*)") == ()
    assert aggregate_inputs("sum(CAST(v AS BIGINT)) / count(*)") == ("CAST(v AS BIGINT)",)
    assert aggregate_inputs("count(*) FILTER (WHERE status >= 500)") == ("(status >= 500)",)
    assert aggregate_inputs("string_agg(lower(u), ',' ORDER BY ts)") == ("lower(u)", "','", "ts")
    assert aggregate_inputs("sum(b) + max(b)") == ("b",)
    assert aggregate_inputs("sum(getenv('HOME'))") == ()  # not a valid measure: nothing to evaluate


# -- against the halving search --------------------------------------------------------------------

VALUES: list[Any] = [0, 1, 7, 250, -3, 1.5, 2.0, "5", "12", "x", "-", "", None, True, False, {"k": 1}, [1]]
MEASURES = [
    {"total": "sum(b)"},
    {"n": "count(*)", "total": "sum(CAST(b AS BIGINT))"},
    {"top": "max(CAST(b AS DOUBLE))", "big": "count(*) FILTER (WHERE CAST(b AS INT) > 3)"},
    {"mean": "avg(b)", "seen": "count(b)"},
    {"low": "min(length(b))"},
]


def halving(runtime: AggregateRuntime) -> None:
    """The runtime with the search this module replaced: each window and key alone, halving rows."""
    def by_halving(closed: pa.Table, extra: list[str]) -> Any:
        from primitives.runtime import StepResult

        failing: dict[int, str] = {}
        events = runtime._by_group(closed, list(range(closed.num_rows)), extra, failing, QueryBudget(10**9))
        dead = runtime._letters(closed, failing)
        return StepResult(events=events, dead_letters=dead, errors=len(dead))

    runtime._isolate = by_halving  # type: ignore[method-assign]


def canonical_rows(out: list[dict[str, Any]]) -> list[str]:
    return sorted(repr(sorted((k, float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v)
                              for k, v in row.items())) for row in out)


@pytest.mark.parametrize("seed", range(60))
def test_same_events_fail_as_with_the_halving_search(seed: int) -> None:
    rng = random.Random(seed)
    measures = MEASURES[seed % len(MEASURES)]
    pool = rng.sample(VALUES, rng.randint(2, 6))
    count = rng.randint(1, 60)
    events = [ev(rng.randrange(60), host=rng.choice("ab"), b=rng.choice(pool)) for _ in range(count)]
    for event in events:
        if rng.random() < 0.1:
            del event["b"]
    fast, slow = make(measures), make(measures)
    halving(slow)
    out_fast, dead_fast = close(fast, events)
    out_slow, dead_slow = close(slow, events)
    assert canonical_rows(out_fast) == canonical_rows(out_slow)
    assert sorted(repr(d.event) for d in dead_fast) == sorted(repr(d.event) for d in dead_slow)
