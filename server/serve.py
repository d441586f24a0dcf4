"""`logbus serve`: one process with the log, the executor, alert delivery and the HTTP app.

Start-up opens, in order: the embedded log, the token store, the alert outbox and its deliverer
(started: pending deliveries of an earlier run resume), the sandbox pool and the executor (started:
every active pipeline resumes from its checkpoint, rebuilding window state by replay), then
uvicorn. One server per data directory: a second one would run every pipeline twice, so an
exclusive lock on `<data>/state/serve.lock` refuses it (the kernel drops the lock when the
process dies, `kill -9` included). With `--tail` and `--syslog-udp/--syslog-tcp` it also runs those
sources (`stream.sources`, tenant `default`); their counters are in the snapshot below.

SIGTERM and SIGINT stop it cleanly: uvicorn stops accepting and finishes the requests in flight,
then the executor stops every pipeline at a batch boundary, the deliverer stops after its current
delivery, and the log is closed. A `kill -9` instead loses nothing acknowledged (DESIGN §4).

While running, the server writes `<data>/state/serve.json` every second: its pid and address and
each pipeline's live counters (rates, batch latency, errors), which `logbus status` — a separate
process that reads the data directory — cannot know otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.mcp_http import McpAccess
    from stream.sources import Start, SyslogSpec, TailSpec

DEFAULT_DATA = "logbus-data"
SNAPSHOT = "serve.json"
LOCK = "serve.lock"
SNAPSHOT_EVERY_S = 1.0


class ServeError(Exception):
    """The server cannot start; the message says why and what to do."""


def data_dir_from(arg: str | os.PathLike[str] | None) -> Path:
    """`--data`, else `LOGBUS_DATA`, else ./logbus-data (DESIGN §2.4)."""
    return Path(arg or os.environ.get("LOGBUS_DATA") or DEFAULT_DATA)


class LogBusServer:
    """Everything `logbus serve` runs except uvicorn: build, `start()`, serve `app`, `stop()`."""

    def __init__(self, data_dir: str | Path, *, batch_size: int = 10_000, poll_s: float = 1.0,
                 alert_retry_cap_s: float = 300.0, url: str = "", tails: Sequence[TailSpec] = (),
                 syslog: Sequence[SyslogSpec] = (), tail_start: Start = "end",
                 mcp_access: McpAccess | None = None) -> None:
        from sandbox import SandboxPool
        from server.app import create_app
        from server.tokens import TokenStore
        from stream.alerts import Deliverer, Outbox
        from stream.executor import Executor, ExecutorConfig
        from stream.log import EmbeddedLog
        from stream.runner import MAX_BATCH_SIZE

        try:
            from stream.sinks import OutputSink
        except ImportError as exc:  # the executor must never run without a real sink
            raise ServeError(f"stream.sinks is not available ({exc}); this installation cannot write "
                             "pipeline outputs, so the server does not start") from exc

        self.data_dir = Path(data_dir).resolve()
        self.url = url
        state = self.data_dir / "state"
        state.mkdir(parents=True, exist_ok=True)
        self._lock_file = _exclusive_lock(state / LOCK, self.data_dir)
        self._closers: list[Any] = []
        try:
            self.log = EmbeddedLog(self.data_dir / "log")
            self._closers.append(self.log.close)
            self.tokens = TokenStore(self.data_dir)
            self._closers.append(self.tokens.close)
            self.outbox = Outbox(self.data_dir / "outbox.sqlite3")
            self._closers.append(self.outbox.close)
            self.deliverer = Deliverer(self.outbox, data_dir=self.data_dir,
                                       backoff_cap_s=max(1.0, alert_retry_cap_s))
            self._closers.append(self.deliverer.close)
            self.pool = SandboxPool()
            self._closers.append(self.pool.close)
            config = ExecutorConfig(batch_size=batch_size, max_batch_size=max(batch_size, MAX_BATCH_SIZE),
                                    poll_s=poll_s)
            self.executor = Executor(self.data_dir, self.log, sink_factory=OutputSink, outbox=self.outbox,
                                     pool=self.pool, config=config)
            self._closers.append(self.executor.close)
            self.sources = _sources(self.log, state, tails, syslog, tail_start)
        except BaseException:
            self._close_all()
            raise
        self.app = create_app(log=self.log, tokens=self.tokens, executor=self.executor,
                              deliverer=self.deliverer, outbox=self.outbox, sources=self.sources)
        from server.mcp_http import mount_mcp

        mount_mcp(self.app, self, mcp_access)  # the agent tools; bearer tokens, Host/Origin allowlist
        self.started_at = time.time()
        self._stop = threading.Event()
        self._snapshots = threading.Thread(target=self._snapshot_loop, name="serve-snapshot", daemon=True)

    def start(self) -> None:
        """Start everything; ServeError when a source cannot (a syslog port in use)."""
        from stream.sources import SyslogError

        self.deliverer.start()
        self.executor.start()
        for source in self.sources:
            try:
                source.start()
            except SyslogError as exc:
                raise ServeError(str(exc)) from None
        self._snapshots.start()

    def stop(self) -> None:
        """Executor at a batch boundary, then the deliverer, then every file; idempotent."""
        self._stop.set()
        if self._snapshots.is_alive():
            self._snapshots.join(5)
        for source in self.sources:  # first: what they buffered is appended before the log closes
            with contextlib.suppress(Exception):
                source.stop()
        self.executor.stop()
        self.deliverer.stop()
        with contextlib.suppress(Exception):
            self.write_snapshot(stopped=True)
        self._close_all()

    def _close_all(self) -> None:
        while self._closers:
            closer = self._closers.pop()
            with contextlib.suppress(Exception):
                closer()
        with contextlib.suppress(Exception):
            self._lock_file.close()

    def write_snapshot(self, *, stopped: bool = False) -> None:
        snapshot = {"pid": os.getpid(), "url": self.url, "started_at": self.started_at,
                    "updated_at": time.time(), "stopped": stopped,
                    "pipelines": self.executor.status(), "deliveries": dict(self.deliverer.metrics),
                    "sources": [source.status() for source in self.sources]}
        path = self.data_dir / "state" / SNAPSHOT
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(snapshot, default=str))
        os.replace(tmp, path)

    def _snapshot_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # status is best effort; the server goes on
                self.write_snapshot()
            self._stop.wait(SNAPSHOT_EVERY_S)


def serve(data_dir: str | Path, host: str = "127.0.0.1", port: int = 8765, *, batch_size: int = 10_000,
          alert_retry_cap_s: float = 300.0, tails: Sequence[TailSpec] = (), syslog: Sequence[SyslogSpec] = (),
          tail_start: Start = "end", allow_hosts: Sequence[str] = (),
          allow_origins: Sequence[str] = ()) -> int:
    """Run the server until SIGTERM/SIGINT; returns the exit status."""
    import uvicorn

    from server.mcp_http import McpAccess

    url = f"http://{host}:{port}"
    server = LogBusServer(data_dir, batch_size=batch_size, alert_retry_cap_s=alert_retry_cap_s, url=url,
                          tails=tails, syslog=syslog, tail_start=tail_start,
                          mcp_access=McpAccess.for_bind(host, allow_hosts, allow_origins))
    config = uvicorn.Config(server.app, host=host, port=port, log_level="warning", access_log=False,
                            lifespan="off")
    web = uvicorn.Server(config)
    # uvicorn catches SIGTERM/SIGINT, shuts the HTTP side down, restores the handlers it found and
    # raises the signal again. The handler found must then be a quiet one, or the default SIGTERM
    # action would end the process before the executor stops at a batch boundary.
    previous = {sig: signal.signal(sig, _note_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        print(f"logbus serve: listening on {url} (data: {server.data_dir})", file=sys.stderr, flush=True)
        web.run()
        ok = web.started  # False when the port could not be bound
    finally:
        print("logbus serve: stopping (pipelines stop at a batch boundary)", file=sys.stderr, flush=True)
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not ok:
        print(f"logbus serve: could not listen on {host}:{port} (see the error above); choose another "
              "--port or stop what uses it", file=sys.stderr)
        return 1
    return 0


def _sources(log: Any, state: Path, tails: Sequence[TailSpec], syslog: Sequence[SyslogSpec],
             tail_start: Start) -> list[Any]:
    """The `--tail` followers and `--syslog-*` listeners, tenant `default` (started by `start`)."""
    from stream.sources import FileTail, SyslogError, SyslogSource, TailError

    sources: list[Any] = []
    try:
        for path, stream, fmt in tails:
            sources.append(FileTail(log, path, stream, fmt=fmt, start=tail_start, state_dir=state / "tail"))
        for protocol, host, port, stream in syslog:
            sources.append(SyslogSource(log, protocol, host, port, stream))
    except (TailError, SyslogError) as exc:
        raise ServeError(str(exc)) from None
    return sources


def _note_signal(signum: int, frame: FrameType | None) -> None:
    """Installed under uvicorn's own handlers; see `serve`."""


def _exclusive_lock(path: Path, data_dir: Path) -> Any:
    handle = open(path, "a+")  # noqa: SIM115 - held open for the server's lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ServeError(f"another `logbus serve` (pid {holder}) is running on {data_dir}; stop it first, "
                         "or use another --data directory") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def read_snapshot(data_dir: str | Path, *, max_age_s: float = 10.0) -> dict[str, Any] | None:
    """The running server's last snapshot, or None when no server is running on `data_dir`."""
    path = Path(data_dir) / "state" / SNAPSHOT
    try:
        snapshot: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if snapshot.get("stopped") or time.time() - float(snapshot.get("updated_at", 0)) > max_age_s:
        return None
    try:
        os.kill(int(snapshot["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return None
    return snapshot
