"""SQL helpers of the embedded log, shared by its read and write paths."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator

from primitives.batch import slice_rows
from primitives.runtime import DeadLetter
from stream.log.codec import decode_table
from stream.log.errors import IdempotencyConflict, InvalidName, UnknownStream
from stream.log.names import check_tenant
from stream.log.records import AppendResult, StoredBatch

LIST_STREAMS = """
SELECT s.name, COALESCE(b.start, s.next_offset), s.next_offset, COALESCE(b.n, 0), COALESCE(b.bytes, 0),
       s.created_at, b.first_at, b.last_at, b.min_time, b.max_time,
       (SELECT COUNT(*) FROM dead_letters d WHERE d.stream = s.name),
       s.time_field, s.format, s.retention_age_s, s.retention_bytes
FROM streams s LEFT JOIN (
    SELECT stream, MIN(first_offset) AS start, COUNT(*) AS n, SUM(bytes) AS bytes,
           MIN(appended_at) AS first_at, MAX(appended_at) AS last_at,
           MIN(min_time) AS min_time, MAX(max_time) AS max_time
    FROM batches GROUP BY stream) b ON b.stream = s.name
ORDER BY s.name
"""


def slices(cursor: sqlite3.Cursor, from_offset: int, max_events: int) -> Iterator[StoredBatch]:
    remaining = max_events
    for first, count, appended_at, blob in cursor:
        table = decode_table(blob)
        skip = max(0, from_offset - first)
        take = min(count - skip, remaining)
        if skip or take < count:
            table = slice_rows(table, skip, take)
        yield StoredBatch(first + skip, appended_at, table)
        remaining -= take
        if remaining <= 0:
            return


def bounds(conn: sqlite3.Connection, tenant: str, stream: str) -> tuple[int, int]:
    row = conn.execute("SELECT (SELECT MIN(first_offset) FROM batches WHERE stream = ?1), next_offset "
                       "FROM streams WHERE name = ?1", (stream,)).fetchone()
    if row is None:
        raise UnknownStream(unknown(tenant, stream))
    end = int(row[1])
    return (end if row[0] is None else int(row[0])), end


def find_key(conn: sqlite3.Connection, stream: str, key: str, fingerprint: str | None) -> AppendResult | None:
    row = conn.execute("SELECT first_offset, count, dead_letters, fingerprint, receipt FROM idempotency "
                       "WHERE stream = ? AND key = ?", (stream, key)).fetchone()
    if row is None:
        return None
    first, count, dead, stored, receipt = row
    if fingerprint is not None and stored is not None and fingerprint != stored:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used on stream {stream!r} for different content; "
            "use a new key for new content, and the same key only to retry the same request")
    return AppendResult(first, count, True, dead, json.loads(receipt) if receipt is not None else None)


def raw_preview(dead: DeadLetter) -> str | None:
    raw = dead.event.get("raw") if isinstance(dead.event, dict) else None
    return None if raw is None else str(raw)[:1000]


def valid_tenant(name: str) -> bool:
    try:
        check_tenant(name)
    except InvalidName:
        return False
    return True


def int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def unknown(tenant: str, stream: str) -> str:
    return (f"stream {stream!r} does not exist for tenant {tenant!r}; ingest into it to create it "
            "(POST /ingest/{stream}), or list the existing ones with list_streams")
