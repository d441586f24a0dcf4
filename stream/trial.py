"""A trial run: validate a pipeline, then run it over a file or a list of events and report.

This is `logbus test` and, later, the body of the `test_pipeline` tool. It runs the same engine
as the live executor, with code steps in real sandbox workers. The report is what an agent needs
to fix its pipeline: per-step counts, outputs, signals, errors grouped by step/type/line with a
sample, dead letters by reason, and timing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import pyarrow as pa

from primitives.batch import slice_rows, to_events
from primitives.runtime import CodeError, CodeResult, DeadLetter
from primitives.signals import latest_signals
from stream.engine import BatchOutput, Engine, sandbox_code_runner
from stream.inputs import Format, event_tables, read_events
from stream.validation import Validation, validate_pipeline, validate_spec

if TYPE_CHECKING:
    from primitives.spec import PipelineSpec
    from sandbox import SandboxPool

MAX_OUTPUTS = 100
MAX_ERROR_GROUPS = 50
MAX_DEAD_LETTER_SAMPLES = 20

Progress = Callable[[int], None]


@dataclass(slots=True)
class TrialReport:
    validation: Validation
    steps: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    output_count: int = 0
    signals: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    dead_letter_samples: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    events_read: int = 0
    seconds: float = 0.0

    @property
    def failed_steps(self) -> list[str]:
        return [s["id"] for s in self.steps if s["errors"]]

    @property
    def ok(self) -> bool:
        return self.validation.valid and not self.failed_steps

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.validation.to_dict(),
            "ok": self.ok,
            "events_read": self.events_read,
            "steps": self.steps,
            "outputs": self.outputs,
            "output_count": self.output_count,
            "signals": self.signals,
            "errors": self.errors,
            "dead_letters": self.dead_letters,
            "dead_letter_reasons": self.dead_letter_reasons,
            "dead_letter_samples": self.dead_letter_samples,
            "logs": self.logs,
            "seconds": round(self.seconds, 4),
        }


def run_trial(
    pipeline: str | bytes,
    *,
    source: str | Path | BinaryIO | None = None,
    events: list[dict[str, Any]] | None = None,
    fmt: Format = "ndjson",
    limit: int | None = None,
    pool: SandboxPool | None = None,
    tenant: str = "default",
    base_dir: str = ".",
    progress: Progress | None = None,
) -> TrialReport:
    """Validate `pipeline`, then run it over `source` (a file) or `events` (a list)."""
    started = time.perf_counter()
    validation = validate_pipeline(pipeline)
    return _run(validation, source, events, fmt, limit, pool, tenant, base_dir, progress, started)


def run_trial_spec(
    spec: PipelineSpec,
    *,
    source: str | Path | BinaryIO | None = None,
    events: list[dict[str, Any]] | None = None,
    fmt: Format = "ndjson",
    limit: int | None = None,
    pool: SandboxPool | None = None,
    tenant: str = "default",
    base_dir: str = ".",
    progress: Progress | None = None,
) -> TrialReport:
    """`run_trial` for a spec already loaded (and possibly rewritten) by the caller."""
    started = time.perf_counter()
    return _run(validate_spec(spec), source, events, fmt, limit, pool, tenant, base_dir, progress, started)


def _run(validation: Validation, source: Any, events: list[dict[str, Any]] | None, fmt: Format,
         limit: int | None, pool: SandboxPool | None, tenant: str, base_dir: str,
         progress: Progress | None, started: float) -> TrialReport:
    report = TrialReport(validation)
    if not validation.valid or validation.spec is None:
        report.seconds = time.perf_counter() - started
        return report
    lazy = _LazyPool(pool, tenant)
    try:
        engine = Engine(validation.spec, run_code=lazy.run, base_dir=base_dir)
        total = BatchOutput()
        batches = _batches(source, events, fmt, limit, report)
        for batch in batches:
            report.events_read += batch.num_rows
            _fold(report, total, engine.process(batch))
            if progress:
                progress(report.events_read)
        _fold(report, total, engine.finish())
        report.steps = [s.to_dict() for s in engine.stats]
        report.signals = latest_signals(total.signals)
        report.errors = _group_errors(total.code_errors)
        report.logs = total.logs[:100]
    finally:
        lazy.close()
    report.seconds = time.perf_counter() - started
    return report


class _LazyPool:
    """The sandbox pool, started (and imported) at the first code step call: a pipeline without
    code never pays for worker processes. A pool passed in is used as is and left open."""

    def __init__(self, pool: SandboxPool | None, tenant: str) -> None:
        self._given = pool
        self._own: SandboxPool | None = None
        self._tenant = tenant

    def run(self, kind: str, source: str, events: list[dict[str, Any]] | pa.Table) -> CodeResult:
        pool = self._given or self._own
        if pool is None:
            from sandbox import SandboxPool

            pool = self._own = SandboxPool()
        return sandbox_code_runner(pool, self._tenant)(kind, source, events)

    def close(self) -> None:
        if self._own is not None:
            self._own.close()


def _batches(source: Any, events: list[dict[str, Any]] | None, fmt: Format, limit: int | None,
             report: TrialReport) -> Iterable[pa.Table]:
    if events is not None:
        chosen = events if limit is None else events[:limit]
        for batch in event_tables(chosen):  # the readers' field budget: a list of ids as keys is no OOM
            _count_dead(report, batch.dead_letters)
            yield batch.table
        return
    if source is None:
        raise ValueError("give either a source file or a list of events")
    # with more cores, the next chunks are parsed while this one runs (stream.inputs)
    for batch in read_events(source, fmt, limit=limit):
        _count_dead(report, batch.dead_letters)
        yield batch.table


def _fold(report: TrialReport, total: BatchOutput, part: BatchOutput) -> None:
    """Keep the first outputs, count the rest; keep all signals and errors for grouping."""
    for table in part.events:
        report.output_count += table.num_rows
        room = MAX_OUTPUTS - len(report.outputs)
        if room > 0:
            report.outputs.extend(to_events(slice_rows(table, 0, room)))
    total.signals.extend(part.signals)
    total.code_errors.extend(part.code_errors)
    total.logs.extend(part.logs[: max(0, 100 - len(total.logs))])
    _count_dead(report, part.dead_letters)


def _count_dead(report: TrialReport, dead: list[DeadLetter]) -> None:
    report.dead_letters += len(dead)
    for letter in dead:
        report.dead_letter_reasons[letter.reason] = report.dead_letter_reasons.get(letter.reason, 0) + 1
        if len(report.dead_letter_samples) < MAX_DEAD_LETTER_SAMPLES:
            report.dead_letter_samples.append({"step": letter.step, "reason": letter.reason,
                                               "message": letter.message, "line": letter.line,
                                               "event": letter.event})



def _group_errors(errors: list[tuple[str, CodeError]]) -> list[dict[str, Any]]:
    """One entry per (step, reason, error type, snippet line), most frequent first.

    Messages often carry per-event values ("invalid literal for int(): 'abc'"), so they are not
    part of the key: the first one is kept as the group's example.
    """
    counts: Counter[tuple[str, str, str, int | None]] = Counter()
    first: dict[tuple[str, str, str, int | None], CodeError] = {}
    for step_id, error in errors:
        key = (step_id, error.reason, error.error_type, error.line)
        counts[key] += 1
        first.setdefault(key, error)
    groups = []
    for key, count in counts.most_common(MAX_ERROR_GROUPS):
        step_id, reason, error_type, line = key
        example = first[key]
        groups.append({"step": step_id, "reason": reason, "error_type": error_type, "line": line,
                       "function": example.function, "message": example.message, "count": count,
                       "first_event_index": example.index})
    return groups
