"""One SQLite database per tenant, in WAL mode, committed with synchronous=FULL.

Why SQLite and not segment files: an append is one transaction that stores the batch, the
stream's next offset, the request's dead letters and its idempotency key together, so a crash
leaves all of them or none of them, and SQLite's WAL recovery is what decides, not code of ours.
With `synchronous=FULL` the WAL is fsynced before COMMIT returns, so an acknowledged append
survives `kill -9` and power loss. WAL gives one writer and any number of readers, in other
threads and other processes (a read-only `logbus query`), each seeing a consistent snapshot
without blocking the writer. Batches are a few MiB at most, where SQLite blobs are about as fast
as files; retention is a DELETE plus an incremental vacuum instead of segment bookkeeping.

One database per tenant keeps tenants' data in separate files (a tenant's directory can be
handed to its locked-down DuckDB connection alone) and lets tenants write in parallel.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from stream.statedb import setup_lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name            TEXT PRIMARY KEY,
    created_at      REAL NOT NULL,
    time_field      TEXT,
    format          TEXT,
    retention_age_s REAL,
    retention_bytes INTEGER,
    next_offset     INTEGER NOT NULL DEFAULT 0
);
-- `data` is the last column: queries over the other columns never read its overflow pages.
CREATE TABLE IF NOT EXISTS batches (
    stream       TEXT NOT NULL,
    first_offset INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    appended_at  REAL NOT NULL,
    bytes        INTEGER NOT NULL,
    min_time     REAL,
    max_time     REAL,
    data         BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS batches_by_offset ON batches (stream, first_offset);
CREATE TABLE IF NOT EXISTS idempotency (
    stream       TEXT NOT NULL,
    key          TEXT NOT NULL,
    first_offset INTEGER NOT NULL,
    count        INTEGER NOT NULL,
    dead_letters INTEGER NOT NULL DEFAULT 0,
    fingerprint  TEXT,
    receipt      TEXT,
    created_at   REAL NOT NULL,
    PRIMARY KEY (stream, key)
);
CREATE INDEX IF NOT EXISTS idempotency_by_age ON idempotency (created_at);
CREATE TABLE IF NOT EXISTS consumers (
    stream     TEXT NOT NULL,
    consumer   TEXT NOT NULL,
    position   INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (stream, consumer)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id      INTEGER PRIMARY KEY,
    stream  TEXT NOT NULL,
    line    INTEGER,
    reason  TEXT NOT NULL,
    message TEXT NOT NULL,
    raw     TEXT,
    at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_stream ON dead_letters (stream, at);
"""

BUSY_TIMEOUT_MS = 30_000


def open_writer(path: Path) -> sqlite3.Connection:
    """The tenant's read-write connection; creates the database on first use."""
    with setup_lock(path):  # see stream.statedb: two processes may create the same tenant
        return _open_writer(path)


def _open_writer(path: Path) -> sqlite3.Connection:
    fresh = not path.exists()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    if fresh:
        # Both must be set before the first table exists; 16 KiB pages suit multi-MiB blobs.
        conn.execute("PRAGMA page_size = 16384")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    # The WAL grows to the largest transaction; after a checkpoint, give the disk space back.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # in one transaction: a reader in another process sees the whole schema or none of it
    conn.executescript(f"BEGIN IMMEDIATE;\n{SCHEMA}\nCOMMIT;")
    return conn


def open_reader(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """A connection for reads. `readonly` opens the file read-only (another process writes)."""
    uri = f"{path.resolve().as_uri()}?mode=ro" if readonly else path.resolve().as_uri()
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA query_only = 1")
    return conn


class TenantDB:
    """A tenant's connections: one writer behind a lock, and a pool of readers.

    A reader is borrowed for one read transaction and handed back, so the pool grows to the
    number of concurrent reads, not the number of threads that ever read.

    The lock orders this process's appends; BEGIN IMMEDIATE orders them against another writing
    process (a `logbus ingest` in local mode beside the server), so offsets stay unique either way.
    """

    def __init__(self, path: Path, *, readonly: bool) -> None:
        self.path = path
        self.readonly = readonly
        self.write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._idle: list[sqlite3.Connection] = []
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def writer(self) -> sqlite3.Connection:
        """Call with `write_lock` held."""
        if self._writer is None:
            self._writer = self._track(open_writer(self.path))
        return self._writer

    @contextlib.contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._track(open_reader(self.path, readonly=self.readonly))
        try:
            yield conn
        finally:
            with self._lock:
                if conn in self._all:  # not closed meanwhile
                    self._idle.append(conn)

    def has_schema(self) -> bool:
        """Whether the writer has created the tables yet: a process that opens the file read-only
        can find it between its creation and the writer's first transaction."""
        with self.reader() as conn:
            row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'streams'")
            return row.fetchone() is not None

    def _track(self, conn: sqlite3.Connection) -> sqlite3.Connection:
        with self._lock:
            self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
            self._idle.clear()
        self._writer = None
