"""Events as Arrow batches, and back.

Between steps, events travel as `pyarrow.Table`s so that declarative steps run vectorised. Real
streams are not tidy, so the conversion from Python events is forgiving and never loses an event:

- a field missing from some events is null there (Arrow cannot tell "absent" from "null", so
  events read back have every field of their batch, with None where they had none);
- int and float mixed in one field become float64;
- any other mix (a field that is a number in one event and a string, a bool or an object in another, an
  integer too large for int64, an empty object) becomes a string column holding each value's JSON
  text, tagged `logbus.json` in the field metadata, so that `to_events` gives the original values
  back exactly and SQL can still read them with the json functions;
- nested objects become Arrow structs; keys that only some events have are null in the others.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

JSON_TAG = {b"logbus.json": b"1"}


def is_json_field(field: pa.Field) -> bool:
    return bool(field.metadata) and field.metadata.get(b"logbus.json") == b"1"


def to_events(table: pa.Table) -> list[dict[str, Any]]:
    """The rows of `table` as Python dicts, JSON-tagged columns decoded."""
    rows: list[dict[str, Any]] = table.to_pylist()
    tagged = [f.name for f in table.schema if is_json_field(f)]
    if tagged:
        for row in rows:
            for name in tagged:
                text = row.get(name)
                if text is not None:
                    row[name] = json.loads(text)
    return rows


class EventError(ValueError):
    """An event holds something no table can: the message names the event and the field."""


def from_events(events: list[dict[str, Any]]) -> pa.Table:
    """A table holding every event and every field, whatever the mix of types. Raises EventError
    for text that is not valid Unicode (a lone surrogate, which JSON's "\\ud800" escape makes)."""
    try:
        return _from_events(events)
    except UnicodeEncodeError:
        raise EventError(_bad_text(events)) from None


def _bad_text(events: list[dict[str, Any]]) -> str:
    def find(value: Any, path: str) -> str | None:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                return (f"{path} holds text that is not valid Unicode "
                        f"(U+{ord(value[exc.start]):04X}, a lone surrogate)")
            return None
        items: Iterable[tuple[Any, Any]] = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ())
        for key, item in items:
            found = find(key, f"a key in {path}") if isinstance(key, str) else None
            found = found or find(item, f"{path}[{key!r}]")
            if found:
                return found
        return None

    for index, event in enumerate(events):
        found = find(event, f"event {index}")
        if found:
            return found + "; send UTF-8 text"
    return "an event holds text that is not valid Unicode; send UTF-8 text"


def _from_events(events: list[dict[str, Any]]) -> pa.Table:
    if not events:
        return pa.table({})
    names = list(dict.fromkeys(key for event in events for key in event))
    if not names:
        return rows_only(len(events))
    if len(names) == len(events[0]) and list(events[0]) == names:
        # Every key is in the first event: Arrow's own row conversion sees them all.
        try:
            table = pa.Table.from_pylist(events)
            bools_read_as_numbers = any(
                _bool_read_as_number((event.get(f.name) for event in events), f.type) for f in table.schema)
            if not _needs_repair(table.schema) and not bools_read_as_numbers:
                return table
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            pass
    return from_columns({name: [event.get(name) for event in events] for name in names})


def from_columns(columns: dict[str, list[Any]]) -> pa.Table:
    """A table from Python value lists, one per field, with the unification rules above."""
    fields, arrays = [], []
    for name, values in columns.items():
        array, tagged = column_array(values)
        fields.append(pa.field(name, array.type, metadata=JSON_TAG if tagged else None))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def column_array(values: list[Any]) -> tuple[pa.Array, bool]:
    """One column: (array, True when it had to fall back to tagged JSON text)."""
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return _json_array(values), True
    if _type_needs_repair(array.type) or _bool_read_as_number(values, array.type):
        return _json_array(values), True
    return array, False


def _bool_read_as_number(values: Iterable[Any], kind: pa.DataType) -> bool:
    """Whether Arrow made a bool a number: given `[2.0, True]` it infers float64 and writes 1.0 (and
    refuses `[True, 2.0]`), so an event's true would read back as 1.0 depending on its neighbours.
    True when a bool sits where `kind`, the type Arrow chose for `values`, is floating."""
    if not _has_floating(kind):
        return False
    if pa.types.is_floating(kind):
        return any(type(value) is bool for value in values)
    if pa.types.is_struct(kind):
        return any(_bool_read_as_number((v.get(f.name) for v in values if isinstance(v, dict)), f.type)
                   for f in (kind.field(i) for i in range(kind.num_fields)))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _bool_read_as_number((x for v in values if isinstance(v, list) for x in v), kind.value_type)
    return False


def _has_floating(kind: pa.DataType) -> bool:
    if pa.types.is_floating(kind):
        return True
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _has_floating(kind.value_type)
    return any(_has_floating(kind.field(i).type) for i in range(kind.num_fields))


def with_columns(table: pa.Table, names: Iterable[str]) -> pa.Table:
    """`table` plus an all-null column for each name it lacks, so SQL over it sees NULL."""
    for name in names:
        if name not in table.column_names:
            table = table.append_column(pa.field(name, pa.null()), pa.nulls(table.num_rows))
    return table


# Events without fields (`{}`, or after `keep` dropped every field) are rows of a table without
# columns. Arrow keeps such tables, but its slice does not clamp to their length (slice(0, 65536)
# of 3 rows gives 65,536 rows), and take and concat_tables drop their rows: use these helpers.

def rows_only(rows: int) -> pa.Table:
    """A table of `rows` events without fields."""
    return pa.table({"_": pa.nulls(rows)}).drop_columns(["_"])


def slice_rows(table: pa.Table, start: int, length: int | None = None) -> pa.Table:
    """`table.slice`, also right for a table without columns."""
    if table.num_columns:
        return table.slice(start, length)
    start = min(max(start, 0), table.num_rows)
    end = table.num_rows if length is None else min(table.num_rows, start + max(length, 0))
    return rows_only(end - start)


def take_rows(table: pa.Table, indices: list[int]) -> pa.Table:
    """`table.take(indices)`, also right for a table without columns (Arrow's gives no rows)."""
    if table.num_columns:
        return table.take(pa.array(indices, pa.int64()))
    return rows_only(len(indices))


def concat(tables: list[pa.Table]) -> pa.Table:
    """Concatenate batches whose schemas differ; conflicting columns fall back to JSON text."""
    tables = [t for t in tables if t.num_columns or t.num_rows]
    if not tables:
        return pa.table({})
    if len(tables) == 1:
        return tables[0]
    if not any(t.num_columns for t in tables):
        return rows_only(sum(t.num_rows for t in tables))
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return from_events([row for table in tables for row in to_events(table)])


def retyped(table: pa.Table) -> pa.Table:
    """`table` with its JSON-tagged columns typed again from their own values: a part of a batch
    may hold only numbers in a field that was mixed in the whole."""
    for index, field in enumerate(table.schema):
        if is_json_field(field):
            texts = table.column(index).to_pylist()
            array, tagged = column_array([None if text is None else json.loads(text) for text in texts])
            retagged = pa.field(field.name, array.type, metadata=JSON_TAG if tagged else None)
            table = table.set_column(index, retagged, array)
    return table


def canonical(value: Any) -> Any:
    """A JSON value in one spelling: an integral float as the int it equals, at any depth.

    A batch unifies the ints and floats of one field to float64, so an event's 1 reads back as
    1.0 when another event of its batch holds 1.5. Steps that compare or render values (group
    keys, dedup templates) use this, so that 1 and 1.0 are one key however events were batched."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [canonical(v) for v in value]
    return value


def _json_array(values: list[Any]) -> pa.Array:
    return pa.array(
        [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values], pa.string()
    )


def _needs_repair(schema: pa.Schema) -> bool:
    return any(_type_needs_repair(field.type) for field in schema)


def _type_needs_repair(data_type: pa.DataType) -> bool:
    """Types DuckDB cannot take or that lose information: empty structs, anywhere."""
    if pa.types.is_struct(data_type):
        return data_type.num_fields == 0 or any(
            _type_needs_repair(data_type.field(i).type) for i in range(data_type.num_fields)
        )
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return _type_needs_repair(data_type.value_type)
    return False
