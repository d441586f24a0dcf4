"""Arrow tables to and from the columnar frames of the sandbox protocol, on the host side.

Input: a table goes to the worker as one Python list per column (`Array.to_pylist`, a C loop
per column, several times cheaper than building one dict per row here); the worker builds the
event dicts. A null field reaches the snippet as the key with None, exactly as
`table.to_pylist()` gives it (Arrow cannot tell a missing field from a null one). A column that
the batch unifier tagged as JSON text (field metadata `logbus.json`, see primitives.batch) is
decoded first, so the snippet sees the value, not its JSON spelling.

Output: the worker's columns become one Arrow array each, by the project's unification rules
(`primitives.batch.column_array`): a column whose values Arrow cannot unify (an int in one row,
a str in another) becomes JSON-tagged text, so one odd value never costs the batch. Everything
here comes from a worker and is hostile: a value even that path refuses, or a binary value (the
runtime never returns bytes), raises ProtocolError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from primitives.batch import JSON_TAG as _TAGGED
from primitives.batch import column_array as batch_column_array
from primitives.batch import is_json_field
from sandbox.runtime.codec import ProtocolError

JSON_TAG = b"logbus.json"  # the field metadata key of JSON-tagged columns (primitives.batch)


def scalar_columns(table: pa.Table) -> list[bool]:
    """Per column: whether every value reaches the worker as an immutable scalar (str, int, float,
    bool or None): not nested, not JSON-tagged text (which may decode to an object)."""
    return [_scalar_type(f.type) and not is_json_field(f) for f in table.schema]


def _scalar_type(kind: pa.DataType) -> bool:
    t = pa.types
    return bool(t.is_string(kind) or t.is_large_string(kind) or t.is_integer(kind) or t.is_floating(kind)
                or t.is_boolean(kind) or t.is_null(kind))


def table_columns(table: pa.Table) -> tuple[list[str], list[list[Any]]]:
    """(names, one Python list per column) of a table, JSON-tagged columns decoded."""
    names = list(table.column_names)
    return names, [_values(field, column) for field, column in zip(table.schema, table.columns, strict=True)]


Given = dict[int, tuple[pa.Field, pa.ChunkedArray]]  # column position -> the host's own input column


@dataclass(slots=True)
class Piece:
    """The output rows of one successful round trip, for events [offset, offset + events)."""

    table: pa.Table
    source_index: list[int]  # absolute: index into the whole input of the call
    names: list[str]
    columns: list[list[Any] | None]  # None: an unchanged input column, only in `table`


def build_piece(
    names: list[str], columns: list[list[Any]], rows: int, source_index: list[int], offset: int,
    given: Given | None = None,
) -> Piece:
    table = build_table(names, columns, rows, given)
    source = source_index if not offset else [i + offset for i in source_index]
    kept: list[list[Any] | None] = [None if given and i in given else c for i, c in enumerate(columns)]
    return Piece(table, source, names, kept)


def build_table(names: list[str], columns: list[list[Any]], rows: int,
                given: Given | None = None) -> pa.Table:
    """A table from worker columns (`rows` long); ProtocolError for values no conversion accepts.
    Columns in `given` are the host's own input columns, used as they are."""
    if not names:  # every output row was {}: rows without columns
        return pa.table({"_": pa.nulls(rows)}).drop_columns(["_"])
    fields, arrays = [], []
    for position, (name, values) in enumerate(zip(names, columns, strict=True)):
        if given and position in given:
            field, array = given[position]
            fields.append(field.with_name(name))
            arrays.append(array)
            continue
        field, array = column_array(name, values)
        fields.append(field)
        arrays.append(pa.chunked_array([array], array.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def input_columns(table: pa.Table, names: list[str], positions: list[int]) -> Given:
    """The columns of `table` (the round trip's input slice) that a worker reported unchanged;
    ProtocolError for a name the input does not have (only a hostile worker says so)."""
    given: Given = {}
    for position in positions:
        name = names[position]
        index = table.schema.get_field_index(name)
        if index < 0:
            raise ProtocolError(f"column {name!r} is reported unchanged but was not in the input")
        given[position] = (table.schema.field(index), table.column(index))
    return given


def column_array(name: str, values: list[Any]) -> tuple[pa.Field, pa.Array]:
    """One output column by the project's unification rules (primitives.batch.column_array):
    mixed types, over-wide ints and empty objects become JSON-tagged text."""
    try:
        array, tagged = batch_column_array(values)
    except Exception as exc:  # hostile values: deep nesting (RecursionError), odd types
        raise ProtocolError(
            f"column {name!r} holds values Arrow cannot convert ({type(exc).__name__})"
        ) from None
    if _has_binary(array.type):
        raise ProtocolError(f"column {name!r} holds bytes, which the sandbox runtime never returns")
    return pa.field(name, array.type, metadata=_TAGGED if tagged else None), array


def _has_binary(kind: pa.DataType) -> bool:
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_fixed_size_binary(kind):
        return True
    if pa.types.is_binary_view(kind):
        return True
    return any(_has_binary(kind.field(i).type) for i in range(kind.num_fields))


def concat_pieces(pieces: list[Piece]) -> tuple[pa.Table, list[int]]:
    """All pieces as one table (rows in input order) and its source_index.

    Pieces built separately can disagree on a column's type (int here, str there) or on its JSON
    tag; Arrow's permissive promotion handles the rest (null -> any, int -> double, a missing
    column -> nulls). Where it cannot, the table is rebuilt from the Python values of all pieces.
    """
    source = [i for piece in pieces for i in piece.source_index]
    tables = [p.table for p in pieces if p.table.num_rows or p.table.num_columns]
    if not tables:
        return pa.table({}), source
    if len(tables) == 1:
        return tables[0], source
    if _tags_agree(tables):
        try:
            merged = pa.concat_tables(tables, promote_options="permissive")
            if merged.num_rows == len(source):
                return merged, source
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
    names = list(dict.fromkeys(name for piece in pieces for name in piece.names))
    columns: list[list[Any]] = [[] for _ in names]
    for piece in pieces:
        rows = piece.table.num_rows
        own = {name: values if values is not None
               else _values(piece.table.schema.field(name), piece.table.column(name))
               for name, values in zip(piece.names, piece.columns, strict=True)}
        for slot, name in zip(columns, names, strict=True):
            slot += own.get(name) or [None] * rows
    return build_table(names, columns, len(source)), source


def _values(field: pa.Field, column: pa.ChunkedArray) -> list[Any]:
    """One column as Python values, JSON-tagged text decoded: what the worker sees of it."""
    values: list[Any] = column.to_pylist()
    if is_json_field(field):
        values = [None if v is None else json.loads(v) for v in values]
    return values


def _tags_agree(tables: list[pa.Table]) -> bool:
    tagged: dict[str, bool] = {}
    for table in tables:
        for field in table.schema:
            flag = bool(field.metadata and field.metadata.get(JSON_TAG))
            if tagged.setdefault(field.name, flag) != flag:
                return False
    return True
