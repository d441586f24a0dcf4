"""The error budget: the share of events a pipeline's code may fail on before it pauses itself.

Per-event failures never stop a pipeline (the events become dead letters), but a pipeline whose
code fails on most events would turn the stream into dead letters. Over a sliding span of
processing time, when failed / processed exceeds `share` (and at least `min_events` were seen, so
one bad event of the first three does not count as 33%), the budget is spent and the executor
pauses the pipeline at its position with the reason. Only code failures count (error, timeout,
memory, crash, bad_output): `late`, `no_time` and `parse` say something about the data.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

CODE_FAILURES = frozenset({"error", "timeout", "memory", "crash", "bad_output"})


@dataclass(frozen=True, slots=True)
class BudgetConfig:
    share: float = 0.05  # error_budget: at most this share of events may fail...
    window_s: float = 300.0  # ...over this span (error_window)
    min_events: int = 100  # below this many events in the span, no verdict

    def __post_init__(self) -> None:
        if not 0 <= self.share <= 1:
            raise ValueError(f"error_budget must be a share between 0 and 1 (0.05 = 5%); got {self.share!r}")
        if self.window_s <= 0:
            raise ValueError(f"error_window must be a positive number of seconds; got {self.window_s!r}")
        if self.min_events < 1:
            raise ValueError(f"min_events must be at least 1; got {self.min_events!r}")


class ErrorBudget:
    def __init__(self, config: BudgetConfig | None = None) -> None:
        self.config = config or BudgetConfig()
        self._entries: deque[tuple[float, int, int]] = deque()
        self.events = 0
        self.failures = 0

    def record(self, events: int, failures: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._entries.append((now, events, failures))
        self.events += events
        self.failures += failures
        self._expire(now)

    def spent(self, now: float | None = None) -> str | None:
        """The reason to pause, or None while within budget."""
        self._expire(time.monotonic() if now is None else now)
        if self.events < self.config.min_events or self.failures <= self.config.share * self.events:
            return None
        return (f"error budget spent: code failed on {self.failures} of {self.events} events "
                f"({self.failures / self.events:.1%}) in the last {self.config.window_s:g}s, more than "
                f"the {self.config.share:.1%} allowed; fix the code (see the pipeline's errors) and resume")

    def _expire(self, now: float) -> None:
        while self._entries and self._entries[0][0] < now - self.config.window_s:
            _, events, failures = self._entries.popleft()
            self.events -= events
            self.failures -= failures
