"""dedupe: one forwarded event per key per `within` of event time, independent of batching."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from primitives.batch import from_events, to_events
from primitives.runtime import BuildContext
from primitives.steps.dedupe import DedupeOptions, DedupeRuntime

CTX = BuildContext("logins", 1, "dedupe", "ts")


def make(within: str = "60s", by: list[str] | None = None) -> DedupeRuntime:
    return DedupeRuntime(DedupeOptions.model_validate({"by": by or ["user"], "within": within}), CTX)


def ev(second: int, user: Any = "alice", n: int = 0) -> dict[str, Any]:
    return {
        "ts": f"2024-01-01T{second // 3600:02d}:{second // 60 % 60:02d}:{second % 60:02d}Z",
        "user": user,
        "n": n,
    }


def kept(runtime: DedupeRuntime, events: list[dict[str, Any]], batches: int = 1) -> list[int]:
    size = max(1, -(-len(events) // batches))
    out: list[int] = []
    for i in range(0, len(events), size):
        result = runtime.process(from_events(events[i : i + size]))
        out += [e["n"] for e in to_events(result.events)] if result.events is not None else []
    return out


def test_repeats_within_the_span_are_dropped_and_a_new_span_starts_after_it() -> None:
    events = [ev(0, n=1), ev(30, n=2), ev(59, n=3), ev(60, n=4), ev(61, n=5), ev(125, n=6)]
    assert kept(make(), events) == [1, 4, 6]


def test_a_steady_repeat_is_forwarded_once_per_within_not_suppressed_forever() -> None:
    events = [ev(s, n=s) for s in range(0, 300, 10)]
    assert kept(make(), events) == [0, 60, 120, 180, 240]


def test_keys_compare_by_json_value() -> None:
    events = [
        ev(0, 1, n=1),
        ev(1, "1", n=2),
        ev(2, 1.0, n=3),
        ev(3, True, n=4),
        ev(4, None, n=5),
        ev(5, None, n=6),
    ]
    assert kept(make(), events) == [1, 2, 4, 5]


def test_out_of_order_repeat_close_to_a_forwarded_event_is_dropped() -> None:
    assert kept(make(), [ev(100, n=1), ev(50, n=2), ev(30, n=3)]) == [1, 3]


def test_result_does_not_depend_on_batching() -> None:
    events = [ev((i * 13) % 500, f"u{i % 4}", n=i) for i in range(200)]
    expected = kept(make("45s"), events)
    for batches in (3, 11, 200):
        assert kept(make("45s"), events, batches) == expected


def test_state_is_bounded() -> None:
    runtime = make()
    kept(runtime, [ev(i, f"u{i}") for i in range(100)])
    assert len(runtime.forwarded) == 100
    kept(runtime, [ev(1000, "late-comer")])
    assert len(runtime.forwarded) == 1


def test_events_without_time_go_to_dead_letters_and_empty_batches_pass() -> None:
    runtime = make()
    result = runtime.process(from_events([{"user": "x", "n": 1}, ev(1, n=2)]))
    assert [d.reason for d in result.dead_letters] == ["no_time"] and result.errors == 1
    assert result.dead_letters[0].message.startswith("event has no usable time: 'ts' is missing or null; "
                                                     "dedupe works on event time")
    assert runtime.process(pa.table({})).events is not None


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        DedupeOptions.model_validate({"by": []})
    with pytest.raises(ValidationError, match="positive duration"):
        DedupeOptions.model_validate({"by": ["a"], "within": "0s"})
    assert DedupeOptions.model_validate({"by": ["a"]}).within.total_seconds() == 600
