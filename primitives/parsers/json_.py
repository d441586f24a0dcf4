"""`parse: {field, format: json}`: the field holds a JSON object; its keys become fields.

A row matches when the field is a JSON object (text), or already a nested object (a struct, as
NDJSON input gives for `{"payload": {...}}`). Each top-level key becomes one field; nested values
stay nested. Text that is not JSON, or JSON that is not an object (`[1]`, `"x"`, `3`), does not
match. A key whose type differs between rows (`{"id": 1}` then `{"id": "a"}`) is unified the way
every batch is (see primitives.batch.from_events): ints and floats to float, other mixes to
their JSON text.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from primitives.batch import from_events
from primitives.parsers.common import Parsed, as_strings

MAX_DEPTH = 64


def parse_json(column: pa.Array | pa.ChunkedArray) -> Parsed:
    """Merge the keys of the JSON object held by each row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_struct(column.type):
        return _from_struct(column)
    objects = [_object(text) for text in as_strings(column).to_pylist()]
    matched = pa.array([value is not None for value in objects], pa.bool_())
    table = from_events([value or {} for value in objects])
    fields = {name: table.column(name).combine_chunks() for name in table.column_names}
    return Parsed(fields, matched, schema={f.name: f for f in table.schema})


def _from_struct(column: pa.StructArray) -> Parsed:
    matched = pc.fill_null(column.is_valid(), False)
    fields = {column.type.field(i).name: pc.struct_field(column, i) for i in range(column.type.num_fields)}
    return Parsed(fields, matched)


def _object(text: str | None) -> dict[str, Any] | None:
    if text is None or not text.lstrip().startswith("{"):
        return None
    if text.count("{") + text.count("[") > MAX_DEPTH and _depth(text) > MAX_DEPTH:
        return None  # refuse before json.loads recurses on hostile nesting
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _depth(text: str) -> int:
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest
