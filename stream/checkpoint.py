"""Per-pipeline checkpoints: where it has committed, where a restart must replay from, what is in flight.

A pipeline's position is per pipeline (not per version), so a hot swap continues exactly where
the old version committed. Window, rule and dedupe state is rebuilt on start by replaying the log
from `replay_from` with outputs suppressed; what replay cannot rebuild exactly (rule and derive
alert books: a chain of alerts that never pauses) is also stored, as `state`, with a commit at
most every few seconds (`state_offset` says which): a restart replays up to that offset, puts the
snapshot back, and replays the rest on top of it, when the same version resumes. To know how far back that is,
each committed batch leaves (first_offset, max event time) in a history; with the watermark W
(the largest event time committed) and the pipeline's state span S (the longest time an open
window, session, rule alert or dedupe key can still reach back), `replay_from` is the first
offset of the earliest batch whose max event time is >= W - S: every batch before it holds only
events older than anything open state can still need. History older than that is trimmed.

`pending` is the batch in flight: recorded before its outputs are written, cleared by its
commit. After a crash the same offset range is processed again first, so the sinks (idempotent
per offset range) replace what that batch had written instead of adding a second, differently
cut range beside it.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from stream.statedb import open_wal

DB_FILE = "checkpoints.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    tenant TEXT NOT NULL, pipeline TEXT NOT NULL, committed INTEGER NOT NULL, replay_from INTEGER NOT NULL,
    watermark INTEGER, pending_first INTEGER, pending_next INTEGER, version INTEGER, updated_at REAL NOT NULL,
    state TEXT, state_offset INTEGER, PRIMARY KEY (tenant, pipeline));
CREATE TABLE IF NOT EXISTS history (
    tenant TEXT NOT NULL, pipeline TEXT NOT NULL, first_offset INTEGER NOT NULL, max_time INTEGER,
    PRIMARY KEY (tenant, pipeline, first_offset));
"""


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(checkpoints)")}
    for column in ("state TEXT", "state_offset INTEGER"):  # data directories from before snapshots
        if column.split()[0] not in columns:
            conn.execute(f"ALTER TABLE checkpoints ADD COLUMN {column}")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    committed: int  # every event before this offset is processed and its outputs written
    replay_from: int  # rebuild state by replaying [replay_from, committed) on start
    watermark: int | None  # largest committed event time, microseconds
    pending: tuple[int, int] | None  # [first, next) of the batch in flight, if a run stopped inside it
    version: int | None  # version that made the last commit
    state: str | None = None  # JSON: what replay cannot rebuild (Engine.snapshot), as of state_offset
    state_offset: int | None = None  # the committed position when `state` was taken (<= committed)

    @property
    def restart_from(self) -> int:
        """Where a restart replays from: replay_from, or earlier when the state snapshot is older
        (its offset onwards is replayed on top of it). Retention must keep the log from here."""
        if self.state is not None and self.state_offset is not None:
            return min(self.replay_from, self.state_offset)
        return self.replay_from


class CheckpointStore:
    """Checkpoints of every pipeline under `<data>/state/checkpoints.sqlite3`. Thread-safe."""

    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir) / "state" / DB_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = open_wal(path, _create_schema)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def load(self, tenant: str, pipeline: str) -> Checkpoint | None:
        with self._lock:
            row = self._conn.execute("SELECT committed, replay_from, watermark, pending_first, pending_next, "
                                     "version, state, state_offset FROM checkpoints WHERE tenant = ? AND "
                                     "pipeline = ?", (tenant, pipeline)).fetchone()
        if row is None:
            return None
        pending = (int(row[3]), int(row[4])) if row[3] is not None else None
        return Checkpoint(int(row[0]), int(row[1]), row[2], pending, row[5], row[6], row[7])

    def start(self, tenant: str, pipeline: str, offset: int) -> Checkpoint:
        """Create the checkpoint of a new pipeline at `offset` (kept if one exists already)."""
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO checkpoints (tenant, pipeline, committed, replay_from, "
                         "updated_at) VALUES (?, ?, ?, ?, ?)",
                         (tenant, pipeline, offset, offset, time.time()))
        checkpoint = self.load(tenant, pipeline)
        assert checkpoint is not None
        return checkpoint

    def begin(self, tenant: str, pipeline: str, first: int, next_offset: int) -> None:
        """Record the batch [first, next_offset) as in flight, before any of its outputs are written."""
        with self._write() as conn:
            conn.execute("UPDATE checkpoints SET pending_first = ?, pending_next = ?, updated_at = ? "
                         "WHERE tenant = ? AND pipeline = ?",
                         (first, next_offset, time.time(), tenant, pipeline))

    def commit(self, tenant: str, pipeline: str, version: int, first: int, next_offset: int,
               max_time: int | None, span: int, state: str | None = None) -> Checkpoint:
        """The batch [first, next_offset) is done: move the position, the watermark and replay_from.

        `span` is the pipeline's state span in microseconds (0: stateless, nothing to replay).
        `state`, when given, is the engine's snapshot after this batch: stored in the same
        transaction with state_offset = next_offset (otherwise the previous snapshot stays).
        """
        with self._write() as conn:
            row = conn.execute("SELECT watermark FROM checkpoints WHERE tenant = ? AND pipeline = ?",
                               (tenant, pipeline)).fetchone()
            if row is None:
                raise KeyError(f"no checkpoint for pipeline {pipeline!r} of tenant {tenant!r}")
            watermark = row[0]
            if max_time is not None:
                watermark = max_time if watermark is None else max(watermark, max_time)
            replay_from = next_offset
            if span > 0:
                conn.execute("INSERT OR REPLACE INTO history VALUES (?, ?, ?, ?)",
                             (tenant, pipeline, first, max_time))
                if watermark is not None:
                    found = conn.execute("SELECT MIN(first_offset) FROM history WHERE tenant = ? AND "
                                         "pipeline = ? AND max_time >= ?",
                                         (tenant, pipeline, watermark - span)).fetchone()
                    if found[0] is not None:
                        replay_from = int(found[0])
            conn.execute("DELETE FROM history WHERE tenant = ? AND pipeline = ? AND first_offset < ?",
                         (tenant, pipeline, replay_from))
            conn.execute("UPDATE checkpoints SET committed = ?, replay_from = ?, watermark = ?, "
                         "pending_first = NULL, pending_next = NULL, version = ?, updated_at = ? "
                         "WHERE tenant = ? AND pipeline = ?",
                         (next_offset, replay_from, watermark, version, time.time(), tenant, pipeline))
            if state is not None:
                conn.execute("UPDATE checkpoints SET state = ?, state_offset = ? WHERE tenant = ? AND "
                             "pipeline = ?", (state, next_offset, tenant, pipeline))
        checkpoint = self.load(tenant, pipeline)
        assert checkpoint is not None
        return checkpoint

    def move(self, tenant: str, pipeline: str, offset: int) -> None:
        """Jump to `offset` and forget state history (retention deleted what the pipeline needed)."""
        with self._write() as conn:
            conn.execute("DELETE FROM history WHERE tenant = ? AND pipeline = ?", (tenant, pipeline))
            conn.execute("UPDATE checkpoints SET committed = ?, replay_from = ?, pending_first = NULL, "
                         "pending_next = NULL, state = NULL, state_offset = NULL, updated_at = ? "
                         "WHERE tenant = ? AND pipeline = ?",
                         (offset, offset, time.time(), tenant, pipeline))

    def delete(self, tenant: str, pipeline: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM history WHERE tenant = ? AND pipeline = ?", (tenant, pipeline))
            conn.execute("DELETE FROM checkpoints WHERE tenant = ? AND pipeline = ?", (tenant, pipeline))

    def _write(self) -> _Tx:
        return _Tx(self._conn, self._lock)


class _Tx:
    def __init__(self, conn: sqlite3.Connection, lock: threading.Lock) -> None:
        self.conn, self.lock = conn, lock

    def __enter__(self) -> sqlite3.Connection:
        self.lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.lock.release()
            raise
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.lock.release()
