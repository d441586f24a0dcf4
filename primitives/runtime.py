"""The contract between step kinds and the engine that runs them.

Events travel between steps as `pyarrow.Table` batches. A step runtime is built once per pipeline
run from its validated options and then fed batches in order; stateful steps keep their state
(windows, rule counters, dedupe keys) inside the runtime object. Code steps never run agent code
themselves: the engine hands them a `CodeRunner` that executes a batch in the sandbox, so this
package stays pure (no processes, no I/O).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class CodeError:
    """A per-event failure of agent code, as the sandbox reports it.

    `reason` is one of: error (an exception in the snippet), timeout, memory, crash, bad_output.
    `line` is the line inside the snippet, never a host traceback.
    """

    index: int
    reason: str
    error_type: str
    message: str
    line: int | None = None
    function: str | None = None


@dataclass(slots=True)
class CodeResult:
    """Results of one entrypoint call per input event; `values[i]` is None where event i failed.

    Values by kind: transform/derive -> list[dict] (None and a single dict are normalised to a
    list); keep -> bool; rule -> {"match": bool, "dedup", "title", "severity", "context"}.

    When the runner was given a `pa.Table` and the kind is transform/derive, the outputs come
    as `table` instead (all output rows in input order) with `source_index[j]` = the input row
    output row j came from, and `values` is empty; keep/rule still fill `values` per input row.
    """

    values: list[Any]
    errors: list[CodeError] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    table: pa.Table | None = None
    source_index: list[int] | None = None


class CodeRunner(Protocol):
    def __call__(self, kind: str, source: str, events: list[dict[str, Any]] | pa.Table) -> CodeResult: ...


@dataclass(slots=True)
class DeadLetter:
    """An event that left the pipeline without an output, and why."""

    step: str
    reason: str  # error | timeout | memory | crash | bad_output | late | parse
    message: str
    event: dict[str, Any] | None = None
    line: int | None = None  # the snippet line, for code errors


@dataclass(slots=True)
class StepResult:
    """What one call of a step produced.

    `events` goes to the next step (None or an empty table: nothing); `signals` are alerts (dicts
    in the signal shape of primitives.signals); `errors` counts events that failed in this step.
    """

    events: pa.Table | None = None
    signals: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    errors: int = 0
    code_errors: list[CodeError] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a step needs from its pipeline when it is built."""

    pipeline: str
    version: int
    step_id: str
    time_field: str | None
    run_code: CodeRunner | None = None
    # Directory that relative lookup-table paths (enrich) are resolved against.
    base_dir: str = "."


class StepRuntime(Protocol):
    """A step's runtime. One that may raise on a batch as a whole (a SQL expression that cannot
    hold for one event's value) and that changes no state when it raises sets the class attribute
    `isolatable = True`: the engine then re-runs it on halves of the batch, so that only the
    events it fails on go to the dead letters (see stream.engine.Engine._guarded)."""

    def process(self, batch: pa.Table) -> StepResult:
        """Consume one batch; emit what is ready (stateless steps: everything)."""
        ...

    def finish(self) -> StepResult:
        """End of input: flush open windows and pending state."""
        ...
