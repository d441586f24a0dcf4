"""derive: turn aggregate rows (or events) into signals, declaratively or with Python.

Declarative form: every row for which the SQL predicate `when` is true raises or updates a signal
whose `title` and `dedup` are templates. A template substitutes `{field}` with the row's value of
that top-level field and nothing else: no attribute or index access, no format specs (`{{` and
`}}` are literal braces). It is rendered by our own substitution, never by `str.format`. A field
the row lacks renders as empty text and is counted in the step's logs. `context: [fields]` copies
those fields into the signal (default: none; the row itself is always in `samples`).

Code form `{code: ...}`: `derive(row)` returns None (no signal), a dict or a list of dicts, one
signal each. Keys: `title` (str, default the pipeline name), `dedup` (str, default the title),
`severity` (default the step's `severity`), `context` (dict, default {}); any other key is an
error that names the allowed ones.

Signals fold like a `rule` with threshold 1 and window = `suppress` (primitives.rulestate): one
signal per dedup key, later rows within `suppress` of its firing update it. Time: a row with a
`window_start` field (aggregate output) spans window_start..window_end, so first_seen and
last_seen are window bounds; any other row uses the pipeline's time field. A matching row
without a usable time goes to the dead letters as `no_time`. Rows pass on unchanged.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from primitives.batch import canonical, take_rows, to_events, with_columns
from primitives.durations import Duration, format_duration
from primitives.eventtime import event_micros, format_time, no_time_message
from primitives.registry import step
from primitives.rulestate import AlertBook, Match, feed
from primitives.runtime import BuildContext, DeadLetter, StepResult
from primitives.signals import SEVERITIES, Severity
from primitives.sqlcheck import check_expression, referenced_columns
from primitives.sqlexec import SqlBatch
from primitives.steps.aggregate import DEFAULT_TIME_FIELD
from primitives.windows import behind, micros

# One token: an escaped brace, a {field} placeholder, or any other brace (an error).
_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")
_CODE_KEYS = {"title", "dedup", "severity", "context"}

EXAMPLE = """\
name: error-bursts
source: web
time: timestamp
steps:
  - aggregate:
      window: 5m
      by: [host]
      measures:
        errors: "count(*) FILTER (WHERE status >= 500)"
        requests: "count(*)"
  - derive:
      when: "errors >= 10 AND errors > requests / 10"
      severity: high
      title: "{errors} server errors on {host} in 5 minutes"
      dedup: "{host}"
      suppress: 1h
      context: [host, errors, requests]
"""


def parse_template(template: str) -> list[str | tuple[str]]:
    """Literal text and ("field",) placeholders; ValueError naming the bad part otherwise."""
    parts: list[str | tuple[str]] = []
    position = 0
    for token in _TOKEN.finditer(template):
        parts.append(template[position : token.start()])
        text = token.group(0)
        if token.group(1):
            parts.append((token.group(1),))
        elif text in ("{{", "}}"):
            parts.append(text[0])
        else:
            rest = template[token.start() : token.start() + 20]
            raise ValueError(
                f"template {template!r} has {rest!r}: only {{field}} placeholders with a plain field name "
                "are allowed (no attributes, indexes or format specs); write {{ or }} for a literal brace"
            )
        position = token.end()
    parts.append(template[position:])
    return [p for p in parts if p != ""]


def template_fields(template: str) -> list[str]:
    """The field names a template uses, for static checks against a known schema."""
    return [p[0] for p in parse_template(template) if isinstance(p, tuple)]


def render(parts: list[str | tuple[str]], row: dict[str, Any], missing: set[str]) -> str:
    out: list[str] = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
        elif part[0] not in row:
            missing.add(part[0])
        else:
            out.append(_text(row[part[0]]))
    return "".join(out)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    # true/false, numbers (1.0 as 1: see primitives.batch.canonical), JSON for the rest
    return json.dumps(canonical(value), sort_keys=True, default=str)


@step(
    "derive",
    summary="Raise deduplicated signals from rows (or events) that match a condition.",
    example=EXAMPLE,
    emits="signals",
    build=lambda options, ctx: DeriveRuntime(options, ctx),
)
class DeriveOptions(BaseModel):
    """`{when, title, dedup, severity, suppress, context}` or `{code, severity, suppress}`."""

    model_config = ConfigDict(extra="forbid")

    when: str | None = Field(
        default=None, description="SQL predicate over the row's fields, e.g. 'errors >= 10'."
    )
    code: str | None = Field(
        default=None,
        description=(
            "Instead of when: Python module with derive(row) -> dict | list[dict] | None; dict keys: "
            "title, dedup, severity, context."
        ),
    )
    title: str | None = Field(
        default=None, description="Template, e.g. '{errors} errors on {host}'; default: the pipeline name."
    )
    dedup: str | None = Field(default=None, description="Template for the dedup key; default: the title.")
    severity: Severity = Field(default="medium", description="info, low, medium, high or critical.")
    suppress: Duration = Field(
        default=timedelta(minutes=60),
        description="Default 60m. Rows with the same dedup key within this span fold into one signal.",
    )
    context: list[str] | None = Field(
        default=None, description="Row fields copied into the signal's context."
    )

    @field_validator("when")
    @classmethod
    def _check_when(cls, when: str | None) -> str | None:
        if when is not None:
            problems = check_expression(when, role="predicate")
            if problems:
                raise ValueError("when: " + "; ".join(d.render() for d in problems))
        return when

    @field_validator("title", "dedup")
    @classmethod
    def _check_template(cls, template: str | None) -> str | None:
        if template is not None:
            parse_template(template)
        return template

    @model_validator(mode="after")
    def _check_form(self) -> DeriveOptions:
        if (self.when is None) == (self.code is None):
            raise ValueError("derive needs exactly one of when (SQL predicate) or code (Python derive(row))")
        if self.code is not None and (self.title or self.dedup or self.context):
            raise ValueError(
                "in the code form, return title, dedup and context from derive(row) "
                "instead of setting them on the step"
            )
        if micros(self.suppress) < 0:
            raise ValueError("suppress must not be negative")
        return self


class DeriveRuntime:
    # The rows are matched (SQL or code) before the alert book changes: a process() that raises has
    # changed nothing (see primitives.runtime.StepRuntime).
    isolatable = True

    def __init__(self, options: DeriveOptions, ctx: BuildContext) -> None:
        if options.code is not None and ctx.run_code is None:
            raise ValueError(f"step {ctx.step_id!r}: derive code needs the engine's code runner")
        self.options, self.ctx = options, ctx
        self.time_field = ctx.time_field or DEFAULT_TIME_FIELD
        self.title: list[str | tuple[str]] = (
            parse_template(options.title) if options.title else [ctx.pipeline]
        )
        self.dedup = parse_template(options.dedup) if options.dedup else self.title
        self.sql = SqlBatch() if options.when is not None else None
        self.book = AlertBook(
            pipeline=ctx.pipeline,
            version=ctx.version,
            step=ctx.step_id,
            threshold=1,
            window=max(micros(options.suppress), 1),
            suppress=micros(options.suppress),
        )

    def process(self, batch: pa.Table) -> StepResult:
        result = StepResult(events=batch)
        if batch.num_rows == 0:
            return result
        spans = "window_start" in batch.column_names
        time_field = "window_start" if spans else self.time_field
        times = event_micros(batch, time_field).to_pylist()
        ends = event_micros(batch, "window_end").to_pylist() if spans else times
        dead: list[tuple[int, DeadLetter]] = []
        found = (
            self._coded(batch, result, dead)
            if self.options.code is not None
            else self._declared(batch, result)
        )
        matches: dict[int, list[Match]] = {}
        for index, found_here in found.items():
            if times[index] is None:
                dead.append(
                    (
                        index,
                        DeadLetter(
                            self.ctx.step_id,
                            "no_time",
                            "derive matched a row, but " + no_time_message(found_here[0].event, time_field),
                            found_here[0].event,
                        ),
                    )
                )
                continue
            for match in found_here:
                match.time, match.end = times[index], ends[index]
            matches[index] = found_here
        result.signals, late = feed(self.book, times, matches)
        suppress = format_duration(self.options.suppress)
        dead += [
            (
                index,
                DeadLetter(
                    self.ctx.step_id,
                    "late",
                    f"derive matched a row {behind(times[index], newest)} older than the newest one before "
                    f"it ({format_time(newest)}), past suppress ({suppress}); it cannot change any signal",
                    matches[index][0].event,
                ),
            )
            for index, newest in late.items()
        ]
        result.dead_letters = [letter for _, letter in sorted(dead, key=lambda pair: pair[0])]
        result.errors = len(dead) - len(late)
        return result

    def snapshot(self) -> dict[str, Any]:
        """The alert book, for the executor's checkpoint (see AlertBook.snapshot)."""
        return self.book.snapshot()

    def restore(self, data: dict[str, Any]) -> None:
        self.book.restore(data)

    def finish(self) -> StepResult:
        return StepResult()

    def _declared(self, batch: pa.Table, result: StepResult) -> dict[int, list[Match]]:
        assert self.options.when is not None and self.sql is not None
        numbered = with_columns(batch, sorted(referenced_columns(self.options.when)))
        numbered = numbered.append_column("__lb_row", pa.array(range(batch.num_rows), pa.int64()))
        kept = self.sql.filter(numbered, self.options.when)
        indices = kept.column("__lb_row").to_pylist()
        rows = to_events(take_rows(batch, indices))
        missing: set[str] = set()
        found: dict[int, list[Match]] = {}
        for index, row in zip(indices, rows, strict=True):
            title = render(self.title, row, missing)
            context = {f: row.get(f) for f in self.options.context or []}
            found[index] = [
                Match(0, render(self.dedup, row, missing), title, self.options.severity, context, row)
            ]
        if missing:
            result.logs.append(
                f"derive: field(s) {sorted(missing)} used in a template are missing from some "
                "rows and rendered as empty text"
            )
        return found

    def _coded(
        self, batch: pa.Table, result: StepResult, dead: list[tuple[int, DeadLetter]]
    ) -> dict[int, list[Match]]:
        assert self.options.code is not None and self.ctx.run_code is not None
        rows = to_events(batch)
        outcome = self.ctx.run_code("derive", self.options.code, rows)
        result.code_errors.extend(outcome.errors)
        result.logs.extend(outcome.logs)
        dead += [
            (e.index, DeadLetter(self.ctx.step_id, e.reason, e.message, rows[e.index], e.line))
            for e in outcome.errors
            if 0 <= e.index < len(rows)
        ]
        found: dict[int, list[Match]] = {}
        for index, value in enumerate(outcome.values):
            items = [] if value is None else value if isinstance(value, list) else [value]
            for item in items:
                match, problem = self._from_code(item, rows[index])
                if problem is not None:
                    dead.append(
                        (
                            index,
                            DeadLetter(
                                self.ctx.step_id,
                                "bad_output",
                                f"step '{self.ctx.step_id}': {problem}",
                                rows[index],
                            ),
                        )
                    )
                elif match is not None:
                    found.setdefault(index, []).append(match)
        return found

    def _from_code(self, item: Any, row: dict[str, Any]) -> tuple[Match | None, str | None]:
        if not isinstance(item, dict):
            return None, f"derive() must return a dict, a list of dicts or None; got {type(item).__name__}"
        if set(item) - _CODE_KEYS:
            return None, (
                f"derive() returned key(s) {sorted(set(item) - _CODE_KEYS)}; allowed keys: "
                "title, dedup, severity, context (put other values inside context)"
            )
        title = item.get("title") or self.ctx.pipeline
        dedup = item.get("dedup") or title
        severity = item.get("severity") or self.options.severity
        context = item.get("context") or {}
        if not isinstance(title, str) or not isinstance(dedup, str):
            return None, "derive() title and dedup must be str"
        if severity not in SEVERITIES:
            return None, f"derive() severity {severity!r} is not one of {', '.join(SEVERITIES)}"
        if not isinstance(context, dict):
            return None, f"derive() context must be a dict; got {type(context).__name__}"
        return Match(0, dedup, title, severity, context, row), None
