"""Event time parsing and window assignment: tumbling, sliding, session; watermark and lateness."""

from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest
from pydantic import TypeAdapter, ValidationError

from primitives.eventtime import event_micros, event_times, format_time, micros_of
from primitives.windows import FixedWindows, SessionWindows, SlidingWindow, WindowSpec, group_key

S = 1_000_000
T0 = int(datetime(2024, 12, 10, 6, 55, 46, tzinfo=UTC).timestamp()) * S


def micros_list(values: list[object], type_: pa.DataType | None = None) -> list[int | None]:
    got: list[int | None] = event_micros(pa.table({"t": pa.array(values, type_)}), "t").to_pylist()
    return got


def test_iso_strings_with_and_without_zone_read_as_utc() -> None:
    got = micros_list(["2024-12-10T06:55:46Z", "2024-12-10 06:55:46", "2024-12-10T08:55:46+02:00"])
    assert got == [T0, T0, T0]


def test_mixed_and_invalid_strings_become_null_per_value() -> None:
    got = micros_list(["2024-12-10T06:55:46.5Z", "yesterday", None, "2024-12-10", ""])
    assert got == [T0 + S // 2, None, None, T0 - (6 * 3600 + 55 * 60 + 46) * S, None]


def test_epoch_numbers_are_read_as_seconds_or_milliseconds_by_magnitude() -> None:
    seconds = T0 // S
    assert micros_list([seconds, seconds * 1000, seconds * 1_000_000]) == [T0, T0, T0]
    assert micros_list([seconds + 0.25]) == [T0 + S // 4]
    assert micros_list([float("nan")], pa.float64()) == [None]


def test_arrow_timestamps_naive_are_utc_and_zoned_are_converted() -> None:
    naive = datetime(2024, 12, 10, 6, 55, 46)
    assert micros_list([naive], pa.timestamp("s")) == [T0]
    zoned = pa.array([T0], pa.timestamp("us", tz="Europe/Berlin"))
    assert event_times(pa.table({"t": zoned}), "t").cast(pa.int64()).to_pylist() == [T0]


def test_missing_field_bool_and_nested_values_have_no_time() -> None:
    assert event_micros(pa.table({"x": [1]}), "t").to_pylist() == [None]
    assert micros_list([True]) == [None]
    assert micros_list([{"a": 1}]) == [None]
    assert micros_of(True) is None and micros_of("2024-12-10T06:55:46Z") == T0


def test_json_tagged_column_of_mixed_types_is_decoded_value_by_value() -> None:
    field = pa.field("t", pa.string(), metadata={b"logbus.json": b"1"})
    table = pa.table([pa.array(['"2024-12-10T06:55:46Z"', str(T0 // S), "true"])], schema=pa.schema([field]))
    assert event_micros(table, "t").to_pylist() == [T0, T0, None]


def test_format_time_uses_as_few_fraction_digits_as_needed() -> None:
    assert format_time(T0) == "2024-12-10T06:55:46Z"
    assert format_time(T0 + 250_000) == "2024-12-10T06:55:46.250Z"
    assert format_time(T0 + 125) == "2024-12-10T06:55:46.000125Z"
    assert format_time(-S) == "1969-12-31T23:59:59Z"


def test_sliding_window_size_must_be_a_multiple_of_every() -> None:
    with pytest.raises(ValidationError, match="size 1m must be a whole multiple of every 7s"):
        SlidingWindow.model_validate({"size": "60s", "every": "7s"})
    with pytest.raises(ValidationError, match="at most 1000"):
        SlidingWindow.model_validate({"size": "1h", "every": "1s"})


def test_window_spec_accepts_the_three_forms() -> None:
    adapter: TypeAdapter[object] = TypeAdapter(WindowSpec)
    assert adapter.validate_python("60s").total_seconds() == 60  # type: ignore[attr-defined]
    assert isinstance(adapter.validate_python({"size": "60s", "every": "10s"}), SlidingWindow)
    with pytest.raises(ValidationError):
        adapter.validate_python({"gap": "5m", "size": "1m"})


def test_tumbling_assignment_and_late_events() -> None:
    windows = FixedWindows(60 * S, 60 * S, 10 * S)
    times = pa.array([5 * S, 65 * S, 59 * S, 71 * S, 30 * S, None], pa.int64())
    got = windows.assign(times)
    # 59 s arrives with watermark 65-10=55 < 60: on time; 30 s arrives with watermark 61 >= 60: late.
    assert got.rows.to_pylist() == [0, 1, 2, 3]
    assert got.starts.to_pylist() == [0, 60 * S, 0, 60 * S]
    assert got.late == [4] and got.no_time == [5]
    assert windows.watermark.value == 61 * S


def test_a_window_closes_exactly_when_the_watermark_reaches_its_end() -> None:
    windows = FixedWindows(60 * S, 60 * S, 0)
    windows.assign(pa.array([60 * S], pa.int64()))  # watermark = 60 s = end of [0, 60)
    assert windows.assign(pa.array([59 * S], pa.int64())).late == [0]
    windows = FixedWindows(60 * S, 60 * S, 0)
    windows.assign(pa.array([60 * S - 1], pa.int64()))
    assert windows.assign(pa.array([0], pa.int64())).late == []


def test_negative_times_floor_to_the_window_below() -> None:
    got = FixedWindows(60 * S, 60 * S, 0).assign(pa.array([-1], pa.int64()))
    assert got.starts.to_pylist() == [-60 * S]


def test_sliding_event_belongs_to_size_over_every_windows_and_keeps_its_open_ones() -> None:
    windows = FixedWindows(60 * S, 20 * S, 0)
    got = windows.assign(pa.array([45 * S], pa.int64()))
    assert sorted(got.starts.to_pylist()) == [0, 20 * S, 40 * S]
    # Watermark 85 s: of 70 s's windows [20,80) has closed; [40,100) and [60,120) are open.
    windows.assign(pa.array([85 * S], pa.int64()))
    late_ish = windows.assign(pa.array([70 * S], pa.int64()))
    assert sorted(late_ish.starts.to_pylist()) == [40 * S, 60 * S] and late_ish.late == []


def test_sessions_merge_when_an_event_bridges_two() -> None:
    sessions = SessionWindows(gap=30 * S, lateness=30 * S)
    key = group_key(["a"])
    got = sessions.assign(pa.array([0, 50 * S, 25 * S], pa.int64()), [key, key, key])
    assert got.sids[0] != got.sids[1]  # two sessions until 25 s arrives and bridges them
    assert got.sids[0] == got.sids[2] and got.late == []
    assert sessions.open_sessions() == 1
    (closed,) = sessions.close(until=10**15)
    assert (closed.start, closed.end, set(closed.members)) == (0, 80 * S, set(got.sids))


def test_sessions_are_per_key_and_events_exactly_gap_apart_split() -> None:
    sessions = SessionWindows(gap=30 * S, lateness=0)
    a, b = group_key(["a"]), group_key(["b"])
    got = sessions.assign(pa.array([0, 10 * S, 30 * S], pa.int64()), [a, b, a])
    assert len(set(got.sids)) == 3
    assert [(s.start, s.end) for s in sessions.close(until=10**15)] == [
        (0, 30 * S),
        (10 * S, 40 * S),
        (30 * S, 60 * S),
    ]


def test_an_event_touching_a_session_closed_earlier_in_the_same_batch_is_late() -> None:
    sessions = SessionWindows(gap=30 * S, lateness=0)
    a = group_key(["a"])
    got = sessions.assign(pa.array([0, 100 * S, 20 * S], pa.int64()), [a, a, a])
    assert got.late == [2]  # [0, 30) closed when 100 s arrived, even though close() was not called yet


def test_session_event_is_late_when_its_span_closed_or_its_session_was_emitted() -> None:
    sessions = SessionWindows(gap=30 * S, lateness=0)
    a = group_key(["a"])
    sessions.assign(pa.array([0, 100 * S], pa.int64()), [a, a])
    assert [(s.start, s.end) for s in sessions.close()] == [(0, 30 * S)]
    got = sessions.assign(pa.array([20 * S, 65 * S, 80 * S], pa.int64()), [a, a, a])
    # 20 s lies in the emitted session; 65 s's span [65, 95) closed at watermark 100; 80 s joins [100..).
    assert got.late == [0, 1] and got.sids[2] is not None


def test_group_key_separates_json_types_but_not_int_and_float() -> None:
    assert group_key([1]) == group_key([1.0])
    assert len({group_key([1]), group_key(["1"]), group_key([True]), group_key([None])}) == 4
    assert group_key([{"b": 1, "a": 2}]) == group_key([{"a": 2, "b": 1}])
