"""The alert state machine behind `rule` and `derive`: thresholds, sliding windows, suppression.

Pure and I/O-free: the steps feed it matches (event time in microseconds, dedup key, title...)
and it returns the signals that fired or changed. Per dedup key:

- **Firing.** Matches wait in a pending list ordered by event time. An alert fires as soon as
  `threshold` pending matches fit in a sliding window: last.time - first.time < window (the window
  is half-open, like every window in LogBus). At firing, `count` = threshold (exactly the matches
  in that window), `first_seen` = the earliest of them, `last_seen` = the latest, and the title,
  severity and context come from the earliest one. Pending matches older than the firing window
  did not reach the threshold and are forgotten.
- **Folding.** While an alert is active, every further match with that key folds into it: count
  + 1, `last_seen` (and, for an out-of-order match, `first_seen`) widen, samples fill up to 10.
  The alert stays active for `suppress` after its firing time (the event time of the match that
  completed the threshold); folding does not extend it.
- **Expiry.** The first match at or after firing time + `suppress` closes the alert; a new alert
  needs `threshold` matches again, counted from that match on.
- **Lateness.** The watermark is the largest event time seen (every event counts, matching or
  not). A match at or before watermark - window can no longer be judged exactly (its partners may
  already be forgotten), so the caller reports it as `late` instead of adding it. This is what
  keeps the state bounded: pending matches and closed alerts older than that are dropped.

Ids are stable (see primitives.signals): an alert's id is fixed when it fires.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from primitives.eventtime import format_time
from primitives.signals import MAX_SAMPLES, Signal, signal_id

__all__ = ["AlertBook", "Match", "feed"]


@dataclass(slots=True)
class Match:
    """One matching event or row. `end` is its own last instant (a window's end), default `time`."""

    time: int
    dedup: str
    title: str
    severity: str
    context: dict[str, Any]
    event: dict[str, Any]
    end: int | None = None

    @property
    def last(self) -> int:
        return self.time if self.end is None else self.end


@dataclass(slots=True)
class _Alert:
    id: str
    fired_at: int
    first_seen: int
    last_seen: int
    count: int
    title: str
    severity: str
    context: dict[str, Any]
    samples: list[dict[str, Any]]


@dataclass(slots=True)
class _KeyState:
    pending: list[Match] = field(default_factory=list)
    alert: _Alert | None = None


class AlertBook:
    """Alert state for one rule/derive step; times are microseconds since the epoch."""

    def __init__(
        self, *, pipeline: str, version: int, step: str, threshold: int, window: int, suppress: int
    ) -> None:
        if threshold < 1 or window <= 0 or suppress < 0:
            raise ValueError("threshold must be >= 1, window > 0 and suppress >= 0")
        self.pipeline, self.version, self.step = pipeline, version, step
        self.threshold, self.window, self.suppress = threshold, window, suppress
        self.watermark: int | None = None
        self._keys: dict[str, _KeyState] = {}

    def is_late(self, time: int) -> bool:
        """True when a match at `time` can no longer change anything (see Lateness above)."""
        return self.watermark is not None and time <= self.watermark - self.window

    def observe(self, time: int) -> None:
        """Advance the watermark past an event (matching or not), in arrival order."""
        if self.watermark is None or time > self.watermark:
            self.watermark = time

    def add(self, match: Match) -> Signal | None:
        """Apply one non-late match; the signal it fired or updated, if any."""
        state = self._keys.setdefault(match.dedup, _KeyState())
        alert = state.alert
        if alert is not None and match.time >= alert.fired_at + self.suppress:
            state.alert = alert = None
        if alert is not None:
            self._fold(alert, match)
            return self._signal(match.dedup, alert)
        bisect.insort(state.pending, match, key=lambda m: m.time)
        return self._try_fire(match.dedup, state)

    def expire(self) -> None:
        """Drop what no non-late match can reach any more; call after each batch."""
        if self.watermark is None:
            return
        horizon = self.watermark - self.window  # every future non-late match is after this
        for key in list(self._keys):
            state = self._keys[key]
            cut = bisect.bisect_right(state.pending, horizon - self.window, key=lambda m: m.time)
            del state.pending[:cut]
            if state.alert is not None and state.alert.fired_at + self.suppress <= horizon:
                state.alert = None
            if not state.pending and state.alert is None:
                del self._keys[key]

    def open_keys(self) -> int:
        return len(self._keys)

    # -- checkpointing ---------------------------------------------------------------------------
    # Replaying the log rebuilds pending matches exactly, but not an alert chain that never pauses:
    # replay starts the chain at the replay point, in another phase. The live executor therefore
    # stores this snapshot with each committed batch and puts it back after the replay.

    def snapshot(self) -> dict[str, Any]:
        """The whole state as JSON-plain data (restore() takes it back)."""
        return {"watermark": self.watermark, "keys": {
            key: {"pending": [_match_data(m) for m in state.pending],
                  "alert": None if state.alert is None else _alert_data(state.alert)}
            for key, state in self._keys.items()}}

    def restore(self, data: dict[str, Any]) -> None:
        """Replace the state with a snapshot() of a book of the same step."""
        watermark = data["watermark"]
        keys: dict[str, _KeyState] = {}
        for key, state in data["keys"].items():
            alert = state["alert"]
            keys[str(key)] = _KeyState(
                pending=[Match(**m) for m in state["pending"]],
                alert=None if alert is None else _Alert(**alert))
        self.watermark = None if watermark is None else int(watermark)
        self._keys = keys

    def _try_fire(self, dedup: str, state: _KeyState) -> Signal | None:
        pending, need = state.pending, self.threshold
        for start in range(len(pending) - need + 1):
            if pending[start + need - 1].time - pending[start].time < self.window:
                fired = pending[start : start + need]
                rest = pending[start + need :]
                first = fired[0]
                alert = _Alert(
                    id=signal_id(self.pipeline, self.step, dedup, format_time(first.time)),
                    fired_at=fired[-1].time,
                    first_seen=first.time,
                    last_seen=max(m.last for m in fired),
                    count=need,
                    title=first.title,
                    severity=first.severity,
                    context=first.context,
                    samples=[m.event for m in fired[:MAX_SAMPLES]],
                )
                state.alert, state.pending = alert, []
                for later in rest:  # out-of-order matches already waiting after the window
                    if later.time < alert.fired_at + self.suppress:
                        self._fold(alert, later)
                    else:
                        state.pending.append(later)
                return self._signal(dedup, alert)
        return None

    @staticmethod
    def _fold(alert: _Alert, match: Match) -> None:
        alert.count += 1
        alert.first_seen = min(alert.first_seen, match.time)
        alert.last_seen = max(alert.last_seen, match.last)
        if len(alert.samples) < MAX_SAMPLES:
            alert.samples.append(match.event)

    def _signal(self, dedup: str, alert: _Alert) -> Signal:
        return Signal(
            id=alert.id,
            pipeline=self.pipeline,
            version=self.version,
            step=self.step,
            severity=alert.severity,  # type: ignore[arg-type]  # checked by the caller
            title=alert.title,
            dedup=dedup,
            count=alert.count,
            first_seen=format_time(alert.first_seen),
            last_seen=format_time(alert.last_seen),
            context=alert.context,
            samples=list(alert.samples),
        )


def _match_data(match: Match) -> dict[str, Any]:
    return {"time": match.time, "dedup": match.dedup, "title": match.title, "severity": match.severity,
            "context": match.context, "event": match.event, "end": match.end}


def _alert_data(alert: _Alert) -> dict[str, Any]:
    return {"id": alert.id, "fired_at": alert.fired_at, "first_seen": alert.first_seen,
            "last_seen": alert.last_seen, "count": alert.count, "title": alert.title,
            "severity": alert.severity, "context": alert.context, "samples": alert.samples}


def feed(
    book: AlertBook, times: list[int | None], matches: dict[int, list[Match]]
) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """Run one batch through `book`: (signals as dicts, rows whose matches were late, each with
    the newest event time seen before it, for the dead letter to say how far behind it came).

    `times` holds every row's event time in arrival order (None: no time; the caller reports
    those of its matching rows as `no_time`); `matches` maps row index -> that row's matches.
    Each row is judged and applied in arrival order, exactly as if it were a batch of its own:
    the outcome (which alerts fire, their ids and counts) must not depend on how the input is
    cut into batches, or a replay after a restart, which reads other batch sizes, or a trial run
    against the live executor, would disagree. Each signal is emitted once per batch, in its
    latest state.
    """
    late: dict[int, int] = {}
    signals: dict[str, dict[str, Any]] = {}
    for index, time in enumerate(times):
        if time is None:
            continue
        found = matches.get(index)
        if found:
            if book.is_late(time):
                assert book.watermark is not None  # is_late holds only once a time was seen
                late[index] = book.watermark
            else:
                for match in found:
                    signal = book.add(match)
                    if signal is not None:
                        signals[signal.id] = signal.model_dump()
        book.observe(time)
    book.expire()
    return list(signals.values()), late
