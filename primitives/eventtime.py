"""Event time: reading a batch's time field as UTC instants, and writing instants back as text.

Accepted values of the time field, per event:
- ISO 8601 / RFC 3339 strings: `2024-12-10T06:55:46Z`, `2024-12-10 06:55:46.250+02:00`,
  `2024-12-10T06:55:46` (no zone means UTC), a bare date `2024-12-10` (midnight UTC).
- Numbers as epoch time, the unit decided by magnitude so that every plausible date reads right:
  |v| < 1e11 seconds (up to year 5138), < 1e14 milliseconds, < 1e17 microseconds, else nanoseconds.
  Fractions are kept (1733813746.25 is a quarter second past).
- Arrow timestamps of any unit; a timestamp without a zone is taken as UTC.
Anything else (missing field, null, a string that is not ISO 8601, a bool, a nested value) reads as
null: steps that need time send such events to the dead letters with reason `no_time`, never guess.

Instants inside steps are plain ints, microseconds since the Unix epoch (UTC): windows and rule
state do integer arithmetic on them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

UTC_US = pa.timestamp("us", tz="UTC")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_JSON_TAG = b"logbus.json"

__all__ = ["UTC_US", "event_micros", "event_times", "format_time", "micros_of", "no_time_message",
           "why_no_time"]
# an epoch number written as text: named in the no_time message, never read as a time
_NUMBER_TEXT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*")


def event_times(table: pa.Table, field: str) -> pa.Array:
    """The event time of each row as timestamp[us, tz=UTC]; null where missing or unparseable."""
    if field not in table.column_names:
        return pa.nulls(table.num_rows, UTC_US)
    index = table.schema.get_field_index(field)
    meta = table.schema.field(index).metadata or {}
    column = table.column(index).combine_chunks()
    if meta.get(_JSON_TAG) == b"1":
        return _from_python([_decode_json(v) for v in column.to_pylist()])
    return _from_array(column)


def event_micros(table: pa.Table, field: str) -> pa.Array:
    """The same as `event_times`, as int64 microseconds since the epoch (null where unknown)."""
    return event_times(table, field).cast(pa.int64())


def micros_of(value: Any) -> int | None:
    """One value's event time in microseconds (the same rules as a column), None if it has none."""
    return _micros(value)


def why_no_time(event: dict[str, Any] | None, field: str) -> str:
    """Why an event's time field gave no time, in words an agent can act on: the field is
    missing or null, or which kind of value it holds and what to write instead. Epoch numbers
    written as text are named: they are never read as time (`20240612` is also a date), and a
    CAST in a transform says which they are."""
    value = None if event is None else event.get(field)
    if value is None:  # in a batch, an event without the field reads as null: one case
        return f"{field!r} is missing or null"
    if isinstance(value, bool):
        return f"{field!r} is a boolean, not a time"
    if isinstance(value, dict | list):
        return f"{field!r} holds a JSON {'object' if isinstance(value, dict) else 'list'}, not a time"
    if isinstance(value, int | float):
        return f"{field!r} is {value!r}, which as epoch time is outside the years 1 to 9999"
    text = str(value)
    shown = repr(text if len(text) <= 60 else text[:60] + "…")
    if _NUMBER_TEXT.fullmatch(text):
        cast = "DOUBLE" if "." in text else "BIGINT"
        return (f"{field!r} is the text {shown}: epoch time must be a JSON number, not text; convert "
                f"it first, e.g. transform: {{set: {{{field}: \"CAST({field} AS {cast})\"}}}}")
    return f"{field!r} is {shown}, which is not ISO 8601 (e.g. 2024-12-10T06:55:46Z)"


def no_time_message(event: dict[str, Any] | None, field: str, needs: str = "") -> str:
    """The dead letter message of an event without a usable time (reason `no_time`)."""
    return (f"event has no usable time: {why_no_time(event, field)}{needs} (a time is ISO 8601 text, "
            "an epoch number or a timestamp)")


def format_time(micros: int) -> str:
    """RFC 3339 in UTC with as few fraction digits as the instant needs (like Vector's AutoSi).

    `2024-12-10T06:55:00Z`, `...:00.250Z`, `...:00.000125Z`: whole seconds, then milliseconds,
    then microseconds. DuckDB reads every form with `::TIMESTAMPTZ`.
    """
    moment = _EPOCH + timedelta(microseconds=micros)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = micros % 1_000_000
    if fraction == 0:
        return text + "Z"
    if fraction % 1000 == 0:
        return f"{text}.{fraction // 1000:03d}Z"
    return f"{text}.{fraction:06d}Z"


def _from_array(column: pa.Array) -> pa.Array:
    kind = column.type
    if pa.types.is_timestamp(kind):
        if kind.tz is None:
            return pc.assume_timezone(column.cast(pa.timestamp("us")), "UTC").cast(UTC_US)
        return column.cast(UTC_US, safe=False)
    if pa.types.is_date(kind):
        return column.cast(pa.timestamp("us")).cast(UTC_US)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _from_numbers(column)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _from_strings(column)
    if pa.types.is_null(kind):
        return pa.nulls(len(column), UTC_US)
    return pa.nulls(len(column), UTC_US)  # bools, structs, lists: not a time


def _from_numbers(column: pa.Array) -> pa.Array:
    # Scale each value to microseconds by its magnitude, in floating point, then round.
    values = column.cast(pa.float64())
    magnitude = pc.abs(values)
    scale = pc.if_else(
        pc.less(magnitude, 1e11),
        1e6,
        pc.if_else(pc.less(magnitude, 1e14), 1e3, pc.if_else(pc.less(magnitude, 1e17), 1.0, 1e-3)),
    )
    micros = pc.round(pc.multiply(values, scale))
    finite = pc.and_(pc.is_finite(micros), pc.less(pc.abs(micros), 2.5e17))  # within years 1..9999
    micros = pc.if_else(finite, micros, pa.scalar(None, pa.float64()))
    return micros.cast(pa.int64()).cast(UTC_US)


def _from_strings(column: pa.Array) -> pa.Array:
    # Fast paths: Arrow parses a whole column when every value has a zone, or none has.
    try:
        return column.cast(UTC_US)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    try:
        return pc.assume_timezone(column.cast(pa.timestamp("us")), "UTC").cast(UTC_US)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    # Mixed or partly invalid: parse each distinct string once.
    encoded = column.dictionary_encode()
    parsed = _from_python([_parse_text(v) for v in encoded.dictionary.to_pylist()])
    return pc.take(parsed, encoded.indices)


def _from_python(values: list[Any]) -> pa.Array:
    micros = [_micros(v) for v in values]
    return pa.array(micros, pa.int64()).cast(UTC_US)


def _micros(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return (moment - _EPOCH) // timedelta(microseconds=1)
    if isinstance(value, int | float):
        scalar = _from_numbers(pa.array([float(value)]))[0].value
        return None if scalar is None else int(scalar)
    if isinstance(value, str):
        return _parse_text(value)
    return None


def _parse_text(text: str | None) -> int | None:
    if text is None:
        return None
    candidate = text.strip()
    if candidate.endswith(("z", "Z")):
        candidate = candidate[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(candidate)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _decode_json(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
