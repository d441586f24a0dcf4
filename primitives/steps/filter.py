"""`filter`: keep the events that satisfy a condition; drop the rest.

Declarative form — a DuckDB boolean expression over the event's fields, run vectorised on the
whole batch:

    - filter: "status >= 400 AND path LIKE '/admin%'"

An event is kept when the expression is TRUE. FALSE drops it, and so does NULL: SQL's three-valued
logic makes `status >= 400` NULL for an event without `status`, and such events are dropped, as in
a SQL `WHERE`. Write `status IS NULL OR status >= 400` to keep them. A field that no event of the
batch has reads as NULL (no error), so a batch without the field simply keeps nothing that needs it.

Code form — `keep(event) -> bool` in Python, run in the sandbox:

    - filter:
        code: |
          def keep(event):
              return event.get("user", "").startswith("adm")

An event for which `keep` raises, times out or returns a non-bool goes to the dead-letter output
(with the snippet line) and counts as a step error; the other events are unaffected.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from primitives.batch import take_rows, to_events, with_columns
from primitives.registry import step
from primitives.runtime import BuildContext, CodeError, CodeRunner, DeadLetter, StepResult
from primitives.sqlcheck import check_expression, referenced_columns
from primitives.sqlexec import SqlBatch

EXAMPLE = """name: web-errors
description: Server errors and forbidden admin pages
source: web
steps:
  - filter: "status >= 500 OR (status = 403 AND path LIKE '/admin%')"
"""


def _build(options: FilterOptions, ctx: BuildContext) -> SqlFilter | CodeFilter:
    if options.code is not None:
        if ctx.run_code is None:
            raise ValueError(f"step '{ctx.step_id}': filter code needs the sandbox (no code runner given)")
        return CodeFilter(options.code, ctx.step_id, ctx.run_code)
    assert options.expr is not None
    return SqlFilter(options.expr)


@step("filter", summary="Keep events where a SQL condition is true (NULL drops), or where keep(event) "
      "returns True.", example=EXAMPLE, build=_build)
class FilterOptions(BaseModel):
    """`filter: "<sql>"` is shorthand for `filter: {expr: "<sql>"}`."""

    model_config = ConfigDict(extra="forbid")

    expr: str | None = Field(None, description="DuckDB boolean expression over event fields, e.g. "
                             "\"status >= 500\"; NULL (missing field) drops the event.")
    code: str | None = Field(None, description="Python module defining keep(event) -> bool; runs in "
                             "the sandbox. Use when SQL cannot express the test.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"expr": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> FilterOptions:
        if (self.expr is None) == (self.code is None):
            raise ValueError('give a SQL condition (filter: "status >= 500") or {code: ...} with '
                             "def keep(event), not both")
        if self.expr is not None:
            problems = check_expression(self.expr, role="predicate")
            if problems:
                raise ValueError("; ".join(problem.render() for problem in problems))
        return self


class SqlFilter:
    """Stateless; one DuckDB connection (primitives.duck) for the life of the step."""

    isolatable = True  # see primitives.runtime.StepRuntime

    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.columns = sorted(referenced_columns(expr))
        self.sql = SqlBatch()

    def process(self, batch: pa.Table) -> StepResult:
        if batch.num_rows == 0:
            return StepResult(events=batch)
        padded = with_columns(batch, self.columns)
        kept = self.sql.filter(padded, self.expr)
        # columns added only so the expression could bind are not part of the events
        return StepResult(events=kept.select(batch.column_names))

    def finish(self) -> StepResult:
        return StepResult()


class CodeFilter:
    def __init__(self, code: str, step_id: str, run_code: CodeRunner) -> None:
        self.code = code
        self.step_id = step_id
        self.run_code = run_code

    def process(self, batch: pa.Table) -> StepResult:
        if batch.num_rows == 0:
            return StepResult(events=batch)
        outcome = self.run_code("keep", self.code, batch)
        mask = pa.array([value is True for value in outcome.values], pa.bool_())
        result = StepResult(events=batch.filter(mask), logs=list(outcome.logs))
        code_dead_letters(self.step_id, "keep", outcome.errors, batch, result)
        return result

    def finish(self) -> StepResult:
        return StepResult()


def code_dead_letters(step_id: str, entrypoint: str, errors: list[CodeError],
                      events: list[dict[str, Any]] | pa.Table, result: StepResult) -> None:
    """Each failed event to the dead-letter output, with the snippet line and the error.

    Given the batch as a table, only the failed rows are turned back into Python events.
    """
    if isinstance(events, pa.Table):
        failed = sorted({e.index for e in errors if 0 <= e.index < events.num_rows})
        rows = to_events(take_rows(events, failed)) if failed else []
        by_index = dict(zip(failed, rows, strict=True))
        events = [by_index.get(i, {}) for i in range(events.num_rows)] if failed else []
    for error in errors:
        where = f" line {error.line}" if error.line is not None else ""
        result.dead_letters.append(DeadLetter(
            step=step_id, reason=error.reason, line=error.line,
            message=f"{entrypoint}(){where}: {error.error_type}: {error.message}",
            event=events[error.index] if 0 <= error.index < len(events) else None))
    result.errors += len({error.index for error in errors})
    result.code_errors.extend(errors)
