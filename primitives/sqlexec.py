"""Running checked SQL expressions over a batch with DuckDB.

Each step owns a connection of its own to the process's in-memory DuckDB database, which has
external access off and its configuration locked (`primitives.duck`), and runs only single
SELECT queries on it, so even an expression that slipped past `sqlcheck` could not read a file,
load an extension, change a setting or change what other pipelines see. DuckDB computes only
the expression columns, over only the columns they reference; rows are then kept or columns set
on the Arrow table itself, so every other column passes through untouched (types and field
metadata included).

A field whose values have different types in one batch is stored as JSON text (primitives.batch).
SQL sees such a field, when it holds only scalars, as each value's own text: a string as it is,
a number or boolean as its JSON spelling (`1`, `2.5`, `true`). As JSON text the string "root"
would read '"root"', and `user = 'root'` would miss it whenever another event of its batch had
a number there: an attacker could hide a login from a filter by sending `{"user": 0}` beside
it. A field that mixes objects or lists with other values stays JSON text, for `->>`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

import pyarrow as pa

from primitives.batch import is_json_field, with_columns
from primitives.duck import locked_connection
from primitives.parsers.common import scalar_text
from primitives.sqlcheck import referenced_columns, sql_quote

BATCH = "batch"
MAX_REMEMBERED_SELECTS = 64  # per step; a step builds a handful (isolation: one more, plus one per input)


class SqlError(ValueError):
    """An expression failed at run time (a bad cast, say); the message is DuckDB's.

    `binding` is True for an error DuckDB raised while binding the query, before it read a value:
    a function that does not take the column's type (`sum` over text, say). Such an error depends
    on the columns' types only, so it is the same for any rows of the same types."""

    def __init__(self, message: str, *, binding: bool = False) -> None:
        super().__init__(message)
        self.binding = binding


# Column names in SQL we build are always double-quoted, embedded quotes doubled.
quote = sql_quote


class SqlBatch:
    """One connection to the locked-down DuckDB database (`primitives.duck`) evaluating
    expressions over Arrow batches."""

    def __init__(self) -> None:
        import duckdb  # on first use: pipelines without SQL never load it (see primitives.duck)

        self._con = locked_connection()
        self._duckdb = duckdb
        self._error = duckdb.Error
        self._lock = threading.Lock()
        # SQL texts already found to be one SELECT: a step builds the same few every batch, and
        # parsing one again costs ~0.1 ms, per batch, in the executor's loop
        self._selects: set[str] = set()

    def filter(self, table: pa.Table, expr: str) -> pa.Table:
        """Rows where `expr` is true; rows where it is false or NULL are dropped."""
        if table.num_rows == 0:
            return table
        mask = self.columns(table, {"keep": f"coalesce(CAST(({expr}) AS BOOLEAN), false)"})["keep"]
        return table.filter(mask)

    def select(self, table: pa.Table, exprs: dict[str, str], keep_rest: bool = True) -> pa.Table:
        """Set each named column to its expression (all computed from the input row).

        Existing columns are replaced in place, new ones appended in the order given; with
        `keep_rest=False` only the computed columns are returned.
        """
        computed = self.columns(table, exprs)
        if not keep_rest:
            return computed
        out = table
        for name in exprs:
            column = computed[name]
            if name in out.column_names:
                out = out.set_column(out.column_names.index(name), name, column)
            else:
                out = out.append_column(name, column)
        return out

    def columns(self, table: pa.Table, exprs: dict[str, str]) -> pa.Table:
        """A table of the expression results, one row per input row, in input order."""
        needed = sorted(set().union(*(referenced_columns(e) for e in exprs.values())))
        source = sql_view(with_columns(table, needed).select(needed)) if needed else pa.table({
            "__row": pa.nulls(table.num_rows, pa.bool_())})
        select = ", ".join(f"({expr}) AS {quote(name)}" for name, expr in exprs.items())
        return self.query(source, f"SELECT {select} FROM {BATCH}")

    def query(self, table: pa.Table, sql: str) -> pa.Table:
        """Run SQL that we built around checked expressions, with `table` as `batch`.

        Only a single SELECT runs. The database is shared by every pipeline of the process
        (`primitives.duck`), and a statement could change what the others see (a
        `CREATE MACRO lower(x) AS ...` shadows the builtin for every connection): should text
        ever slip past `sqlcheck`, this keeps it to a query."""
        if sql not in self._selects:
            self._require_one_select(sql)
            if len(self._selects) < MAX_REMEMBERED_SELECTS:
                self._selects.add(sql)
        with self._lock:
            self._con.register(BATCH, table)
            try:
                return self._con.sql(sql).to_arrow_table()
            except self._error as exc:
                binding = isinstance(exc, self._duckdb.BinderException)
                raise SqlError(_clean(str(exc)), binding=binding) from None
            finally:
                self._con.unregister(BATCH)

    def _require_one_select(self, sql: str) -> None:
        try:
            statements = self._con.extract_statements(sql)
        except self._error as exc:
            raise SqlError(_clean(str(exc))) from None
        if len(statements) != 1 or statements[0].type != self._duckdb.StatementType.SELECT:
            raise SqlError("only a single SELECT query runs here")


def sql_view(table: pa.Table, keep: Iterable[str] = ()) -> pa.Table:
    """`table` as SQL should see it: JSON-tagged fields of scalars as each value's own text (see
    the module docstring); the fields in `keep` are left as they are."""
    for index, field in enumerate(table.schema):
        if field.name in keep or not is_json_field(field):
            continue
        values = [None if text is None else json.loads(text) for text in table.column(index).to_pylist()]
        if any(isinstance(v, dict | list) for v in values):
            continue  # objects or lists: JSON text, for ->> and the json functions
        texts = [scalar_text(v) for v in values]  # as parse and enrich read such a field
        table = table.set_column(index, pa.field(field.name, pa.string()), pa.array(texts, pa.string()))
    return table


def _clean(message: str) -> str:
    """DuckDB's first line is the useful one; its LINE/caret follow-up points into our wrapper."""
    return message.split("\n", 1)[0].strip()
