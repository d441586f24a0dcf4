"""`logbus serve --syslog-udp/--syslog-tcp HOST:PORT=STREAM`: a syslog listener that appends to a stream.

- UDP: one message per datagram. TCP (RFC 6587): each frame is either octet-counted
  (`LEN SP MSG`, recognised by a leading digit 1-9, digits and a space) or ends at LF (a trailing
  CR or NUL is dropped); both may be mixed on one connection. A connection that closes in the
  middle of an LF-framed message delivers what it sent; one that closes inside an octet-counted
  frame loses that frame (`truncated`).
- Each message becomes an event: the fields of the syslog parser (`timestamp`, `host`, `app`, `pid`,
  `msgid`, `structured_data`, `facility`, `severity`, `message`, `repeat`; RFC 5424 and RFC 3164)
  plus `raw` (the message as received) and `peer` (`ip:port` of the sender). A message that is
  neither format is kept, not dead-lettered — syslog senders are many and odd, and a pipeline
  should still see what they sent — as `{"message": raw, "raw", "peer", "parse_error": ...}`, and
  counted as `malformed`. Bytes that are not UTF-8 are replaced with U+FFFD.
- Batching: appends happen every `flush_messages` messages or `flush_s` (200 ms), whichever first,
  into a stream created with time field `timestamp`.
- Bounds: a message over `max_message_bytes` (64 KiB) is dropped and counted as `oversize`. The
  buffer (messages waiting or being appended) holds at most `max_buffer_messages` and
  `max_buffer_bytes`. When it is full, TCP stops reading the connection, so the kernel's window
  closes and the sender blocks (no loss); UDP has no way to push back, so the datagram is dropped
  and counted as `dropped` — raise the buffer or use TCP when that counter moves.
- A failed append (disk full) is retried with backoff while the buffer fills, so the same
  backpressure applies; messages still unstored at `stop()` are counted as `lost`.

Counters (`metrics`): received, appended, malformed, oversize, dropped, truncated, lost,
connections, append_errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

from primitives.parsers.syslog import parse_syslog
from stream.log import EmbeddedLog, check_stream, check_tenant

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 << 10
FLUSH_MESSAGES = 1000
FLUSH_S = 0.2
MAX_BUFFER_MESSAGES = 10_000
MAX_BUFFER_BYTES = 16 << 20
PARSE_ERROR = "not an RFC 5424 or RFC 3164 syslog message; kept as received in `message`"
Protocol = Literal["udp", "tcp"]
COUNTERS = ("received", "appended", "malformed", "oversize", "dropped", "truncated", "lost", "connections",
            "append_errors")


class SyslogError(ValueError):
    """A listener that cannot be set up (bad address or stream); the message says what to change."""


@dataclass(slots=True)
class Frame:
    """One complete TCP frame, or an event of the framer (`oversize`, `truncated`) with no data."""

    data: bytes = b""
    problem: str | None = None


class Framer:
    """RFC 6587 framing of one TCP byte stream: octet counting and LF-delimited, mixed freely."""

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max = max_message_bytes
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversize octet-counted frame still to discard
        self._skip_line = False  # discarding an oversize LF-framed message up to its LF

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while self._buf:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                continue
            if self._skip_line:
                end = self._buf.find(b"\n")
                if end < 0:
                    self._buf.clear()
                    break
                del self._buf[:end + 1]
                self._skip_line = False
                continue
            length = self._octet_count()
            if length == -1:
                break  # a digit prefix still arriving
            if length is not None:
                space = self._buf.index(b" ")
                if length > self.max:
                    frames.append(Frame(problem="oversize"))
                    del self._buf[:space + 1]
                    self._skip = length
                    continue
                if len(self._buf) < space + 1 + length:
                    break
                frames.append(Frame(bytes(self._buf[space + 1:space + 1 + length])))
                del self._buf[:space + 1 + length]
                continue
            end = self._buf.find(b"\n")
            if end < 0:
                if len(self._buf) > self.max:
                    frames.append(Frame(problem="oversize"))
                    self._buf.clear()
                    self._skip_line = True
                break
            if end > self.max:
                frames.append(Frame(problem="oversize"))
            else:
                frames.append(Frame(bytes(self._buf[:end])))
            del self._buf[:end + 1]
        return frames

    @property
    def pending(self) -> bool:
        """Part of a message has arrived: a connection ending now cuts it."""
        return bool(self._buf.strip()) or bool(self._skip)

    def close(self) -> list[Frame]:
        """The connection ended: an unterminated LF-framed message counts; a partial counted frame not."""
        counted = self._octet_count() is not None  # inside `LEN SP MSG`, or still in its LEN
        rest, self._buf = bytes(self._buf), bytearray()
        if self._skip or self._skip_line or not rest.strip():
            return []
        if counted:
            return [Frame(problem="truncated")]
        return [Frame(rest)] if len(rest) <= self.max else [Frame(problem="oversize")]

    def _octet_count(self) -> int | None:
        """The frame length when the buffer starts `LEN SP`, -1 when that may still come, else None."""
        head = bytes(self._buf[:8])
        if not head[:1].isdigit() or head[:1] == b"0":
            return None
        digits = len(head) - len(head.lstrip(b"0123456789"))
        if digits == len(head):
            return -1 if digits < 8 else None
        return int(head[:digits]) if head[digits:digits + 1] == b" " else None


class SyslogSource:
    """One syslog listener (UDP or TCP) appending to one stream; `start()` binds, `stop()` drains."""

    def __init__(self, log_: EmbeddedLog, protocol: Protocol, host: str, port: int, stream: str, *,
                 tenant: str = "default", max_message_bytes: int = MAX_MESSAGE_BYTES,
                 flush_messages: int = FLUSH_MESSAGES, flush_s: float = FLUSH_S,
                 max_buffer_messages: int = MAX_BUFFER_MESSAGES,
                 max_buffer_bytes: int = MAX_BUFFER_BYTES) -> None:
        if protocol not in ("udp", "tcp"):
            raise SyslogError(f"syslog protocol {protocol!r} is invalid: use 'udp' or 'tcp'")
        try:
            check_stream(stream)
            check_tenant(tenant)
        except ValueError as exc:
            raise SyslogError(str(exc)) from None
        self.log, self.protocol, self.host, self.port = log_, protocol, host, port
        self.stream, self.tenant = stream, tenant
        self.max_message_bytes, self.flush_messages, self.flush_s = max_message_bytes, flush_messages, flush_s
        self.max_buffer_messages, self.max_buffer_bytes = max_buffer_messages, max_buffer_bytes
        self.metrics: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.address: tuple[str, int] | None = None  # bound address, once started (port 0 picks one)
        self._buffer: deque[tuple[bytes, str]] = deque()
        self._held_messages = self._held_bytes = 0  # buffered plus being appended
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stopping: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._space: asyncio.Event | None = None
        self._clients: set[asyncio.Task[None]] = set()
        # appends leave the event loop (they fsync); one thread keeps them in order
        self._appender = ThreadPoolExecutor(1, thread_name_prefix=f"syslog-append-{stream}")

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Bind the socket (SyslogError when it cannot be bound) and serve in a daemon thread."""
        name = f"syslog-{self.protocol}-{self.stream}"
        self._thread = threading.Thread(target=self._thread_main, name=name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise SyslogError(f"syslog {self.protocol} listener on {self.host}:{self.port} did not start")
        if self._failure is not None:
            self._thread.join(timeout)
            raise SyslogError(f"cannot listen for syslog over {self.protocol} on {self.host}:{self.port} "
                              f"({self._failure}); choose another address or stop what uses it") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Close the socket and every connection, append what is buffered, then return; idempotent."""
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stopping.set)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def status(self) -> dict[str, Any]:
        address = f"{self.address[0]}:{self.address[1]}" if self.address else None
        return {"protocol": self.protocol, "address": address, "stream": self.stream, "tenant": self.tenant,
                "buffered": self._held_messages, **self.metrics}

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # reported by start() when it happened while binding
            self._failure = exc
            if self._ready.is_set():
                log.exception("syslog %s listener for %s failed", self.protocol, self.stream)
        finally:
            self._ready.set()
            self._appender.shutdown(wait=True)
            loop.close()

    async def _main(self) -> None:
        self._stopping, self._wake, self._space = asyncio.Event(), asyncio.Event(), asyncio.Event()
        loop = asyncio.get_running_loop()
        closer: Any
        if self.protocol == "udp":
            transport, _ = await loop.create_datagram_endpoint(lambda: _Datagrams(self),
                                                               local_addr=(self.host, self.port))
            self.address = transport.get_extra_info("sockname")[:2]
            closer = transport
        else:
            server = await asyncio.start_server(self._serve_client, self.host, self.port, limit=1 << 16)
            self.address = server.sockets[0].getsockname()[:2]
            closer = server
        self._ready.set()
        flusher = asyncio.create_task(self._flush_loop())
        await self._stopping.wait()
        closer.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        self._wake.set()
        await flusher

    # -- receiving -----------------------------------------------------------------------------

    def _has_room(self, size: int) -> bool:
        return (self._held_messages < self.max_buffer_messages
                and self._held_bytes + size <= self.max_buffer_bytes)

    def _push(self, data: bytes, peer: str) -> None:
        self._buffer.append((data, peer))
        self._held_messages += 1
        self._held_bytes += len(data)
        if self._wake is not None and len(self._buffer) in (1, self.flush_messages):
            self._wake.set()  # the first message starts the flush_s clock; a full batch goes at once

    def datagram(self, data: bytes, addr: Any) -> None:
        data = data.rstrip(b"\r\n\0")
        if not data.strip():
            return
        self.metrics["received"] += 1
        if len(data) > self.max_message_bytes:
            self.metrics["oversize"] += 1
        elif not self._has_room(len(data)):
            self.metrics["dropped"] += 1
        else:
            self._push(data, _peer(addr))

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None and self._space is not None
        self._clients.add(task)
        self.metrics["connections"] += 1
        peer = _peer(writer.get_extra_info("peername"))
        framer = Framer(self.max_message_bytes)
        try:
            while True:
                chunk = await reader.read(1 << 16)
                frames = framer.feed(chunk) if chunk else framer.close()
                for frame in frames:
                    if frame.problem is not None:
                        self.metrics["received"] += 1
                        self.metrics[frame.problem] += 1
                        continue
                    data = frame.data.rstrip(b"\r\n\0")
                    if not data.strip():
                        continue
                    self.metrics["received"] += 1
                    while not self._has_room(len(data)):  # backpressure: stop reading this connection
                        self._space.clear()
                        await self._space.wait()
                    self._push(data, peer)
                if not chunk:
                    break
        except (ConnectionError, asyncio.CancelledError):  # reset by the peer, or closed by stop()
            if framer.pending:
                self.metrics["received"] += 1
                self.metrics["truncated"] += 1
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- appending -----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        assert self._stopping is not None and self._wake is not None and self._space is not None
        while True:
            if not self._buffer:
                if self._stopping.is_set():
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if len(self._buffer) < self.flush_messages and not self._stopping.is_set():
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.flush_s)
            batch = [self._buffer.popleft() for _ in range(min(len(self._buffer), self.flush_messages))]
            stored = await asyncio.get_running_loop().run_in_executor(self._appender, self._append_with_retry,
                                                                      batch)
            if not stored:
                self.metrics["lost"] += len(batch)
            self._held_messages -= len(batch)
            self._held_bytes -= sum(len(data) for data, _ in batch)
            self._space.set()

    def _append_with_retry(self, batch: list[tuple[bytes, str]]) -> bool:
        delay = 0.1
        while True:
            try:
                self._append(batch)
                return True
            except Exception:
                self.metrics["append_errors"] += 1
                log.exception("syslog %s -> %s: append of %d messages failed; retrying", self.protocol,
                              self.stream, len(batch))
            if self._stopping is not None and self._stopping.is_set():
                return False
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _append(self, batch: list[tuple[bytes, str]]) -> None:
        table, malformed = to_events(batch)
        self.log.create_stream(self.tenant, self.stream, time_field="timestamp")
        self.log.append(self.tenant, self.stream, table)
        self.metrics["appended"] += table.num_rows
        self.metrics["malformed"] += malformed


def to_events(batch: list[tuple[bytes, str]]) -> tuple[pa.Table, int]:
    """Messages and their peers as one table of events (module docstring), and the malformed count."""
    raw = pa.array([data.decode("utf-8", "replace") for data, _ in batch], pa.string())
    parsed = parse_syslog(raw)
    matched = parsed.matched
    columns: dict[str, pa.Array] = dict(parsed.fields)
    columns["message"] = pc.if_else(matched, columns["message"], raw)
    columns["raw"] = raw
    columns["peer"] = pa.array([peer for _, peer in batch], pa.string())
    malformed = len(batch) - pc.sum(matched.cast(pa.int64())).as_py() if len(batch) else 0
    if malformed:
        columns["parse_error"] = pc.if_else(matched, pa.scalar(None, pa.string()), pa.scalar(PARSE_ERROR))
    return pa.table(columns), int(malformed)


def _peer(addr: Any) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, source: SyslogSource) -> None:
        self.source = source

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.source.datagram(data, addr)


def parse_listen_spec(spec: str, option: str) -> tuple[str, int, str]:
    """`HOST:PORT=STREAM` (the `--syslog-udp/--syslog-tcp` argument) as (host, port, stream)."""
    address, sep, stream = spec.rpartition("=")
    example = f"{option} 127.0.0.1:5514=syslog (IPv6: [::1]:5514=syslog)"
    host, colon, port_text = address.rpartition(":")
    if not sep or not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise SyslogError(f"{option} {spec!r} is invalid: write HOST:PORT=STREAM with a port 1-65535, e.g. "
                          f"{example}")
    try:
        check_stream(stream)
    except ValueError as exc:
        raise SyslogError(f"{option} {spec!r}: {exc}") from None
    return host.removeprefix("[").removesuffix("]"), int(port_text), stream
