"""What an operator does to a data directory, as plain functions (the CLI is a thin layer over them).

These work on the data directory directly, as `sqlite3` and `duckdb` do, whether or not a
`logbus serve` runs on it: the registry and checkpoints are SQLite in WAL mode, the log is read
through a read-only connection, and outputs are Parquet files behind atomic manifests. A running
server picks up registry changes within its poll interval (`Executor.start` follows the
registry), so `pause` here pauses the live pipeline there.

`apply` never deploys what would not run: the spec is validated (spec, SQL, every snippet), then
trial-run in sandbox workers over the last `sample` events of its source stream when the stream
exists, and refused when invalid or when a step failed on any of them.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from primitives.spec import load_spec
from stream.log import EmbeddedLog, UnknownStream
from stream.registry import Deployed, PipelineRegistry, RegistryError
from stream.trial import TrialReport, run_trial_spec
from stream.validation import Validation, validate_pipeline

DEFAULT_TENANT = "default"
DEFAULT_SAMPLE = 1000


class OperatorError(Exception):
    """An operator action that failed; the message says what to do instead."""

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


def local_actor() -> str:
    """Who acts from this shell, for the audit log."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


@dataclass(slots=True)
class ApplyResult:
    tenant: str
    name: str
    version: int | None  # None when nothing changed
    changed: bool
    validation: Validation
    trial: TrialReport | None  # None when the source stream has no events yet
    sampled: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tenant": self.tenant, "name": self.name, "version": self.version,
                               "changed": self.changed, "sampled_events": self.sampled, "notes": self.notes,
                               **self.validation.to_dict()}
        if self.trial is not None:
            out["trial"] = {"ok": self.trial.ok, "steps": self.trial.steps, "errors": self.trial.errors,
                            "signals": len(self.trial.signals), "outputs": self.trial.output_count,
                            "dead_letters": self.trial.dead_letters}
        return out


def apply(data_dir: str | Path, path: str | Path, *, tenant: str = DEFAULT_TENANT, actor: str | None = None,
          sample: int = DEFAULT_SAMPLE, text: str | None = None) -> ApplyResult:
    """Validate and test the spec in `path`, then deploy it as the pipeline's next version.

    Unchanged specs (same text as the current active version) are not deployed again. Raises
    OperatorError (with `details` = the validation/trial report) when the spec is refused.
    """
    path = Path(path)
    if text is None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise OperatorError(f"cannot read pipeline file {path}: {exc}") from None
    validation = validate_pipeline(text, filename=path.name)
    if not validation.valid or validation.spec is None:
        lines = "\n".join(d.render() for d in validation.diagnostics)
        raise OperatorError(f"{path} is not a valid pipeline; nothing was deployed:\n{lines}",
                            details=validation.to_dict())
    spec = validation.spec
    data_dir = Path(data_dir)
    result = ApplyResult(tenant, spec.name, None, False, validation, None)
    events = _recent_events(data_dir, tenant, spec.source, sample)
    if events is None:
        result.notes.append(f"stream {spec.source!r} has no events yet: validated only, not trial-run")
    else:
        events_list, time_field = events
        trial_spec = spec if spec.time is not None or not time_field else spec.model_copy(
            update={"time": time_field})
        report = run_trial_spec(trial_spec, events=events_list, tenant=tenant, base_dir=str(path.parent))
        result.trial, result.sampled = report, len(events_list)
        if not report.ok:
            failed = ", ".join(report.failed_steps) or "validation"
            head = "\n".join(f"  {g['step']} line {g['line']}: {g['reason']} {g['message']} (x{g['count']})"
                             for g in report.errors[:5])
            raise OperatorError(f"{path}: step(s) {failed} failed on the last {len(events_list)} events of "
                                f"stream {spec.source!r}; nothing was deployed. Fix the code and apply again "
                                f"(`logbus test {path} --events FILE` shows the full report):\n{head}",
                                details=result.to_dict())
    registry = PipelineRegistry(data_dir)
    try:
        current = _current(registry, tenant, spec.name)
        if current is not None and current.status == "active" and current.spec_text == text:
            result.version = current.version
            result.notes.append(f"unchanged: version {current.version} is already active")
            return result
        try:
            result.version = registry.deploy(tenant, text, spec, validation.code_hash or "",
                                             actor or local_actor())
        except RegistryError as exc:
            raise OperatorError(str(exc)) from None
        result.changed = True
        if current is None and spec.start == "latest" and events is not None:
            # the trap of "ingest a file, then apply": the new pipeline sees none of that file
            result.notes.append(f"starts at the end of stream {spec.source!r}: the events already in it "
                                "are not processed; add `start: earliest` to the spec to process them too")
    finally:
        registry.close()
    return result


def list_pipelines(data_dir: str | Path, tenant: str | None = None) -> list[dict[str, Any]]:
    registry = PipelineRegistry(data_dir)
    try:
        return [{**d.to_dict(), "source": load_spec(d.spec_text).source} for d in registry.pipelines(tenant)]
    finally:
        registry.close()


def pause(data_dir: str | Path, name: str, *, tenant: str = DEFAULT_TENANT, actor: str | None = None,
          reason: str = "") -> dict[str, Any]:
    return _act(data_dir, lambda r: r.pause(tenant, name, actor or local_actor(), reason))


def resume(data_dir: str | Path, name: str, *, tenant: str = DEFAULT_TENANT,
           actor: str | None = None) -> dict[str, Any]:
    return _act(data_dir, lambda r: r.resume(tenant, name, actor or local_actor()))


def rollback(data_dir: str | Path, name: str, *, tenant: str = DEFAULT_TENANT, to_version: int | None = None,
             actor: str | None = None) -> dict[str, Any]:
    return _act(data_dir, lambda r: r.rollback(tenant, name, actor or local_actor(), to_version))


def retire(data_dir: str | Path, name: str, *, tenant: str = DEFAULT_TENANT, actor: str | None = None,
           reason: str = "") -> dict[str, Any]:
    return _act(data_dir, lambda r: r.retire(tenant, name, actor or local_actor(), reason))


def audit(data_dir: str | Path, name: str | None = None, *, tenant: str = DEFAULT_TENANT,
          limit: int = 100) -> list[dict[str, Any]]:
    """The audit log of a tenant (or one pipeline), newest first."""
    registry = PipelineRegistry(data_dir)
    try:
        return registry.audit(tenant, name, limit=limit)
    finally:
        registry.close()


def status(data_dir: str | Path, tenant: str | None = None) -> dict[str, Any]:
    """Every pipeline's status, position and lag (from the data directory), with live rates and
    counters from the running server's snapshot when a server runs."""
    from server.serve import read_snapshot
    from stream.checkpoint import CheckpointStore

    data_dir = Path(data_dir)
    snapshot = read_snapshot(data_dir)
    live = {(p["tenant"], p["name"]): p for p in (snapshot or {}).get("pipelines", [])}
    registry, checkpoints = PipelineRegistry(data_dir), CheckpointStore(data_dir)
    log = EmbeddedLog(data_dir / "log", readonly=True)
    pipelines = []
    try:
        for deployed in registry.pipelines(tenant):
            source = load_spec(deployed.spec_text).source
            checkpoint = checkpoints.load(deployed.tenant, deployed.name)
            position = checkpoint.committed if checkpoint is not None else None
            try:
                end: int | None = log.end_offset(deployed.tenant, source)
            except UnknownStream:
                end = None
            running = live.get((deployed.tenant, deployed.name))
            if running is not None and running.get("version") != deployed.version:
                running = None  # the server has not picked up the newest change yet
            state: str
            if deployed.status != "active":
                state = deployed.status
            elif snapshot is None:
                state = "server not running"
            else:
                state = running["state"] if running is not None else "starting"
            counters = (running or {}).get("counters", {})
            pipelines.append({
                "tenant": deployed.tenant, "name": deployed.name, "version": deployed.version,
                "status": deployed.status, "state": state,
                "reason": deployed.reason or (running or {}).get("reason", ""), "source": source,
                "position": position, "end_offset": end,
                "lag": end - position if end is not None and position is not None else None,
                "rate_events_per_s": (running or {}).get("rate_events_per_s", 0.0),
                "batch_latency_s": (running or {}).get("batch_latency_s", 0.0),
                "events_in": counters.get("events_in", 0), "events_out": counters.get("events_out", 0),
                "signals": counters.get("signals", 0), "dead_letters": counters.get("dead_letters", 0),
                "sandbox_kills": counters.get("sandbox_kills", 0),
                "errors": (running or {}).get("errors", [])[:5],
            })
    finally:
        registry.close()
        checkpoints.close()
        log.close()
    server: dict[str, Any] = {"running": snapshot is not None}
    if snapshot is not None:
        server.update(pid=snapshot["pid"], url=snapshot.get("url", ""), started_at=snapshot["started_at"],
                      deliveries=snapshot.get("deliveries", {}))
    return {"data_dir": str(data_dir), "server": server, "pipelines": pipelines,
            "outbox": _outbox_counts(data_dir)}


def query(data_dir: str | Path, sql: str, *, tenant: str = DEFAULT_TENANT, limit: int = 1000,
          timeout_s: float = 30.0) -> Any:
    """One read-only SELECT over the tenant's views; raises stream.sinks.QueryError when refused."""
    from stream.sinks import run_query

    return run_query(data_dir, tenant, sql, limit=limit, timeout_s=timeout_s)


# -- plumbing ------------------------------------------------------------------------------------


def _act(data_dir: str | Path, action: Any) -> dict[str, Any]:
    registry = PipelineRegistry(data_dir)
    try:
        deployed: Deployed = action(registry)
    except RegistryError as exc:
        raise OperatorError(str(exc)) from None
    finally:
        registry.close()
    return deployed.to_dict()


def _current(registry: PipelineRegistry, tenant: str, name: str) -> Deployed | None:
    found = [d for d in registry.pipelines(tenant) if d.name == name]
    return found[0] if found else None


def _recent_events(data_dir: Path, tenant: str, stream: str,
                   sample: int) -> tuple[list[dict[str, Any]], str | None] | None:
    """The last `sample` events of the stream and its time field; None when there are none."""
    from primitives.batch import to_events
    from stream.log import InvalidName

    if sample <= 0:
        return None
    log = EmbeddedLog(data_dir / "log", readonly=True)
    try:
        if not log.has_stream(tenant, stream):
            return None
        end = log.end_offset(tenant, stream)
        first = max(log.start_offset(tenant, stream), end - sample)
        if first >= end:
            return None
        table, _ = log.read(tenant, stream, first, end - first)
        return to_events(table), log.settings(tenant, stream).time_field
    except (UnknownStream, InvalidName):
        return None
    finally:
        log.close()


def _outbox_counts(data_dir: Path) -> dict[str, int]:
    path = data_dir / "outbox.sqlite3"
    if not path.exists():
        return {}
    from stream.alerts import Outbox

    outbox = Outbox(path)
    try:
        counts: dict[str, int] = outbox.status(limit=0)["counts"]
        return counts
    finally:
        outbox.close()
