"""Review requests: an agent's submitted pipeline waits here until a person decides.

`submit_pipeline` creates a request in `pending_review` holding the exact spec text, its code_hash
and the passing run. A reviewer (role `reviewer` or `admin`, never the request's author) approves
it, which deploys that exact text through the registry (or the executor, which also starts it),
or rejects it with a comment. The agent reads decisions and comments with `get_pipeline`. Every
step lands in the registry's audit log: requested, approved (then the registry's own `deploy`),
rejected, commented. Stored in `<data>/state/reviews.sqlite3`.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from primitives.spec import code_hash as hash_of
from primitives.spec import load_spec
from stream.registry import PipelineRegistry
from stream.statedb import open_wal

if TYPE_CHECKING:
    from stream.executor import Executor

REVIEWER_ROLES = ("reviewer", "admin")
DECISIONS = ("pending_review", "approved", "rejected")
SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    review_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, pipeline TEXT NOT NULL, code_hash TEXT NOT NULL,
    run_id TEXT NOT NULL, spec_text TEXT NOT NULL, summary TEXT NOT NULL, author TEXT NOT NULL,
    status TEXT NOT NULL, created_at REAL NOT NULL, reviewer TEXT, decided_at REAL, comment TEXT,
    version INTEGER);
CREATE INDEX IF NOT EXISTS reviews_by_pipeline ON reviews (tenant, pipeline, created_at);
CREATE TABLE IF NOT EXISTS comments (
    id INTEGER PRIMARY KEY AUTOINCREMENT, review_id TEXT NOT NULL, author TEXT NOT NULL, text TEXT NOT NULL,
    at REAL NOT NULL);
"""


def _create_schema(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA synchronous = FULL")
    conn.executescript(SCHEMA)
COLUMNS = ("review_id", "pipeline", "code_hash", "run_id", "spec_text", "summary", "author", "status",
           "created_at", "reviewer", "decided_at", "comment", "version")


class ReviewError(ValueError):
    """A review action that is not allowed; `code`: forbidden, unknown_review, already_decided, invalid."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Reviews:
    """Review requests of every tenant; each call names its tenant (from the caller's credential)."""

    def __init__(self, data_dir: str | Path, registry: PipelineRegistry, *,
                 executor: Executor | None = None) -> None:
        path = Path(data_dir) / "state" / "reviews.sqlite3"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = open_wal(path, _create_schema)
        self._lock = threading.Lock()
        self.registry, self.executor = registry, executor

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def create(self, tenant: str, pipeline: str, spec_text: str, code_hash: str, run_id: str, summary: str,
               *, author: str) -> dict[str, Any]:
        """Open a request; the same pending (tenant, pipeline, code_hash) is returned, not duplicated."""
        with self._lock:
            row = self._conn.execute("SELECT review_id FROM reviews WHERE tenant = ? AND pipeline = ? AND "
                                     "code_hash = ? AND status = 'pending_review'",
                                     (tenant, pipeline, code_hash)).fetchone()
            if row is None:
                review_id = "rev_" + secrets.token_hex(6)
                self._conn.execute("INSERT INTO reviews (review_id, tenant, pipeline, code_hash, run_id, "
                                   "spec_text, summary, author, status, created_at) VALUES "
                                   "(?, ?, ?, ?, ?, ?, ?, ?, 'pending_review', ?)",
                                   (review_id, tenant, pipeline, code_hash, run_id, spec_text, summary,
                                    author, time.time()))
        if row is not None:
            return self.show(tenant, str(row[0]))
        self.registry.record(tenant, pipeline, None, "review_requested", author,
                             {"review_id": review_id, "code_hash": code_hash, "run_id": run_id})
        return self.show(tenant, review_id)

    def list(self, tenant: str, *, status: str | None = None,
             pipeline: str | None = None) -> list[dict[str, Any]]:
        """Newest first."""
        where, args = ["tenant = ?"], [tenant]
        if status is not None:
            if status not in DECISIONS:
                raise ReviewError("invalid", f"status {status!r} is not one of {', '.join(DECISIONS)}")
            where.append("status = ?")
            args.append(status)
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline)
        with self._lock:
            rows = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM reviews WHERE {' AND '.join(where)} "
                                      "ORDER BY created_at DESC, review_id", args).fetchall()
            notes = self._conn.execute("SELECT c.review_id, c.author, c.text, c.at FROM comments c "
                                       "JOIN reviews r ON r.review_id = c.review_id "
                                       f"WHERE r.{' AND r.'.join(where)} "
                                       "ORDER BY c.id", args).fetchall()
        reviews = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
        for review in reviews:
            review["comments"] = [{"author": a, "text": t, "at": at} for rid, a, t, at in notes
                                  if rid == review["review_id"]]
        return reviews

    def show(self, tenant: str, review_id: str) -> dict[str, Any]:
        """The request with its comments; another tenant's id reads as unknown."""
        with self._lock:
            row = self._conn.execute(f"SELECT {', '.join(COLUMNS)} FROM reviews WHERE tenant = ? AND "
                                     "review_id = ?", (tenant, review_id)).fetchone()
            comments = self._conn.execute("SELECT author, text, at FROM comments WHERE review_id = ? "
                                          "ORDER BY id", (review_id,)).fetchall()
        if row is None:
            raise ReviewError("unknown_review", f"there is no review {review_id!r} for tenant {tenant!r}; "
                              "list them with `logbus review list`")
        review = dict(zip(COLUMNS, row, strict=True))
        review["comments"] = [{"author": a, "text": t, "at": at} for a, t, at in comments]
        return review

    def approve(self, tenant: str, review_id: str, *, reviewer: str, role: str,
                comment: str = "") -> dict[str, Any]:
        """Deploy the reviewed text as the pipeline's next version and record the decision."""
        review = self._decidable(tenant, review_id, reviewer, role)
        spec = load_spec(review["spec_text"])
        if hash_of(spec) != review["code_hash"]:  # the stored text is what was tested, or nothing deploys
            raise ReviewError("invalid", f"review {review_id} no longer matches its tested code_hash; "
                              "reject it")
        self._claim(review_id, "approved", reviewer, comment)
        try:
            if self.executor is not None:
                version = self.executor.deploy(tenant, review["spec_text"], actor=reviewer)
            else:
                version = self.registry.deploy(tenant, review["spec_text"], spec, review["code_hash"],
                                               reviewer)
        except BaseException:
            with self._lock:
                self._conn.execute("UPDATE reviews SET status = 'pending_review', reviewer = NULL, "
                                   "decided_at = NULL, comment = NULL WHERE review_id = ?", (review_id,))
            raise
        with self._lock:
            self._conn.execute("UPDATE reviews SET version = ? WHERE review_id = ?", (version, review_id))
        self.registry.record(tenant, review["pipeline"], version, "review_approved", reviewer,
                             {"review_id": review_id, "comment": comment, "code_hash": review["code_hash"]})
        return self.show(tenant, review_id)

    def reject(self, tenant: str, review_id: str, *, reviewer: str, role: str,
               comment: str) -> dict[str, Any]:
        """Refuse the request; the comment tells the agent what to change."""
        if not comment.strip():
            raise ReviewError("invalid", "a rejection needs a comment that tells the author what to change")
        review = self._decidable(tenant, review_id, reviewer, role)
        self._claim(review_id, "rejected", reviewer, comment)
        self.registry.record(tenant, review["pipeline"], None, "review_rejected", reviewer,
                             {"review_id": review_id, "comment": comment})
        return self.show(tenant, review_id)

    def comment(self, tenant: str, review_id: str, *, author: str, text: str) -> dict[str, Any]:
        review = self.show(tenant, review_id)
        if not text.strip():
            raise ReviewError("invalid", "the comment is empty")
        with self._lock:
            self._conn.execute("INSERT INTO comments (review_id, author, text, at) VALUES (?, ?, ?, ?)",
                               (review_id, author, text, time.time()))
        self.registry.record(tenant, review["pipeline"], None, "review_commented", author,
                             {"review_id": review_id, "text": text})
        return self.show(tenant, review_id)

    def _decidable(self, tenant: str, review_id: str, reviewer: str, role: str) -> dict[str, Any]:
        if role not in REVIEWER_ROLES:
            raise ReviewError("forbidden", f"deciding a review needs the reviewer (or admin) role; this "
                              f"credential has {role!r}. Agents cannot approve their own changes")
        review = self.show(tenant, review_id)
        if reviewer == review["author"]:
            raise ReviewError("forbidden", f"{reviewer!r} wrote this request and cannot decide it; another "
                              "reviewer must")
        if review["status"] != "pending_review":
            raise ReviewError("already_decided", f"review {review_id} is already {review['status']} by "
                              f"{review['reviewer']}")
        return review

    def _claim(self, review_id: str, status: str, reviewer: str, comment: str) -> None:
        """Decide atomically: of two reviewers deciding at once, exactly one wins."""
        with self._lock:
            cursor = self._conn.execute("UPDATE reviews SET status = ?, reviewer = ?, decided_at = ?, "
                                        "comment = ? WHERE review_id = ? AND status = 'pending_review'",
                                        (status, reviewer, time.time(), comment, review_id))
        if cursor.rowcount != 1:
            raise ReviewError("already_decided", f"review {review_id} was decided by someone else meanwhile")
