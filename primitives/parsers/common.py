"""What every parser shares: its result shape and the vectorised helpers for strings and time.

A parser turns one string column into new columns. It never raises for a line it cannot read:
that row is simply not `matched`, and the parse step decides (keep, drop, dead letter). All work
is done with Arrow compute kernels where one exists, so a batch costs a few C loops, not a
Python call per line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from primitives.batch import from_events, to_events

ISO_UTC = pa.timestamp("us", tz="UTC")
JSON_TAG = b"logbus.json"  # field metadata key of columns holding JSON text (primitives.batch)


@dataclass(slots=True)
class Parsed:
    """New columns for one input column, row-aligned with it.

    `fields` holds one array per extracted field (null where the row did not match or the field
    is absent); `matched` is a boolean array without nulls; `repeat`, when set, is how many events
    each row stands for (syslog `message repeated N times`), used by the step to fan rows out.
    """

    fields: dict[str, pa.Array]
    matched: pa.Array
    repeat: pa.Array | None = None
    # Arrow fields with metadata (JSON-tagged columns from the batch unifier), where it matters
    schema: dict[str, pa.Field] = field(default_factory=dict)

    def arrow_field(self, name: str) -> pa.Field:
        return self.schema.get(name) or pa.field(name, self.fields[name].type)


def as_strings(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The column as one string array, with trailing CR/LF removed.

    Lines read from CRLF or bare-CR files by a reader that split on LF keep a trailing CR; it is
    never part of the log message, and an anchored pattern would fail on it. Non-string columns
    (numbers, booleans) are cast to their text form so that a field whose type changes between
    events can still be parsed; nested values (structs, lists) cannot be, and read as null.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    kind = column.type
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        column = column.cast(pa.string())
    elif not pa.types.is_string(kind):
        if pa.types.is_nested(kind) or pa.types.is_null(kind):
            column = pa.nulls(len(column), pa.string())
        else:
            column = column.cast(pa.string())
    return pc.utf8_rtrim(column, characters="\r\n")


def text_column(table: pa.Table, name: str, *, nested_as_json: bool = False) -> pa.Array:
    """Field `name` of every event as text, for parsing or key matching.

    A missing field is all null. A column the batch unifier tagged as JSON text (the field had
    different types in different events) is decoded first, so the string `abc` is read as `abc`,
    not as its JSON spelling `"abc"`; numbers and booleans read as their text, nested values as
    null (or as their JSON text with `nested_as_json`, for `format: json`).
    """
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    field_ = table.schema.field(name)
    if field_.metadata and field_.metadata.get(JSON_TAG):
        values = [event.get(name) for event in to_events(table.select([name]))]
        return pa.array([json.dumps(value) if nested_as_json and isinstance(value, dict | list)
                         else scalar_text(value) for value in values], pa.string())
    return as_strings(table.column(name))


def scalar_text(value: Any) -> str | None:
    """A scalar's own text (strings as they are, 2.0 as "2", true as "true"); None otherwise."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # as Arrow casts 2.0 to text: "2"
    if isinstance(value, str | int | float):
        return str(value)
    return None


def empty_to_null(values: pa.Array) -> pa.Array:
    """Empty strings become null (RE2 reports a group that did not take part as "")."""
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)


def dash_to_null(values: pa.Array) -> pa.Array:
    """`-` (and empty) become null: the access-log and syslog spelling of "no value"."""
    missing = pc.or_kleene(pc.equal(values, "-"), pc.equal(values, ""))
    return pc.if_else(missing, pa.scalar(None, values.type), values)


def to_int(values: pa.Array) -> pa.Array:
    """Decimal strings to int64; anything else (null, '-', '12a', overflow) becomes null."""
    digits = pc.match_substring_regex(values, r"^-?\d{1,18}$")
    clean = pc.if_else(digits, values, pa.scalar(None, pa.string()))
    return clean.cast(pa.int64())


def iso_utc(stamps: pa.Array) -> pa.Array:
    """Timestamps as ISO 8601 UTC strings: `2005-12-04T04:47:44Z`, sub-seconds only when present."""
    if len(stamps) == 0:
        return pa.array([], pa.string())
    stamps = stamps.cast(ISO_UTC)
    if not pc.any(pc.not_equal(pc.subsecond(stamps), 0)).as_py():
        # whole seconds everywhere (syslog, access logs): format without a fraction, skip the trims
        return pc.strftime(stamps.cast(pa.timestamp("s", tz="UTC")), format="%Y-%m-%dT%H:%M:%SZ")
    text = pc.strftime(stamps, format="%Y-%m-%dT%H:%M:%SZ")
    text = pc.replace_substring_regex(text, pattern=r"\.0+Z$", replacement="Z")
    return pc.replace_substring_regex(text, pattern=r"(\.\d*?)0+Z$", replacement=r"\1Z")


def parse_iso(values: pa.Array) -> pa.Array:
    """ISO 8601 strings with a zone (`Z` or `+hh:mm`) to timestamp[us, UTC]; others to null.

    Arrow's cast refuses the whole array when one value is bad (month 13), so that case is
    retried row by row; well-formed batches take the single vectorised cast.
    """
    shaped = pc.match_substring_regex(
        values, r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
    candidates = pc.if_else(shaped, values, pa.scalar(None, pa.string()))
    try:
        return candidates.cast(ISO_UTC)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pa.array([_one_iso(v) for v in candidates.to_pylist()], ISO_UTC)


def _one_iso(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def assume_zone(naive: pa.Array, timezone: str) -> pa.Array:
    """Local wall-clock timestamps in `timezone` to UTC; DST gaps and overlaps take the earlier."""
    if timezone == "UTC":
        return naive.cast(pa.timestamp("us")).cast(ISO_UTC)
    return pc.assume_timezone(naive.cast(pa.timestamp("us")), timezone=timezone,
                              ambiguous="earliest", nonexistent="earliest").cast(ISO_UTC)


def per_unique(values: pa.Array, convert: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """`convert` applied once per distinct value: log lines share timestamps (many per second)."""
    encoded = pc.dictionary_encode(values)
    return pc.take(convert(encoded.dictionary), encoded.indices)


def merge_parsed(batch: pa.Table, parsed: Parsed, prefix: str, *, keep_unmatched: bool) -> pa.Table:
    """Add the parsed columns to `batch` (named `prefix` + field).

    A field the event already has is overwritten where the row matched; where it did not, the
    event keeps its value when `keep_unmatched` (the row passes on unchanged). When the two
    disagree on type, the batch unifier (primitives.batch.from_events) decides the column type.
    """
    out = batch
    for name, values in parsed.fields.items():
        target = prefix + name
        new_field = parsed.arrow_field(name).with_name(target)
        if target not in out.column_names:
            out = out.append_column(new_field, values)
            continue
        index = out.column_names.index(target)
        old = out.column(index).combine_chunks()
        if not keep_unmatched or pa.types.is_null(old.type):
            out = out.set_column(index, new_field, values)
        elif out.field(index) == new_field:
            out = out.set_column(index, new_field, pc.if_else(parsed.matched, values, old))
        else:  # the field changes type where the parse matched: the batch unifier decides the column
            mixed = [new if hit else before for new, hit, before in
                     zip(_values(new_field, values), parsed.matched.to_pylist(),
                         _values(out.field(index), old), strict=True)]
            unified = from_events([{target: value} for value in mixed])
            out = out.set_column(index, unified.schema.field(target), unified.column(target))
    return out


def _values(field: pa.Field, array: pa.Array) -> list[Any]:
    return [event.get(field.name) for event in to_events(pa.table([array], schema=pa.schema([field])))]
