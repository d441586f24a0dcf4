"""Event-time windows: which windows an event belongs to, and when a window closes.

Kinds (all on event time, in UTC, aligned to the Unix epoch):
- **tumbling** `window: 60s`: back-to-back windows [k*60s, (k+1)*60s); each event is in one.
- **sliding** `window: {size: 60s, every: 10s}`: a window starts every `every` and lasts `size`;
  each event is in size/every windows. `size` must be a whole multiple of `every`.
- **session** `window: {gap: 5m}`: per key, events closer than `gap` to each other form one
  session [first event, last event + gap). An event that bridges two sessions merges them.

Every window is half-open: it contains `start <= t < end`. The **watermark** is the largest event
time seen so far minus `lateness`; a window **closes** when the watermark reaches its end
(watermark >= end), and it is emitted then, once. The watermark is tracked event by event in
arrival order, so the outcome does not depend on how the input is cut into batches: an event is
**late** when every window it belongs to had closed before it arrived (sliding: it still counts
in those of its windows that are open); a session event is late when a session it touches had
already closed, or, touching none, when its own span [t, t + gap) had. Late events
go to the dead letters with reason `late`. Out-of-order events within `lateness` are simply
counted where they belong. Events without a usable time go to the dead letters with reason
`no_time` (see primitives.eventtime). At the end of input every open window closes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from primitives.durations import Duration, format_duration
from primitives.eventtime import format_time

MAX_OVERLAP = 1000  # sliding windows per event; more is a mistake, and costs memory linearly
_NEVER = -(2**62)  # "no watermark yet": below every real instant, safe to subtract from

__all__ = [
    "FixedWindows",
    "SessionWindow",
    "SessionWindows",
    "SlidingWindow",
    "WindowSpec",
    "group_key",
    "micros",
]


def micros(duration: timedelta) -> int:
    return duration // timedelta(microseconds=1)


class SlidingWindow(BaseModel):
    """Overlapping windows of `size`, one starting every `every`."""

    model_config = ConfigDict(extra="forbid")
    size: Duration = Field(description="Length of each window, e.g. 60s.")
    every: Duration = Field(description="Time between window starts, e.g. 10s; must divide size.")

    @model_validator(mode="after")
    def _check(self) -> SlidingWindow:
        size, every = micros(self.size), micros(self.every)
        if size <= 0 or every <= 0:
            raise ValueError("sliding window size and every must be positive durations")
        if size % every:
            raise ValueError(
                f"sliding window size {format_duration(self.size)} must be a whole multiple of every "
                f"{format_duration(self.every)}; "
                "pick every so that size / every is an integer (size 60s, every 10s -> 6 windows)"
            )
        if size // every > MAX_OVERLAP:
            raise ValueError(
                f"sliding window size / every = {size // every} windows per event; at most "
                f"{MAX_OVERLAP}: use a larger every or a tumbling window"
            )
        return self


class SessionWindow(BaseModel):
    """Per-key sessions that close after `gap` without events."""

    model_config = ConfigDict(extra="forbid")
    gap: Duration = Field(description="Inactivity that ends a session, e.g. 5m.")

    @model_validator(mode="after")
    def _check(self) -> SessionWindow:
        if micros(self.gap) <= 0:
            raise ValueError("session gap must be a positive duration")
        return self


def _window_kind(value: Any) -> str:
    """Pick the form by shape, so an error speaks about the form the author meant."""
    if isinstance(value, SessionWindow) or (isinstance(value, dict) and "gap" in value):
        return "session"
    if isinstance(value, SlidingWindow | dict):
        return "sliding"
    return "tumbling"


# A tumbling window is written as a bare duration: `window: 60s`.
WindowSpec = Annotated[
    Annotated[Duration, Tag("tumbling")]
    | Annotated[SlidingWindow, Tag("sliding")]
    | Annotated[SessionWindow, Tag("session")],
    Discriminator(_window_kind),
]


def group_key(values: list[Any]) -> tuple[Any, ...]:
    """A hashable key for a list of field values where 1 == 1.0 but 1 != "1" != True.

    Batches unify an int/float field to float, so numbers compare by value; every other type
    is tagged so that values of different JSON types never share a key.
    """
    parts: list[Any] = []
    for value in values:
        if value is None:
            parts.append(None)
        elif isinstance(value, bool):
            parts.append(("b", value))
        elif isinstance(value, int | float):
            parts.append(("n", int(value) if float(value).is_integer() else value))
        elif isinstance(value, str):
            parts.append(("s", value))
        else:
            parts.append(("j", json.dumps(value, sort_keys=True, default=str)))
    return tuple(parts)


class Watermark:
    """Largest event time seen minus lateness, advanced event by event in arrival order."""

    def __init__(self, lateness: int) -> None:
        self.lateness = lateness
        self.max_time = _NEVER

    @property
    def value(self) -> int:
        return self.max_time - self.lateness

    def before_each(self, times: pa.Array) -> pa.Array:
        """The watermark just before each event (int64), then advance past the whole batch."""
        if len(times) == 0:
            return pa.array([], pa.int64())
        running = pc.cumulative_max(pc.fill_null(times, _NEVER))
        before = pa.concat_arrays([pa.array([self.max_time], pa.int64()), running[:-1]])
        before = pc.max_element_wise(before, pa.scalar(self.max_time, pa.int64()))
        self.max_time = max(self.max_time, running[-1].as_py())
        return pc.subtract(before, pa.scalar(self.lateness, pa.int64()))


@dataclass(slots=True)
class FixedAssignment:
    """Rows of a batch spread over windows: `rows[i]` lies in window [starts[i], starts[i]+size)."""

    rows: pa.Array
    starts: pa.Array
    late: list[int]
    no_time: list[int]
    newest: list[int] = field(default_factory=list)  # per late row: the newest event time before it


class FixedWindows:
    """Tumbling (every == size) and sliding windows, assigned with Arrow compute."""

    def __init__(self, size: int, every: int, lateness: int) -> None:
        self.size, self.every = size, every
        self.watermark = Watermark(lateness)

    def assign(self, times: pa.Array) -> FixedAssignment:
        """Assign one batch (int64 µs times, arrival order); advances the watermark."""
        before = self.watermark.before_each(times)
        no_time = pc.indices_nonzero(pc.is_null(times)).to_pylist()
        base = _floor_to(times, self.every)  # start of the latest window holding each event
        last_end = pc.add(base, self.size)
        late_mask = pc.fill_null(pc.less_equal(last_end, before), False)
        late_rows = pc.indices_nonzero(late_mask)
        late = late_rows.to_pylist()
        newest = pc.add(pc.take(before, late_rows), self.watermark.lateness).to_pylist() if late else []
        keep = pc.indices_nonzero(pc.and_(pc.is_valid(times), pc.invert(late_mask)))
        count = self.size // self.every
        if count == 1:
            return FixedAssignment(keep, pc.take(base, keep), late, no_time, newest)
        # Row r of `keep` becomes `count` rows, the k-th in the window starting k*every earlier.
        slot = pa.array(range(len(keep) * count), pa.int64())
        which = pc.divide(slot, count)
        rows = pc.take(keep, which)
        shift = pc.multiply(pc.subtract(slot, pc.multiply(which, count)), self.every)
        starts = pc.subtract(pc.take(base, rows), shift)
        open_ = pc.greater(pc.add(starts, self.size), pc.take(before, rows))
        return FixedAssignment(pc.filter(rows, open_), pc.filter(starts, open_), late, no_time, newest)


def behind(time: int, newest: int) -> str:
    """How far `time` lies behind `newest` (µs), as a duration: `26d16h17m47s148ms`."""
    return format_duration(timedelta(microseconds=max(newest - time, 0)))


def late_message(time: int, newest: int, lateness: int) -> str:
    """Why an event is late, with the numbers an agent needs: how far behind the newest event
    time it came. A file of concatenated runs (loghub's Zookeeper sample jumps back 26 days
    twice) shows up here as a gap of days, a slow source as seconds beyond `lateness`."""
    return (f"event is late: its time {format_time(time)} is {behind(time, newest)} behind the newest "
            f"event time before it ({format_time(newest)}), so its window(s) had closed (lateness "
            f"{format_duration(timedelta(microseconds=lateness))}); raise `lateness` to wait longer for "
            "events out of order")


def _floor_to(times: pa.Array, step: int) -> pa.Array:
    """Largest multiple of `step` <= t, exact for negative t too (Arrow divides toward zero)."""
    quotient = pc.divide(times, step)
    below = pc.less(pc.subtract(times, pc.multiply(quotient, step)), 0)
    quotient = pc.if_else(below, pc.subtract(quotient, 1), quotient)
    return pc.multiply(quotient, step)


@dataclass(slots=True)
class _Session:
    sid: int
    start: int
    last: int


@dataclass(slots=True)
class SessionAssignment:
    """`sids[i]` is the session of batch row i, or None when the row is late or has no time."""

    sids: list[int | None]
    late: list[int]
    no_time: list[int]
    newest: list[int] = field(default_factory=list)  # per late row: the newest event time before it


@dataclass(slots=True)
class ClosedSession:
    sid: int
    start: int
    end: int
    members: list[int] = field(default_factory=list)  # every sid merged into this one


class SessionWindows:
    """Per-key sessions; merging keeps the lowest session id and remembers the others as aliases."""

    def __init__(self, gap: int, lateness: int) -> None:
        self.gap = gap
        self.watermark = Watermark(lateness)
        self._open: dict[tuple[Any, ...], list[_Session]] = {}
        self._emitted_until: dict[tuple[Any, ...], int] = {}  # end of the last closed session
        self._members: dict[int, list[int]] = {}
        self._next = 0

    def assign(self, times: pa.Array, keys: list[tuple[Any, ...]]) -> SessionAssignment:
        before = self.watermark.before_each(times).to_pylist()
        result = SessionAssignment([], [], [])
        for index, (time, key) in enumerate(zip(times.to_pylist(), keys, strict=True)):
            if time is None:
                result.no_time.append(index)
                result.sids.append(None)
            elif time < self._emitted_until.get(key, _NEVER):  # inside a session already emitted
                result.late.append(index)
                result.newest.append(before[index] + self.watermark.lateness)
                result.sids.append(None)
            else:
                sid = self._place(key, time, before[index])
                if sid is None:
                    result.late.append(index)
                    result.newest.append(before[index] + self.watermark.lateness)
                result.sids.append(sid)
        return result

    def close(self, until: int | None = None) -> list[ClosedSession]:
        """Sessions whose end <= `until` (default: the watermark; use a huge value to flush)."""
        limit = self.watermark.value if until is None else until
        closed: list[ClosedSession] = []
        for key in list(self._open):
            sessions = self._open[key]
            for session in [s for s in sessions if s.last + self.gap <= limit]:
                end = session.last + self.gap
                closed.append(
                    ClosedSession(
                        session.sid, session.start, end, self._members.pop(session.sid, [session.sid])
                    )
                )
                sessions.remove(session)
                self._emitted_until[key] = max(self._emitted_until.get(key, _NEVER), end)
            if not sessions:
                del self._open[key]
        # A key's emitted frontier matters only while an event behind it could still be on time.
        for key in [k for k, end in self._emitted_until.items() if end + self.gap <= limit]:
            if key not in self._open:
                del self._emitted_until[key]
        closed.sort(key=lambda s: (s.end, s.start, s.sid))
        return closed

    def open_sessions(self) -> int:
        return sum(len(s) for s in self._open.values())

    def _place(self, key: tuple[Any, ...], time: int, watermark: int) -> int | None:
        """The session `time` joins (merging those it bridges), or None when that session has
        already closed at this event's watermark (or, with no session to join, its own would be)."""
        sessions = self._open.setdefault(key, [])
        touching = [s for s in sessions if s.start - self.gap < time < s.last + self.gap]
        if any(s.last + self.gap <= watermark for s in touching) or (
            not touching and time + self.gap <= watermark
        ):
            if not sessions:
                del self._open[key]
            return None
        if not touching:
            session = _Session(self._next, time, time)
            self._members[self._next] = [self._next]
            self._next += 1
            sessions.append(session)
            return session.sid
        keep = min(touching, key=lambda s: s.sid)
        keep.start = min([time, *(s.start for s in touching)])
        keep.last = max([time, *(s.last for s in touching)])
        for other in touching:
            if other is not keep:
                sessions.remove(other)
                self._members[keep.sid].extend(self._members.pop(other.sid))
        return keep.sid
