"""Opening the SQLite files LogBus keeps its state in, safely from several processes at once.

Two processes often open the same state file: `logbus serve` and a `logbus token`, `logbus
ingest --local` or `logbus query` beside it. When the file is new, both switch it to WAL, and that
switch takes SQLite's exclusive lock without calling the busy handler: the loser gets "database is
locked" at once instead of waiting (seen in 1 of 4 trials with four processes; once in CI). And
two processes that both find a column missing both add it, and one fails with "duplicate column".
So the set-up of a connection (the switch, the schema, migrations) runs under an exclusive `flock`
on a file beside the database. It is held for a few statements, only while opening; reads and writes
afterwards never take it, and the busy timeout orders them as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


@contextlib.contextmanager
def setup_lock(path: Path) -> Iterator[None]:
    """Holds the set-up lock of the database at `path` (created beside it as `<name>.setup-lock`)."""
    with open(path.with_name(path.name + ".setup-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, also if we crash
        yield


def open_wal(path: Path, setup: Callable[[sqlite3.Connection], None], *,
             busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """An autocommit connection to `path` in WAL mode, shareable across threads (callers lock).

    `setup` (schema, pragmas, migrations) runs under the set-up lock, so two processes never
    interleave a migration either.
    """
    with setup_lock(path):
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            setup(conn)
        except BaseException:
            conn.close()
            raise
    return conn
