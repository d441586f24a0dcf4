"""The host's entry to agent code: warm confined workers per (tenant, code), never shared.

`SandboxPool.run(tenant, kind, source, events)` returns one value per input event (None where
the event failed) and the per-event errors. `SandboxPool.run_table(tenant, kind, source, table)`
does the same for an Arrow table, sent to the worker as columns: transform/derive outputs come
back as one Arrow table (plus, per output row, the index of the input row it came from), keep
and rule results as one value per input row. Both split the input into round trips and pipeline
them through one worker: request i+1 is written while the worker computes request i, so the
host's packing, unpacking and Arrow building overlap the worker's work. A round trip that fails
(timeout, crash, bad output) is bisected in fresh workers by the Supervisor; the ones after it
still run. Workers are keyed by tenant and code hash, so a
worker only ever sees one tenant's one snippet; each tenant also runs under its own uid. A worker
goes back to the idle list only after a clean batch, and is replaced after `max_batches_per_worker`
batches or half its CPU allowance. Code whose batches needed a kill `max_kills_before_quarantine`
times is quarantined for that tenant: `run` raises QuarantinedError until the pool is recreated.

Thread-safe: concurrent calls use separate workers; only the bookkeeping is under a lock.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pyarrow as pa

from primitives.runtime import CodeError
from sandbox.columns import concat_pieces
from sandbox.isolation import Launcher, launcher, tenant_uid
from sandbox.limits import Limits
from sandbox.supervisor import SupervisedRun, Supervisor, clean
from sandbox.worker import BatchInput, LoadFailed, RowInput, TableInput, WorkerProcess

EventError = CodeError
KINDS = ("transform", "keep", "rule", "derive")
_MAX_CACHED_LOAD_ERRORS = 1024


class QuarantinedError(Exception):
    """This tenant's code was killed too often; it is not run again in this pool."""

    def __init__(self, tenant: str, code_hash: str, kills: int) -> None:
        super().__init__(
            f"code {code_hash[:12]} of tenant {tenant!r} is quarantined: {kills} batches had to be "
            "killed (timeouts, crashes or memory exhaustion); fix the code and submit a new version"
        )
        self.tenant, self.code_hash, self.kills = tenant, code_hash, kills


class SandboxLoadError(Exception):
    """The snippet failed to load inside the worker; `line` is the snippet line when known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


@dataclass(slots=True)
class BatchStats:
    wall_s: float = 0.0
    worker_starts: int = 0
    startup_s: float = 0.0
    kills: int = 0
    batches: int = 0
    max_rss_kb: int = 0


@dataclass(slots=True)
class BatchResult:
    values: list[Any]
    errors: list[EventError] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    stats: BatchStats = field(default_factory=BatchStats)


@dataclass(slots=True)
class TableResult:
    """What `run_table` produced.

    transform/derive: `table` holds every output row in input order (fan-out rows adjacent) and
    `source_index[j]` is the input row that output row j came from; `values` is None. keep/rule:
    `values[i]` is input row i's result (bool, or the rule's match dict), None where it failed;
    `table` and `source_index` are None. `errors` index input rows.
    """

    table: pa.Table | None
    source_index: list[int] | None
    values: list[Any] | None
    errors: list[EventError] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    stats: BatchStats = field(default_factory=BatchStats)


def code_hash(kind: str, source: str) -> str:
    return hashlib.sha256(f"{kind}\0{source}".encode()).hexdigest()


Key = tuple[str, str, str]  # tenant, kind, code hash


class SandboxPool:
    """Warm sandbox workers keyed by (tenant, code); see the module docstring."""

    def __init__(
        self,
        limits: Limits | None = None,
        *,
        _launcher: Launcher | None = None,
        _unsafe_raw_exec_for_tests: bool = False,
    ) -> None:
        self.limits = limits or Limits()
        self._launcher = _launcher
        self._raw = _unsafe_raw_exec_for_tests
        self._lock = threading.Lock()
        self._idle: OrderedDict[Key, list[WorkerProcess]] = OrderedDict()
        self._busy: set[WorkerProcess] = set()
        self._strikes: dict[Key, int] = {}
        self._load_errors: OrderedDict[Key, SandboxLoadError] = OrderedDict()
        self._closed = False

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, tenant: str, kind: str, source: str, events: list[dict[str, Any]]) -> BatchResult:
        """One value per event (None where it failed): transform/derive a list of dicts, keep a
        bool, rule a match dict."""
        key = self._key(tenant, kind, source)
        started = time.perf_counter()
        stats = BatchStats()
        run = self._execute(key, source, RowInput(events), stats)
        stats.wall_s = time.perf_counter() - started
        return BatchResult(run.values, run.errors, run.logs, stats)

    def run_table(self, tenant: str, kind: str, source: str, table: pa.Table) -> TableResult:
        """Run the code over every row of `table`; see TableResult. A null field reaches the
        snippet as the key with None (as `table.to_pylist()` gives it); a JSON-tagged column
        as its decoded values."""
        key = self._key(tenant, kind, source)
        if not isinstance(table, pa.Table):
            raise TypeError(f"run_table needs a pyarrow.Table; got {type(table).__name__}")
        started = time.perf_counter()
        stats = BatchStats()
        columnar = kind in ("transform", "derive")
        run = self._execute(key, source, TableInput(table, columnar), stats)
        if columnar:
            out, source_index = concat_pieces(run.pieces)
            result = TableResult(out, source_index, None, run.errors, run.logs, stats)
        else:
            result = TableResult(None, None, run.values, run.errors, run.logs, stats)
        stats.wall_s = time.perf_counter() - started
        return result

    def _key(self, tenant: str, kind: str, source: str) -> Key:
        if kind not in KINDS:
            raise ValueError(f"unknown code kind {kind!r}; expected one of {', '.join(KINDS)}")
        if not isinstance(tenant, str) or not tenant:
            raise ValueError("tenant must be a non-empty string")
        key: Key = (tenant, kind, code_hash(kind, source))
        self._check_runnable(key)
        return key

    def _execute(self, key: Key, source: str, batch: BatchInput, stats: BatchStats) -> SupervisedRun:
        """All round trips of one call, pipelined through one worker at a time.

        Up to two requests are in flight on a worker: the one it computes and the next. Each
        round trip's deadline starts when the worker can start on it (its request sent with none
        ahead, or the previous answer received). A failed round trip is bisected in fresh
        workers; requests already queued behind it are sent again to the next worker.
        """
        limits = self.limits
        result = SupervisedRun(values=[None] * len(batch))

        def acquire() -> WorkerProcess:
            worker = self._take_idle(key)
            if worker is None:
                worker = self._spawn(key, source)
                stats.worker_starts += 1
                stats.startup_s += worker.startup_s
            return worker

        def release(worker: WorkerProcess, healthy: bool) -> None:
            self._give_back(key, worker, healthy)

        supervisor = Supervisor(limits, acquire, release)
        trips = [
            (lo, hi, first)  # a round trip [lo, hi) and the batch it belongs to
            for first in range(0, len(batch), limits.max_events_per_batch)
            for lo, hi in _round_trips(first, min(len(batch), first + limits.max_events_per_batch),
                                       limits.round_trip_events)
        ]
        budgets: dict[int, list[float]] = {}
        struck: set[int] = set()
        worker: WorkerProcess | None = None
        inflight: deque[int] = deque()  # indexes into trips
        following = 0  # the next trip to send
        clock = 0.0  # when the worker could start on the oldest request in flight
        try:
            while following < len(trips) or inflight:
                if worker is None:
                    worker = acquire()
                while (
                    following < len(trips)
                    and len(inflight) < 2
                    and self._can_take(worker, len(inflight) + 1)
                ):
                    lo, hi, _ = trips[following]
                    worker.send(batch.frame(lo, hi))
                    if not inflight:
                        clock = time.perf_counter()
                    inflight.append(following)
                    following += 1
                if not inflight:  # this worker is spent: recycle it, continue with another
                    release(worker, True)
                    worker = None
                    continue
                lo, hi, first = trips[inflight.popleft()]
                allowed = limits.batch_deadline(hi - lo)
                outcome = worker.finish(batch, lo, hi, clock + allowed, allowed)
                clock = time.perf_counter()
                stats.batches += 1
                result.max_rss_kb = max(result.max_rss_kb, worker.maxrss_kb)
                if clean(outcome):
                    supervisor.accept(outcome, lo, result)
                    continue
                # The worker is dead or must not serve again: what was queued behind goes again.
                release(worker, False)
                worker = None
                if inflight:
                    following, inflight = inflight[0], deque()
                if outcome.status == "ok":  # a MemoryError inside the snippet: results stand
                    supervisor.accept(outcome, lo, result)
                    continue
                struck.add(first)
                supervisor.bisect(batch, lo, hi, outcome, result, budgets.setdefault(first, []))
        finally:
            if worker is not None:
                release(worker, not inflight)
        result.errors.sort(key=lambda e: e.index)
        del result.logs[limits.max_log_lines :]
        stats.kills += result.kills
        stats.max_rss_kb = max(stats.max_rss_kb, result.max_rss_kb)
        if struck:
            with self._lock:
                self._strikes[key] = self._strikes.get(key, 0) + len(struck)
        return result

    def _can_take(self, worker: WorkerProcess, pending: int) -> bool:
        """May `worker` be sent its `pending`-th request in flight? A fresh worker always takes
        one (a dead one then answers with its death, which bisection handles; refusing could
        spawn forever)."""
        limits = self.limits
        if worker.batches == 0 and pending == 1:
            return True
        return (
            worker.batches + pending <= limits.max_batches_per_worker
            and worker.cpu_s < limits.cpu_seconds * limits.cpu_recycle_fraction
        )

    def _check_runnable(self, key: Key) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the sandbox pool is closed")
            strikes = self._strikes.get(key, 0)
            load_error = self._load_errors.get(key)
        if strikes >= self.limits.max_kills_before_quarantine:
            raise QuarantinedError(key[0], key[2], strikes)
        if load_error is not None:
            raise load_error

    def _spawn(self, key: Key, source: str) -> WorkerProcess:
        try:
            worker = WorkerProcess(
                key[1],
                source,
                uid=tenant_uid(key[0]),
                limits=self.limits,
                spec=self._launcher or launcher(),
                raw_exec_for_tests=self._raw,
            )
        except LoadFailed as exc:
            error = SandboxLoadError(str(exc), exc.line)
            with self._lock:
                self._load_errors[key] = error
                while len(self._load_errors) > _MAX_CACHED_LOAD_ERRORS:
                    self._load_errors.popitem(last=False)
            raise error from None
        with self._lock:
            if self._closed:
                worker.close()
                raise RuntimeError("the sandbox pool is closed")
            self._busy.add(worker)
        return worker

    def _take_idle(self, key: Key) -> WorkerProcess | None:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                worker = idle.pop()
                if worker.alive:
                    self._busy.add(worker)
                    self._idle.move_to_end(key)
                    return worker
                worker.close()
        return None

    def _give_back(self, key: Key, worker: WorkerProcess, healthy: bool) -> None:
        limits = self.limits
        keep = (
            healthy
            and worker.alive
            and worker.batches < limits.max_batches_per_worker
            and worker.cpu_s < limits.cpu_seconds * limits.cpu_recycle_fraction
        )
        evicted: list[WorkerProcess] = []
        with self._lock:
            self._busy.discard(worker)
            if keep and not self._closed:
                idle = self._idle.setdefault(key, [])
                idle.append(worker)
                self._idle.move_to_end(key)
                if len(idle) > limits.max_idle_per_key:
                    evicted.append(idle.pop(0))
                while sum(len(v) for v in self._idle.values()) > limits.max_idle_total:
                    oldest_key, oldest = next(iter(self._idle.items()))
                    evicted.append(oldest.pop(0))
                    if not oldest:
                        del self._idle[oldest_key]
            else:
                evicted.append(worker)
        for old in evicted:
            old.close()

    def quarantined(self, tenant: str, kind: str, source: str) -> bool:
        with self._lock:
            return (
                self._strikes.get((tenant, kind, code_hash(kind, source)), 0)
                >= self.limits.max_kills_before_quarantine
            )

    def close(self) -> None:
        """Stop every worker, idle or busy; later calls to run raise RuntimeError."""
        with self._lock:
            self._closed = True
            workers = [w for ws in self._idle.values() for w in ws] + list(self._busy)
            self._idle.clear()
            self._busy.clear()
        for worker in workers:
            worker.close()


def _round_trips(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
    """[lo, hi) in round trips of about `step` events, the first and last a quarter of that.

    The worker idles while the host encodes a call's first request and while it builds the
    output of the last answer; short ends shrink those two bubbles, the rest overlap.
    """
    if hi - lo <= step:
        return [(lo, hi)]
    end = max(1, step // 4)
    middle = hi - lo - 2 * end
    count = max(1, -(-middle // step))
    cuts = [lo, lo + end, *(lo + end + middle * k // count for k in range(1, count)), hi - end, hi]
    return list(pairwise(cuts))
