"""State files opened by several processes at once: `logbus serve` beside `logbus token`, `logbus
ingest --local` or `logbus query`, often on a data directory that none of them has used before."""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from server.lifecycle import RunStore
from server.reviews import Reviews
from server.tokens import TokenStore
from stream.alerts.outbox import Outbox
from stream.checkpoint import CheckpointStore
from stream.log.db import open_writer
from stream.registry import PipelineRegistry
from stream.statedb import open_wal

PROCESSES = 4
ROUNDS = 40


def _tenant_db(root: Path) -> object:
    return open_writer(root / "log.sqlite3")


def _reviews(root: Path) -> object:
    return Reviews(root, PipelineRegistry(root))


def _outbox(root: Path) -> object:
    return Outbox(root / "outbox.sqlite3")


def _with_migration(root: Path) -> object:
    """A schema plus a migration that adds a column when it is missing, as CheckpointStore does."""
    def setup(conn: sqlite3.Connection) -> None:
        conn.executescript("CREATE TABLE IF NOT EXISTS t (a INTEGER);")
        if "b" not in {row[1] for row in conn.execute("PRAGMA table_info(t)")}:
            conn.execute("ALTER TABLE t ADD COLUMN b TEXT")
    return open_wal(root / "migrated.sqlite3", setup)


OPENERS: dict[str, Callable[[Path], object]] = {
    "tenant log": _tenant_db,
    "tokens": TokenStore,
    "registry": PipelineRegistry,
    "reviews": _reviews,
    "alert outbox": _outbox,
    "runs": RunStore,
    "checkpoints": CheckpointStore,
    "open_wal with a migration": _with_migration,
}


def _open_when_all_ready(opener: Callable[[Path], object], roots: list[Path], barrier: Barrier,
                         errors: Queue[str]) -> None:
    for root in roots:
        barrier.wait(timeout=60)
        try:
            opened = opener(root)
        except sqlite3.OperationalError as exc:
            errors.put(f"{root.name}: {exc}")
        else:
            opened.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", OPENERS)
def test_processes_that_open_a_new_state_file_at_once_all_succeed(tmp_path: Path, name: str) -> None:
    # Without the set-up lock, the switch to WAL failed with "database is locked" (SQLite does not
    # wait for it) in about one round in four, and the migration with "duplicate column".
    roots = [tmp_path / f"data{i}" for i in range(ROUNDS)]
    for root in roots:
        root.mkdir()
    context = multiprocessing.get_context("fork")
    barrier, errors = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=_open_when_all_ready, args=(OPENERS[name], roots, barrier, errors))
                 for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)
    assert [process.exitcode for process in processes] == [0] * PROCESSES
    assert [errors.get() for _ in range(errors.qsize())] == []
    for root in roots:
        databases = [path for path in root.rglob("*.sqlite3") if path.stat().st_size > 0]
        assert databases
        for path in databases:
            assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
