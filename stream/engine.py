"""The batch engine: one pipeline's steps, fed Arrow batches in order.

This is the engine both `logbus test` and the live executor run, so a trial run and production
agree by construction. Declarative steps run vectorised inside their own runtimes; code steps
reach the sandbox through the `CodeRunner` built here, which is the only bridge from a pipeline
to agent code. The engine itself holds no event state: windows, rule counters and dedupe keys
live in the step runtimes, and `finish()` flushes them front to back, so that what one step
flushes still flows through every step after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

import primitives.steps  # noqa: F401 - registers every step kind
from primitives.batch import concat, retyped, slice_rows, to_events
from primitives.registry import STEPS
from primitives.runtime import (
    BuildContext,
    CodeError,
    CodeResult,
    CodeRunner,
    DeadLetter,
    StepResult,
    StepRuntime,
)
from primitives.spec import PipelineSpec, StepSpec

if TYPE_CHECKING:  # the pool (subprocesses, isolation) is imported by whoever builds one
    from sandbox import SandboxPool

# Re-runs of a step on parts of one batch to isolate the events it fails on (see Engine._guarded):
# enough to find a few bad events in the largest batch (about 2 x log2(160,000) = 36 each).
ISOLATION_CALLS = 128


@dataclass(slots=True)
class StepStats:
    """Counters of one step; `seconds` is wall time spent inside it (sandbox included)."""

    id: str
    kind: str
    events_in: int = 0
    events_out: int = 0
    signals: int = 0
    errors: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "in": self.events_in, "out": self.events_out,
                "signals": self.signals, "errors": self.errors, "seconds": round(self.seconds, 4)}


@dataclass(slots=True)
class BatchOutput:
    """What one batch (or the final flush) produced at the end of the pipeline."""

    events: list[pa.Table] = field(default_factory=list)
    signals: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    code_errors: list[tuple[str, CodeError]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)

    @property
    def event_count(self) -> int:
        return sum(t.num_rows for t in self.events)


class _Tap:
    """One waiting reader: wants `limit` events; `done` is set when it has them or taps close."""

    __slots__ = ("done", "events", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.events: list[dict[str, Any]] = []
        self.done = threading.Event()


class Taps:
    """Live taps on the events leaving steps of a running engine (DESIGN §2.3 `tap`).

    The engine looks at `active` once per step per batch, a dict truthiness test without the lock:
    with no tap open that is all a tap costs. A racy read only shifts the first sampled batch by
    one. Rows are converted to dicts only for the slice a waiting tap still needs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.active: dict[str, list[_Tap]] = {}
        self.closed = False

    def sample(self, step_id: str, limit: int, timeout_s: float) -> list[dict[str, Any]]:
        """The next `limit` events leaving `step_id`, or what arrived within `timeout_s`."""
        tap = _Tap(limit)
        with self._lock:
            if self.closed:
                return []
            self.active.setdefault(step_id, []).append(tap)
        try:
            tap.done.wait(timeout_s)
        finally:
            with self._lock:  # no offer() is mid-append while we hold it
                waiting = self.active.get(step_id, [])
                if tap in waiting:
                    waiting.remove(tap)
                if not waiting:
                    self.active.pop(step_id, None)
        return tap.events

    def offer(self, step_id: str, table: pa.Table) -> None:
        """Called by the engine with a step's output batch; fills the taps waiting on that step."""
        with self._lock:
            waiting = self.active.get(step_id)
            if not waiting or not table.num_rows:
                return
            need = max(tap.limit - len(tap.events) for tap in waiting)
            rows = to_events(slice_rows(table, 0, need))
            for tap in list(waiting):
                tap.events.extend(rows[: tap.limit - len(tap.events)])
                if len(tap.events) >= tap.limit:
                    tap.done.set()
                    waiting.remove(tap)
            if not waiting:
                self.active.pop(step_id, None)

    def close(self) -> None:
        """Wake every waiting tap (the pipeline stopped): each returns what it has."""
        with self._lock:
            self.closed = True
            for waiting in self.active.values():
                for tap in waiting:
                    tap.done.set()
            self.active.clear()


def sandbox_code_runner(pool: SandboxPool, tenant: str) -> CodeRunner:
    """Adapt the sandbox pool to the `CodeRunner` the step kinds call."""

    def run(kind: str, source: str, events: list[dict[str, Any]] | pa.Table) -> CodeResult:
        if isinstance(events, pa.Table):
            # Columnar both ways: the fast path (no per-event dicts on the host).
            table_result = pool.run_table(tenant, kind, source, events)
            return CodeResult(values=list(table_result.values or []), errors=list(table_result.errors),
                              logs=list(table_result.logs), table=table_result.table,
                              source_index=table_result.source_index)
        result = pool.run(tenant, kind, source, events)
        return CodeResult(values=list(result.values), errors=list(result.errors), logs=list(result.logs))

    return run


class Engine:
    """Runs the steps of one pipeline version over successive batches."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        run_code: CodeRunner | None,
        version: int = 0,
        base_dir: str = ".",
    ) -> None:
        self.spec = spec
        self._steps: list[tuple[StepSpec, StepRuntime]] = []
        self.stats: list[StepStats] = []
        self.taps: Taps | None = None  # set by the runner once replay is over: replayed rows are not live
        for step_spec in spec.steps:
            kind = STEPS[step_spec.kind]
            ctx = BuildContext(pipeline=spec.name, version=version, step_id=step_spec.id,
                               time_field=spec.time, run_code=run_code, base_dir=base_dir)
            self._steps.append((step_spec, kind.build(step_spec.options, ctx)))
            self.stats.append(StepStats(step_spec.id, step_spec.kind))

    def process(self, batch: pa.Table) -> BatchOutput:
        """Push one batch through every step."""
        out = BatchOutput()
        self._run_from(0, batch, out)
        return out

    def finish(self) -> BatchOutput:
        """End of input: flush each step in order, pushing what it releases through the rest."""
        out = BatchOutput()
        for index, (_, runtime) in enumerate(self._steps):
            started = time.perf_counter()
            result = runtime.finish()
            self._account(index, None, result, started)
            self._collect(index, result, out)
            if result.events is not None and result.events.num_rows:
                self._run_from(index + 1, result.events, out)
        return out

    def snapshot(self) -> dict[str, Any]:
        """State that replaying the log cannot rebuild exactly (rule and derive alert books), by
        step id, JSON-plain; empty for a pipeline without such steps."""
        return {spec.id: runtime.snapshot() for spec, runtime in self._steps
                if hasattr(runtime, "snapshot")}

    def restore(self, state: dict[str, Any]) -> None:
        """Put back a snapshot() of an engine of the same pipeline version."""
        for spec, runtime in self._steps:
            if spec.id in state and hasattr(runtime, "restore"):
                runtime.restore(state[spec.id])

    def process_all(self, batches: Iterable[pa.Table]) -> BatchOutput:
        total = BatchOutput()
        for batch in batches:
            _merge(total, self.process(batch))
        _merge(total, self.finish())
        return total

    def _run_from(self, start: int, batch: pa.Table, out: BatchOutput) -> None:
        current: pa.Table | None = batch
        for index in range(start, len(self._steps)):
            if current is None:
                return
            _, runtime = self._steps[index]
            started = time.perf_counter()
            result = self._guarded(index, runtime, current)
            self._account(index, current, result, started)
            self._collect(index, result, out)
            current = result.events
            taps = self.taps
            if taps is not None and taps.active and current is not None:
                taps.offer(self._steps[index][0].id, current)
        if current is not None and current.num_rows:
            out.events.append(current)

    def _guarded(self, index: int, runtime: StepRuntime, batch: pa.Table,
                 budget: list[int] | None = None) -> StepResult:
        """Run one step on one batch; a step that fails on the batch as a whole (a SQL cast that
        cannot hold for some value, a lookup table gone) dead-letters that batch, with the reason,
        instead of stopping the pipeline.

        One event must not cost its whole batch: `status >= 400` fails on a batch in which one event
        has `"status": "x"`, and a sender could blind a detection that way, one event per batch.
        So an isolatable step (see primitives.runtime.StepRuntime) is re-run on halves of the
        batch, retyped (a half without the odd value reads as numbers again), until the events it
        fails on stand alone. At most ISOLATION_CALLS re-runs per batch: what is still unresolved
        then is dead-lettered as a whole, so a batch of bad events costs a bounded effort."""
        try:
            return runtime.process(batch)
        except Exception as exc:
            budget = [ISOLATION_CALLS] if budget is None else budget
            if batch.num_rows > 1 and getattr(runtime, "isolatable", False) and budget[0] >= 2:
                budget[0] -= 2
                half = batch.num_rows // 2
                first = self._guarded(index, runtime, retyped(slice_rows(batch, 0, half)), budget)
                second = self._guarded(index, runtime, retyped(slice_rows(batch, half)), budget)
                return _joined(first, second)
            step_id = self._steps[index][0].id
            what = "this event" if batch.num_rows == 1 else f"this batch of {batch.num_rows:,} events"
            message = f"step '{step_id}' failed on {what}: {type(exc).__name__}: {exc}"
            letters = [DeadLetter(step_id, "error", message, event) for event in to_events(batch)]
            return StepResult(events=None, dead_letters=letters, errors=batch.num_rows)

    def _account(self, index: int, batch: pa.Table | None, result: StepResult, started: float) -> None:
        stats = self.stats[index]
        stats.seconds += time.perf_counter() - started
        if batch is not None:
            stats.events_in += batch.num_rows
        if result.events is not None:
            stats.events_out += result.events.num_rows
        stats.signals += len(result.signals)
        stats.errors += result.errors

    def _collect(self, index: int, result: StepResult, out: BatchOutput) -> None:
        step_id = self._steps[index][0].id
        out.signals.extend(result.signals)
        out.dead_letters.extend(result.dead_letters)
        out.code_errors.extend((step_id, error) for error in result.code_errors)
        out.logs.extend(result.logs)


def _joined(first: StepResult, second: StepResult) -> StepResult:
    """The results of a step on two consecutive parts of a batch, as one."""
    events = [t for t in (first.events, second.events) if t is not None and t.num_rows]
    latest = {signal["id"]: signal for signal in first.signals + second.signals}  # one state per id
    return StepResult(
        events=concat(events) if events else None, signals=list(latest.values()),
        dead_letters=first.dead_letters + second.dead_letters, errors=first.errors + second.errors,
        code_errors=first.code_errors + second.code_errors, logs=first.logs + second.logs)


def _merge(into: BatchOutput, part: BatchOutput) -> None:
    into.events.extend(part.events)
    into.signals.extend(part.signals)
    into.dead_letters.extend(part.dead_letters)
    into.code_errors.extend(part.code_errors)
    into.logs.extend(part.logs)
