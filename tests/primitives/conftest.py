"""Running a pipeline's step runtimes directly, without the stream engine.

`run_pipeline` builds each step from a spec and pushes every batch through all the steps in order;
at the end it calls `finish()` front to back, and whatever a step flushes still flows through the
steps after it (a closing window's rows reach the `derive` that follows). Signals are upserts by
id, so the latest state of each id is kept, in order of first firing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest

from primitives.batch import from_events, to_events
from primitives.registry import STEPS
from primitives.runtime import BuildContext, CodeResult, CodeRunner, DeadLetter, StepResult, StepRuntime
from primitives.spec import PipelineSpec


@dataclass
class PipelineRun:
    outputs: list[dict[str, Any]] = field(default_factory=list)
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    errors: int = 0


def build_runtimes(spec: PipelineSpec, run_code: CodeRunner | None, base_dir: str = ".") -> list[StepRuntime]:
    return [
        STEPS[s.kind].build(s.options, BuildContext(spec.name, 1, s.id, spec.time, run_code, base_dir))
        for s in spec.steps
    ]


def run_pipeline(spec: PipelineSpec, batches: list[list[dict[str, Any]]], run_code: CodeRunner | None,
                 base_dir: str = ".") -> PipelineRun:
    runtimes = build_runtimes(spec, run_code, base_dir)
    run = PipelineRun()

    def collect(result: StepResult) -> pa.Table | None:
        for signal in result.signals:
            run.signals[signal["id"]] = signal
        run.dead_letters.extend(result.dead_letters)
        run.errors += result.errors
        return result.events

    def push(start: int, table: pa.Table | None) -> None:
        for runtime in runtimes[start:]:
            if table is None:
                return
            table = collect(runtime.process(table))
        if table is not None:
            run.outputs.extend(to_events(table))

    for events in batches:
        push(0, from_events(events))
    for index, runtime in enumerate(runtimes):
        flushed = collect(runtime.finish())
        if flushed is not None and flushed.num_rows:
            push(index + 1, flushed)
    return run


@pytest.fixture(scope="session")
def sandbox_runner() -> Iterator[CodeRunner]:
    """Code steps run in the real sandbox, adapted to the CodeRunner the steps call."""
    from sandbox import SandboxPool

    with SandboxPool() as pool:

        def run(kind: str, source: str, events: list[dict[str, Any]] | pa.Table) -> CodeResult:
            if isinstance(events, pa.Table):  # the columnar path: outputs come back as a table
                out = pool.run_table("golden", kind, source, events)
                return CodeResult(values=list(out.values or []), errors=list(out.errors), logs=list(out.logs),
                                  table=out.table, source_index=out.source_index)
            result = pool.run("golden", kind, source, events)
            return CodeResult(values=list(result.values), errors=list(result.errors), logs=list(result.logs))

        yield run
