"""A tenant's DuckDB connection: one view per pipeline output, `signals`, `dead_letters`; nothing else.

The connection is in-memory and locked down before anyone else's SQL touches it:
`allowed_directories` = the tenant's directory, then `enable_external_access=false` (DuckDB 2.0.1
then lets file readers open only paths under the allowed directories — the views' own
`read_parquet` included — and refuses every other path, `..` tricks too), `temp_directory=''` (else
DuckDB silently allows its temp directory as well), no extension autoload/autoinstall, and finally
`lock_configuration=true` so no SET/RESET can undo any of it. Views list the files of each table's
manifest explicitly, so a query sees one committed state of every table, never a half-written
range or a superseded file.

Schema drift: `read_parquet(..., union_by_name=true)` fills columns missing from a file with NULL
and unifies scalar types (int and string read as VARCHAR). Where one batch wrote a nested value
(struct, list, map) and another a different kind of value in the same column, DuckDB cannot
unify them; that column then reads as JSON in every row (`to_json` per group of files).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from stream.sinks.parquet import KINDS, tenant_dir
from stream.sinks.table import MANIFEST, FileEntry, ParquetTable, unifiable

TENANT_VIEWS = ("signals", "dead_letters")

_SIGNALS_EMPTY = ("SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS pipeline, NULL::BIGINT AS version, "
                  "NULL::VARCHAR AS step, NULL::VARCHAR AS severity, NULL::VARCHAR AS title, "
                  "NULL::VARCHAR AS dedup, NULL::BIGINT AS count, NULL::VARCHAR AS first_seen, "
                  "NULL::VARCHAR AS last_seen, NULL::JSON AS context, NULL::JSON AS samples WHERE false")
_DEAD_LETTERS_EMPTY = ("SELECT NULL::VARCHAR AS pipeline, NULL::BIGINT AS version, NULL::VARCHAR AS step, "
                       "NULL::VARCHAR AS reason, NULL::VARCHAR AS message, NULL::JSON AS event, "
                       "NULL::BIGINT AS line, NULL::BIGINT AS first_offset, NULL::BIGINT AS last_offset, "
                       "NULL::VARCHAR AS written_at WHERE false")


def tenant_connection(data_dir: str | Path, tenant: str, *, threads: int = 2,
                      memory_limit: str = "1GB") -> duckdb.DuckDBPyConnection:
    """A fresh read-only connection over `tenant`'s outputs, locked to the tenant's directory."""
    root = tenant_dir(data_dir, tenant)
    con = duckdb.connect(":memory:", config={
        "autoinstall_known_extensions": False, "autoload_known_extensions": False,
        "allow_community_extensions": False, "allow_unsigned_extensions": False,
        "threads": threads, "memory_limit": memory_limit,
    })
    try:
        con.execute("SET temp_directory = ''")
        con.execute(f"SET allowed_directories = [{_literal(str(root) + '/')}]")
        con.execute("SET enable_external_access = false")
        for name, sql in tenant_views(root).items():
            con.execute(f"CREATE VIEW {_ident(name)} AS {sql}")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def tenant_views(root: Path) -> dict[str, str]:
    """View name -> SELECT for every table of the tenant, from the current manifests."""
    views: dict[str, str] = {}
    for table in _tables(root / "outputs"):
        files = table.live_files()
        if files and table.root.name not in TENANT_VIEWS:  # a pipeline may not shadow signals/dead_letters
            views[table.root.name] = drift_select(files)
    signal_files = [f for t in _tables(root / "signals") for f in t.live_files()]
    views["signals"] = (
        "SELECT * EXCLUDE (first_offset, last_offset) REPLACE (context::JSON AS context, samples::JSON AS "
        f"samples) FROM {_scan(signal_files)} QUALIFY row_number() OVER (PARTITION BY id "
        "ORDER BY last_offset DESC, count DESC, last_seen DESC) = 1" if signal_files else _SIGNALS_EMPTY)
    letter_files = [f for t in _tables(root / "dead_letters") for f in t.live_files()]
    views["dead_letters"] = (
        f"SELECT * REPLACE (event::JSON AS event) FROM {_scan(letter_files)}"
        if letter_files else _DEAD_LETTERS_EMPTY)
    return views


def drift_select(files: list[tuple[Path, FileEntry]]) -> str:
    """One SELECT over files whose schemas drifted; columns DuckDB cannot unify read as JSON."""
    trees: dict[str, list[Any]] = {}
    for _, entry in files:
        for name, tree in entry.columns.items():
            seen = trees.setdefault(name, [])
            if tree not in seen:
                seen.append(tree)
    conflicts = sorted(name for name, seen in trees.items()
                       if any(not unifiable(a, b) for i, a in enumerate(seen) for b in seen[i + 1:]))
    if not conflicts:
        return f"SELECT * FROM {_scan(files)}"
    groups: dict[str, list[tuple[Path, FileEntry]]] = {}
    for item in files:
        key = json.dumps([item[1].columns.get(name) for name in conflicts])
        groups.setdefault(key, []).append(item)
    selects = []
    for members in groups.values():
        present = [n for n in conflicts if any(n in entry.columns for _, entry in members)]
        replace = ", ".join(f"to_json({_ident(n)}) AS {_ident(n)}" for n in present)
        star = f"* REPLACE ({replace})" if replace else "*"
        selects.append(f"SELECT {star} FROM {_scan(members)}")
    return " UNION ALL BY NAME ".join(selects)


def _tables(kind_dir: Path) -> list[ParquetTable]:
    if kind_dir.name not in KINDS or not kind_dir.is_dir():
        return []
    return [ParquetTable(d) for d in sorted(kind_dir.iterdir()) if (d / MANIFEST).is_file()]


def _scan(files: list[tuple[Path, FileEntry]]) -> str:
    """read_parquet over exactly these files; no hive columns (a `date` field must stay the data's)."""
    paths = "[" + ", ".join(_literal(str(path)) for path, _ in files) + "]"
    return f"read_parquet({paths}, union_by_name = true, hive_partitioning = false)"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
