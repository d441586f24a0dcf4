"""The process's one locked-down in-memory DuckDB database, and connections to it.

Opening an in-memory database costs 25-30 ms here; a connection to an open one (`cursor()`)
costs well under a millisecond. Every SQL step, and the expression checker, used to open a
database of its own, so a pipeline with five SQL steps paid ~150 ms before its first event, on
every `validate_pipeline` and `test_pipeline` call. Now the process opens one database, with
external access off and its configuration locked before anyone can query it, and each user takes
its own connection:

- a view one connection registers (the `batch` a step queries) is invisible to the others;
- a query runs on the thread that calls it (`threads = 1` only stops DuckDB adding workers of
  its own), so pipelines on different threads still run in parallel;
- nothing one pipeline runs changes what the others see: `sqlcheck` admits expressions only,
  `sqlexec` runs nothing but single SELECT queries (a `CREATE MACRO lower(x) ...` would shadow
  the builtin for every connection), and the locked configuration cannot be changed from any
  connection.

duckdb is imported on first use: a pipeline without SQL never loads it (~50 ms).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import duckdb

LOCKED_CONFIG: dict[str, Any] = {
    "enable_external_access": False,
    "autoload_known_extensions": False,
    "autoinstall_known_extensions": False,
    "allow_community_extensions": False,
    "threads": 1,
    "lock_configuration": True,
}

_LOCK = threading.Lock()
_DATABASE: duckdb.DuckDBPyConnection | None = None


def locked_connection() -> duckdb.DuckDBPyConnection:
    """A new connection of its own to the shared locked-down database."""
    global _DATABASE
    with _LOCK:
        if _DATABASE is None:
            import duckdb

            _DATABASE = duckdb.connect(":memory:", config=LOCKED_CONFIG)
        return _DATABASE.cursor()
