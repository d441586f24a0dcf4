"""aggregate: rows per window x key at close, late/no_time dead letters, batching-independent output."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from primitives.batch import from_events, to_events
from primitives.runtime import BuildContext, StepResult
from primitives.steps.aggregate import AggregateOptions, AggregateRuntime

CTX = BuildContext("web-stats", 1, "agg", "ts")


def make(**options: Any) -> AggregateRuntime:
    defaults: dict[str, Any] = {
        "window": "60s",
        "by": ["host"],
        "measures": {"n": "count(*)"},
        "lateness": "0s",
    }
    return AggregateRuntime(AggregateOptions.model_validate({**defaults, **options}), CTX)


def ev(second: int, host: Any = "a", **fields: Any) -> dict[str, Any]:
    return {"ts": f"2024-01-01T00:{second // 60:02d}:{second % 60:02d}Z", "host": host, **fields}


def rows(result: StepResult) -> list[dict[str, Any]]:
    return [] if result.events is None else to_events(result.events)


def run(
    runtime: AggregateRuntime, events: list[dict[str, Any]], batches: int = 1
) -> tuple[list[dict[str, Any]], list[StepResult]]:
    size = max(1, -(-len(events) // batches))
    results = [runtime.process(from_events(events[i : i + size])) for i in range(0, len(events), size)]
    results.append(runtime.finish())
    return [row for result in results for row in rows(result)], results


def test_tumbling_rows_per_window_and_key_with_iso_bounds() -> None:
    out, _ = run(
        make(measures={"n": "count(*)", "bytes": "sum(bytes)"}),
        [ev(1, "b", bytes=5), ev(2, "a", bytes=1), ev(59, "a", bytes=2), ev(61, "a", bytes=4)],
    )
    assert out == [
        {
            "window_start": "2024-01-01T00:00:00Z",
            "window_end": "2024-01-01T00:01:00Z",
            "host": "a",
            "n": 2,
            "bytes": 3,
        },
        {
            "window_start": "2024-01-01T00:00:00Z",
            "window_end": "2024-01-01T00:01:00Z",
            "host": "b",
            "n": 1,
            "bytes": 5,
        },
        {
            "window_start": "2024-01-01T00:01:00Z",
            "window_end": "2024-01-01T00:02:00Z",
            "host": "a",
            "n": 1,
            "bytes": 4,
        },
    ]


def test_sum_of_integers_comes_back_as_int64_not_decimal() -> None:
    out, results = run(make(measures={"bytes": "sum(bytes)"}), [ev(1, bytes=2**40), ev(2, bytes=1)])
    assert out[0]["bytes"] == 2**40 + 1
    assert results[-1].events is not None and results[-1].events.schema.field("bytes").type == pa.int64()


def test_window_emits_when_the_watermark_passes_its_end_not_before() -> None:
    runtime = make(lateness="10s")
    assert rows(runtime.process(from_events([ev(5), ev(69)]))) == []  # watermark 59 < 60
    emitted = rows(runtime.process(from_events([ev(70)])))  # watermark 60 >= end 60
    assert [(r["window_start"], r["n"]) for r in emitted] == [("2024-01-01T00:00:00Z", 1)]


def test_out_of_order_within_lateness_counts_and_later_is_a_late_dead_letter() -> None:
    runtime = make(lateness="10s")
    result = runtime.process(from_events([ev(5), ev(65), ev(58), ev(75), ev(30)]))
    assert [(r["window_start"][11:19], r["n"]) for r in rows(result)] == [("00:00:00", 2)]
    assert [(d.reason, (d.event or {}).get("ts")) for d in result.dead_letters] == [
        ("late", "2024-01-01T00:00:30Z")
    ]
    assert runtime.late == 1 and result.errors == 0
    # how far behind, and behind what: the newest time before it (75 s), not the watermark (65 s)
    assert result.dead_letters[0].message == (
        "event is late: its time 2024-01-01T00:00:30Z is 45s behind the newest event time before it "
        "(2024-01-01T00:01:15Z), so its window(s) had closed (lateness 10s); raise `lateness` to wait "
        "longer for events out of order")


def test_a_late_session_event_says_how_far_behind_it_came() -> None:
    runtime = make(window={"gap": "30s"}, lateness="5s")
    runtime.process(from_events([ev(0), ev(100)]))  # the session [0, 30) closed at watermark 95
    result = runtime.process(from_events([ev(10), ev(101)]))
    assert [d.reason for d in result.dead_letters] == ["late"]
    assert result.dead_letters[0].message.startswith(
        "event is late: its time 2024-01-01T00:00:10Z is 1m30s behind the newest event time before it "
        "(2024-01-01T00:01:40Z)")


def test_events_without_time_are_no_time_dead_letters_and_errors() -> None:
    result = make().process(from_events([{"host": "a"}, {"host": "b", "ts": "not a time"}, ev(3)]))
    assert [d.reason for d in result.dead_letters] == ["no_time", "no_time"]
    assert "'ts'" in result.dead_letters[0].message and result.errors == 2


def test_a_no_time_dead_letter_says_what_the_field_holds_and_what_to_write() -> None:
    # BGL's epoch column, cut out by a regex, is text: never read as time (20240612 is a date
    # too), and the message says so with the cast that fixes it
    events = [{"host": "a"}, {"ts": None}, {"ts": "1117838570"}, {"ts": "1.5e3"}, {"ts": " 17.25 "},
              {"ts": "Jun 14 15:16:01"}, {"ts": True}, {"ts": {"s": 1}}, {"ts": [1]}, {"ts": 1e300}]
    messages = [d.message for d in make().process(from_events(events)).dead_letters]
    reasons = [m.removeprefix("event has no usable time: ").split(" (a time is")[0] for m in messages]
    assert reasons == [
        "'ts' is missing or null",  # a batch holds no 'missing': the first event's ts reads as null
        "'ts' is missing or null",
        "'ts' is the text '1117838570': epoch time must be a JSON number, not text; convert it first, "
        'e.g. transform: {set: {ts: "CAST(ts AS BIGINT)"}}',
        "'ts' is '1.5e3', which is not ISO 8601 (e.g. 2024-12-10T06:55:46Z)",
        "'ts' is the text ' 17.25 ': epoch time must be a JSON number, not text; convert it first, "
        'e.g. transform: {set: {ts: "CAST(ts AS DOUBLE)"}}',
        "'ts' is 'Jun 14 15:16:01', which is not ISO 8601 (e.g. 2024-12-10T06:55:46Z)",
        "'ts' is a boolean, not a time",
        "'ts' holds a JSON object, not a time",
        "'ts' holds a JSON list, not a time",
        "'ts' is 1e+300, which as epoch time is outside the years 1 to 9999",
    ]
    assert all(m.endswith("(a time is ISO 8601 text, an epoch number or a timestamp)") for m in messages)


def test_sliding_windows_overlap() -> None:
    out, _ = run(make(window={"size": "60s", "every": "30s"}, by=[]), [ev(5), ev(35), ev(65)])
    assert [(r["window_start"][11:19], r["window_end"][11:19], r["n"]) for r in out] == [
        ("23:59:30", "00:00:30", 1),
        ("00:00:00", "00:01:00", 2),
        ("00:00:30", "00:01:30", 2),
        ("00:01:00", "00:02:00", 1),
    ]


def test_session_windows_per_key_merge_when_bridged() -> None:
    events = [ev(0, "a"), ev(50, "a"), ev(10, "b"), ev(25, "a"), ev(200, "a")]
    out, _ = run(make(window={"gap": "30s"}, lateness="60s", measures={"n": "count(*)"}), events)
    assert [(r["host"], r["window_start"][11:19], r["window_end"][11:19], r["n"]) for r in out] == [
        ("b", "00:00:10", "00:00:40", 1),
        ("a", "00:00:00", "00:01:20", 3),
        ("a", "00:03:20", "00:03:50", 1),
    ]


@pytest.mark.parametrize("window", ["60s", {"size": "60s", "every": "20s"}, {"gap": "45s"}])
def test_output_does_not_depend_on_batching(window: Any) -> None:
    events = [ev((i * 37) % 400 + (i // 7), f"h{i % 3}", v=i) for i in range(120)]  # shuffled-ish
    opts = {"window": window, "lateness": "30s", "measures": {"n": "count(*)", "v": "sum(v)"}}
    expected, first = run(make(**opts), events)
    assert expected and sum(len(r.dead_letters) for r in first) > 0  # some events really are late
    for batches in (2, 5, 17, 120):
        got, results = run(make(**opts), events, batches)
        assert got == expected, batches
        assert sum(len(r.dead_letters) for r in results) == sum(len(r.dead_letters) for r in first)


def test_empty_batches_flow_through() -> None:
    runtime = make()
    assert rows(runtime.process(pa.table({}))) == []
    runtime.process(from_events([ev(1)]))
    assert rows(runtime.process(from_events([]))) == []
    assert [r["n"] for r in rows(runtime.finish())] == [1]


def test_missing_by_field_groups_under_null_and_missing_measure_field_is_null() -> None:
    out, _ = run(make(measures={"n": "count(*)", "b": "sum(bytes)"}), [{"ts": "2024-01-01T00:00:01Z"}])
    assert out == [
        {
            "window_start": "2024-01-01T00:00:00Z",
            "window_end": "2024-01-01T00:01:00Z",
            "host": None,
            "n": 1,
            "b": None,
        }
    ]


def test_by_field_changing_type_between_batches_keeps_values_apart() -> None:
    runtime = make()
    runtime.process(from_events([ev(1, 1), ev(2, "x")]))
    runtime.process(from_events([ev(3, "1"), ev(4, 1)]))
    out = rows(runtime.finish())
    assert sorted((str(type(r["host"])), r["n"]) for r in out) == sorted(
        [(str(int), 2), (str(str), 1), (str(str), 1)]
    )
    assert {r["host"] for r in out} == {1, "1", "x"}


def test_only_needed_columns_are_buffered() -> None:
    runtime = make(measures={"total": "sum(bytes) FILTER (WHERE status >= 500)"})
    runtime.process(from_events([ev(1, bytes=3, status=500, noise="x" * 100)]))
    (part,) = runtime.buffer
    assert set(part.column_names) == {"host", "bytes", "status", "__lb_start"}


def test_a_measure_failing_on_the_data_becomes_a_dead_letter_not_a_crash() -> None:
    runtime = make(measures={"s": "sum(word)"})
    runtime.process(from_events([ev(1, word="abc")]))
    result = runtime.finish()
    assert result.events is None and [d.reason for d in result.dead_letters] == ["error"]
    assert result.errors == 1


def test_options_are_checked() -> None:
    with pytest.raises(ValidationError, match="whole multiple"):
        AggregateOptions.model_validate(
            {"window": {"size": "60s", "every": "7s"}, "measures": {"n": "count(*)"}}
        )
    with pytest.raises(ValidationError, match="measure name 'window_end'"):
        AggregateOptions.model_validate({"window": "60s", "measures": {"window_end": "count(*)"}})
    with pytest.raises(ValidationError, match="both a by field and a measure"):
        AggregateOptions.model_validate({"window": "60s", "by": ["n"], "measures": {"n": "count(*)"}})
    with pytest.raises(ValidationError, match="measures"):
        AggregateOptions.model_validate({"window": "60s", "measures": {}})
    assert (
        AggregateOptions.model_validate({"window": "1m", "measures": {"n": "count(*)"}}).lateness.seconds
        == 10
    )


def test_json_tagged_key_column_next_to_plain_text_in_another_batch_is_not_misread() -> None:
    runtime = make(lateness="1h")
    runtime.process(from_events([ev(1, 1), ev(2, "7")]))  # mixed: the key column is JSON text
    runtime.process(from_events([ev(3, "7"), ev(4, "8")]))  # plain text: "7" must stay a string
    out = rows(runtime.finish())
    assert sorted((repr(r["host"]), r["n"]) for r in out) == [("'7'", 2), ("'8'", 1), ("1", 1)]


def test_one_event_a_measure_fails_on_costs_only_that_event() -> None:
    """`"bytes": "x"` in one event used to fail the whole GROUP BY: every window and key closing
    with it lost its row, and the alerts derived from those rows. A hostile sender could hide a
    burst that way. Now that event alone goes to the dead letters."""
    runtime = make(measures={"n": "count(*)", "total": "sum(bytes)"})
    events = [ev(1, "a", bytes=10), ev(2, "b", bytes=5), ev(3, "a", bytes="x"), ev(4, "a", bytes=1),
              ev(61, "a", bytes=2)]
    out, results = run(runtime, events)
    assert [(r["window_start"][-9:], r["host"], r["n"], r["total"]) for r in out] == [
        ("00:00:00Z", "a", 2, 11), ("00:00:00Z", "b", 1, 5), ("00:01:00Z", "a", 1, 2)]
    dead = [d for result in results for d in result.dead_letters]
    assert [(d.reason, d.event) for d in dead] == [("error", {"host": "a", "bytes": "x"})]
    assert "aggregate measure fails on this event" in dead[0].message
    assert sum(result.errors for result in results) == 1
