"""One sandbox worker process seen from the host: spawn, handshake, batches, kill, reap.

Every exchange runs under a wall-clock deadline enforced by SIGKILL to the worker's whole process
group (a C-level loop such as `sum(range(10**12))` ignores anything gentler). The host never
blocks on the worker: pipes are non-blocking and polled, so a worker that stops reading its input,
floods its stderr or never answers still meets the deadline. Every byte it sends is bounded
(frame cap) and validated (codec.check_response, codec.check_columns, and Arrow conversion in
sandbox/columns.py). Its stderr is drained, capped and kept only for
operators; it is never shown to agents, since it could carry anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from sandbox.columns import Piece, build_piece, input_columns, scalar_columns, table_columns
from sandbox.isolation import REQUIRED_LAYERS, Launcher, launcher
from sandbox.limits import Limits
from sandbox.runtime import codec

F_SETPIPE_SZ = 1031
PIPE_BYTES = 1 << 20
STDERR_CAP = 8192
EXIT_PROTOCOL, EXIT_MEMORY, EXIT_LAYER = 2, 3, 4
_log = logging.getLogger(__name__)


def _signal_death(number: int) -> str:
    """Which signal ended the worker, and what that usually means here."""
    try:
        name = signal.Signals(number).name
    except ValueError:  # a real-time signal has no enum member
        name = f"signal {number}"
    if number == signal.SIGSYS:
        return f"worker killed by {name}: seccomp killed it for a forbidden system call"
    if number == signal.SIGKILL:
        return (
            f"worker killed by {name}, not by a deadline of the pool: the host's out-of-memory "
            "killer, the pool being closed, or another process"
        )
    if number == signal.SIGSEGV:
        return f"worker killed by {name}: the interpreter crashed (a native-code fault)"
    return f"worker killed by {name}"


class WorkerError(Exception):
    """The worker could not be started or refused to run the code (not a per-event failure)."""

    def __init__(self, message: str, *, layers: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.layers = layers or {}


class LoadFailed(WorkerError):
    """The snippet failed to load inside the worker; `line` is the snippet line when known."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


class _Dead(Exception):
    pass


class _Timeout(Exception):
    pass


@dataclass(slots=True)
class BatchOutcome:
    """What one round trip produced. status: ok | timeout | memory | crash | bad_output.

    `values` has one entry per event, except for a transform/derive batch with columnar output:
    then `piece` holds the output rows (values stays empty). Error indexes are batch-relative.
    """

    status: str
    values: list[Any] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    message: str = ""
    piece: Piece | None = None


class RowInput:
    """A call's input as event dicts (the `run` API); results come back per event."""

    columns_out = False

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events

    def __len__(self) -> int:
        return len(self.events)

    def frame(self, lo: int, hi: int) -> bytes:
        return codec.encode({"op": "batch", "events": self.events[lo:hi]})


class TableInput:
    """A call's input as an Arrow table, sent as columns; transform/derive answer in columns.

    Each round trip converts only its own slice, so that conversion overlaps the worker's work
    on the previous slice when the pool pipelines.
    """

    def __init__(self, table: pa.Table, columns_out: bool) -> None:
        self.table = table
        self.columns_out = columns_out

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def frame(self, lo: int, hi: int) -> bytes:
        piece = self.table.slice(lo, hi - lo)
        names, columns = table_columns(piece)
        return codec.encode(
            {
                "op": "batch",
                "names": names,
                "columns": columns,
                "count": hi - lo,
                "output": "columns" if self.columns_out else "rows",
                "scalars": scalar_columns(piece),  # which columns may come back as unchanged
            }
        )


BatchInput = RowInput | TableInput


class WorkerProcess:
    """A confined worker holding one loaded snippet. Not thread-safe: one caller at a time."""

    def __init__(
        self,
        kind: str,
        source: str,
        *,
        uid: int | None,
        limits: Limits,
        spec: Launcher | None = None,
        raw_exec_for_tests: bool = False,
    ) -> None:
        self.limits = limits
        self.spec = spec or launcher()
        self.batches = 0
        self.cpu_s = 0.0
        self.maxrss_kb = 0
        self.layers: dict[str, dict[str, Any]] = {}
        self.pid_in_sandbox: int | None = None
        self._stderr = bytearray()
        self._outbox: list[memoryview] = []  # request bytes not yet taken by the worker's pipe
        self._reap_lock = threading.Lock()  # see _kill_group: no signal after the reap
        started = time.perf_counter()
        self._proc = subprocess.Popen(
            self.spec.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={},
            start_new_session=True,
            cwd="/",
            close_fds=True,
        )
        assert self._proc.stdin and self._proc.stdout and self._proc.stderr
        self._in, self._out, self._err = (
            self._proc.stdin.fileno(),
            self._proc.stdout.fileno(),
            self._proc.stderr.fileno(),
        )
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        for fd in (self._in, self._out):
            # capped by /proc/sys/fs/pipe-max-size; the default size only costs more syscalls
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_BYTES)
        config = {
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": limits.cpu_seconds,
            "nofile": 16,
            "uid": uid,
            "gid": uid,
            "read_paths": list(self.spec.read_paths),
            "require": list(REQUIRED_LAYERS),
            "max_request_bytes": 1 << 30,
            "max_response_bytes": limits.output_bytes_per_batch,
            "output_caps": {
                "max_bytes": limits.output_bytes_per_event,
                "max_print_lines": limits.max_log_lines,
            },
            "raw_exec_for_tests": raw_exec_for_tests,
        }
        try:
            self.send(codec.encode({"op": "init", "config": config, "kind": kind, "source": source}))
            ready = self._receive(started + limits.startup_timeout_s, 1 << 20)
        except (_Timeout, _Dead, codec.ProtocolError) as exc:
            self.kill()
            raise WorkerError(
                f"sandbox worker failed to start ({type(exc).__name__.strip('_')}: {exc}); "
                f"stderr: {self.stderr_tail[-500:]!r}"
            ) from None
        self.startup_s = time.perf_counter() - started
        layers = ready.get("layers")
        self.layers = layers if isinstance(layers, dict) else {}
        if ready.get("ok") is not True:
            self.kill()
            message = codec._short(ready.get("message"), 4000)
            if ready.get("error") == "load":
                line = ready.get("line")
                raise LoadFailed(message, line if type(line) is int else None)
            raise WorkerError(message or "sandbox worker refused to start", layers=self.layers)
        pid = ready.get("pid")
        self.pid_in_sandbox = pid if type(pid) is int else None

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        # poll() may reap, so it takes the reap lock; a worker whose lock is held is being
        # killed or reaped by another thread and counts as gone
        if not self._reap_lock.acquire(blocking=False):
            return False
        try:
            return self._proc.poll() is None
        finally:
            self._reap_lock.release()

    @property
    def stderr_tail(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    def run_batch(self, events: list[dict[str, Any]], deadline_s: float) -> BatchOutcome:
        """Run one batch; on timeout, crash or an oversized/malformed answer the worker is killed."""
        batch = RowInput(events)
        self.send(batch.frame(0, len(events)))
        return self.finish(batch, 0, len(events), time.perf_counter() + deadline_s, deadline_s)

    def send(self, frame: bytes) -> None:
        """Queue a request; it is written while `finish` waits, so the next batch can travel while
        the worker computes the current one. Writes what the pipe takes now without blocking."""
        self._outbox.append(memoryview(frame))
        try:
            self._flush()
        except _Dead:  # the next `finish` reads the end of its output and reports the death
            self._outbox.clear()

    def _flush(self) -> None:
        while self._outbox:
            try:
                written = os.write(self._in, self._outbox[0])
            except (BlockingIOError, InterruptedError):
                return
            except (BrokenPipeError, OSError):
                raise _Dead() from None
            rest = self._outbox[0][written:]
            if rest:
                self._outbox[0] = rest
                return
            self._outbox.pop(0)

    def finish(
        self, batch: BatchInput, lo: int, hi: int, deadline: float, allowed_s: float
    ) -> BatchOutcome:
        """Wait for the answer to events [lo, hi) of `batch` (already sent), until `deadline`
        (perf_counter time). Its values or output piece are validated here; anything outside the
        protocol kills the worker and reports crash, or bad_output for an oversized answer."""
        events = hi - lo
        try:
            response = self._receive(deadline, self.limits.output_bytes_per_batch)
            if response.get("ok") is False and response.get("error") == "bad_output":
                self.kill()
                return BatchOutcome("bad_output", message=codec._short(response.get("message"), 500))
            piece = None
            if batch.columns_out:
                names, columns, source, errors, logs, same = codec.check_columns(
                    response, events, self.limits.max_log_lines
                )
                given = None
                if same:
                    if not isinstance(batch, TableInput):
                        raise codec.ProtocolError("unchanged columns reported for an input of rows")
                    given = input_columns(batch.table.slice(lo, events), names, same)
                piece = build_piece(names, columns, len(source), source, lo, given)
                values: list[Any] = []
            else:
                values, errors, logs = codec.check_response(response, events, self.limits.max_log_lines)
        except _Timeout:
            self.kill()
            return BatchOutcome("timeout", message=f"no answer within {allowed_s:.2f} s")
        except _Dead:
            return self._death()
        except codec.ProtocolError as exc:
            self.kill()
            status = "bad_output" if "exceeds the cap" in str(exc) else "crash"
            return BatchOutcome(status, message=str(exc))
        self.batches += 1
        cpu, rss = response.get("cpu_s"), response.get("maxrss_kb")
        self.cpu_s = float(cpu) if isinstance(cpu, int | float) else self.cpu_s
        self.maxrss_kb = rss if type(rss) is int else self.maxrss_kb
        return BatchOutcome("ok", values, errors, logs, piece=piece)

    def _death(self) -> BatchOutcome:
        code = self._reap(1.0)
        if self.spec.bwrap and code is not None and 128 < code < 128 + 65:
            code = 128 - code  # bubblewrap reports its child's death by signal N as exit 128 + N
        tail = self.stderr_tail
        if code == -signal.SIGXCPU:
            return BatchOutcome("timeout", message=f"CPU limit of {self.limits.cpu_seconds} s exceeded")
        if code == EXIT_MEMORY or "MemoryError" in tail:
            return BatchOutcome(
                "memory", message=f"out of memory (limit {self.limits.memory_bytes >> 20} MiB)"
            )
        # The stderr tail may carry anything the code printed, so it goes to the operators' log,
        # never into the message agents see; pid and exit status let an operator match the two.
        _log.warning(
            "sandbox worker pid %s died with status %s; stderr tail: %r", self.pid, code, tail[-2000:]
        )
        if code is not None and code < 0:
            return BatchOutcome("crash", message=_signal_death(-code))
        return BatchOutcome("crash", message=f"worker exited with status {code}")

    def _receive(self, deadline: float, cap: int) -> dict[str, Any]:
        """Read one response frame while writing queued requests; never blocks past `deadline`."""
        poller = select.poll()
        poller.register(self._out, select.POLLIN)
        poller.register(self._err, select.POLLIN)
        writing = bool(self._outbox)
        if writing:
            poller.register(self._in, select.POLLOUT)
        header = bytearray()
        body: bytearray | None = None
        got = 0
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise _Timeout()
            for fd, event in poller.poll(remaining * 1000):
                if fd == self._err:
                    self._drain_stderr(poller)
                elif fd == self._in:
                    if event & (select.POLLERR | select.POLLHUP):
                        raise _Dead()
                    self._flush()
                    if not self._outbox:
                        poller.unregister(self._in)
                elif fd == self._out:
                    if body is None:
                        try:
                            chunk = os.read(self._out, codec.HEADER.size - len(header))
                        except BlockingIOError:
                            continue
                        if not chunk:
                            raise _Dead()
                        header += chunk
                        if len(header) == codec.HEADER.size:
                            body = bytearray(codec.frame_length(bytes(header), cap))
                            if not body:
                                return codec.decode(b"")
                        continue
                    try:
                        count = os.readv(self._out, [memoryview(body)[got:]])
                    except BlockingIOError:
                        continue
                    if count == 0:
                        raise _Dead()
                    got += count
                    if got == len(body):
                        return codec.decode(bytes(body))

    def _drain_stderr(self, poller: select.poll) -> None:
        try:
            chunk = os.read(self._err, 65536)
        except BlockingIOError:
            return
        if not chunk:
            poller.unregister(self._err)
            return
        if len(self._stderr) < STDERR_CAP:  # keep the start: a traceback's first lines say most
            self._stderr += chunk[: STDERR_CAP - len(self._stderr)]

    def kill(self) -> None:
        """SIGKILL the whole process group (bubblewrap, its pid namespace, the worker) and reap it."""
        self._outbox.clear()
        self._kill_group()
        self._reap(2.0)

    def _kill_group(self) -> None:
        """SIGKILL the group, but only while its leader is still unreaped. Once `wait` has
        reaped it, its pid, and so the group id, is free: the kernel hands it to the next new
        process (pid_max is often 32768), a new worker of this pool or any process on the host,
        and as root a stale killpg kills that one instead. The lock makes "not reaped yet" and
        the signal one step against a reap in another thread (SandboxPool.close)."""
        with self._reap_lock:
            if self._proc.returncode is not None:
                return
            with contextlib.suppress(ProcessLookupError):  # only zombies left in the group
                os.killpg(self._proc.pid, signal.SIGKILL)

    def _reap(self, timeout: float) -> int | None:
        with self._reap_lock:
            try:
                code: int | None = self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # still unreaped (the wait timed out), so the group is still ours
                os.killpg(self._proc.pid, signal.SIGKILL)
                code = self._proc.wait()
        for handle in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            try:
                if handle:
                    handle.close()
            except OSError:
                pass
        return code

    def close(self) -> None:
        """End of use: close stdin (the worker exits on EOF), then make sure the group is gone."""
        if self._proc.returncode is None:
            try:
                if self._proc.stdin:
                    self._proc.stdin.close()
            except OSError:
                pass
            with self._reap_lock, contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(0.2)
        self.kill()
