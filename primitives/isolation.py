"""Finding, in a few queries, the events an aggregate's measures fail on.

When a window closes and its GROUP BY fails (`sum(bytes)` where one event holds `"bytes": "x"`),
only the events it fails on may go to the dead letters: the rest of their window and key must
still give its row, or a sender could hide a burst behind one bad event. Halving the rows until
each failing event stands alone finds them, but costs about 2k·log2(n/k) queries for k failing
events among n: 2,000 such events among 22,000 in one window took 29 s (bench/bench_isolation.py),
so one ingest request could stall a pipeline. Two facts make it cheap instead:

- Types. A measure fails on a column's *type* (text where `sum` wants a number) when DuckDB binds
  the query, before it reads a value (`SqlError.binding`). The type of a field whose events
  disagree is decided per value (`primitives.batch.retyped`), so events whose values have the same
  kinds (`kind_classes`) make columns of the same types, together or alone: one query per class
  says whether all of its events fail on their types, or none does.
- Values. A measure fails on a *value* (`CAST(v AS BIGINT)` of "-") while it evaluates an aggregate
  call's per-event inputs (`sqlcheck.aggregate_inputs`). One query evaluates every input for every
  event under DuckDB's TRY, which turns an error into NULL (`failing_inputs`).

What neither finds (a measure that fails only on events together, such as a cast of a sum that
overflows) is left to the halving search, within `QueryBudget`.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from primitives.batch import column_array, is_json_field, take_rows
from primitives.sqlexec import SqlBatch, SqlError, quote

# Queries the halving search may run for one close of an aggregate step. ~1-2 ms each: the search
# costs at most about half a second, whatever was sent; what it cannot tell apart fails together.
MAX_SEARCH_QUERIES = 256
ROW = "__lb_row"


class QueryBudget:
    """Queries left to a search; `spend` is False once there are none."""

    def __init__(self, queries: int = MAX_SEARCH_QUERIES) -> None:
        self.left = queries

    def spend(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True


def kind_classes(table: pa.Table, columns: list[str]) -> list[list[int]]:
    """The rows of `table`, grouped by the kinds of their values in `columns`: rows of one group
    give every column the same type, taken together or alone.

    Only JSON-tagged columns (a field whose values disagree in type) have a type per value; any
    other column has one type for all rows. A value's kind is the type Arrow gives it alone
    (int64, double, string, bool, null, a struct or list type), or JSON text where Arrow cannot
    type it (an integer past int64). Groups come in the order of their first row."""
    tagged = [name for name in dict.fromkeys(columns)
              if name in table.column_names and is_json_field(table.schema.field(name))]
    if not tagged:
        return [list(range(table.num_rows))] if table.num_rows else []
    kinds = [[_kind(None if text is None else json.loads(text)) for text in table.column(name).to_pylist()]
             for name in tagged]
    groups: dict[tuple[str, ...], list[int]] = {}
    for row, signature in enumerate(zip(*kinds, strict=True)):
        groups.setdefault(signature, []).append(row)
    return list(groups.values())


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool | str | float):
        return type(value).__name__
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "bigint"
    array, json_text = column_array([value])  # an object or a list: its whole shape is its type
    return "json" if json_text else str(array.type)


def failing_inputs(sql: SqlBatch, view: pa.Table, inputs: tuple[str, ...]) -> dict[int, str]:
    """The rows of `view` (a table as the aggregate's SQL sees it) for which one of `inputs` (SQL
    over one event) fails, each with the input it fails on first. One query; an input that does
    not even bind (so every row would fail) is left to the caller: {}."""
    if not inputs or view.num_rows == 0:
        return {}
    numbered = view.append_column(ROW, pa.array(range(view.num_rows), pa.int64()))
    # ((x) IS NULL) IS NOT NULL is TRUE whenever x can be computed, NULL included; TRY makes an
    # error NULL, so the flag is TRUE exactly for the rows where x fails
    flags = [f"TRY((({text}) IS NULL) IS NOT NULL) IS NULL AS {quote(f'__lb_f{i}')}"
             for i, text in enumerate(inputs)]
    try:
        out = sql.query(numbered, f"SELECT {quote(ROW)}, {', '.join(flags)} FROM batch")
    except SqlError:
        return {}
    found: dict[int, str] = {}
    rows = out.column(ROW)
    for index, text in enumerate(inputs):
        flagged = out.column(f"__lb_f{index}")
        for row in pc.filter(rows, flagged).to_pylist():
            found.setdefault(row, text)
    return found


def input_error(sql: SqlBatch, view: pa.Table, text: str, row: int) -> str:
    """DuckDB's own message for input `text` on row `row` of `view`."""
    try:
        sql.query(take_rows(view, [row]), f"SELECT ({text}) AS v FROM batch")
    except SqlError as error:
        return str(error)
    return f"{text} cannot be computed for it"
