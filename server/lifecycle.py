"""The agent-facing operations for one tenant: look at streams, validate, test, submit, observe.

Plain Python, no transport: `server.mcp_server` wraps each method in a short MCP tool, and the
tenant comes from the `AgentContext` the transport built from a credential, never from an
argument. Every problem the agent can fix is raised as `LifecycleError` with a stable `code`
and `Diagnostic`s that name the step/line and say what to do instead.

The lifecycle the tools walk: `validate` (static) -> `test` (sandbox run on real events, stored
as a run tied to the pipeline's code_hash) -> `submit` (refused unless the run passed for exactly
this code_hash; opens a review) -> a reviewer approves through `server.reviews` -> deployed.
Runs live in `<data>/state/runs.sqlite3`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from primitives.batch import EventError, is_json_field, slice_rows, to_events
from primitives.diagnostics import Diagnostic
from primitives.eventtime import format_time, micros_of
from primitives.spec import load_spec
from primitives.sqlcheck import check_expression
from primitives.sqlexec import SqlBatch, SqlError
from server.guide import guide_text
from server.reviews import ReviewError, Reviews
from stream.log import EmbeddedLog, InvalidName, UnknownStream
from stream.registry import STATUSES, PipelineRegistry, UnknownPipeline
from stream.sinks.query import QueryError, run_query
from stream.sinks.views import tenant_connection
from stream.statedb import open_wal
from stream.trial import TrialReport, run_trial, run_trial_spec
from stream.validation import validate_pipeline

if TYPE_CHECKING:
    from sandbox import SandboxPool
    from stream.executor import Executor

AUTHOR_ROLES = ("author", "admin")
SAMPLE_WINDOW = 10_000  # sample_events/describe_stream look at this many recent events
TEST_DEFAULT, TEST_MAX = 1_000, 10_000
TAP_WINDOW = 1_000
TAP_WAIT_S = 5.0  # how long a live tap waits for its events
# What a test result shows by default; `detail=True` shows all the trial kept (stream.trial caps it).
# Concise keeps the counts whole, so an agent sees how much it is not looking at.
CONCISE_TEST = {"outputs": 5, "signals": 20, "errors": 10, "dead_letter_samples": 3, "logs": 10}
CONCISE_PIPELINE_ERRORS = 5
SEVERITIES = ("info", "low", "medium", "high", "critical")
TIME_NAMES = ("timestamp", "ts", "time", "@timestamp", "event_time", "datetime", "date")
OFFSET = "__lb_offset"  # an internal column: sqlcheck refuses __lb_ names in agent SQL
RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, pipeline TEXT NOT NULL, code_hash TEXT NOT NULL,
    ok INTEGER NOT NULL, summary TEXT NOT NULL, created_at REAL NOT NULL);
"""


def _create_runs_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(RUNS_SCHEMA)


Progress = Callable[[int, int | None, str], None]  # (done, total, message)


class LifecycleError(Exception):
    """A request the agent can fix. `code` is stable; `payload` is what the tool still reports."""

    def __init__(self, code: str, message: str, diagnostics: list[Diagnostic] | None = None,
                 payload: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.diagnostics = diagnostics or []
        self.payload = payload or {}


@dataclass
class AgentContext:
    """Who is calling (from the credential) and the components they act through."""

    tenant: str
    role: str
    data_dir: Path
    log: EmbeddedLog
    pool: SandboxPool | None
    executor: Executor | None = None
    actor: str = "agent"
    _registry: PipelineRegistry | None = field(default=None, init=False, repr=False)
    _reviews: Reviews | None = field(default=None, init=False, repr=False)
    _runs: RunStore | None = field(default=None, init=False, repr=False)

    @property
    def registry(self) -> PipelineRegistry:
        if self._registry is None:
            self._registry = self.executor.registry if self.executor else PipelineRegistry(self.data_dir)
        return self._registry

    @property
    def reviews(self) -> Reviews:
        if self._reviews is None:
            self._reviews = Reviews(self.data_dir, self.registry, executor=self.executor)
        return self._reviews

    @property
    def runs(self) -> RunStore:
        if self._runs is None:
            self._runs = RunStore(self.data_dir)
        return self._runs


class RunStore:
    """Test runs: which code_hash was tested, whether it passed, and the counts (not the events)."""

    def __init__(self, data_dir: str | Path) -> None:
        path = Path(data_dir) / "state" / "runs.sqlite3"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = open_wal(path, _create_runs_schema)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(self, tenant: str, pipeline: str, code_hash: str, ok: bool, summary: dict[str, Any]) -> str:
        run_id = "run_" + secrets.token_hex(8)
        with self._lock:
            self._conn.execute("INSERT INTO runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (run_id, tenant, pipeline, code_hash, int(ok), json.dumps(summary),
                                time.time()))
        return run_id

    def get(self, tenant: str, run_id: str) -> dict[str, Any] | None:
        """The run, only if it belongs to `tenant` (another tenant's run id reads as unknown)."""
        with self._lock:
            row = self._conn.execute("SELECT run_id, pipeline, code_hash, ok, summary, created_at FROM runs "
                                     "WHERE run_id = ? AND tenant = ?", (run_id, tenant)).fetchone()
        if row is None:
            return None
        return {"run_id": row[0], "pipeline": row[1], "code_hash": row[2], "ok": bool(row[3]),
                "summary": json.loads(row[4]), "created_at": row[5]}


class Lifecycle:
    """The agent tools' logic for the context's tenant."""

    def __init__(self, context: AgentContext) -> None:
        self.ctx = context

    # -- looking at streams -------------------------------------------------------------------------

    def list_streams(self) -> dict[str, Any]:
        self._allow()
        streams = []
        for info in self.ctx.log.list_streams(self.ctx.tenant):
            item = info.to_dict()
            span = (info.last_ingest_at or 0) - (info.first_ingest_at or 0)
            item["rate_events_per_s"] = round(info.events / span, 3) if span > 0 else None
            item["min_time"] = _iso(info.min_time)
            item["max_time"] = _iso(info.max_time)
            sample = self._recent(info.name, 200)[0] if info.events else pa.table({})
            by_fill = sorted(_profile(sample), key=lambda f: f["null_rate"])
            item["top_fields"] = [f["field"] for f in by_fill][:10]
            streams.append(item)
        return {"streams": streams}

    def describe_stream(self, stream: str, detail: bool = False) -> dict[str, Any]:
        """Fields with type and null rate; with `detail`, also examples and top values."""
        self._allow()
        settings = self._settings(stream)
        table, _ = self._recent(stream, 1_000)
        fields = _profile(table, detail=detail)
        names = [f["field"] for f in fields]
        time_field = settings.time_field or next((n for n in TIME_NAMES if n in names), None)
        hint = None
        if names == ["message"]:
            hint = ("events are raw text lines in `message`: start the pipeline with a parse step "
                    "(format: syslog | json | kv | clf, or a regex with named groups)")
        return {"stream": stream, "sampled": table.num_rows, "time_field": time_field,
                "format": settings.format, "fields": fields, "hint": hint}

    def sample_events(self, stream: str, limit: int = 20, where: str | None = None) -> dict[str, Any]:
        self._allow()
        _bounded("limit", limit, 1, 500)
        self._settings(stream)
        table, first = self._recent(stream, SAMPLE_WINDOW if where else limit)
        table = table.append_column(OFFSET, pa.array(range(first, first + table.num_rows), pa.int64()))
        scanned = table.num_rows
        if where:
            problems = check_expression(where, role="predicate")
            if problems:
                raise LifecycleError("invalid_where", "the `where` expression was refused",
                                     [d.with_step("where") for d in problems])
            try:
                table = SqlBatch().filter(table, where)
            except SqlError as exc:
                problem = Diagnostic("sql-runtime", str(exc), step="where",
                                     hint="cast explicitly, e.g. TRY_CAST(x AS INTEGER)")
                raise LifecycleError("invalid_where", f"the `where` expression failed: {exc}",
                                     [problem]) from None
        table = slice_rows(table, max(0, table.num_rows - limit))
        offsets = table.column(OFFSET).to_pylist()
        return {"stream": stream, "scanned": scanned, "matched_shown": table.num_rows,
                "events": to_events(table.drop_columns([OFFSET])), "offsets": offsets}

    # -- validate, test, submit ---------------------------------------------------------------------

    def get_guide(self, topic: str | None = None) -> str:
        try:
            return guide_text(topic)
        except KeyError as exc:
            raise LifecycleError("unknown_topic", str(exc.args[0])) from None

    def validate(self, pipeline: str) -> dict[str, Any]:
        self._allow()
        validation = validate_pipeline(pipeline)
        if not validation.valid:
            raise LifecycleError("invalid_pipeline", _count(validation.diagnostics, "problem") + " found; "
                                 "fix them and validate again", validation.diagnostics, validation.to_dict())
        return validation.to_dict()

    def test(self, pipeline: str, stream: str | None = None, events: list[dict[str, Any]] | None = None,
             limit: int | None = None, tests: list[dict[str, Any]] | None = None,
             progress: Progress | None = None, detail: bool = False) -> dict[str, Any]:
        """Validate, run on a sample in the sandbox, run the inline cases; store the run.

        The result shows every count, but by default only the first items of each list
        (`CONCISE_TEST`), with `omitted` saying how many were left out; `detail` shows them all.
        """
        self._allow()
        validation = validate_pipeline(pipeline)
        if not validation.valid or validation.spec is None or validation.code_hash is None:
            raise LifecycleError("invalid_pipeline", _count(validation.diagnostics, "problem")
                                 + " found before running; fix them first", validation.diagnostics,
                                 validation.to_dict())
        spec, code_hash = validation.spec, validation.code_hash
        limit = _bounded("limit", TEST_DEFAULT if limit is None else limit, 1, TEST_MAX)
        if events is None:
            source = stream or spec.source
            self._settings(source)
            events = to_events(self._recent(source, limit)[0])
        if not events:
            raise LifecycleError("no_events", f"there are no events to test on in stream "
                                 f"{stream or spec.source!r}; ingest some, or pass `events` inline")
        total = min(limit, len(events))

        def tick(done: int) -> None:
            if progress:
                progress(done, total, f"{done} of {total} events")

        try:
            report = run_trial(pipeline, events=events, limit=limit, pool=self.ctx.pool,
                               tenant=self.ctx.tenant, progress=tick)
            cases = [self._case(pipeline, i, case) for i, case in enumerate(tests or [])]
        except EventError as exc:  # the agent's inline events: its input, not our failure
            raise LifecycleError("invalid_argument", str(exc)) from None
        ok = report.ok and all(c["passed"] for c in cases)
        summary = _trial_summary(report)
        run_id = self.ctx.runs.add(self.ctx.tenant, spec.name, code_hash, ok, {**summary, "tests": cases})
        result = {"run_id": run_id, "code_hash": code_hash, "ok": ok, **summary, "tests": cases,
                  "outputs": report.outputs, "signals": report.signals,
                  "dead_letter_samples": report.dead_letter_samples, "logs": report.logs,
                  "seconds": round(report.seconds, 4), "omitted": {}}
        if not detail:
            for key, keep in CONCISE_TEST.items():
                if len(result[key]) > keep:
                    result["omitted"][key] = len(result[key]) - keep
                    result[key] = result[key][:keep]
        if not ok:
            diagnostics = _run_diagnostics(report, cases)
            raise LifecycleError("test_failed", f"run {run_id} failed: " + _count(diagnostics, "problem") +
                                 "; fix them and test again (a failed run cannot be submitted)",
                                 diagnostics, result)
        return result

    def submit(self, pipeline: str, run_id: str, summary: str) -> dict[str, Any]:
        self._allow()
        if not summary.strip():
            raise LifecycleError("invalid_argument", "summary is empty: say in a sentence or two what the "
                                 "pipeline does and why, for the reviewer")
        validation = validate_pipeline(pipeline)
        if not validation.valid or validation.spec is None or validation.code_hash is None:
            raise LifecycleError("invalid_pipeline", "the pipeline does not validate; fix it, test it and "
                                 "submit the passing run", validation.diagnostics)
        run = self.ctx.runs.get(self.ctx.tenant, run_id)
        if run is None:
            raise LifecycleError("unknown_run", f"there is no test run {run_id!r}; call test_pipeline on "
                                 "this exact pipeline and submit with the run_id it returns")
        if run["code_hash"] != validation.code_hash:
            raise LifecycleError("code_hash_mismatch", f"run {run_id} tested code_hash "
                                 f"{run['code_hash'][:12]}, but this pipeline is "
                                 f"{validation.code_hash[:12]}: it changed since the test; test this exact "
                                 "text and submit with the new run_id")
        if not run["ok"]:
            raise LifecycleError("run_failed", f"run {run_id} did not pass; fix the problems it reported, "
                                 "test again and submit the passing run_id")
        review = self.ctx.reviews.create(self.ctx.tenant, validation.spec.name, pipeline,
                                         validation.code_hash, run_id, summary.strip(), author=self.ctx.actor)
        versions = self.ctx.registry.versions(self.ctx.tenant, review["pipeline"])
        return {"review_id": review["review_id"], "status": review["status"], "pipeline": review["pipeline"],
                "version": (versions[-1].version if versions else 0) + 1,
                "code_hash": review["code_hash"], "run_id": run_id,
                "how_to_decide": f"a reviewer runs `logbus review show {review['review_id']}`, then "
                                 f"`logbus review approve {review['review_id']}` (deploys it) or "
                                 f"`logbus review reject {review['review_id']} --comment WHY`; follow it "
                                 f"with get_pipeline({review['pipeline']!r})"}

    # -- observing ----------------------------------------------------------------------------------

    def list_pipelines(self, status: str | None = None) -> dict[str, Any]:
        self._allow()
        if status is not None and status not in (*STATUSES, "pending_review"):
            raise LifecycleError("invalid_argument", f"status {status!r} is not one of "
                                 f"{', '.join((*STATUSES, 'pending_review'))}")
        pending = {r["pipeline"]: r for r in self.ctx.reviews.list(self.ctx.tenant, status="pending_review")}
        items: dict[str, dict[str, Any]] = {}
        for d in self.ctx.registry.pipelines(self.ctx.tenant):
            items[d.name] = {"name": d.name, "version": d.version, "status": d.status, "reason": d.reason,
                             "source": load_spec(d.spec_text).source, "updated_at": d.updated_at,
                             "pending_review": pending.get(d.name, {}).get("review_id")}
        for name, review in pending.items():
            items.setdefault(name, {"name": name, "version": None, "status": "pending_review", "reason": "",
                                    "source": load_spec(review["spec_text"]).source,
                                    "updated_at": review["created_at"],
                                    "pending_review": review["review_id"]})
        chosen = [i for i in items.values() if status is None or i["status"] == status
                  or (status == "pending_review" and i["pending_review"])]
        return {"pipelines": sorted(chosen, key=lambda i: i["name"])}

    def get_pipeline(self, name: str, detail: bool = False) -> dict[str, Any]:
        """Status, version, live metrics, recent errors and review decisions; with `detail`, also
        the spec text, every version, all live error groups and the audit trail."""
        self._allow()
        reviews = self.ctx.reviews.list(self.ctx.tenant, pipeline=name)
        try:
            deployed = self.ctx.registry.get(self.ctx.tenant, name)
        except UnknownPipeline:
            if not reviews:
                raise self._unknown_pipeline(name) from None
            pending = {"name": name, "deployed": False, "status": "pending_review", "version": None,
                       "reason": "", "code_hash": reviews[0]["code_hash"], "live": None, "errors": [],
                       "reviews": [_public_review(r) for r in reviews]}
            if detail:
                pending.update(spec=reviews[0]["spec_text"], versions=[], audit=[])
            return pending
        live = self.ctx.executor.pipeline_status(self.ctx.tenant, name) if self.ctx.executor else None
        errors = (live or {}).get("errors", [])
        result = {"name": name, "deployed": True, "status": deployed.status, "version": deployed.version,
                  "reason": deployed.reason, "code_hash": deployed.code_hash, "live": live,
                  "errors": errors if detail else errors[:CONCISE_PIPELINE_ERRORS],
                  "reviews": [_public_review(r) for r in reviews]}
        if detail:
            result["spec"] = deployed.spec_text
            result["versions"] = [{"version": v.version, "code_hash": v.code_hash, "actor": v.actor,
                                   "created_at": v.created_at}
                                  for v in self.ctx.registry.versions(self.ctx.tenant, name)]
            result["audit"] = self.ctx.registry.audit(self.ctx.tenant, name, limit=200)
        return result

    def list_signals(self, pipeline: str | None = None, since: str | None = None,
                     severity: str | None = None, limit: int = 50) -> dict[str, Any]:
        self._allow()
        _bounded("limit", limit, 1, 1000)
        where, args = ["true"], []
        if pipeline is not None:
            where.append("pipeline = ?")
            args.append(pipeline)
        if severity is not None:
            if severity not in SEVERITIES:
                raise LifecycleError("invalid_argument", f"severity {severity!r} is not one of "
                                     f"{', '.join(SEVERITIES)} (it is a minimum: 'high' also lists critical)")
            at_least = SEVERITIES[SEVERITIES.index(severity):]
            where.append("severity IN (" + ", ".join("?" * len(at_least)) + ")")
            args.extend(at_least)
        if since is not None:
            micros = micros_of(since)
            if micros is None:
                raise LifecycleError("invalid_argument", f"since {since!r} is not a time; use ISO 8601, "
                                     "e.g. 2024-12-10T06:00:00Z")
            where.append("last_seen::TIMESTAMPTZ >= ?::TIMESTAMPTZ")
            args.append(format_time(micros))
        con = tenant_connection(self.ctx.data_dir, self.ctx.tenant)
        try:
            cursor = con.execute(f"SELECT id, pipeline, version, step, severity, title, dedup, count, "
                                 f"first_seen, last_seen, context::VARCHAR, samples::VARCHAR FROM signals "
                                 f"WHERE {' AND '.join(where)} ORDER BY last_seen DESC, id LIMIT ?",
                                 [*args, limit + 1])
            rows = cursor.fetchall()
        finally:
            con.close()
        keys = ("id", "pipeline", "version", "step", "severity", "title", "dedup", "count", "first_seen",
                "last_seen", "context", "samples")
        signals = [dict(zip(keys, row, strict=True)) for row in rows[:limit]]
        for signal in signals:
            signal["context"] = json.loads(signal["context"]) if signal["context"] else None
            signal["samples"] = (json.loads(signal["samples"]) if signal["samples"] else [])[:3]
        return {"signals": signals, "more": len(rows) > limit}

    def query(self, sql: str, limit: int = 100) -> dict[str, Any]:
        self._allow()
        try:
            result = run_query(self.ctx.data_dir, self.ctx.tenant, sql, limit=limit, timeout_s=30.0).to_dict()
        except QueryError as exc:
            raise LifecycleError("query_error", exc.message, [Diagnostic(exc.code, exc.message, hint=(
                "query the views: one per pipeline output (its name with - as _), signals, dead_letters"))],
            ) from None
        result["more_rows"] = result.pop("truncated")
        return result

    def tap(self, pipeline: str, step: str | None = None, limit: int = 20,
            timeout_s: float = TAP_WAIT_S) -> dict[str, Any]:
        """Live: the next `limit` events leaving `step` of the running version, waiting up to
        `timeout_s` (mode "live"). With no executor in this process (stdio attach) or no running
        version, replay the deployed version over the source's newest events (mode "replay")."""
        self._allow()
        _bounded("limit", limit, 1, 100)
        try:
            deployed = self.ctx.registry.get(self.ctx.tenant, pipeline)
        except UnknownPipeline:
            raise self._unknown_pipeline(pipeline) from None
        spec = load_spec(deployed.spec_text)
        ids = [s.id for s in spec.steps]
        chosen = step or ids[-1]
        if chosen not in ids:
            raise LifecycleError("unknown_step", f"pipeline {pipeline!r} has no step {chosen!r}; its steps "
                                 f"are {', '.join(ids)}")
        if self.ctx.executor is not None:
            from stream.executor import NotRunning
            started = time.monotonic()
            try:
                live = self.ctx.executor.tap(self.ctx.tenant, pipeline, chosen, limit, timeout_s)
            except NotRunning:
                pass  # paused, or deployed by another process: replay below
            else:
                waited = round(time.monotonic() - started, 2)
                return {"pipeline": pipeline, "version": deployed.version, "step": chosen, "mode": "live",
                        "source_events": None, "step_in": None, "step_out": None, "events": live,
                        "signals": [], "errors": [], "complete": len(live) >= limit, "waited_s": waited,
                        "note": None if len(live) >= limit else (
                            f"only {len(live)} of {limit} events left step {chosen!r} within {timeout_s:g}s: "
                            "the stream is quiet; call tap again, or sample_events to see the source")}
        upto = spec.model_copy(update={"steps": spec.steps[: ids.index(chosen) + 1]})
        events = to_events(self._recent(spec.source, TAP_WINDOW)[0]) if self.ctx.log.has_stream(
            self.ctx.tenant, spec.source) else []
        report = run_trial_spec(upto, events=events, pool=self.ctx.pool, tenant=self.ctx.tenant)
        stats = next((s for s in report.steps if s["id"] == chosen), {})
        return {"pipeline": pipeline, "version": deployed.version, "step": chosen, "mode": "replay",
                "source_events": len(events), "step_in": stats.get("in", 0), "step_out": stats.get("out", 0),
                "events": report.outputs[:limit], "signals": report.signals[:limit],
                "errors": report.errors[:10]}

    # -- plumbing -----------------------------------------------------------------------------------

    def _allow(self) -> None:
        if self.ctx.role not in AUTHOR_ROLES:
            raise LifecycleError("forbidden", f"the agent tools need an author credential; this one has role "
                                 f"{self.ctx.role!r} (create one with logbus token create --role author)")

    def _settings(self, stream: str) -> Any:
        try:
            return self.ctx.log.settings(self.ctx.tenant, stream)
        except (UnknownStream, InvalidName):
            known = [s.name for s in self.ctx.log.list_streams(self.ctx.tenant)]
            raise LifecycleError("unknown_stream", f"there is no stream {stream!r}; streams: "
                                 f"{', '.join(known) or 'none yet (ingest events first)'}") from None

    def _recent(self, stream: str, count: int) -> tuple[pa.Table, int]:
        """The newest `count` events (fewer at a schema change) and the offset of the first."""
        end = self.ctx.log.end_offset(self.ctx.tenant, stream)
        first = max(self.ctx.log.start_offset(self.ctx.tenant, stream), end - count)
        table, _ = self.ctx.log.read(self.ctx.tenant, stream, first, max_events=max(1, count))
        return table, first

    def _unknown_pipeline(self, name: str) -> LifecycleError:
        known = [d.name for d in self.ctx.registry.pipelines(self.ctx.tenant)]
        return LifecycleError("unknown_pipeline", f"there is no pipeline {name!r}; pipelines: "
                              f"{', '.join(known) or 'none deployed yet'} "
                              "(list_pipelines shows pending ones)")

    def _case(self, pipeline: str, index: int, case: dict[str, Any]) -> dict[str, Any]:
        """Run one inline case on its own (fresh windows and rule state) and check `expect`."""
        name = str(case.get("name") or f"case {index + 1}")
        events = case.get("events") or ([case["event"]] if case.get("event") is not None else [])
        report = run_trial(pipeline, events=list(events), pool=self.ctx.pool, tenant=self.ctx.tenant)
        expect = case.get("expect") or {}
        failures = []
        for key, got in (("outputs", report.output_count), ("signals", len(report.signals))):
            if expect.get(key) is not None and expect[key] != got:
                failures.append(f"expected {expect[key]} {key}, got {got}")
        for key, found in (("output_contains", report.outputs), ("signal_contains", report.signals)):
            wanted = expect.get(key)
            if wanted and not any(all(item.get(k) == v for k, v in wanted.items()) for item in found):
                failures.append(f"no {key.split('_')[0]} contains {json.dumps(wanted, default=str)}")
        if report.failed_steps:
            failures.append(f"steps failed: {', '.join(report.failed_steps)}")
        return {"name": name, "passed": not failures, "failures": failures, "outputs": report.outputs[:5],
                "signals": report.signals[:5]}


def _profile(table: pa.Table, *, detail: bool = False) -> list[dict[str, Any]]:
    """Per top-level field: type, null rate and, with detail, examples and top values."""
    fields = []
    rows = table.num_rows
    for column_field, column in zip(table.schema, table.columns, strict=True):
        if column_field.name.startswith("__lb_"):
            continue
        nulls = column.null_count
        item: dict[str, Any] = {"field": column_field.name, "type": _type_name(column_field),
                                "null_rate": round(nulls / rows, 4) if rows else 1.0}
        if detail:
            values = column.drop_null().slice(0, 200).to_pylist()
            item["examples"] = [_short(v) for v in dict.fromkeys(map(_key, values))][:3]
            item["top_values"] = _top(column) if _scalar(column_field.type) else []
        fields.append(item)
    return fields


def _top(column: pa.ChunkedArray) -> list[dict[str, Any]]:
    counts = pc.value_counts(column.drop_null())
    pairs = sorted(((v["values"], v["counts"]) for v in counts.to_pylist()), key=lambda p: -p[1])[:5]
    return [{"value": _short(v), "count": c} for v, c in pairs]


def _type_name(column_field: pa.Field) -> str:
    t = column_field.type
    if is_json_field(column_field):
        return "json"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        return "timestamp"
    if pa.types.is_struct(t) or pa.types.is_map(t):
        return "object"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return "array"
    return str(t)


def _scalar(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_integer(t) or pa.types.is_boolean(t))


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _short(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(("{", "[", '"')):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 200 else text[:200] + "…"


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else format_time(int(seconds * 1_000_000))


def _bounded(name: str, value: int, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise LifecycleError("invalid_argument",
                             f"{name} must be an integer from {low} to {high}; got {value!r}")
    return value


def _count(items: list[Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _trial_summary(report: TrialReport) -> dict[str, Any]:
    return {"events_read": report.events_read, "steps": report.steps, "output_count": report.output_count,
            "signal_count": len(report.signals), "errors": report.errors, "dead_letters": report.dead_letters,
            "dead_letter_reasons": report.dead_letter_reasons}


def _run_diagnostics(report: TrialReport, cases: list[dict[str, Any]]) -> list[Diagnostic]:
    found = [Diagnostic(f"step-{g['reason']}", f"{g['function'] or 'code'}() failed on {g['count']} "
                        f"event(s): {g['error_type']}: {g['message']}", line=g["line"], step=g["step"],
                        hint="fix the code at this line (the first failing event is at index "
                             f"{g['first_event_index']}); failing events go to dead letters")
             for g in report.errors]
    for step in report.steps:
        if step["errors"] and not any(d.step == step["id"] for d in found):
            found.append(Diagnostic("step-errors", f"{step['errors']} event(s) failed in this step",
                                    step=step["id"],
                                    hint="see dead_letter_samples for the events and messages"))
    for case in cases:
        found.extend(Diagnostic("test-case-failed", f"{case['name']}: {failure}", step=None,
                                hint="compare with the case's outputs/signals in `tests`")
                     for failure in case["failures"])
    return found


def _public_review(review: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in review.items() if k != "spec_text"}


__all__ = ["AgentContext", "Lifecycle", "LifecycleError", "ReviewError", "RunStore"]
