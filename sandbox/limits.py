"""Resource limits of sandbox workers, with the reason behind each default.

One `Limits` value configures a whole pool. The kernel enforces the memory, CPU, file and process
limits inside the worker (rlimits); the host enforces the wall-clock deadlines (by killing the
worker's process group) and the output caps (by refusing oversized responses).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    # Address space of one worker (RLIMIT_AS). The interpreter with its preloaded modules maps
    # about 60 MiB; the rest is room for one batch of events and the snippet's working set.
    # A snippet that allocates past it gets MemoryError (reason `memory`), never the host's RAM.
    memory_bytes: int = 768 * MiB
    # CPU seconds over a worker's whole life (RLIMIT_CPU, SIGXCPU then SIGKILL from the kernel):
    # a backstop for the host's wall-clock deadline, well above what `max_batches_per_worker`
    # batches may use. Workers are recycled before they reach it (see `cpu_recycle_fraction`).
    cpu_seconds: int = 600
    cpu_recycle_fraction: float = 0.5
    # Wall-clock deadline of one batch: base + per event. Generous, since it only has to catch a
    # snippet that hangs; 16,384 events get 2 + 32.8 s.
    batch_deadline_base_s: float = 2.0
    batch_deadline_per_event_s: float = 0.002
    # Deadline while bisecting a failed batch: per event, plus a small base covering the round
    # trip. Tighter than the batch deadline so isolating one poison event in 16k stays bounded.
    event_deadline_s: float = 0.2
    # Total time bisection may spend on one batch; events still unresolved then fail as timeout.
    bisect_budget_s: float = 20.0
    # Output caps: one event's result (the runtime reports `bad_output` past it) and one batch's
    # response (the host refuses a bigger frame and bisects). Inputs are bounded by the caller.
    output_bytes_per_event: int = 1 * MiB
    output_bytes_per_batch: int = 64 * MiB
    # Log lines (print) kept per batch, and bytes per line.
    max_log_lines: int = 200
    max_log_line_bytes: int = 1024
    # Events per batch; larger inputs are split. A batch is the unit of the bisection budget and
    # of quarantine strikes (one per batch that needed a kill, however many kills bisection made).
    max_events_per_batch: int = 16384
    # Events per round trip inside a batch. Round trips to one worker are pipelined (the next
    # request travels while the worker computes the current one), so the host's conversions
    # overlap the worker's work; at 2,048 web-log events a request (~200 KB) stays well under the 1 MiB
    # pipe, so it is wholly written before the worker needs it. Each gets the batch deadline
    # for its own size.
    round_trip_events: int = 2048
    # A worker serves this many batches, then is replaced (bounds leaks and state kept by code).
    max_batches_per_worker: int = 2000
    # Batches that needed a worker to be killed (timeout, crash, memory) before the code is
    # quarantined for its tenant. One batch counts once however many kills bisection makes.
    max_kills_before_quarantine: int = 3
    # Spawn-to-ready (interpreter start, imports, confinement, handshake).
    startup_timeout_s: float = 10.0
    # Warm workers kept per (tenant, code) key, and in the whole pool.
    max_idle_per_key: int = 2
    max_idle_total: int = 64

    def batch_deadline(self, events: int) -> float:
        return self.batch_deadline_base_s + self.batch_deadline_per_event_s * events

    def bisect_deadline(self, events: int) -> float:
        return self.event_deadline_s + self.batch_deadline_per_event_s * events

    def __post_init__(self) -> None:
        for name in (
            "memory_bytes",
            "cpu_seconds",
            "output_bytes_per_event",
            "output_bytes_per_batch",
            "max_events_per_batch",
            "round_trip_events",
            "max_batches_per_worker",
            "max_kills_before_quarantine",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive; got {getattr(self, name)!r}")
        if self.memory_bytes < 128 * MiB:
            raise ValueError("Limits.memory_bytes below 128 MiB cannot hold the worker interpreter")
