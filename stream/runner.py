"""One deployed pipeline version running continuously, in its own thread.

The loop, per batch: read up to `batch_size` events from the pipeline's position, record the batch
as in flight, run the Engine, write outputs/signals/dead letters through the sink (idempotent per
offset range), enqueue signals for the spec's alert destinations, and only then commit the
position. At-least-once from the log plus idempotent writes gives effectively-once outputs.

On start, state (windows, rule counters, dedupe keys) is rebuilt by replaying the log from the
checkpoint's `replay_from` to its committed offset with every output suppressed (it was written
before); then an in-flight batch left by a crash is processed again over exactly its offset
range, so its writes replace the earlier ones. A stop (hot swap, pause, shutdown) takes effect
at a batch boundary. One batch in flight per pipeline bounds its memory; a slow sink or slow code
only slows its own thread.

Replay rebuilds window and dedupe state exactly, and rule state whenever a key's matches pause
for longer than the rule's window + suppress somewhere in the replayed span. A chain of alerts on
one key that never pauses would restart at the replay point in another phase, so the alert books
(Engine.snapshot) are stored with a commit every `state_interval_s`; a restart of the same version
replays up to that snapshot, puts it back and replays the rest on top of it: the signals after a
restart are those of an uninterrupted run.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from primitives.batch import concat
from primitives.eventtime import event_micros
from primitives.runtime import DeadLetter
from primitives.signals import latest_signals
from primitives.spec import PipelineSpec
from primitives.steps.aggregate import DEFAULT_TIME_FIELD
from primitives.windows import SessionWindow, SlidingWindow, micros
from sandbox import SandboxPool
from stream.budget import CODE_FAILURES, BudgetConfig, ErrorBudget
from stream.checkpoint import Checkpoint, CheckpointStore
from stream.engine import BatchOutput, Engine, Taps, sandbox_code_runner
from stream.log import EmbeddedLog, OffsetOutOfRange, UnknownStream

MAX_ERROR_GROUPS = 50
KILLED = ("timeout", "crash", "memory")  # code errors for which the worker was killed
MAX_BATCH_SIZE = 160_000  # the default ceiling of adaptive batching; ~50 MB of Arrow at ~300 B an event


class Sink(Protocol):
    """What the runner needs from `stream.sinks.parquet.OutputSink` (offsets: first and last, inclusive)."""

    def write_outputs(self, pipeline: str, version: int, table: pa.Table, first_offset: int,
                      last_offset: int, *, time_field: str = "timestamp") -> Any: ...

    def write_signals(self, pipeline: str, version: int, signals: list[dict[str, Any]], first_offset: int,
                      last_offset: int) -> Any: ...

    def write_dead_letters(self, pipeline: str, version: int, letters: list[DeadLetter], first_offset: int,
                           last_offset: int) -> Any: ...


class Outbox(Protocol):
    def enqueue_many(self, tenant: str, pipeline: str, destinations: Any, signals: Any) -> int: ...


@dataclass(frozen=True, slots=True)
class ExecutorConfig:
    batch_size: int = 10_000  # events per read while the pipeline keeps up (low latency)
    # Events per read while it is behind: each full read doubles the next one up to this, a short
    # read drops back to batch_size. A batch has fixed costs (a Parquet file, fsyncs, the
    # checkpoint, SQL set-up) that a backlog should pay once per many events; this bounds memory.
    max_batch_size: int = MAX_BATCH_SIZE
    idle_poll_s: float = 0.2  # wait at the end of the stream before reading again
    # How often the alert books (Engine.snapshot) are stored with a commit. A restart replays from
    # the last snapshot at most, so this bounds the extra replay; storing them with every commit
    # would write the whole book with every batch (megabytes once ten thousand keys are open).
    state_interval_s: float = 5.0
    poll_s: float = 1.0  # how often the executor looks at the registry for changes
    restart_backoff_s: float = 1.0  # first wait after an unexpected failure (doubles, up to 30 s)
    budget: BudgetConfig = field(default_factory=BudgetConfig)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size!r}")
        if self.max_batch_size < self.batch_size:
            raise ValueError(f"max_batch_size ({self.max_batch_size}) must be at least batch_size "
                             f"({self.batch_size})")


def consumer_name(pipeline: str) -> str:
    """The log consumer of a pipeline (all versions share it: a swap continues its position)."""
    return f"pipeline:{pipeline}"


def next_read_size(asked: int, got: int, config: ExecutorConfig) -> int:
    """Adaptive batching: a full read means a backlog, so read twice as much next time (up to
    max_batch_size); a short one means the pipeline has caught up, so go back to batch_size and
    its latency."""
    if got >= asked:
        return min(asked * 2, config.max_batch_size)
    return config.batch_size


def state_span(spec: PipelineSpec) -> int:
    """How far back in event time (µs) open state can reach: replay must start at least this far
    behind the watermark. Chained stateful steps add up (a derive over aggregate rows needs the
    events of the windows whose rows it still holds)."""
    span = 0
    for step_spec in spec.steps:
        options: Any = step_spec.options
        if step_spec.kind == "aggregate":
            window = options.window
            if isinstance(window, SessionWindow):
                size = micros(window.gap)
            elif isinstance(window, SlidingWindow):
                size = micros(window.size)
            else:
                size = micros(window)
            span += size + micros(options.lateness)
        elif step_spec.kind == "rule":
            span += micros(options.effective_window) + micros(options.suppress)
        elif step_spec.kind == "derive":
            span += 2 * micros(options.suppress)
        elif step_spec.kind == "dedupe":
            span += 2 * micros(options.within)
    return span


@dataclass(slots=True)
class RunnerStats:
    events_in: int = 0
    events_out: int = 0
    signals: int = 0
    dead_letters: int = 0
    failures: int = 0  # events the code failed on (the error budget's count)
    late: int = 0
    batches: int = 0
    replayed_events: int = 0
    batch_seconds: float = 0.0
    last_batch_seconds: float = 0.0
    restarts: int = 0
    enqueued: int = 0
    sandbox_kills: int = 0  # code errors of reason timeout/crash/memory: the worker was killed


class PipelineRunner:
    """Runs one version of one pipeline; `stop()` ends it at the next batch boundary."""

    def __init__(self, *, tenant: str, spec: PipelineSpec, version: int, log: EmbeddedLog, sink: Sink,
                 outbox: Outbox | None, pool: SandboxPool, checkpoints: CheckpointStore,
                 config: ExecutorConfig, data_dir: str,
                 on_budget_spent: Callable[[PipelineRunner, str], None],
                 fail_point: Callable[[str, int], None] | None = None) -> None:
        self.tenant, self.spec, self.version = tenant, spec, version
        self.name = spec.name
        self.log, self.sink, self.outbox, self.pool = log, sink, outbox, pool
        self.checkpoints, self.config, self.data_dir = checkpoints, config, data_dir
        self.on_budget_spent = on_budget_spent
        self.fail_point = fail_point  # tests: called at each stage of a batch, may raise to simulate a crash
        self.consumer = consumer_name(spec.name)
        self.span = state_span(spec)
        self.destinations = [a.model_dump(mode="json", exclude_none=True) for a in spec.alerts]
        self.state = "starting"
        self.reason = ""
        self.position: int | None = None
        self.stats = RunnerStats()
        self.step_stats: list[dict[str, Any]] = []
        self.errors: OrderedDict[tuple[str, str, int | None, str], dict[str, Any]] = OrderedDict()
        self.budget = ErrorBudget(config.budget)
        self._state_at = float("-inf")  # when the alert books were last stored with a commit
        self.taps = Taps()
        self._rate: deque[tuple[float, int]] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"pipeline-{tenant}-{spec.name}-v{version}",
                                        daemon=True)

    # -- control ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def tap(self, step: str | None = None, limit: int = 20, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """The next `limit` events leaving `step` (default: the last step) of this running version,
        waiting up to `timeout_s`; fewer when the stream is quiet or the pipeline stops meanwhile."""
        ids = [s.id for s in self.spec.steps]
        chosen = step or ids[-1]
        if chosen not in ids:
            raise ValueError(f"pipeline {self.name!r} has no step {chosen!r}; its steps are {', '.join(ids)}")
        if limit < 1:
            raise ValueError(f"limit must be at least 1; got {limit!r}")
        return self.taps.sample(chosen, limit, timeout_s)

    def rate(self) -> float:
        """Events in per second over the last minute."""
        now = time.monotonic()
        while self._rate and self._rate[0][0] < now - 60:
            self._rate.popleft()
        if len(self._rate) < 2:
            return 0.0
        elapsed = max(now - self._rate[0][0], 1e-6)
        return sum(n for _, n in list(self._rate)[1:]) / elapsed

    # -- the loop --------------------------------------------------------------------------------

    def _main(self) -> None:
        backoff = self.config.restart_backoff_s
        while not self._stop.is_set():
            try:
                self._run()
                break
            except Exception as exc:  # a sink or log failure: rebuild from the checkpoint, later
                self.stats.restarts += 1
                self.state = "restarting"
                self.reason = f"{type(exc).__name__}: {exc}"
                self._group("executor", "error", None, self.reason)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        self.taps.close()  # a stopped version produces nothing more: waiting taps return now
        if self.state not in ("paused", "failed"):
            self.state = "stopped"

    def _run(self) -> None:
        source = self.spec.source
        waited_for_stream = False
        while not self.log.has_stream(self.tenant, source):
            waited_for_stream = True
            self.state = "waiting"
            self.reason = f"stream {source!r} does not exist yet; it is created by the first ingest"
            if self._stop.wait(self.config.idle_poll_s):
                return
        spec = self.spec
        if spec.time is None:  # default: the stream's time field (DESIGN §2.1)
            stream_time = self.log.settings(self.tenant, source).time_field
            if stream_time:
                spec = spec.model_copy(update={"time": stream_time})
        self.time_field = spec.time or DEFAULT_TIME_FIELD
        engine = Engine(spec, run_code=sandbox_code_runner(self.pool, self.tenant), version=self.version,
                        base_dir=self.data_dir)
        checkpoint = self.checkpoints.load(self.tenant, self.name)
        if checkpoint is None:
            # "latest" means the stream's end when the pipeline was deployed. A stream that did not
            # exist then was empty then, so everything in it now arrived after the deploy.
            start_at = "earliest" if waited_for_stream else self.spec.start
            start = self.log.register_consumer(self.tenant, source, self.consumer, start=start_at)
            checkpoint = self.checkpoints.start(self.tenant, self.name, start)
        else:  # hold retention from where a restart would replay
            try:
                self.log.register_consumer(self.tenant, source, self.consumer, start=checkpoint.restart_from)
            except OffsetOutOfRange:
                self.log.register_consumer(self.tenant, source, self.consumer, start="earliest")
        position = self._rebuild(engine, checkpoint)
        engine.taps = self.taps  # from here on what leaves a step is live (replay rebuilt state only)
        self.position = position
        if checkpoint.pending is not None and checkpoint.pending[0] == position:
            first, end = checkpoint.pending
            table, next_offset = self._read(first, end - first)
            if table.num_rows and next_offset == end:
                self._batch(engine, first, next_offset, table)
        self.state, self.reason = "running", ""
        want = self.config.batch_size
        while not self._stop.is_set():
            assert self.position is not None
            table, next_offset = self._read(self.position, want)
            want = next_read_size(want, table.num_rows, self.config)
            if not table.num_rows:
                self._stop.wait(self.config.idle_poll_s)
                continue
            failures = self.stats.failures
            self._batch(engine, self.position, next_offset, table)
            if self.stats.failures > failures:
                # failing code reads small batches: the error budget then pauses it after at most
                # batch_size more dead letters, not max_batch_size
                want = self.config.batch_size
            reason = self.budget.spent()
            if reason is not None:
                self.state, self.reason = "paused", reason
                self._stop.set()
                self.on_budget_spent(self, reason)

    def _rebuild(self, engine: Engine, checkpoint: Checkpoint) -> int:
        """Rebuild state up to the committed position: replay, and where this version stored a
        snapshot of its alert books, replay up to it, put it back and replay the rest on top."""
        state = _own_state(checkpoint, self.version)
        if state is None or checkpoint.state_offset is None:
            return self._replay(engine, checkpoint.replay_from, checkpoint.committed)
        middle = checkpoint.state_offset
        position = self._replay(engine, min(checkpoint.replay_from, middle), middle)
        if position == middle:
            self._restore(engine, state)
        return self._replay(engine, position, checkpoint.committed)

    def _replay(self, engine: Engine, start: int, end: int) -> int:
        """Feed [start, end) through the engine with every output dropped; returns `end`."""
        position = start
        if position < end:
            self.state = "replaying"
        while position < end and not self._stop.is_set():
            table, next_offset = self._read(position, min(self.config.max_batch_size, end - position))
            if not table.num_rows:
                break
            engine.process(table)
            self.stats.replayed_events += table.num_rows
            position = next_offset
        return max(position, end)

    def _read(self, offset: int, max_events: int) -> tuple[pa.Table, int]:
        try:
            return self.log.read(self.tenant, self.spec.source, offset, max_events)
        except OffsetOutOfRange as exc:
            if offset >= exc.end_offset:
                raise
            # Retention deleted events this pipeline had not processed (a forced purge): say so and
            # continue at the oldest retained event rather than stopping for good.
            lost = exc.start_offset - offset
            self._group("executor", "lost", None, f"{lost} events before offset {exc.start_offset} were "
                        "deleted by retention before this pipeline processed them")
            self.checkpoints.move(self.tenant, self.name, exc.start_offset)
            self.position = exc.start_offset
            return self.log.read(self.tenant, self.spec.source, exc.start_offset, max_events)
        except UnknownStream:
            return pa.table({}), offset

    def _batch(self, engine: Engine, first: int, next_offset: int, table: pa.Table) -> None:
        started = time.perf_counter()
        last = next_offset - 1
        self.checkpoints.begin(self.tenant, self.name, first, next_offset)
        self._fail("begin", first)
        out = engine.process(table)
        events = _concat(out.events)
        signals = latest_signals(out.signals)
        # All three are written for every batch, empty or not: an empty write of a range is what
        # clears rows that a crashed earlier attempt at the same offsets left behind.
        self.sink.write_outputs(self.name, self.version, events if events is not None else pa.table({}),
                                first, last, time_field=self.spec.time or "timestamp")
        self.sink.write_signals(self.name, self.version, signals, first, last)
        self.sink.write_dead_letters(self.name, self.version, out.dead_letters, first, last)
        self._fail("sink", first)
        if signals and self.destinations and self.outbox is not None:
            self.stats.enqueued += self.outbox.enqueue_many(self.tenant, self.name, self.destinations,
                                                            signals)
        self._fail("outbox", first)
        checkpoint = self.checkpoints.commit(self.tenant, self.name, self.version, first, next_offset,
                                             self._max_time(table), self.span, self._state(engine))
        self.log.commit_position(self.tenant, self.spec.source, self.consumer, checkpoint.restart_from)
        self._account(table.num_rows, out, events, signals, engine, time.perf_counter() - started)
        # last: whoever sees the new position (wait_caught_up, status) also sees its counters
        self.position = next_offset

    def _state(self, engine: Engine) -> str | None:
        """The snapshot to store with this commit: at most every state_interval_s, none for a
        pipeline without alert books."""
        now = time.monotonic()
        if now - self._state_at < self.config.state_interval_s:
            return None
        steps = engine.snapshot()
        if not steps:
            return None
        self._state_at = now
        return orjson.dumps({"version": self.version, "steps": steps}, default=str).decode()

    def _restore(self, engine: Engine, steps: dict[str, Any]) -> None:
        """The alert books as of the snapshot's offset, over the approximate ones replay built."""
        try:
            engine.restore(steps)
        except Exception as exc:  # a damaged snapshot: the replayed state is the next best thing
            self._group("executor", "state", None, f"could not restore the checkpointed alert state "
                        f"({type(exc).__name__}: {exc}); continuing with the state rebuilt by replay")

    def _fail(self, stage: str, first: int) -> None:
        if self.fail_point is not None:
            self.fail_point(stage, first)

    def _max_time(self, table: pa.Table) -> int | None:
        if not self.span:
            return None
        value = pc.max(event_micros(table, self.time_field)).as_py()
        return None if value is None else int(value)

    def _account(self, rows: int, out: BatchOutput, events: pa.Table | None, signals: list[dict[str, Any]],
                 engine: Engine, seconds: float) -> None:
        stats = self.stats
        stats.events_in += rows
        stats.events_out += 0 if events is None else events.num_rows
        stats.signals += len(signals)
        stats.dead_letters += len(out.dead_letters)
        failures = min(rows, sum(1 for d in out.dead_letters if d.reason in CODE_FAILURES))
        stats.failures += failures
        stats.late += sum(1 for d in out.dead_letters if d.reason == "late")
        stats.sandbox_kills += sum(1 for _, e in out.code_errors if e.reason in KILLED)
        stats.batches += 1
        stats.batch_seconds += seconds
        stats.last_batch_seconds = seconds
        self.step_stats = [s.to_dict() for s in engine.stats]
        self.budget.record(rows, failures)
        self._rate.append((time.monotonic(), rows))
        for letter in out.dead_letters:
            self._group(letter.step, letter.reason, letter.line, letter.message)

    def _group(self, step: str, reason: str, line: int | None, message: str) -> None:
        """Errors grouped by (step, reason, line, message head): counts, one example, last time."""
        key = (step, reason, line, message[:60])
        group = self.errors.pop(key, None) or {"step": step, "reason": reason, "line": line,
                                               "message": message[:500], "count": 0}
        group["count"] += 1
        group["last_at"] = time.time()
        self.errors[key] = group  # most recent last
        while len(self.errors) > MAX_ERROR_GROUPS:
            self.errors.popitem(last=False)


def _own_state(checkpoint: Checkpoint, version: int) -> dict[str, Any] | None:
    """The stored alert-book snapshot if `version` took it (another version's steps may differ)."""
    if checkpoint.state is None:
        return None
    try:
        data = orjson.loads(checkpoint.state)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict) or data.get("version") != version:
        return None
    if not isinstance(data.get("steps"), dict):
        return None
    steps: dict[str, Any] = data["steps"]
    return steps


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    merged = concat([t for t in tables if t.num_rows])
    return merged if merged.num_rows else None


