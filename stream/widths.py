"""How wide a batch of events may get: the field budget of the input readers.

A table is dense: R events with F distinct fields cost R x F cells, each 8-13 bytes in Arrow,
whether an event holds a field or not. Events whose keys vary (a request id used as a key, by a
buggy producer or a hostile ingest client) make F grow with R. Measured with Arrow's JSON reader:
230 KB of `{"<unique key>": 1}` lines took 15 s, and 1 MiB of them took more than 24 GB of memory
before the kernel killed the process. Any holder of an ingest token could do that to `logbus
serve` with one request.

So every table a reader builds has at most MAX_FIELDS leaf fields (Elasticsearch's default
`index.mapping.total_fields.limit` is the same 1,000, for the same reason; $LOGBUS_MAX_FIELDS
raises it, as that setting does, for logs that are wide by nature), and at most two cells
per byte of the input it was read from. Dense logs hold under half a cell per byte (a field takes
at least `"a":1,`); sparse ones about one (300 possible fields, 20 set in a 300-byte event). The
bound is per byte, with no minimum per table, so that splitting input into many tables cannot add
up to more. An event that would take its table past MAX_FIELDS becomes a dead letter (reason
`too_many_fields`); events that fit but would make a table too sparse go into a table of their
own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any, Literal

import pyarrow as pa

MAX_FIELDS_ENV = "LOGBUS_MAX_FIELDS"
FIELDS_CEILING = 100_000  # past this, Arrow's ~15 us per column is seconds per table


def max_fields_from(environ: Mapping[str, str]) -> int:
    """The field budget: $LOGBUS_MAX_FIELDS where set (for logs that are wide by nature, such as
    label maps), else 1,000. Raises ValueError, naming the variable, for anything else."""
    text = environ.get(MAX_FIELDS_ENV, "").strip()
    if not text:
        return 1_000
    if not text.isdigit() or not 1 <= int(text) <= FIELDS_CEILING:
        raise ValueError(f"{MAX_FIELDS_ENV} must be a whole number from 1 to {FIELDS_CEILING:,}, "
                         f"got {text!r}")
    return int(text)


MAX_FIELDS = max_fields_from(os.environ)
CELLS_PER_BYTE = 2

# A leaf field: a top-level key as itself, a nested one as the tuple of keys from the top ("[]"
# steps into a list). Plain keys keep the common case (flat events) cheap: a dict's keys are a set.
FieldPath = str | tuple[str, ...]


def fits(fields: int, rows: int, nbytes: int) -> bool:
    """Whether `rows` events with `fields` leaf fields, read from `nbytes`, may be one table."""
    return fields <= MAX_FIELDS and rows * fields <= CELLS_PER_BYTE * nbytes


def may_join(fields: int, rows: int, cells: int) -> bool:
    """Whether tables holding `cells` cells between them may become one table of `rows` rows and
    `fields` leaf fields (the union): at most MAX_FIELDS, and at most twice the cells they hold
    apart, each row counted as a cell at least (rows without fields). Tables of one schema always
    may; tables of disjoint fields soon may not."""
    return fields <= MAX_FIELDS and rows * fields <= 2 * (cells + rows)


def schema_leaves(schema: pa.Schema) -> set[FieldPath]:
    """The leaf fields of an Arrow schema (a struct's children, a list's values), walked without
    recursion: readers hand over schemas nested up to thousands of levels."""
    leaves: set[FieldPath] = set()
    pending: list[tuple[FieldPath, pa.DataType]] = [((f.name,), f.type) for f in schema]
    while pending:
        path, t = pending.pop()
        if pa.types.is_struct(t) and t.num_fields:
            pending.extend(((*path, t.field(i).name), t.field(i).type) for i in range(t.num_fields))
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            pending.append(((*path, "[]"), t.value_type))
        else:
            leaves.add(path[0] if len(path) == 1 else path)
    return leaves


def event_leaves(event: dict[str, Any]) -> AbstractSet[FieldPath]:
    """The leaf fields of one parsed event, as a table built from it would have them."""
    for value in event.values():
        if isinstance(value, dict | list):
            break
    else:
        return event.keys()  # flat: its keys are its leaves (a set-like view, no copy)
    leaves: set[FieldPath] = set()
    pending: list[tuple[FieldPath, Any]] = [((key,), value) for key, value in event.items()]
    while pending:
        path, value = pending.pop()
        if isinstance(value, dict) and value:
            pending.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            if value:
                pending.extend(((*path, "[]"), item) for item in value)
            else:  # Arrow makes [] a list of nulls: one leaf, as for [null]
                leaves.add((*path, "[]"))
        else:
            leaves.add(path[0] if len(path) == 1 else path)
    return leaves


class FieldBudget:
    """Places events into tables one at a time: refuses an event that would take the fields seen
    past MAX_FIELDS, and starts a new table where joining the current one would make it too
    sparse (more than CELLS_PER_BYTE cells per byte of its events)."""

    def __init__(self) -> None:
        self.fields: set[FieldPath] = set()  # every field admitted so far: MAX_FIELDS at most
        self._table_fields: set[FieldPath] = set()  # those of the table being built
        self._rows = 0
        self._nbytes = 0

    def place(self, leaves: AbstractSet[FieldPath], nbytes: int) -> Literal["refused", "joins", "starts"]:
        """Where an event with these leaf fields, `nbytes` long, goes; "starts": a new table."""
        if not leaves <= self.fields:
            new = leaves - self.fields
            if len(self.fields) + len(new) > MAX_FIELDS:
                return "refused"
            self.fields |= new
        # the common case, an event with fields the table has, costs a subset test and no copy
        fields = self._table_fields if leaves <= self._table_fields else self._table_fields | leaves
        starts = self._rows > 0 and not fits(len(fields), self._rows + 1, self._nbytes + nbytes)
        if starts:
            self._table_fields, self._rows, self._nbytes = set(leaves), 0, 0
        else:
            self._table_fields = fields
        self._rows += 1
        self._nbytes += nbytes
        return "starts" if starts else "joins"


def too_many_fields(leaves: AbstractSet[FieldPath], budget: FieldBudget) -> str:
    """The dead letter's message for an event that `budget` refused."""
    new = sorted((path,) if isinstance(path, str) else path for path in leaves - budget.fields)
    shown = ", ".join(repr(".".join(path)) for path in new[:3]) + (", ..." if len(new) > 3 else "")
    fields = f"{len(new):,} field" + ("" if len(new) == 1 else "s")
    return (f"event adds {fields} ({shown}) past the limit of {MAX_FIELDS:,} distinct fields "
            f"per part of the input (${MAX_FIELDS_ENV}); keys that vary (ids, timestamps) belong in "
            'values: {"id": "a1"}, not {"a1": ...}')
