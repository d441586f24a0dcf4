"""dedupe: drop events whose key was already forwarded within a span of event time.

An event is forwarded when no event with the same `by` values was forwarded less than `within`
before or after it (event time); otherwise it is dropped. The forwarded event starts a new span,
so a key that repeats without pause is forwarded once per `within`, never suppressed for good.
Keys compare by JSON value: 1 and 1.0 are the same key, 1 and "1" are not; a missing field is
null. Events without a usable time go to the dead letters with reason `no_time`.

An event that arrives out of order is judged against the forwards of its key on both sides of
it, not only the latest. State is bounded: a forward is forgotten once the newest event time seen
is 2 x `within` past it. Judged event by event in arrival order, so the outcome does not depend on
batching; only an event that arrives more than `within` behind the newest one can meet a
forgotten forward, and is then forwarded.
"""

from __future__ import annotations

import bisect
from datetime import timedelta
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from primitives.batch import take_rows, to_events, with_columns
from primitives.durations import Duration
from primitives.eventtime import event_micros, no_time_message
from primitives.registry import step
from primitives.runtime import BuildContext, DeadLetter, StepResult
from primitives.steps.aggregate import DEFAULT_TIME_FIELD
from primitives.windows import group_key, micros

EXAMPLE = """\
name: unique-logins
source: auth
time: timestamp
steps:
  - filter: "message LIKE '%Accepted password%'"
  - dedupe:
      by: [user, src_ip]
      within: 10m
"""


@step(
    "dedupe",
    summary="Drop repeats of the same key within a span of event time.",
    example=EXAMPLE,
    build=lambda options, ctx: DedupeRuntime(options, ctx),
)
class DedupeOptions(BaseModel):
    """Forward the first event per key and drop its repeats for `within` (event time)."""

    model_config = ConfigDict(extra="forbid")

    by: list[str] = Field(min_length=1, description="Fields whose values form the key, e.g. [user, src_ip].")
    within: Duration = Field(
        default=timedelta(minutes=10),
        description="Default 10m. Repeats of a key closer than this to a forwarded event are dropped.",
    )

    @field_validator("by")
    @classmethod
    def _check_by(cls, by: list[str]) -> list[str]:
        if len(set(by)) != len(by) or not all(by):
            raise ValueError(f"by must list distinct, non-empty field names; got {by}")
        return by

    @model_validator(mode="after")
    def _check_within(self) -> DedupeOptions:
        if micros(self.within) <= 0:
            raise ValueError("within must be a positive duration, e.g. 10m")
        return self


class DedupeRuntime:
    def __init__(self, options: DedupeOptions, ctx: BuildContext) -> None:
        self.by, self.within, self.ctx = options.by, micros(options.within), ctx
        self.time_field = ctx.time_field or DEFAULT_TIME_FIELD
        self.newest: int | None = None
        # key -> event times of its forwards still within reach, sorted. Not just the latest: an
        # event that arrives out of order must be judged against the forward nearest to it. Forwards
        # of one key are `within` apart, so a key holds about 2 x `within` / `within` of them.
        self.forwarded: dict[tuple[Any, ...], list[int]] = {}

    def process(self, batch: pa.Table) -> StepResult:
        times = event_micros(batch, self.time_field).to_pylist()
        rows = to_events(with_columns(batch, self.by).select(self.by)) if batch.num_rows else []
        keep: list[bool] = []
        no_time: list[int] = []
        for index, (time, row) in enumerate(zip(times, rows, strict=True)):
            if time is None:
                no_time.append(index)
                keep.append(False)
                continue
            keep.append(self._judge(group_key([row.get(f) for f in self.by]), time))
            self.newest = time if self.newest is None else max(self.newest, time)
        self._expire()
        result = StepResult(events=batch.filter(pa.array(keep, pa.bool_())), errors=len(no_time))
        if no_time:
            events = to_events(take_rows(batch, no_time))
            result.dead_letters = [
                DeadLetter(self.ctx.step_id, "no_time",
                           no_time_message(e, self.time_field, "; dedupe works on event time"), e)
                for e in events]
        return result

    def finish(self) -> StepResult:
        return StepResult()

    def _judge(self, key: tuple[Any, ...], time: int) -> bool:
        times = self.forwarded.setdefault(key, [])
        if self.newest is not None:  # forgotten forwards (expired lazily so that batching cannot matter)
            del times[: bisect.bisect_right(times, self.newest - 2 * self.within)]
        at = bisect.bisect_left(times, time)  # the forwards just before and after this event
        before_near = at > 0 and time - times[at - 1] < self.within
        after_near = at < len(times) and times[at] - time < self.within
        if before_near or after_near:
            return False
        times.insert(at, time)
        return True

    def _expire(self) -> None:
        if self.newest is None:
            return
        horizon = self.newest - 2 * self.within
        for key in list(self.forwarded):
            times = self.forwarded[key]
            del times[: bisect.bisect_right(times, horizon)]
            if not times:
                del self.forwarded[key]
