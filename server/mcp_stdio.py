"""`logbus serve --stdio`: the agent tools over stdin/stdout, for Claude Desktop, Claude Code and
any MCP client that starts its server as a child process.

The caller is the local user, so the context is the `default` tenant's author (DESIGN §5); there
is no token on this transport. The process runs what `logbus serve` runs (the executor, alert
delivery, `--tail`/`--syslog-*` sources) except HTTP, so an approved pipeline runs as long as the
client keeps the server open. When another `logbus serve` already holds the data directory's
lock (a long-running HTTP server, or a second client's stdio server), this one attaches instead:
it serves the tools over the same data directory and leaves running pipelines to the holder,
which picks up approvals from the registry.

stdout is the protocol. Everything else goes to stderr: logging is pointed there, and while the
components start (sandbox workers are child processes and inherit descriptors) fd 1 is pointed
at stderr and fd 0 at /dev/null; the SDK then claims both for the wire and keeps the diversion
while serving. EOF on stdin, SIGTERM and SIGINT stop it cleanly (pipelines at a batch boundary).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STDIO_TENANT = "default"
STDIO_ROLE = "author"
STDIO_ACTOR = "agent:stdio"


def serve_stdio(data_dir: str | Path, **server_options: Any) -> int:
    """Serve MCP on stdin/stdout until EOF or a signal; `server_options` go to `LogBusServer`."""
    import anyio

    from server.lifecycle import AgentContext
    from server.mcp_server import build_server
    from server.serve import LogBusServer, ServeError

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="logbus: %(levelname)s %(message)s")
    logging.getLogger("mcp").setLevel(logging.WARNING)
    data = Path(data_dir).resolve()
    closers: list[Any] = []
    with _diverted_std_fds():
        holder = _lock_holder(data)
        try:
            if holder is None:
                server = LogBusServer(data, url="stdio", **server_options)
                closers.append(server.stop)
                server.start()
                context = AgentContext(STDIO_TENANT, STDIO_ROLE, server.data_dir, server.log, server.pool,
                                       server.executor, actor=STDIO_ACTOR)
                _say(f"serving MCP on stdio as tenant {STDIO_TENANT!r} (data: {data}); pipelines run here")
            else:
                context = _attached_context(data, closers)
                _say(f"serving MCP on stdio as tenant {STDIO_TENANT!r} (data: {data}); another logbus serve "
                     f"(pid {holder}) runs the pipelines")
        except ServeError as exc:
            _close(closers)
            _say(str(exc))
            return 1
        except BaseException:
            _close(closers)
            raise
    mcp = build_server(context)

    async def run() -> None:
        async with anyio.create_task_group() as group:
            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        # The SDK reads stdin in a thread that no cancellation interrupts, so the
                        # loop cannot wind down while the client keeps stdin open: stop the
                        # components here, then leave.
                        _say("stopping (pipelines stop at a batch boundary)")
                        await anyio.to_thread.run_sync(_close, closers)
                        os._exit(0)

            group.start_soon(on_signal)
            await mcp.run_stdio_async()  # returns at EOF: the client went away
            group.cancel_scope.cancel()

    try:
        anyio.run(run)
    finally:
        _say("stopping (pipelines stop at a batch boundary)")
        _close(closers)
    return 0


def _attached_context(data: Path, closers: list[Any]) -> Any:
    from sandbox import SandboxPool
    from server.lifecycle import AgentContext
    from stream.log import EmbeddedLog

    log = EmbeddedLog(data / "log")
    closers.append(log.close)
    pool = SandboxPool()
    closers.append(pool.close)
    return AgentContext(STDIO_TENANT, STDIO_ROLE, data, log, pool, None, actor=STDIO_ACTOR)


def _lock_holder(data: Path) -> str | None:
    """The pid in `serve.lock` when another server holds it, else None (the lock is left free)."""
    from server.serve import LOCK

    path = data / "state" / LOCK
    if not path.exists():
        return None
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            return handle.read().strip() or "unknown"
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


@contextlib.contextmanager
def _diverted_std_fds() -> Iterator[None]:
    """Point fd 1 at stderr and fd 0 at /dev/null while components start, then give them back."""
    sys.stdout.flush()
    saved_out = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    saved_in = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(2, 1)
        os.dup2(null, 0)
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_in, 0)
        for fd in (saved_out, saved_in, null):
            os.close(fd)


def _close(closers: list[Any]) -> None:
    while closers:
        with contextlib.suppress(Exception):
            closers.pop()()


def _say(message: str) -> None:
    print(f"logbus serve --stdio: {message}", file=sys.stderr, flush=True)
