"""Deployed pipelines: versions per tenant, which one is current, its status, and an audit log.

The executor runs what this registry says: for every pipeline whose status is `active`, its
current version. Deploying a spec makes version N+1 current (a running pipeline is hot-swapped);
`rollback` makes an earlier version current again (it is recorded as what it is, not copied into
a new version); `pause`/`resume` stop and continue a pipeline at its position; `retire` ends it.
Every action, the executor's own (an error budget spent), lands in the audit table with who did
it, when and why. Stored in SQLite under `<data>/state/registry.sqlite3` (WAL, fsync on commit).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from primitives.spec import NAME, PipelineSpec
from stream.statedb import open_wal

Status = Literal["active", "paused", "retired"]
STATUSES: tuple[Status, ...] = ("active", "paused", "retired")
DB_FILE = "registry.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    tenant TEXT NOT NULL, pipeline TEXT NOT NULL, version INTEGER NOT NULL,
    spec_text TEXT NOT NULL, code_hash TEXT NOT NULL, actor TEXT NOT NULL, created_at REAL NOT NULL,
    PRIMARY KEY (tenant, pipeline, version));
CREATE TABLE IF NOT EXISTS pipelines (
    tenant TEXT NOT NULL, pipeline TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '', updated_at REAL NOT NULL,
    PRIMARY KEY (tenant, pipeline));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, pipeline TEXT NOT NULL,
    version INTEGER, action TEXT NOT NULL, actor TEXT NOT NULL, at REAL NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_by_pipeline ON audit (tenant, pipeline, id);
"""


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)


class RegistryError(ValueError):
    """An action that the pipeline's state does not allow; the message says what to do instead."""


class UnknownPipeline(RegistryError):
    pass


@dataclass(frozen=True, slots=True)
class Deployed:
    """A pipeline as the executor should run it: its current version and status."""

    tenant: str
    name: str
    version: int
    status: Status
    reason: str
    spec_text: str
    code_hash: str
    updated_at: float

    def to_dict(self) -> dict[str, Any]:
        return {"tenant": self.tenant, "name": self.name, "version": self.version, "status": self.status,
                "reason": self.reason, "code_hash": self.code_hash, "updated_at": self.updated_at}


@dataclass(frozen=True, slots=True)
class VersionRecord:
    version: int
    code_hash: str
    actor: str
    created_at: float
    spec_text: str


class PipelineRegistry:
    """Deployed pipeline versions of every tenant. Thread-safe; one writer connection."""

    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir) / "state" / DB_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = open_wal(path, _create_schema)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- actions ---------------------------------------------------------------------------------

    def deploy(self, tenant: str, spec_text: str, spec: PipelineSpec, code_hash: str, actor: str) -> int:
        """Store `spec` as the pipeline's next version and make it current and active; returns it."""
        _check(tenant, "tenant")
        _check_actor(actor)
        with self._write() as conn:
            (latest,) = conn.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE tenant = ? AND "
                                     "pipeline = ?", (tenant, spec.name)).fetchone()
            version = int(latest) + 1
            now = time.time()
            conn.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                         (tenant, spec.name, version, spec_text, code_hash, actor, now))
            conn.execute("INSERT INTO pipelines VALUES (?1, ?2, ?3, 'active', '', ?4) "
                         "ON CONFLICT (tenant, pipeline) DO UPDATE SET version = ?3, status = 'active', "
                         "reason = '', updated_at = ?4",
                         (tenant, spec.name, version, now))
            self._audit(conn, tenant, spec.name, version, "deploy", actor,
                        {"code_hash": code_hash, "source": spec.source})
        return version

    def pause(self, tenant: str, name: str, actor: str, reason: str = "") -> Deployed:
        current = self.get(tenant, name)
        if current.status != "active":
            raise RegistryError(f"pipeline {name!r} is {current.status}, not active; only an active "
                                "pipeline can be paused")
        return self._set(current, "paused", actor, "pause", reason=reason)

    def resume(self, tenant: str, name: str, actor: str) -> Deployed:
        current = self.get(tenant, name)
        if current.status != "paused":
            raise RegistryError(f"pipeline {name!r} is {current.status}, not paused; resume applies to a "
                                "paused pipeline (a retired one is deployed again instead)")
        return self._set(current, "active", actor, "resume")

    def retire(self, tenant: str, name: str, actor: str, reason: str = "") -> Deployed:
        current = self.get(tenant, name)
        if current.status == "retired":
            raise RegistryError(f"pipeline {name!r} is already retired")
        return self._set(current, "retired", actor, "retire", reason=reason)

    def rollback(self, tenant: str, name: str, actor: str, to_version: int | None = None) -> Deployed:
        """Make an earlier version current (default: the one before the current one)."""
        current = self.get(tenant, name)
        if current.status == "retired":
            raise RegistryError(f"pipeline {name!r} is retired; deploy it again instead of rolling back")
        known = [v.version for v in self.versions(tenant, name)]
        target = to_version if to_version is not None else max((v for v in known if v < current.version),
                                                               default=None)
        if target is None:
            raise RegistryError(f"pipeline {name!r} has no version before {current.version} to roll back to")
        if target not in known or target == current.version:
            raise RegistryError(f"cannot roll back pipeline {name!r} to version {target}: choose one of "
                                f"{[v for v in known if v != current.version]}")
        return self._set(current, current.status, actor, "rollback", version=target,
                         detail={"from_version": current.version})

    def record(self, tenant: str, name: str, version: int | None, action: str, actor: str,
               detail: dict[str, Any] | None = None) -> None:
        """Add an audit entry for something done outside these actions (the executor's own events)."""
        with self._write() as conn:
            self._audit(conn, tenant, name, version, action, actor, detail or {})

    # -- reads -----------------------------------------------------------------------------------

    def get(self, tenant: str, name: str) -> Deployed:
        rows = self._select("p.tenant = ? AND p.pipeline = ?", (tenant, name))
        if not rows:
            raise UnknownPipeline(f"pipeline {name!r} is not deployed for tenant {tenant!r}; deploy it "
                                  "first (logbus pipelines apply FILE), or list them with `pipelines list`")
        return rows[0]

    def pipelines(self, tenant: str | None = None, status: Status | None = None) -> list[Deployed]:
        where, args = ["1"], []
        if tenant is not None:
            where.append("p.tenant = ?")
            args.append(tenant)
        if status is not None:
            if status not in STATUSES:
                raise RegistryError(f"status {status!r} is not one of {', '.join(STATUSES)}")
            where.append("p.status = ?")
            args.append(status)
        return self._select(" AND ".join(where), tuple(args))

    def versions(self, tenant: str, name: str) -> list[VersionRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT version, code_hash, actor, created_at, spec_text FROM versions "
                                      "WHERE tenant = ? AND pipeline = ? ORDER BY version",
                                      (tenant, name)).fetchall()
        return [VersionRecord(*row) for row in rows]

    def spec_text(self, tenant: str, name: str, version: int) -> str:
        with self._lock:
            row = self._conn.execute("SELECT spec_text FROM versions WHERE tenant = ? AND pipeline = ? AND "
                                     "version = ?", (tenant, name, version)).fetchone()
        if row is None:
            raise UnknownPipeline(f"pipeline {name!r} of tenant {tenant!r} has no version {version}")
        return str(row[0])

    def audit(self, tenant: str, name: str | None = None, *, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first: {id, pipeline, version, action, actor, at, detail}."""
        where, args = ("tenant = ? AND pipeline = ?", (tenant, name)) if name else ("tenant = ?", (tenant,))
        with self._lock:
            rows = self._conn.execute(f"SELECT id, pipeline, version, action, actor, at, detail FROM audit "
                                      f"WHERE {where} ORDER BY id DESC LIMIT ?",
                                      (*args, int(limit))).fetchall()
        keys = ("id", "pipeline", "version", "action", "actor", "at", "detail")
        return [{**dict(zip(keys, row, strict=True)), "detail": json.loads(row[6])} for row in rows]

    # -- plumbing --------------------------------------------------------------------------------

    def _set(self, current: Deployed, status: Status, actor: str, action: str, *, reason: str = "",
             version: int | None = None, detail: dict[str, Any] | None = None) -> Deployed:
        _check_actor(actor)
        version = current.version if version is None else version
        with self._write() as conn:
            row = conn.execute("SELECT version, status FROM pipelines WHERE tenant = ? AND pipeline = ?",
                               (current.tenant, current.name)).fetchone()
            if row is None or (int(row[0]), row[1]) != (current.version, current.status):
                raise RegistryError(f"pipeline {current.name!r} changed while {action} was applied "
                                    "(another actor); look at its status and try again")
            conn.execute("UPDATE pipelines SET version = ?, status = ?, reason = ?, updated_at = ? "
                         "WHERE tenant = ? AND pipeline = ?",
                         (version, status, reason, time.time(), current.tenant, current.name))
            self._audit(conn, current.tenant, current.name, version, action, actor,
                        {**(detail or {}), **({"reason": reason} if reason else {})})
        return self.get(current.tenant, current.name)

    def _select(self, where: str, args: tuple[Any, ...]) -> list[Deployed]:
        sql = ("SELECT p.tenant, p.pipeline, p.version, p.status, p.reason, v.spec_text, v.code_hash, "
               "p.updated_at FROM pipelines p JOIN versions v ON v.tenant = p.tenant AND "
               f"v.pipeline = p.pipeline AND v.version = p.version WHERE {where} "
               "ORDER BY p.tenant, p.pipeline")
        with self._lock:
            rows = self._conn.execute(sql, args).fetchall()
        return [Deployed(*row) for row in rows]

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @staticmethod
    def _audit(conn: sqlite3.Connection, tenant: str, name: str, version: int | None, action: str,
               actor: str, detail: dict[str, Any]) -> None:
        conn.execute("INSERT INTO audit (tenant, pipeline, version, action, actor, at, detail) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (tenant, name, version, action, actor, time.time(), json.dumps(detail, default=str)))


def _check(value: str, what: str) -> None:
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise RegistryError(f"{what} {value!r} is invalid: use [a-z0-9][a-z0-9_-]{{0,62}}")


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 200:
        raise RegistryError("actor must name who acts (1-200 characters), e.g. 'alice' or 'executor'")
