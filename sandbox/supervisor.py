"""Runs one batch to completion despite poison events: deadline, kill, bisect, continue.

A batch that times out, crashes its worker or answers with an oversized frame is split in halves,
and each half is retried in a fresh worker under a deadline scaled to its size, recursively. The
events that still fail alone are the poison: they get the failure's reason (timeout, memory,
crash, bad_output); every other event gets its normal result. Bisection has a total time budget;
events it could not isolate in time fail as `timeout` with a message saying so, so a snippet that
hangs on every event costs at most the budget, not 2 × n deadlines.

The pool makes the first attempt of each round trip itself (pipelined, sandbox/pool.py) and hands
a failed one to `bisect`; `run` is the same without pipelining, for one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from primitives.runtime import CodeError
from sandbox.columns import Piece
from sandbox.limits import Limits
from sandbox.worker import BatchInput, BatchOutcome, RowInput, TableInput, WorkerProcess

Acquire = Callable[[], WorkerProcess]
Release = Callable[[WorkerProcess, bool], None]


@dataclass(slots=True)
class SupervisedRun:
    """Results over a whole input: `values` per event (rows output), `pieces` in input order
    (columnar transform/derive output); errors with indexes into the whole input."""

    values: list[Any]
    pieces: list[Piece] = field(default_factory=list)
    errors: list[CodeError] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    kills: int = 0
    max_rss_kb: int = 0


class Supervisor:
    """Bisection over workers obtained from `acquire` and handed back through `release`."""

    def __init__(self, limits: Limits, acquire: Acquire, release: Release) -> None:
        self.limits = limits
        self._acquire = acquire
        self._release = release

    def run(self, events: list[dict[str, Any]] | BatchInput) -> SupervisedRun:
        batch = events if isinstance(events, RowInput | TableInput) else RowInput(events)
        result = SupervisedRun(values=[None] * len(batch))
        self.solve(batch, 0, len(batch), True, result, [])
        result.errors.sort(key=lambda e: e.index)
        return result

    def solve(
        self,
        batch: BatchInput,
        lo: int,
        hi: int,
        first: bool,
        result: SupervisedRun,
        budget_end: list[float],
    ) -> None:
        """Run events [lo, hi) (bisecting on failure); `budget_end` is shared by one batch."""
        if budget_end and time.perf_counter() > budget_end[0]:
            for index in range(lo, hi):
                result.errors.append(
                    CodeError(
                        index,
                        "timeout",
                        "TimeoutError",
                        "not isolated: the batch kept timing out and bisection ran out of "
                        f"its {self.limits.bisect_budget_s:.0f} s budget",
                    )
                )
            return
        size = hi - lo
        deadline = self.limits.batch_deadline(size) if first else self.limits.bisect_deadline(size)
        outcome = self._attempt(batch, lo, hi, deadline, result)
        if outcome.status == "ok":
            self.accept(outcome, lo, result)
            return
        self.bisect(batch, lo, hi, outcome, result, budget_end)

    def bisect(
        self,
        batch: BatchInput,
        lo: int,
        hi: int,
        failed: BatchOutcome,
        result: SupervisedRun,
        budget_end: list[float],
    ) -> None:
        """Events [lo, hi) failed together (`failed`, its worker killed): find the poison."""
        result.kills += 1
        if not budget_end:
            budget_end.append(time.perf_counter() + self.limits.bisect_budget_s)
        if hi - lo == 1:
            result.errors.append(
                CodeError(lo, failed.status, _ERROR_TYPES[failed.status], _describe(failed, self.limits))
            )
            return
        mid = lo + (hi - lo) // 2
        self.solve(batch, lo, mid, False, result, budget_end)
        self.solve(batch, mid, hi, False, result, budget_end)

    def _attempt(
        self, batch: BatchInput, lo: int, hi: int, deadline: float, result: SupervisedRun
    ) -> BatchOutcome:
        worker = self._acquire()
        healthy = False
        try:
            worker.send(batch.frame(lo, hi))
            outcome = worker.finish(batch, lo, hi, time.perf_counter() + deadline, deadline)
            result.max_rss_kb = max(result.max_rss_kb, worker.maxrss_kb)
            healthy = clean(outcome)
            return outcome
        finally:
            self._release(worker, healthy)

    def accept(self, outcome: BatchOutcome, lo: int, result: SupervisedRun) -> None:
        """Record a successful round trip over events starting at `lo`."""
        if outcome.piece is not None:
            result.pieces.append(outcome.piece)
        else:
            result.values[lo : lo + len(outcome.values)] = outcome.values
        for error in outcome.errors:
            index = lo + error["index"]
            result.values[index] = None
            reason = "memory" if error["error_type"] == "MemoryError" else error["reason"]
            result.errors.append(
                CodeError(
                    index, reason, error["error_type"], error["message"], error["line"], error["function"]
                )
            )
        result.logs.extend(outcome.logs)


def clean(outcome: BatchOutcome) -> bool:
    """May the worker serve again? A MemoryError inside the snippet leaves its heap in an unknown
    state, so that worker is recycled even though the batch itself succeeded."""
    return outcome.status == "ok" and not any(e["error_type"] == "MemoryError" for e in outcome.errors)


_ERROR_TYPES = {
    "timeout": "TimeoutError",
    "memory": "MemoryError",
    "crash": "WorkerCrash",
    "bad_output": "OutputTooLarge",
}


def _describe(outcome: BatchOutcome, limits: Limits) -> str:
    if outcome.status == "timeout":
        return (
            f"the code did not finish on this event within its deadline ({outcome.message}); "
            "look for a loop that does not end or a regex that backtracks catastrophically"
        )
    if outcome.status == "memory":
        return (
            f"the code ran out of memory on this event (limit {limits.memory_bytes >> 20} MiB); "
            "avoid building huge strings or lists"
        )
    if outcome.status == "bad_output":
        return (
            f"the result for this event is too large (cap {limits.output_bytes_per_batch >> 20} MiB "
            "per batch); "
            "return fewer or smaller fields"
        )
    return f"the sandbox worker died while running this event ({outcome.message})"
