"""Retention: delete a stream's oldest batches past its age or size limit, never unprocessed ones.

Only whole batches go, and only from the front, so the retained offsets stay one contiguous range
[start_offset, end_offset). Age is ingest age (when the batch was appended), not event time: event
times are whatever the sender wrote. Size is the stored (compressed) size of the retained batches.

A registered consumer (a live pipeline) holds every batch it has not fully processed: retention
stops at the first such batch and the report names the stream, the consumers holding it and what
is held. `force=True` deletes anyway and reports which consumers lost which events.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Hold:
    """A consumer and the offset it has processed up to (exclusive)."""

    consumer: str
    position: int


@dataclass(slots=True)
class StreamRetention:
    """What retention did to one stream, and what it was stopped from doing."""

    tenant: str
    stream: str
    start_offset: int
    deleted_batches: int = 0
    deleted_events: int = 0
    deleted_bytes: int = 0
    held_batches: int = 0
    held_events: int = 0
    held_bytes: int = 0
    held_by: list[Hold] = field(default_factory=list)
    lost_by: list[Hold] = field(default_factory=list)  # force=True: consumers whose events were deleted
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class RetentionReport:
    streams: list[StreamRetention] = field(default_factory=list)
    idempotency_keys_expired: int = 0
    dead_letters_expired: int = 0

    @property
    def held(self) -> list[StreamRetention]:
        """Streams where a consumer kept expired batches from being deleted."""
        return [s for s in self.streams if s.held_by]

    def to_dict(self) -> dict[str, Any]:
        return {"streams": [s.to_dict() for s in self.streams],
                "idempotency_keys_expired": self.idempotency_keys_expired,
                "dead_letters_expired": self.dead_letters_expired}


def retain_stream(conn: sqlite3.Connection, tenant: str, stream: str, *, next_offset: int,
                  max_age_s: float | None, max_bytes: int | None, now: float,
                  force: bool) -> StreamRetention:
    """Run inside a write transaction on `conn`; deletes the expired prefix it is allowed to."""
    rows: list[tuple[int, int, int, float]] = conn.execute(
        "SELECT first_offset, count, bytes, appended_at FROM batches WHERE stream = ? ORDER BY first_offset",
        (stream,)).fetchall()
    remaining = sum(row[2] for row in rows)
    expired = 0
    for _first, _count, size, appended_at in rows:
        too_old = max_age_s is not None and now - appended_at > max_age_s
        too_big = max_bytes is not None and remaining > max_bytes
        if not (too_old or too_big):
            break
        remaining -= size
        expired += 1
    positions = [Hold(c, p) for c, p in conn.execute(
        "SELECT consumer, position FROM consumers WHERE stream = ? ORDER BY position, consumer", (stream,))]
    deletable = expired
    if not force and positions:
        slowest = positions[0].position
        deletable = 0
        while deletable < expired and rows[deletable][0] + rows[deletable][1] <= slowest:
            deletable += 1
    start = rows[deletable][0] if deletable < len(rows) else next_offset
    result = StreamRetention(tenant, stream, start_offset=start)
    gone, held = rows[:deletable], rows[deletable:expired]
    if gone:
        conn.execute("DELETE FROM batches WHERE stream = ? AND first_offset < ?", (stream, start))
        result.deleted_batches = len(gone)
        result.deleted_events = sum(row[1] for row in gone)
        result.deleted_bytes = sum(row[2] for row in gone)
        result.lost_by = [h for h in positions if h.position < start]
    if held:
        first_held_end = held[0][0] + held[0][1]
        result.held_batches = len(held)
        result.held_events = sum(row[1] for row in held)
        result.held_bytes = sum(row[2] for row in held)
        result.held_by = [h for h in positions if h.position < first_held_end]
    result.message = _describe(result)
    return result


def _describe(r: StreamRetention) -> str:
    parts = [f"stream {r.stream!r} (tenant {r.tenant!r}): deleted {r.deleted_batches} batches "
             f"({r.deleted_events:,} events, {r.deleted_bytes:,} bytes); "
             f"retained offsets start at {r.start_offset:,}"]
    if r.held_by:
        who = ", ".join(f"{h.consumer!r} at offset {h.position:,}" for h in r.held_by)
        parts.append(
            f"kept {r.held_batches} expired batches ({r.held_events:,} events, {r.held_bytes:,} bytes) "
            f"that consumers have not processed yet: {who}; they are deleted once those consumers catch up "
            "(or are removed), or now with force=True at the cost of those events")
    if r.lost_by:
        who = ", ".join(f"{h.consumer!r} (at offset {h.position:,})" for h in r.lost_by)
        parts.append(f"forced: consumers lost unprocessed events before offset {r.start_offset:,}: {who}")
    return "; ".join(parts)


def purge_expired(conn: sqlite3.Connection, *, now: float, idempotency_ttl_s: float,
                  dead_letter_ttl_s: float) -> tuple[int, int]:
    """Forget idempotency keys and dead letters past their time to live; returns both counts."""
    keys = conn.execute("DELETE FROM idempotency WHERE created_at < ?", (now - idempotency_ttl_s,)).rowcount
    dead = conn.execute("DELETE FROM dead_letters WHERE at < ?", (now - dead_letter_ttl_s,)).rowcount
    return keys, dead
