"""`run_query`: one read-only SELECT over a tenant's views, with a row cap and a time cap.

Two independent locks, each assumed to fail alone:
1. The statement gate (before execution): DuckDB's own parser splits the text; exactly one
   statement of type SELECT (which covers WITH, VALUES, FROM-first, DESCRIBE/SHOW/SUMMARIZE) passes.
   Its parse tree (`json_serialize_sql`) is then walked: table functions must be on a short
   allowlist (`range`, `unnest`, ... — so no `read_*`, `glob`, `query`, `duckdb_settings()`,
   `parquet_metadata`), `getenv`/`current_setting` are refused, and tables must be the tenant's
   views, CTEs or `information_schema` (so no `FROM '/etc/passwd'` replacement scans).
2. The connection itself (`views.tenant_connection`): file access only under the tenant's
   directory, configuration locked.
A timer thread calls `interrupt()` at the time cap. Errors come back as `QueryError` with a code
and a message that names what to do, with the data directory's path removed.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from stream.sinks.parquet import tenant_dir
from stream.sinks.views import tenant_connection

MAX_SQL_CHARS = 100_000
MAX_LIMIT = 100_000
RETRIES = 5  # superseded files outlive a manifest by the sink's grace period; this covers grace 0
TABLE_FUNCTIONS = frozenset({"range", "generate_series", "unnest", "json_each", "json_tree",
                             "generate_subscripts"})
SCALAR_DENY = frozenset({"getenv", "current_setting"})
HINT_VIEWS = "query the tenant's views: one per pipeline output (its name with - as _), signals, dead_letters"


class QueryError(Exception):
    """A query that was refused or failed; `code` is one of: empty, too_long, syntax, not_read_only,
    multiple_statements, forbidden_function, forbidden_table, access_denied, timeout, out_of_memory,
    invalid, sql_error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class QueryResult:
    columns: list[str]
    types: list[str]
    rows: list[list[Any]]  # JSON-ready values
    truncated: bool  # more rows existed than `limit`
    elapsed_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {"columns": self.columns, "types": self.types, "rows": self.rows,
                "row_count": len(self.rows), "truncated": self.truncated, "elapsed_ms": self.elapsed_ms}


def run_query(data_dir: str | Path, tenant: str, sql: str, *, limit: int = 1000,
              timeout_s: float = 30.0) -> QueryResult:
    """Run one read-only SELECT over `tenant`'s views; at most `limit` rows, stopped after `timeout_s`."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise QueryError("invalid", f"limit must be an integer from 1 to {MAX_LIMIT}; got {limit!r}")
    if not isinstance(timeout_s, int | float) or not 0 < timeout_s <= 600:
        raise QueryError("invalid", f"timeout_s must be a number in (0, 600]; got {timeout_s!r}")
    root = tenant_dir(data_dir, tenant)
    for attempt in range(1, RETRIES + 1):
        try:
            return _run_once(data_dir, tenant, sql, limit, timeout_s)
        except duckdb.IOException as exc:  # a file deleted after a newer manifest: take the new one
            if attempt == RETRIES or ("No such file" not in str(exc) and "No files found" not in str(exc)):
                raise QueryError("sql_error", _clean(str(exc), root)) from None
    raise AssertionError("unreachable")


def _run_once(data_dir: str | Path, tenant: str, sql: str, limit: int, timeout_s: float) -> QueryResult:
    root = tenant_dir(data_dir, tenant)
    con = tenant_connection(data_dir, tenant)
    timer = threading.Timer(timeout_s, con.interrupt)
    started = time.perf_counter()
    try:
        statement = check_query(con, sql, root)
        timer.start()
        relation = con.sql(statement).limit(limit + 1)
        columns, types = list(relation.columns), [str(t) for t in relation.types]
        rows = relation.fetchall()
    except duckdb.InterruptException:
        raise QueryError("timeout", f"the query ran longer than {timeout_s:g} s and was stopped; filter "
                         "earlier, aggregate, or avoid cross joins") from None
    except duckdb.OutOfMemoryException:
        raise QueryError("out_of_memory", "the query needed more memory than a query may use; aggregate or "
                         "filter earlier, select fewer columns, or avoid cross joins") from None
    except duckdb.PermissionException:
        raise QueryError("access_denied", f"only this tenant's data can be read; {HINT_VIEWS}") from None
    except duckdb.IOException:
        raise
    except duckdb.Error as exc:
        raise QueryError("sql_error", _clean(str(exc), root)) from None
    finally:
        timer.cancel()
        con.close()
    return QueryResult(columns, types, [[_jsonable(v) for v in row] for row in rows[:limit]],
                       len(rows) > limit, round((time.perf_counter() - started) * 1000, 3))


def check_query(con: duckdb.DuckDBPyConnection, sql: str, root: Path | None = None) -> str:
    """The one statement of `sql` if it is a read-only SELECT that only touches allowed objects."""
    if not isinstance(sql, str) or not sql.strip():
        raise QueryError("empty", "the query is empty; write one SELECT, e.g. SELECT * FROM signals LIMIT 10")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryError("too_long", f"the query has {len(sql)} characters; the limit is {MAX_SQL_CHARS}")
    try:
        statements = con.extract_statements(sql)
    except (duckdb.Error, ValueError) as exc:
        raise QueryError("syntax", _clean(str(exc), root)) from None
    if not statements:
        raise QueryError("empty", "the query has no statement (only comments or whitespace)")
    if len(statements) > 1:
        raise QueryError("multiple_statements", f"the query has {len(statements)} statements; send exactly "
                         "one SELECT (no ';' between statements)")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError("not_read_only", f"only SELECT (or WITH ... SELECT) is allowed; this is a "
                         f"{kind.name} statement. {HINT_VIEWS}")
    _check_tree(con, sql, root)
    return sql


def _check_tree(con: duckdb.DuckDBPyConnection, sql: str, root: Path | None) -> None:
    rows = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchall()
    tree = json.loads(rows[0][0])
    if tree.get("error"):
        raise QueryError("syntax", "the query could not be checked: "
                         + _clean(str(tree.get("error_message", "")), root))
    scalars: set[str] = set()
    tables: set[str] = set()
    refs: list[tuple[str, str, str]] = []
    ctes: set[str] = set()
    _walk(tree, scalars, tables, refs, ctes)
    if denied := sorted(tables - TABLE_FUNCTIONS):
        raise QueryError("forbidden_function", f"table function {denied[0]}() is not allowed; "
                         f"{HINT_VIEWS} (allowed table functions: {', '.join(sorted(TABLE_FUNCTIONS))})")
    if denied := sorted(scalars & SCALAR_DENY):
        raise QueryError("forbidden_function", f"function {denied[0]}() is not allowed in queries")
    views = {r[0].lower() for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal")
             .fetchall()}
    for catalog, schema, name in refs:
        local = catalog.lower() in ("", "memory") and schema.lower() in ("", "main")
        info = not catalog and schema.lower() == "information_schema"
        if info or (local and name.lower() in views | ctes):
            continue
        shown = ".".join(p for p in (catalog, schema, name) if p)
        raise QueryError("forbidden_table", f"there is no view {_clean(shown, root)!r} for this tenant; "
                         f"available: {', '.join(sorted(views))}")


def _walk(node: Any, scalars: set[str], tables: set[str], refs: list[tuple[str, str, str]],
          ctes: set[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, scalars, tables, refs, ctes)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("type")
    if kind == "TABLE_FUNCTION" and isinstance(node.get("function"), dict):
        tables.add(str(node["function"].get("function_name", "")).lower())
    elif node.get("class") == "FUNCTION":
        scalars.add(str(node.get("function_name", "")).lower())
    elif kind == "BASE_TABLE":
        refs.append((str(node.get("catalog_name") or ""), str(node.get("schema_name") or ""),
                     str(node.get("table_name", ""))))
    cte_map = node.get("cte_map")
    if isinstance(cte_map, dict):
        for item in cte_map.get("map", []):
            if isinstance(item, dict) and "key" in item:
                ctes.add(str(item["key"]).lower())
    for value in node.values():
        if isinstance(value, dict | list):
            _walk(value, scalars, tables, refs, ctes)


def _clean(message: str, root: Path | None) -> str:
    """The DuckDB message without the data directory's absolute path (paths in the user's own SQL stay)."""
    if root is not None:
        message = message.replace(str(root) + "/", "").replace(str(root), "<tenant>")
        message = message.replace(str(root.parent.parent), "<data>")
    return message.strip()[:2000]


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)
