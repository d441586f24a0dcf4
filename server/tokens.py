"""Bearer tokens: each bound to one tenant and one role, stored only as a hash.

A token is `lb_` + 32 random bytes (base64url). The store keeps sha256(token), never the token:
someone who reads `<data>/state/tokens.sqlite3` cannot authenticate with what they read. sha256
(not a slow password hash) is right here because the secret has 256 bits of entropy; there is
nothing to brute-force. The lookup is by hash, and the stored and computed hashes are compared
again with `hmac.compare_digest`, so no timing of a string comparison depends on the secret.

Roles (DESIGN §5): `author` (agent tools), `reviewer` (approve/reject), `ingest` (write events),
`admin` (everything). The tenant always comes from the token, never from a request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from stream.log import InvalidName, check_tenant
from stream.statedb import open_wal

Role = Literal["author", "reviewer", "ingest", "admin"]
ROLES: tuple[Role, ...] = ("author", "reviewer", "ingest", "admin")
PREFIX = "lb_"
DB_FILE = "tokens.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT, hash TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL,
    role TEXT NOT NULL, label TEXT NOT NULL DEFAULT '', created_at REAL NOT NULL, revoked_at REAL);
"""


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)


class TokenError(ValueError):
    """A token request that cannot be honoured; the message says what to do instead."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a valid token speaks for."""

    token_id: int
    tenant: str
    role: Role


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenStore:
    """Tokens of every tenant under `<data>/state/tokens.sqlite3`. Thread-safe; several processes
    (the server and the CLI) may use the file at once."""

    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir) / "state" / DB_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = open_wal(path, _create_schema)
        self._lock = threading.Lock()
        path.chmod(0o600)  # hashes only, but nobody else needs to read them

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def create(self, tenant: str, role: str, *, label: str = "") -> str:
        """A new token for `tenant` with `role`; the only time the token itself is ever seen."""
        try:
            check_tenant(tenant)
        except InvalidName as exc:
            raise TokenError(str(exc)) from None
        if role not in ROLES:
            raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")
        if len(label) > 200:
            raise TokenError("label must be at most 200 characters")
        token = PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        with self._lock:
            self._conn.execute("INSERT INTO tokens (hash, tenant, role, label, created_at) "
                               "VALUES (?, ?, ?, ?, ?)",
                               (hash_token(token), tenant, role, label, time.time()))
        return token

    def verify(self, token: str) -> Principal | None:
        """The tenant and role of a valid, unrevoked token; None for anything else."""
        if not isinstance(token, str) or not token.startswith(PREFIX) or len(token) > 200:
            return None
        digest = hash_token(token)
        with self._lock:
            row = self._conn.execute("SELECT id, hash, tenant, role FROM tokens WHERE hash = ? AND "
                                     "revoked_at IS NULL", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(str(row[1]), digest):
            return None
        return Principal(int(row[0]), str(row[2]), cast(Role, row[3]))

    def list(self, tenant: str | None = None) -> list[dict[str, Any]]:
        """Tokens (never their hashes), oldest first."""
        where, args = ("WHERE tenant = ?", (tenant,)) if tenant is not None else ("", ())
        with self._lock:
            rows = self._conn.execute(f"SELECT id, tenant, role, label, created_at, revoked_at FROM tokens "
                                      f"{where} ORDER BY id", args).fetchall()
        keys = ("id", "tenant", "role", "label", "created_at", "revoked_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def revoke(self, token_id: int) -> bool:
        """Revoke a token by its id (from `list`); False when no such active token exists."""
        with self._lock:
            cur = self._conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                                     (time.time(), int(token_id)))
        return cur.rowcount == 1
