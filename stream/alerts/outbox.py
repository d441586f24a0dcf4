"""The alert outbox: signals waiting to reach their destinations, durable in one SQLite file.

`enqueue` commits before it returns (WAL, synchronous=FULL), so the executor may commit its log
position right after: an alert is either in the outbox or will be recomputed by the replay.

One row is one state of one signal (its `count`) for one destination. Deduplication is per
(tenant, signal id, destination): a state whose count is not above the highest already queued is
a replay (or an out-of-order older state) and is dropped, so replays after a crash never deliver
twice and a receiver never sees an alert's count go down. A later fold (higher count) is a new row
and is delivered as an update.

Updates are coalesced, the way PagerDuty and Panther users expect: the first firing goes out at
once; while a state is still pending (the destination is slow or down), a newer state of the same
signal supersedes it, taking over its attempt count and backoff, so a receiver that comes back
gets the latest state once instead of a burst of stale ones. A state being delivered (leased) is
never superseded, and no newer state of its signal is claimed until it finishes, so each receiver
sees a signal's states in order.

Claims use leases: `claim` marks rows `leased_until` in a BEGIN IMMEDIATE transaction, so two
threads or processes never take the same row. A lease that runs out (its deliverer died) makes
the row claimable again; that is the one way a receiver can see a state twice, and the
`Idempotency-Key` header lets it tell.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from primitives.spec import AlertDestination
from stream.log.names import check_tenant
from stream.statedb import open_wal

__all__ = ["Claim", "Outbox", "destination_label"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    tenant          TEXT NOT NULL,
    pipeline        TEXT NOT NULL,
    dest_key        TEXT NOT NULL,
    destination     TEXT NOT NULL,
    signal_id       TEXT NOT NULL,
    count           INTEGER NOT NULL,
    signal          TEXT NOT NULL,
    state           TEXT NOT NULL,        -- pending | delivered | failed | superseded
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    leased_until    REAL,
    lease_token     TEXT,
    last_error      TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    delivered_at    REAL,
    UNIQUE (tenant, signal_id, dest_key, count)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at);
"""


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)

BUSY_TIMEOUT_MS = 30_000
STATES = ("pending", "delivered", "failed", "superseded")


@dataclass(frozen=True)
class Claim:
    """One leased delivery: deliver it, then report with `Outbox.delivered/retry/failed`."""

    id: int
    token: str
    tenant: str
    pipeline: str
    destination: dict[str, Any]
    signal: dict[str, Any]
    attempts: int       # attempts made before this one
    update: bool        # an earlier state of this signal already reached this destination


class Outbox:
    """Durable, deduplicated queue of (signal state, destination) deliveries in `path`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = open_wal(self.path, _create_schema, busy_timeout_s=BUSY_TIMEOUT_MS / 1000)
        self._lock = threading.Lock()
        # Set on every enqueue, so an in-process Deliverer wakes at once instead of at its next poll.
        self.changed = threading.Event()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE orders it against other processes' writers."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def enqueue(self, tenant: str, pipeline: str, destination: dict[str, Any],
                signal: dict[str, Any]) -> bool:
        """Queue one signal state for one destination; durable on return.

        Returns False when it was dropped as a replay: a state with this count or a higher one is
        already queued (or delivered) for this signal and destination.
        """
        return self.enqueue_many(tenant, pipeline, [destination], [signal]) == 1

    def enqueue_many(self, tenant: str, pipeline: str, destinations: Iterable[dict[str, Any]],
                     signals: Iterable[dict[str, Any]]) -> int:
        """Queue every signal for every destination in one transaction (one fsync); returns rows queued."""
        check_tenant(tenant)
        dests = [_check_destination(d) for d in destinations]
        sigs = [(_check_signal(s), s) for s in signals]
        queued, now = 0, time.time()
        with self._write() as conn:
            for dest_json, dest_key in dests:
                for (signal_id, count), signal in sigs:
                    queued += _insert(conn, now, tenant, pipeline, dest_json, dest_key, signal_id, count,
                                      signal)
        if queued:
            self.changed.set()
        return queued

    def claim(self, *, limit: int, lease_s: float, due_by: float | None = None) -> list[Claim]:
        """Lease up to `limit` deliveries due by `due_by` (default now): the latest pending state of
        signals with no state in flight. A round passes its start time as `due_by`, so items it
        retried or put back are not claimed again in the same round."""
        now = time.time()
        due_by = now if due_by is None else min(due_by, now)
        token = uuid.uuid4().hex
        with self._write() as conn:
            _supersede(conn, now)
            rows = conn.execute(
                """SELECT id, tenant, pipeline, destination, signal, attempts,
                          EXISTS (SELECT 1 FROM deliveries e WHERE e.tenant = d.tenant
                                  AND e.signal_id = d.signal_id AND e.dest_key = d.dest_key
                                  AND e.state = 'delivered') AS updated
                   FROM deliveries d
                   WHERE state = 'pending' AND next_attempt_at <= ?3
                     AND (leased_until IS NULL OR leased_until <= ?1)
                     AND NOT EXISTS (SELECT 1 FROM deliveries o WHERE o.tenant = d.tenant
                                     AND o.signal_id = d.signal_id AND o.dest_key = d.dest_key
                                     AND o.state = 'pending' AND o.id != d.id
                                     AND (o.count > d.count OR o.leased_until > ?1))
                   ORDER BY next_attempt_at, id LIMIT ?2""", (now, limit, due_by)).fetchall()
            conn.executemany("UPDATE deliveries SET leased_until = ?, lease_token = ? WHERE id = ?",
                             [(now + lease_s, token, row[0]) for row in rows])
        return [Claim(id=r[0], token=token, tenant=r[1], pipeline=r[2], destination=json.loads(r[3]),
                      signal=json.loads(r[4]), attempts=r[5], update=bool(r[6])) for r in rows]

    def delivered(self, claim: Claim) -> bool:
        """Mark delivered; False if the lease had run out and another deliverer owns the row now."""
        return self._finish(claim, "state = 'delivered', delivered_at = ?1, attempts = attempts + 1, "
                                   "last_error = NULL", ())

    def retry(self, claim: Claim, *, at: float, error: str) -> bool:
        """Count a failed attempt and make the row due again at `at`."""
        return self._finish(claim, "next_attempt_at = ?2, attempts = attempts + 1, last_error = ?3",
                            (at, error))

    def failed(self, claim: Claim, *, error: str, attempted: bool = True) -> bool:
        """Give up on this delivery for good; it stays visible in `status()` with the error."""
        return self._finish(claim, f"state = 'failed', attempts = attempts + {int(attempted)}, "
                                   "last_error = ?2", (error,))

    def release(self, claim: Claim, *, at: float) -> bool:
        """Hand a claim back unattempted (its host just failed, or the deliverer is stopping)."""
        return self._finish(claim, "next_attempt_at = MAX(next_attempt_at, ?2)", (at,))

    def _finish(self, claim: Claim, assignments: str, params: tuple[Any, ...]) -> bool:
        now = time.time()
        with self._write() as conn:
            cur = conn.execute(
                f"UPDATE deliveries SET {assignments}, leased_until = NULL, lease_token = NULL, "
                f"updated_at = ?1 "
                f"WHERE id = ?{len(params) + 2} AND lease_token = ?{len(params) + 3} AND state = 'pending'",
                (now, *params, claim.id, claim.token))
            return cur.rowcount == 1

    def next_due_at(self) -> float | None:
        """When the earliest pending delivery becomes due (or its lease runs out); None when idle."""
        with self._lock:
            row = self._conn.execute("SELECT MIN(MAX(next_attempt_at, COALESCE(leased_until, 0))) "
                                     "FROM deliveries WHERE state = 'pending'").fetchone()
        return None if row[0] is None else float(row[0])

    def status(self, *, tenant: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Counts per state, and the failed and pending deliveries with their last error.

        Destinations are shown by `destination_label` (no URL path, no headers): webhook URLs
        and headers often carry secrets.
        """
        where, params = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        with self._lock:
            counts = dict(self._conn.execute(f"SELECT state, COUNT(*) FROM deliveries {where} GROUP BY state",
                                             params).fetchall())
            listed = {state: self._conn.execute(
                f"SELECT id, tenant, pipeline, destination, signal_id, count, attempts, next_attempt_at, "
                f"last_error, updated_at FROM deliveries {where + ' AND' if where else 'WHERE'} state = ? "
                f"ORDER BY id DESC LIMIT ?", (*params, state, limit)).fetchall()
                for state in ("failed", "pending")}
        out: dict[str, Any] = {"counts": {state: counts.get(state, 0) for state in STATES}}
        for state, rows in listed.items():
            out[state] = [{"id": r[0], "tenant": r[1], "pipeline": r[2],
                           "destination": destination_label(json.loads(r[3])), "signal_id": r[4],
                           "count": r[5],
                           "attempts": r[6], "next_attempt_at": r[7], "last_error": r[8], "updated_at": r[9]}
                          for r in rows]
        return out

    def prune(self, *, older_than_s: float) -> int:
        """Delete finished rows older than this, keeping each signal's highest state (the dedup mark).

        Replays only come from the retained log, so `older_than_s` at least the log's retention is safe.
        """
        cutoff = time.time() - older_than_s
        with self._write() as conn:
            cur = conn.execute(
                """DELETE FROM deliveries WHERE state != 'pending' AND updated_at < ? AND EXISTS (
                       SELECT 1 FROM deliveries h WHERE h.tenant = deliveries.tenant
                       AND h.signal_id = deliveries.signal_id AND h.dest_key = deliveries.dest_key
                       AND h.count > deliveries.count)""", (cutoff,))
            return cur.rowcount


def _insert(conn: sqlite3.Connection, now: float, tenant: str, pipeline: str, dest_json: str, dest_key: str,
            signal_id: str, count: int, signal: dict[str, Any]) -> int:
    """Insert one state unless a state with a count >= this one exists; supersede older pending ones."""
    key = (tenant, signal_id, dest_key)
    highest = conn.execute("SELECT MAX(count) FROM deliveries WHERE tenant = ? AND signal_id = ? "
                           "AND dest_key = ?", key).fetchone()[0]
    if highest is not None and count <= highest:
        return 0
    # The newest pending state inherits the superseded one's attempts and backoff: an outage is not
    # retried faster because the alert keeps updating.
    carried = conn.execute(
        "SELECT MAX(attempts), MAX(next_attempt_at) FROM deliveries WHERE tenant = ? AND signal_id = ? "
        "AND dest_key = ? AND state = 'pending' AND (leased_until IS NULL OR leased_until <= ?)",
        (*key, now)).fetchone()
    conn.execute(
        "INSERT INTO deliveries (tenant, pipeline, dest_key, destination, signal_id, count, signal, state, "
        "attempts, next_attempt_at, created_at, updated_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
        (tenant, pipeline, dest_key, dest_json, signal_id, count, json.dumps(signal, default=str),
         carried[0] or 0, max(now, carried[1] or 0), now, now))
    _supersede(conn, now, key)
    return 1


def _supersede(conn: sqlite3.Connection, now: float, key: tuple[str, str, str] | None = None) -> None:
    """Pending, unleased states with a newer pending state of the same signal and destination are skipped."""
    narrow = "AND tenant = ? AND signal_id = ? AND dest_key = ?" if key else ""
    conn.execute(
        f"""UPDATE deliveries SET state = 'superseded', updated_at = ?
            WHERE state = 'pending' AND (leased_until IS NULL OR leased_until <= ?) {narrow}
              AND EXISTS (SELECT 1 FROM deliveries n WHERE n.tenant = deliveries.tenant
                          AND n.signal_id = deliveries.signal_id AND n.dest_key = deliveries.dest_key
                          AND n.state = 'pending' AND n.count > deliveries.count)""",
        (now, now, *(key or ())))


def _check_destination(destination: dict[str, Any]) -> tuple[str, str]:
    """Canonical JSON of a valid destination and its key (a hash: headers may hold secrets)."""
    try:
        model = AlertDestination.model_validate(destination)
    except ValidationError as exc:
        raise ValueError(f"alert destination {destination_label(destination)} is invalid: "
                         f"{exc.errors()[0]['msg']}; use webhook: {{url: ...}}, file: <name> "
                         "or stdout: {}") from exc
    canonical = json.dumps(model.model_dump(mode="json", exclude_none=True), sort_keys=True,
                           separators=(",", ":"))
    return canonical, hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _check_signal(signal: dict[str, Any]) -> tuple[str, int]:
    if not isinstance(signal, dict):
        raise ValueError(f"a signal to enqueue is a dict; got {type(signal).__name__}")
    signal_id, count = signal.get("id"), signal.get("count")
    if not isinstance(signal_id, str) or not signal_id:
        raise ValueError(f"signal field 'id' must be a non-empty string; got {signal_id!r}")
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"signal {signal_id} field 'count' must be an integer >= 1; got {count!r}")
    return signal_id, count


def destination_label(destination: Any) -> str:
    """A destination as shown in status and errors: the webhook's origin only, never its path or headers."""
    if not isinstance(destination, dict):
        return repr(type(destination).__name__)
    webhook = destination.get("webhook")
    if isinstance(webhook, dict) and isinstance(webhook.get("url"), str):
        try:
            parts = urlsplit(webhook["url"])
            port = f":{parts.port}" if parts.port else ""
        except ValueError:
            return "webhook (invalid URL)"
        return f"webhook {parts.scheme}://{parts.hostname}{port}/…"
    if isinstance(destination.get("file"), str):
        return f"file {destination['file']}"
    return "stdout" if "stdout" in destination else f"{sorted(destination)}"
