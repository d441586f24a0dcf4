"""rule: a Python detection rule over events, with threshold, sliding window and suppression.

The snippet defines `rule(event) -> bool` and optionally `dedup(event) -> str`, `title(event) ->
str`, `severity(event) -> str` and `context(event) -> dict`; the sandbox runs them per event.
Defaults: title = the pipeline name, dedup = the title, severity = the step's `severity`,
context = {}. Thresholds, windows, suppression, `count`, `first_seen` and lateness are defined
in primitives.rulestate; ids in primitives.signals.

Event time comes from the pipeline's time field. A matching event without a usable time goes to
the dead letters as `no_time`, a matching event too old to judge as `late` (neither changes any
alert); events that do not match need no time. The step is an observer: its input events pass
on unchanged to the next step, and the alerts go out as signals.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, model_validator

from primitives.batch import take_rows, to_events
from primitives.durations import Duration, format_duration
from primitives.eventtime import event_micros, format_time, no_time_message
from primitives.registry import step
from primitives.rulestate import AlertBook, Match, feed
from primitives.runtime import BuildContext, DeadLetter, StepResult
from primitives.signals import SEVERITIES, Severity
from primitives.steps.aggregate import DEFAULT_TIME_FIELD
from primitives.windows import behind, micros

EXAMPLE = r"""name: ssh-brute-force
source: auth
time: timestamp
steps:
  - filter: "message LIKE '%Failed password%'"
  - parse:
      field: message
      regex: 'Failed password for (invalid user )?(?P<user>.+?) from (?P<src_ip>\S+)'
  - rule:
      code: |
        def rule(event):
            return True

        def dedup(event):
            return event["src_ip"]

        def title(event):
            return "SSH brute force from " + event["src_ip"]
      threshold: 5
      window: 60s
      suppress: 15m
      severity: high
"""


@step(
    "rule",
    summary="Python detection rule: alert when `threshold` matches share a key within a window.",
    example=EXAMPLE,
    emits="signals",
    build=lambda options, ctx: RuleRuntime(options, ctx),
)
class RuleOptions(BaseModel):
    """Raise deduplicated alerts from events that `rule(event)` matches."""

    model_config = ConfigDict(extra="forbid")

    code: str = Field(
        description=(
            "Python module defining rule(event) -> bool; optional dedup(event) -> str, title(event) -> str, "
            "severity(event) -> str, context(event) -> dict."
        )
    )
    threshold: int = Field(default=1, ge=1, description="Matches with one dedup key needed to fire.")
    window: Duration | None = Field(
        default=None,
        description=("Sliding event-time window the threshold must be reached in; default: suppress."),
    )
    suppress: Duration = Field(
        default=timedelta(minutes=60),
        description="Default 60m. After firing, matches with that key fold into the alert "
        "for this long instead of raising a new one.",
    )
    severity: Severity = Field(default="medium", description="Severity unless severity(event) says.")

    @model_validator(mode="after")
    def _check_times(self) -> RuleOptions:
        if micros(self.suppress) < 0:
            raise ValueError("suppress must not be negative")
        if micros(self.effective_window) <= 0:
            raise ValueError("window must be a positive duration (it defaults to suppress, which is 0)")
        return self

    @property
    def effective_window(self) -> timedelta:
        return self.suppress if self.window is None else self.window


class RuleRuntime:
    def __init__(self, options: RuleOptions, ctx: BuildContext) -> None:
        if ctx.run_code is None:
            raise ValueError(
                f"step {ctx.step_id!r}: rule runs Python code and needs the engine's code runner"
            )
        self.options, self.ctx, self.run_code = options, ctx, ctx.run_code
        self.time_field = ctx.time_field or DEFAULT_TIME_FIELD
        self.book = AlertBook(
            pipeline=ctx.pipeline,
            version=ctx.version,
            step=ctx.step_id,
            threshold=options.threshold,
            window=micros(options.effective_window),
            suppress=micros(options.suppress),
        )

    def process(self, batch: pa.Table) -> StepResult:
        result = StepResult(events=batch)
        if batch.num_rows == 0:
            return result
        # The runner takes the Arrow batch as is; only matching or failing rows become dicts here.
        outcome = self.run_code("rule", self.options.code, batch)
        result.code_errors.extend(outcome.errors)
        result.logs.extend(outcome.logs)
        rows = batch.num_rows
        failed = {e.index for e in outcome.errors if 0 <= e.index < rows}
        clean_miss = [isinstance(v, dict) and v.get("match") is False for v in outcome.values[:rows]]
        picked = sorted(
            failed | {i for i, v in enumerate(outcome.values[:rows]) if v is not None and not clean_miss[i]}
        )
        events = dict(zip(picked, to_events(take_rows(batch, picked)), strict=True))
        dead = [
            (e.index, DeadLetter(self.ctx.step_id, e.reason, e.message, events.get(e.index), e.line))
            for e in outcome.errors
            if 0 <= e.index < batch.num_rows
        ]
        times = event_micros(batch, self.time_field).to_pylist()
        matches: dict[int, list[Match]] = {}
        for index in picked:
            value = outcome.values[index] if index < len(outcome.values) else None
            if value is None:
                continue  # failed in the sandbox: reported above
            match, problem = self._match(value, events[index])
            if problem is not None:
                dead.append(
                    (
                        index,
                        DeadLetter(
                            self.ctx.step_id,
                            "bad_output",
                            f"step '{self.ctx.step_id}': {problem}",
                            events[index],
                        ),
                    )
                )
            elif match is not None and times[index] is None:
                dead.append(
                    (
                        index,
                        DeadLetter(
                            self.ctx.step_id,
                            "no_time",
                            "rule matched, but " + no_time_message(
                                events[index], self.time_field, "; windows and suppression need event time"),
                            events[index],
                        ),
                    )
                )
            elif match is not None:
                match.time = times[index]
                matches[index] = [match]
        result.signals, late = feed(self.book, times, matches)
        window = format_duration(self.options.effective_window)
        dead += [
            (
                index,
                DeadLetter(
                    self.ctx.step_id,
                    "late",
                    f"rule matched an event {behind(times[index], newest)} older than the newest event "
                    f"time before it ({format_time(newest)}), past the window ({window}); it cannot change "
                    "any alert",
                    events[index],
                ),
            )
            for index, newest in late.items()
        ]
        result.dead_letters = [letter for _, letter in sorted(dead, key=lambda pair: pair[0])]
        result.errors = len(dead) - len(late)  # late is a property of the stream, not a failure
        return result

    def snapshot(self) -> dict[str, Any]:
        """The alert book, for the executor's checkpoint (see AlertBook.snapshot)."""
        return self.book.snapshot()

    def restore(self, data: dict[str, Any]) -> None:
        self.book.restore(data)

    def finish(self) -> StepResult:
        return StepResult()

    def _match(self, value: Any, event: dict[str, Any]) -> tuple[Match | None, str | None]:
        """(the row's Match, time filled by the caller, or None; a problem with its shape, or None)."""
        if value is None:
            return None, None  # failed in the sandbox, already reported
        problem = _check_value(value)
        if problem is not None or not value["match"]:
            return None, problem
        title = value.get("title") or self.ctx.pipeline
        dedup = value.get("dedup")
        severity = value.get("severity") or self.options.severity
        if severity not in SEVERITIES:
            return None, f"severity() returned {severity!r}; return one of {', '.join(SEVERITIES)}"
        match = Match(
            time=0,
            dedup=title if dedup in (None, "") else str(dedup),
            title=str(title),
            severity=severity,
            context=dict(value.get("context") or {}),
            event=event,
        )
        return match, None


def _check_value(value: Any) -> str | None:
    if not isinstance(value, dict) or not isinstance(value.get("match"), bool):
        got = value.get("match") if isinstance(value, dict) else value
        return f"rule() must return a bool; got {type(got).__name__} ({got!r:.40})"
    if value.get("title") is not None and not isinstance(value["title"], str):
        return f"title() must return a str; got {type(value['title']).__name__}"
    if value.get("dedup") is not None and not isinstance(value["dedup"], str | int | float):
        return f"dedup() must return a str; got {type(value['dedup']).__name__}"
    if value.get("context") is not None and not isinstance(value["context"], dict):
        return f"context() must return a dict; got {type(value['context']).__name__}"
    return None
