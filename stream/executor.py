"""The executor: every deployed pipeline version running continuously, one thread each.

What runs is what the registry (`stream.registry`) says: the current version of every `active`
pipeline. `sync()` reconciles the running threads with it: a new current version is hot-swapped
(the old thread stops at a batch boundary and is joined, then the new version starts from the
committed position: no gap, no overlap), a paused or retired pipeline's thread is stopped, and a
retired pipeline's log consumer and checkpoint are dropped so it no longer holds retention. The
control methods (`deploy`, `pause`, `resume`, `rollback`, `retire`) change the registry, write
the audit log and sync at once; `start()` also polls the registry, for changes made by another
process (the CLI). A pipeline that spends its error budget pauses itself through the registry,
with the reason, at its position.

`status()` and `metrics()` are plain data for `logbus status`, `get_pipeline` and `/metrics`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from primitives.spec import PipelineSpec, SpecError, code_hash, load_spec
from sandbox import SandboxPool
from stream.checkpoint import CheckpointStore
from stream.log import EmbeddedLog, UnknownStream
from stream.registry import Deployed, PipelineRegistry
from stream.runner import ExecutorConfig, Outbox, PipelineRunner, Sink, consumer_name

SinkFactory = Callable[[Path, str], Sink]
FailPoint = Callable[[str, str, int], None]  # (pipeline, stage, first offset); tests simulate crashes
Labels = dict[str, str]

__all__ = ["Executor", "ExecutorConfig", "NotRunning"]


class NotRunning(LookupError):
    """The pipeline has no running version in this process (paused, retired, not deployed here)."""


class Executor:
    def __init__(self, data_dir: str | Path, log: EmbeddedLog, *, sink_factory: SinkFactory,
                 outbox: Outbox | None, pool: SandboxPool, config: ExecutorConfig | None = None,
                 registry: PipelineRegistry | None = None, checkpoints: CheckpointStore | None = None,
                 fail_point: FailPoint | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.log, self.sink_factory, self.outbox, self.pool = log, sink_factory, outbox, pool
        self.config = config or ExecutorConfig()
        self.registry = registry or PipelineRegistry(self.data_dir)
        self.checkpoints = checkpoints or CheckpointStore(self.data_dir)
        self.fail_point = fail_point
        self._runners: dict[tuple[str, str], PipelineRunner] = {}
        self._last: dict[tuple[str, str], PipelineRunner] = {}  # stopped runners, for status
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.started_at = time.time()
        self._watch_error = ""

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Run every active pipeline and keep following the registry."""
        self.sync()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="executor-watch", daemon=True)
            self._watcher.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop every pipeline at its next batch boundary (positions stay committed)."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout)
            self._watcher = None
        with self._lock:
            runners = list(self._runners.items())
            for _, runner in runners:
                runner.stop()
            for key, runner in runners:
                runner.join(timeout)
                self._last[key] = runner
            self._runners.clear()

    def close(self) -> None:
        self.stop()
        self.registry.close()
        self.checkpoints.close()

    def _watch(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                self.sync()
            except Exception as exc:  # keep following the registry; the error shows in status
                self._watch_error = f"{type(exc).__name__}: {exc}"

    def sync(self) -> None:
        """Make the running threads match the registry."""
        with self._lock:
            wanted = {(d.tenant, d.name): d for d in self.registry.pipelines()}
            for key, runner in list(self._runners.items()):
                deployed = wanted.get(key)
                if deployed is None or deployed.status != "active" or deployed.version != runner.version:
                    runner.stop()
                    runner.join()
                    self._last[key] = self._runners.pop(key)
            for key, deployed in wanted.items():
                if deployed.status == "active" and key not in self._runners and not self._stop.is_set():
                    try:
                        self._start(deployed)
                    except SpecError as exc:
                        # stored by an older LogBus whose checks this one tightened (a refused SQL
                        # expression, say): paused with the reason, and the other pipelines run
                        self.registry.pause(deployed.tenant, deployed.name, "executor",
                                            f"its spec no longer validates: {exc}")
                elif deployed.status == "retired" and self.checkpoints.load(*key) is not None:
                    self._forget(deployed)

    # -- control (each writes the audit log through the registry) -----------------------------------

    def deploy(self, tenant: str, spec_text: str, *, actor: str, filename: str | None = None) -> int:
        """Deploy a spec (YAML or JSON text) as the pipeline's next version; hot-swaps a running one."""
        spec = load_spec(spec_text, filename=filename)
        version = self.registry.deploy(tenant, spec_text, spec, code_hash(spec), actor)
        self.sync()
        return version

    def pause(self, tenant: str, name: str, *, actor: str, reason: str = "") -> Deployed:
        deployed = self.registry.pause(tenant, name, actor, reason)
        self.sync()
        return deployed

    def resume(self, tenant: str, name: str, *, actor: str) -> Deployed:
        deployed = self.registry.resume(tenant, name, actor)
        self.sync()
        return deployed

    def rollback(self, tenant: str, name: str, *, actor: str, to_version: int | None = None) -> Deployed:
        deployed = self.registry.rollback(tenant, name, actor, to_version)
        self.sync()
        return deployed

    def retire(self, tenant: str, name: str, *, actor: str, reason: str = "") -> Deployed:
        deployed = self.registry.retire(tenant, name, actor, reason)
        self.sync()
        return deployed

    # -- observation -----------------------------------------------------------------------------

    def runner(self, tenant: str, name: str) -> PipelineRunner | None:
        with self._lock:
            return self._runners.get((tenant, name)) or self._last.get((tenant, name))

    def tap(self, tenant: str, name: str, step: str | None = None, limit: int = 20,
            timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """A live sample: the next `limit` events leaving `step` (default: the last step) of the
        running version, waiting up to `timeout_s`. Fewer than `limit` means the wait ran out (a
        quiet stream) or the version stopped meanwhile. Raises `NotRunning` when no version runs
        here and ValueError for a step the running version does not have."""
        with self._lock:
            runner = self._runners.get((tenant, name))
        if runner is None or not runner.alive:
            raise NotRunning(f"pipeline {name!r} of tenant {tenant!r} is not running in this executor")
        return runner.tap(step, limit, timeout_s)

    def status(self, tenant: str | None = None) -> list[dict[str, Any]]:
        return [self._status(d) for d in self.registry.pipelines(tenant)]

    def pipeline_status(self, tenant: str, name: str) -> dict[str, Any]:
        return self._status(self.registry.get(tenant, name))

    def metrics(self) -> dict[str, list[tuple[Labels, float]]]:
        """Counters and gauges by metric name, each a list of (labels, value): Prometheus-ready."""
        out: dict[str, list[tuple[Labels, float]]] = {}

        def add(name: str, labels: Labels, value: float) -> None:
            out.setdefault(name, []).append((labels, float(value)))

        for status in self.status():
            labels = {"tenant": status["tenant"], "pipeline": status["name"]}
            add("logbus_pipeline_running", labels, 1 if status["state"] in ("running", "replaying") else 0)
            add("logbus_pipeline_lag_events", labels, status["lag"] or 0)
            for key in ("events_in", "events_out", "signals", "dead_letters", "failures", "late", "batches",
                        "restarts", "sandbox_kills", "enqueued", "replayed_events"):
                add(f"logbus_pipeline_{key}_total", labels, status["counters"][key])
            add("logbus_pipeline_batch_seconds_total", labels, status["counters"]["batch_seconds"])
            for step in status["steps"]:
                step_labels = {**labels, "step": step["id"], "kind": step["kind"]}
                add("logbus_step_events_in_total", step_labels, step["in"])
                add("logbus_step_events_out_total", step_labels, step["out"])
                add("logbus_step_errors_total", step_labels, step["errors"])
        return out

    def wait_caught_up(self, tenant: str, name: str, timeout: float = 30.0) -> bool:
        """Wait until the pipeline has committed everything in its stream (True) or timeout (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.pipeline_status(tenant, name)
            if status["lag"] == 0 and status["state"] == "running":
                return True
            time.sleep(0.02)
        return False

    def _status(self, deployed: Deployed) -> dict[str, Any]:
        key = (deployed.tenant, deployed.name)
        runner = self.runner(*key)
        if runner is not None and runner.version != deployed.version:
            runner = None if key not in self._runners else runner
        checkpoint = self.checkpoints.load(*key)
        position = checkpoint.committed if checkpoint is not None else None
        if runner is not None and runner.position is not None:
            # the runner moves its position after counting the batch (the checkpoint is committed
            # just before): a caught-up status then always carries that batch's counters
            position = runner.position
        spec_source = load_spec(deployed.spec_text).source
        end: int | None
        try:
            end = self.log.end_offset(deployed.tenant, spec_source)
        except UnknownStream:
            end = None
        state: str
        if deployed.status != "active":
            state = deployed.status
        elif runner is None:
            state = "starting"
        else:
            state = runner.state if runner.alive or runner.state != "running" else "stopped"
        counters = _counters(runner)
        return {
            "tenant": deployed.tenant, "name": deployed.name, "version": deployed.version,
            "status": deployed.status, "state": state,
            "reason": deployed.reason or (runner.reason if runner is not None else ""),
            "source": spec_source, "position": position, "end_offset": end,
            "replay_from": checkpoint.replay_from if checkpoint is not None else None,
            "lag": (end - position) if end is not None and position is not None else None,
            "counters": counters,
            "rate_events_per_s": round(runner.rate(), 1) if runner is not None else 0.0,
            "batch_latency_s": round(counters["last_batch_seconds"], 4),
            "steps": list(runner.step_stats) if runner is not None else [],
            "errors": sorted((dict(g) for g in runner.errors.values()), key=lambda g: -g["count"])
            if runner is not None else [],
        }

    # -- plumbing --------------------------------------------------------------------------------

    def _start(self, deployed: Deployed) -> None:
        spec = load_spec(deployed.spec_text)
        fail = self.fail_point
        runner = PipelineRunner(
            tenant=deployed.tenant, spec=spec, version=deployed.version, log=self.log,
            sink=self.sink_factory(self.data_dir, deployed.tenant), outbox=self.outbox, pool=self.pool,
            checkpoints=self.checkpoints, config=self.config, data_dir=str(self.data_dir),
            on_budget_spent=self._budget_spent,
            fail_point=(lambda stage, first: fail(spec.name, stage, first)) if fail is not None else None)
        self._runners[(deployed.tenant, deployed.name)] = runner
        runner.start()

    def _budget_spent(self, runner: PipelineRunner, reason: str) -> None:
        """Called from the runner's own thread: only the registry changes here (sync joins threads)."""
        try:
            self.registry.pause(runner.tenant, runner.name, "executor", reason)
        except Exception as exc:  # already paused/retired by someone else meanwhile
            runner.reason = f"{reason} (could not record the pause: {exc})"

    def _forget(self, deployed: Deployed) -> None:
        """A retired pipeline stops holding retention and loses its position (a redeploy starts anew)."""
        spec: PipelineSpec | None
        try:
            spec = load_spec(deployed.spec_text)
        except SpecError:  # stored by an older LogBus that accepted it: no consumer to find
            spec = None
        if spec is not None:
            with contextlib.suppress(UnknownStream):
                self.log.remove_consumer(deployed.tenant, spec.source, consumer_name(spec.name))
        self.checkpoints.delete(deployed.tenant, deployed.name)


def _counters(runner: PipelineRunner | None) -> dict[str, Any]:
    if runner is None:
        return {k: 0 for k in ("events_in", "events_out", "signals", "dead_letters", "failures", "late",
                               "batches", "restarts", "sandbox_kills", "enqueued", "replayed_events",
                               "batch_seconds", "last_batch_seconds")}
    s = runner.stats
    return {"events_in": s.events_in, "events_out": s.events_out, "signals": s.signals,
            "dead_letters": s.dead_letters, "failures": s.failures, "late": s.late, "batches": s.batches,
            "restarts": s.restarts, "sandbox_kills": s.sandbox_kills, "enqueued": s.enqueued,
            "replayed_events": s.replayed_events, "batch_seconds": round(s.batch_seconds, 4),
            "last_batch_seconds": s.last_batch_seconds}
