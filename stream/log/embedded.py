"""The embedded log: per-tenant streams of Arrow batches with durable offsets.

Each stream is a sequence of events numbered 0, 1, 2, ... in append order; an append stores its
events as one or more batches and the offset of an event is its batch's `first_offset` plus its
row index. Offsets are never reused, not even after retention deletes everything. An append is
acknowledged (returns) only after its transaction is fsynced (see `stream.log.db`).

Reads return one table: consecutive batches are concatenated with Arrow's permissive promotion
(a field that appears later is null before; int64 and float64 become float64; structs merge).
A batch whose schema cannot be unified with what came before (a field that changed from number
to string) ends the read at that batch boundary instead of rewriting anyone's values: the next
read starts there with the new schema. So `max_events` is an upper bound; a read returns fewer
at a schema break or at the end of the stream, and always at least one event when any remain.
`read_batches` returns the stored batches separately, with their ingest times, for callers that
want them as they were appended.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from primitives.batch import concat
from primitives.runtime import DeadLetter
from stream.log.codec import encode_table, time_bounds
from stream.log.db import TenantDB
from stream.log.errors import (
    OffsetOutOfRange,
    ReadOnlyLog,
    StreamLimitReached,
    UnknownStream,
)
from stream.log.names import (
    check_consumer,
    check_format,
    check_idempotency_key,
    check_positive,
    check_stream,
    check_tenant,
    check_time_field,
)
from stream.log.queries import (
    LIST_STREAMS,
    bounds,
    find_key,
    int_or_none,
    raw_preview,
    slices,
    unknown,
    valid_tenant,
)
from stream.log.records import AppendResult, StoredBatch, StreamInfo, StreamSettings
from stream.log.retention import RetentionReport, purge_expired, retain_stream
from stream.widths import may_join, schema_leaves

DB_FILE = "log.sqlite3"
DAY = 86_400.0


class _Unset:
    pass


UNSET: Any = _Unset()


class EmbeddedLog:
    """The durable log under `root` (one SQLite database per tenant: `root/<tenant>/log.sqlite3`).

    Thread-safe. `readonly=True` opens the databases read-only, for a process beside the writer.
    """

    def __init__(self, root: str | Path, *, readonly: bool = False, retention_age_s: float | None = 7 * DAY,
                 retention_bytes: int | None = None, idempotency_ttl_s: float = DAY,
                 dead_letter_ttl_s: float = 7 * DAY, max_streams: int = 1000) -> None:
        self.root = Path(root)
        self.readonly = readonly
        self.retention_age_s = check_positive(retention_age_s, "retention_age_s")
        self.retention_bytes = check_positive(retention_bytes, "retention_bytes")
        self.idempotency_ttl_s = idempotency_ttl_s
        self.dead_letter_ttl_s = dead_letter_ttl_s
        self.max_streams = max_streams
        self._dbs: dict[str, TenantDB] = {}
        self._dbs_lock = threading.Lock()
        if not readonly:
            self.root.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        with self._dbs_lock:
            for db in self._dbs.values():
                db.close()
            self._dbs.clear()

    def __enter__(self) -> EmbeddedLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tenants(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob(f"*/{DB_FILE}") if valid_tenant(p.parent.name))

    # -- streams -------------------------------------------------------------------------------

    def create_stream(self, tenant: str, stream: str, *, time_field: str | None = None,
                      format: str | None = None, retention_age_s: float | None = None,
                      retention_bytes: int | None = None) -> bool:
        """Create the stream if it does not exist; True when this call created it."""
        check_stream(stream)
        settings = StreamSettings(check_time_field(time_field), check_format(format),
                                  check_positive(retention_age_s, "retention_age_s"),
                                  int_or_none(check_positive(retention_bytes, "retention_bytes")))
        with self._write(tenant) as conn:
            if conn.execute("SELECT 1 FROM streams WHERE name = ?", (stream,)).fetchone():
                return False
            (count,) = conn.execute("SELECT COUNT(*) FROM streams").fetchone()
            if count >= self.max_streams:
                raise StreamLimitReached(
                    f"tenant {tenant!r} already has {count} streams, the limit; ingest into an existing "
                    "stream (list them with list_streams) instead of creating a new one")
            conn.execute("INSERT INTO streams (name, created_at, time_field, format, retention_age_s, "
                         "retention_bytes) VALUES (?, ?, ?, ?, ?, ?)",
                         (stream, time.time(), settings.time_field, settings.format,
                          settings.retention_age_s, settings.retention_bytes))
            return True

    def configure_stream(self, tenant: str, stream: str, *, time_field: str | None = UNSET,
                         format: str | None = UNSET, retention_age_s: float | None = UNSET,
                         retention_bytes: int | None = UNSET) -> StreamSettings:
        """Change the given settings of an existing stream (None resets one); returns them all."""
        changes: dict[str, Any] = {}
        if time_field is not UNSET:
            changes["time_field"] = check_time_field(time_field)
        if format is not UNSET:
            changes["format"] = check_format(format)
        if retention_age_s is not UNSET:
            changes["retention_age_s"] = check_positive(retention_age_s, "retention_age_s")
        if retention_bytes is not UNSET:
            changes["retention_bytes"] = int_or_none(check_positive(retention_bytes, "retention_bytes"))
        check_stream(stream)
        with self._write(tenant) as conn:
            self._stream_row(conn, tenant, stream)
            for column, value in changes.items():  # column names come from the fixed set above
                conn.execute(f"UPDATE streams SET {column} = ? WHERE name = ?", (value, stream))
        return self.settings(tenant, stream)

    def settings(self, tenant: str, stream: str) -> StreamSettings:
        with self._snapshot(tenant, stream) as conn:
            row = conn.execute("SELECT time_field, format, retention_age_s, retention_bytes FROM streams "
                               "WHERE name = ?", (stream,)).fetchone()
            return StreamSettings(*row)

    def has_stream(self, tenant: str, stream: str) -> bool:
        try:
            with self._snapshot(tenant, stream):
                return True
        except UnknownStream:
            return False

    def list_streams(self, tenant: str) -> list[StreamInfo]:
        db = self._db(tenant)
        if db is None:
            return []
        consumers: dict[str, dict[str, int]] = {}
        with db.reader() as conn:
            conn.execute("BEGIN")
            try:
                rows = conn.execute(LIST_STREAMS).fetchall()
                for stream, consumer, position in conn.execute(
                        "SELECT stream, consumer, position FROM consumers"):
                    consumers.setdefault(stream, {})[consumer] = position
            finally:
                conn.execute("COMMIT")
        return [StreamInfo(name=r[0], start_offset=r[1], end_offset=r[2], batches=r[3], bytes=r[4],
                           created_at=r[5], first_ingest_at=r[6], last_ingest_at=r[7], min_time=r[8],
                           max_time=r[9], dead_letters=r[10], settings=StreamSettings(*r[11:15]),
                           consumers=consumers.get(r[0], {})) for r in rows]

    def stream_info(self, tenant: str, stream: str) -> StreamInfo:
        check_stream(stream)
        for info in self.list_streams(tenant):
            if info.name == stream:
                return info
        raise UnknownStream(unknown(tenant, stream))

    def start_offset(self, tenant: str, stream: str) -> int:
        """The oldest retained offset (equal to end_offset when nothing is retained)."""
        with self._snapshot(tenant, stream) as conn:
            return bounds(conn, tenant, stream)[0]

    def end_offset(self, tenant: str, stream: str) -> int:
        """The offset the next appended event will get."""
        with self._snapshot(tenant, stream) as conn:
            return bounds(conn, tenant, stream)[1]

    # -- append --------------------------------------------------------------------------------

    def append(self, tenant: str, stream: str, data: pa.Table | Sequence[pa.Table], *,
               idempotency_key: str | None = None, fingerprint: str | None = None,
               receipt: dict[str, Any] | None = None,
               dead_letters: Sequence[DeadLetter] = ()) -> AppendResult:
        """Append events (and the request's dead letters) in one durable transaction.

        With `idempotency_key`, a second append with the same key (within the key's time to live)
        stores nothing and returns the first one's offsets and `receipt` with duplicate=True; if
        both carry a `fingerprint` and they differ, the key was reused for other content and
        IdempotencyConflict is raised. The stream must exist (`create_stream`).
        """
        check_stream(stream)
        tables = [data] if isinstance(data, pa.Table) else list(data)
        if not all(isinstance(t, pa.Table) for t in tables):
            raise TypeError("append takes a pyarrow.Table or a sequence of them")
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
            with self._snapshot(tenant, stream) as conn:  # a retry is answered without encoding
                earlier = find_key(conn, stream, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier
        time_field = self.settings(tenant, stream).time_field
        encoded = [(t.num_rows, encode_table(t), time_bounds(t, time_field)) for t in tables if t.num_rows]
        dead = [(stream, d.line, d.reason, d.message, raw_preview(d)) for d in dead_letters]
        receipt_json = json.dumps(receipt) if receipt is not None else None
        with self._write(tenant) as conn:
            if idempotency_key is not None:
                earlier = find_key(conn, stream, idempotency_key, fingerprint)
                if earlier is not None:
                    return earlier
            now = time.time()
            first = offset = self._stream_row(conn, tenant, stream)
            for count, blob, bounds in encoded:
                low, high = bounds if bounds is not None else (None, None)
                conn.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (stream, offset, count, now, len(blob), low, high, blob))
                offset += count
            conn.executemany("INSERT INTO dead_letters (stream, line, reason, message, raw, at) "
                             "VALUES (?, ?, ?, ?, ?, ?)", [(*row, now) for row in dead])
            conn.execute("UPDATE streams SET next_offset = ? WHERE name = ?", (offset, stream))
            if idempotency_key is not None:
                conn.execute("INSERT INTO idempotency VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (stream, idempotency_key, first, offset - first, len(dead), fingerprint,
                              receipt_json, now))
        return AppendResult(first, offset - first, False, len(dead), receipt)

    def find_append(self, tenant: str, stream: str, idempotency_key: str, *,
                    fingerprint: str | None = None) -> AppendResult | None:
        """The earlier append made with this key (duplicate=True), or None; checks the fingerprint."""
        check_idempotency_key(idempotency_key)
        try:
            with self._snapshot(tenant, stream) as conn:
                return find_key(conn, stream, idempotency_key, fingerprint)
        except UnknownStream:
            return None

    # -- read ----------------------------------------------------------------------------------

    def read(self, tenant: str, stream: str, from_offset: int,
             max_events: int = 10_000) -> tuple[pa.Table, int]:
        """Events from `from_offset` on, as one table, and the offset to read from next.

        Row i of the table is the event at offset `from_offset + i`. Raises OffsetOutOfRange
        for an offset before start_offset (deleted by retention) or after end_offset.
        """
        tables: list[pa.Table] = []
        schema: pa.Schema | None = None
        next_offset = from_offset
        rows = cells = 0
        with self._scan(tenant, stream, from_offset, max_events) as batches:
            for batch in batches:
                batch_cells = batch.table.num_rows * len(schema_leaves(batch.table.schema))
                if schema is not None:
                    try:
                        joined = pa.unify_schemas([schema, batch.table.schema], promote_options="permissive")
                    except (pa.ArrowTypeError, pa.ArrowInvalid):
                        break  # a type change: the next read starts at this batch
                    # batches of different fields (sparse input, stored within the readers'
                    # field budget) would cost rows x all their fields as one table: stop there
                    if not may_join(len(schema_leaves(joined)), rows + batch.table.num_rows,
                                    cells + batch_cells):
                        break
                    schema = joined
                else:
                    schema = batch.table.schema
                tables.append(batch.table)
                next_offset = batch.next_offset
                rows += batch.table.num_rows
                cells += batch_cells
        if not tables:
            return pa.table({}), next_offset
        if len(tables) == 1:
            return tables[0], next_offset
        return concat(tables), next_offset

    def read_batches(self, tenant: str, stream: str, from_offset: int,
                     max_events: int = 10_000) -> list[StoredBatch]:
        """The stored batches from `from_offset` on (the first sliced to start there), up to max_events."""
        with self._scan(tenant, stream, from_offset, max_events) as batches:
            return list(batches)

    @contextlib.contextmanager
    def _scan(self, tenant: str, stream: str, from_offset: int,
              max_events: int) -> Iterator[Iterator[StoredBatch]]:
        if not isinstance(from_offset, int) or isinstance(from_offset, bool):
            raise TypeError(f"from_offset must be an int, got {type(from_offset).__name__}")
        if not isinstance(max_events, int) or max_events < 1:
            raise ValueError(f"max_events must be a positive int, got {max_events!r}")
        with self._snapshot(tenant, stream) as conn:
            start, end = bounds(conn, tenant, stream)
            if not start <= from_offset <= end:
                raise OffsetOutOfRange(
                    f"offset {from_offset} of stream {stream!r} is outside the retained range "
                    f"[{start}, {end}]; read from {start} (oldest retained) or {end} (newest)",
                    start_offset=start, end_offset=end)
            cursor = conn.execute(
                "SELECT first_offset, count, appended_at, data FROM batches "
                "WHERE stream = ?1 AND first_offset >= "
                "(SELECT MAX(first_offset) FROM batches WHERE stream = ?1 AND first_offset <= ?2) "
                "ORDER BY first_offset", (stream, from_offset))
            try:
                yield slices(cursor, from_offset, max_events)
            finally:
                cursor.close()

    # -- consumers -----------------------------------------------------------------------------

    def register_consumer(self, tenant: str, stream: str, consumer: str, *,
                          start: Literal["earliest", "latest"] | int = "latest") -> int:
        """Register a consumer (idempotent) and return its position; from now on it holds retention."""
        check_stream(stream)
        check_consumer(consumer)
        with self._write(tenant) as conn:
            self._stream_row(conn, tenant, stream)
            row = conn.execute("SELECT position FROM consumers WHERE stream = ? AND consumer = ?",
                               (stream, consumer)).fetchone()
            if row is not None:
                return int(row[0])
            low, high = bounds(conn, tenant, stream)
            if start == "earliest":
                position = low
            elif start == "latest":
                position = high
            elif isinstance(start, int) and not isinstance(start, bool) and low <= start <= high:
                position = start
            else:
                raise OffsetOutOfRange(f"start {start!r} for consumer {consumer!r} must be 'earliest', "
                                       f"'latest' or an offset in [{low}, {high}]",
                                       start_offset=low, end_offset=high)
            conn.execute("INSERT INTO consumers VALUES (?, ?, ?, ?)",
                         (stream, consumer, position, time.time()))
            return position

    def commit_position(self, tenant: str, stream: str, consumer: str, offset: int) -> None:
        """Record that `consumer` has processed every event before `offset` (durably)."""
        check_stream(stream)
        check_consumer(consumer)
        with self._write(tenant) as conn:
            self._stream_row(conn, tenant, stream)
            low, high = bounds(conn, tenant, stream)
            if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= high:
                raise OffsetOutOfRange(f"position {offset!r} for consumer {consumer!r} of stream {stream!r} "
                                       f"must be an offset in [0, {high}]", start_offset=low, end_offset=high)
            conn.execute("INSERT INTO consumers VALUES (?1, ?2, ?3, ?4) ON CONFLICT (stream, consumer) "
                         "DO UPDATE SET position = ?3, updated_at = ?4",
                         (stream, consumer, offset, time.time()))

    def position(self, tenant: str, stream: str, consumer: str) -> int | None:
        check_consumer(consumer)
        with self._snapshot(tenant, stream) as conn:
            row = conn.execute("SELECT position FROM consumers WHERE stream = ? AND consumer = ?",
                               (stream, consumer)).fetchone()
            return None if row is None else int(row[0])

    def consumers(self, tenant: str, stream: str) -> dict[str, int]:
        with self._snapshot(tenant, stream) as conn:
            return dict(conn.execute("SELECT consumer, position FROM consumers WHERE stream = ? "
                                     "ORDER BY consumer", (stream,)).fetchall())

    def remove_consumer(self, tenant: str, stream: str, consumer: str) -> bool:
        """Forget a consumer (a retired pipeline) so that it no longer holds retention."""
        check_stream(stream)
        check_consumer(consumer)
        with self._write(tenant) as conn:
            cursor = conn.execute("DELETE FROM consumers WHERE stream = ? AND consumer = ?",
                                  (stream, consumer))
            return cursor.rowcount > 0

    # -- dead letters and retention ------------------------------------------------------------

    def dead_letters(self, tenant: str, stream: str | None = None, *,
                     limit: int = 100) -> list[dict[str, Any]]:
        """The newest ingest dead letters of the tenant (or of one stream), newest first."""
        db = self._db(tenant)
        if db is None:
            return []
        where, args = ("WHERE stream = ?", [check_stream(stream)]) if stream is not None else ("", [])
        sql = (f"SELECT id, stream, line, reason, message, raw, at FROM dead_letters {where} "
               "ORDER BY id DESC LIMIT ?")
        with db.reader() as conn:
            rows = conn.execute(sql, [*args, int(limit)]).fetchall()
        keys = ("id", "stream", "line", "reason", "message", "raw", "at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def apply_retention(self, now: float | None = None, *, force: bool = False,
                        tenant: str | None = None) -> RetentionReport:
        """Delete expired batches, idempotency keys and dead letters in every tenant (or one)."""
        now = time.time() if now is None else now
        report = RetentionReport()
        for name in [tenant] if tenant is not None else self.tenants():
            if self._db(name) is None:
                continue
            with self._write(name) as conn:
                streams = conn.execute("SELECT name, next_offset, retention_age_s, retention_bytes "
                                       "FROM streams ORDER BY name").fetchall()
                for stream, next_offset, age, size in streams:
                    age = age if age is not None else self.retention_age_s
                    size = size if size is not None else int_or_none(self.retention_bytes)
                    if age is None and size is None:
                        continue
                    report.streams.append(retain_stream(conn, name, stream, next_offset=next_offset,
                                                        max_age_s=age, max_bytes=size, now=now, force=force))
                keys, dead = purge_expired(conn, now=now, idempotency_ttl_s=self.idempotency_ttl_s,
                                           dead_letter_ttl_s=self.dead_letter_ttl_s)
                report.idempotency_keys_expired += keys
                report.dead_letters_expired += dead
            if any(s.deleted_batches for s in report.streams if s.tenant == name):
                db = self._db(name)
                assert db is not None
                with db.write_lock:
                    db.writer().execute("PRAGMA incremental_vacuum")  # hand freed pages back to the disk
        return report

    # -- plumbing ------------------------------------------------------------------------------

    def _db(self, tenant: str, *, create: bool = False) -> TenantDB | None:
        check_tenant(tenant)
        with self._dbs_lock:
            db = self._dbs.get(tenant)
            if db is not None:
                return db
            path = self.root / tenant / DB_FILE
            if not path.exists():
                if not create:
                    return None
                path.parent.mkdir(parents=True, exist_ok=True)
            db = TenantDB(path, readonly=self.readonly)
            if not self.readonly:
                with db.write_lock:  # schema and WAL mode exist before any reader opens the file
                    db.writer()
            elif not db.has_schema():  # another process is creating it: nothing to read yet
                db.close()
                return None
            self._dbs[tenant] = db
            return db

    @contextlib.contextmanager
    def _write(self, tenant: str) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise ReadOnlyLog("this log was opened read-only; write through the process that owns it "
                              "(the server), or open it without readonly=True")
        db = self._db(tenant, create=True)
        assert db is not None
        with db.write_lock:
            conn = db.writer()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):  # keep the original error, not the rollback's
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _snapshot(self, tenant: str, stream: str) -> Iterator[sqlite3.Connection]:
        """A read transaction in which `stream` exists (UnknownStream otherwise)."""
        check_stream(stream)
        db = self._db(tenant)
        if db is None:
            raise UnknownStream(unknown(tenant, stream))
        with db.reader() as conn:
            conn.execute("BEGIN")
            try:
                self._stream_row(conn, tenant, stream)
                yield conn
            finally:
                conn.execute("COMMIT")

    @staticmethod
    def _stream_row(conn: sqlite3.Connection, tenant: str, stream: str) -> int:
        row = conn.execute("SELECT next_offset FROM streams WHERE name = ?", (stream,)).fetchone()
        if row is None:
            raise UnknownStream(unknown(tenant, stream))
        return int(row[0])
