"""Sending a file (or stdin) to a stream: over HTTP to a server, or straight into a local log.

Both modes cut the input into chunks of whole lines (CHUNK_BYTES, 4 MiB by default), never
splitting a line or a CRLF pair, and send each chunk as one request through the same ingest core,
so they accept and reject exactly the same lines. Each chunk carries an Idempotency-Key derived
from its byte offset and its content: a retried request, and a re-run of the same command over the
same (or a grown) file within the server's key retention, stores nothing twice. Content rather
than inode/mtime identifies the file, as Vector's checksum fingerprint does: a log file that
grew keeps the keys of its unchanged chunks, and stdin gets keys too.

Line numbers in the returned errors count from the start of the whole input. A line longer than
a chunk is not sent: it is reported as `too_large` here (the server would refuse it anyway).
A gzip-compressed file (a rotated log) is sent as the text it holds (stream.compressed); offsets
and keys count bytes of that text.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from stream.compressed import DECOMPRESSION_ERRORS, describe, maybe_gunzip
from stream.ingest import CONTENT_TYPES, MAX_ERRORS, IngestError, ingest_bytes
from stream.inputs import FORMATS, Format
from stream.log import EmbeddedLog

CHUNK_BYTES = 4 << 20
MIN_CHUNK_BYTES = 64 << 10
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class Chunk:
    """Whole lines of the input: `offset` is the byte offset, `first_line` the 1-based line number."""

    offset: int
    data: bytes
    first_line: int

    @property
    def idempotency_key(self) -> str:
        digest = hashlib.blake2b(self.offset.to_bytes(8, "big") + self.data, digest_size=20).hexdigest()
        return f"lb1-{digest}"


@dataclass(slots=True)
class IngestSummary:
    """Totals so far; `progress` callbacks receive this object after every chunk."""

    stream: str
    bytes_total: int | None = None
    bytes_done: int = 0
    requests: int = 0
    accepted: int = 0
    rejected: int = 0
    duplicates: int = 0  # chunks that had been ingested before (retries, re-runs): stored once
    errors: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False

    def add_errors(self, errors: list[dict[str, Any]], first_line: int, truncated: bool) -> None:
        for error in errors:
            if len(self.errors) >= MAX_ERRORS:
                self.truncated = True
                return
            line = error.get("line")
            self.errors.append({**error, "line": None if line is None else first_line + int(line) - 1})
        self.truncated = self.truncated or truncated

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "bytes": self.bytes_done, "requests": self.requests,
                "accepted": self.accepted, "rejected": self.rejected, "duplicates": self.duplicates,
                "errors": self.errors, "truncated": self.truncated}


Progress = Callable[[IngestSummary], None]


class IngestClientError(Exception):
    """The server refused a chunk for a reason a retry cannot fix (or retries ran out)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def ingest_file(url: str, token: str, stream: str, source: str | Path | BinaryIO, fmt: Format = "ndjson", *,
                progress: Progress | None = None, chunk_bytes: int = CHUNK_BYTES, compress: bool = False,
                retries: int = 5, timeout: float = 60.0, client: httpx.Client | None = None) -> IngestSummary:
    """POST `source` ("-" is stdin) to `url`/ingest/`stream` in chunks of whole lines."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": _content_type(fmt)}
    if compress:
        headers["Content-Encoding"] = "gzip"
    endpoint = f"{url.rstrip('/')}/ingest/{stream}"
    own = client is None
    http = client or httpx.Client(timeout=timeout)
    try:
        def send(chunk: Chunk) -> dict[str, Any]:
            body = gzip.compress(chunk.data, compresslevel=1) if compress else chunk.data
            return _post(http, endpoint, body, {**headers, "Idempotency-Key": chunk.idempotency_key}, retries)

        return _run(stream, source, chunk_bytes, send, progress)
    finally:
        if own:
            http.close()


def ingest_file_local(log: EmbeddedLog, tenant: str, stream: str, source: str | Path | BinaryIO,
                      fmt: Format = "ndjson", *, progress: Progress | None = None,
                      chunk_bytes: int = CHUNK_BYTES) -> IngestSummary:
    """Append `source` ("-" is stdin) straight into `log`, through the same core as HTTP ingest."""
    content_type = _content_type(fmt)

    def send(chunk: Chunk) -> dict[str, Any]:
        try:
            result = ingest_bytes(log, tenant, stream, chunk.data, content_type=content_type,
                                  idempotency_key=chunk.idempotency_key)
        except IngestError as exc:
            raise IngestClientError(f"chunk at byte {chunk.offset:,} (line {chunk.first_line:,}): {exc}",
                                    status=exc.status, code=exc.code) from None
        return result.to_dict()

    return _run(stream, source, chunk_bytes, send, progress)


def iter_chunks(source: BinaryIO, chunk_bytes: int = CHUNK_BYTES,
                on_long_line: Callable[[int, int], None] | None = None) -> Iterator[Chunk]:
    """Chunks of whole lines of at most `chunk_bytes`; a longer line is skipped and reported
    through `on_long_line(line_number, length)`."""
    if chunk_bytes < MIN_CHUNK_BYTES:
        raise ValueError(f"chunk_bytes must be at least {MIN_CHUNK_BYTES:,}")
    pending, offset, line, eof = b"", 0, 1, False
    while True:
        while not eof and len(pending) <= chunk_bytes:  # one byte past the window: is it the LF of a CRLF?
            more = source.read(chunk_bytes + 1 - len(pending))
            eof = not more
            pending += more
        if not pending:
            return
        if eof and len(pending) <= chunk_bytes:
            cut = len(pending)
        else:
            window = pending[:chunk_bytes]
            cut = max(window.rfind(b"\n"), window.rfind(b"\r")) + 1
            if cut == 0:
                skipped, pending, eof = _skip_line(source, pending)
                if on_long_line is not None:
                    on_long_line(line, skipped)
                offset += skipped
                line += 1
                continue
            if pending[cut - 1 : cut] == b"\r" and pending[cut : cut + 1] == b"\n":
                cut += 1
        data, pending = pending[:cut], pending[cut:]
        yield Chunk(offset, data, line)
        offset += len(data)
        line += len(_LINE_END.findall(data))


def _skip_line(source: BinaryIO, pending: bytes) -> tuple[int, bytes, bool]:
    """Read past the end of an over-long line; returns its length with terminator, the rest, eof."""
    skipped = 0
    while True:
        end = _LINE_END.search(pending)
        if end is not None:
            if end.group() == b"\r" and end.end() == len(pending):  # maybe the CR of a CRLF
                extra = source.read(1)
                pending += extra
                if extra:
                    continue
            return skipped + end.end(), pending[end.end():], False
        skipped += len(pending)
        pending = source.read(1 << 20)
        if not pending:
            return skipped, b"", True


def _run(stream: str, source: str | Path | BinaryIO, chunk_bytes: int,
         send: Callable[[Chunk], dict[str, Any]], progress: Progress | None) -> IngestSummary:
    handle, total, close = _open(source)
    summary = IngestSummary(stream, bytes_total=total)

    def long_line(line: int, length: int) -> None:
        summary.rejected += 1
        summary.add_errors([{"line": 1, "reason": "too_large", "message": (
            f"line is {length:,} bytes, longer than a chunk ({chunk_bytes:,} bytes); it was not sent")}],
            line, False)

    try:
        chunks = iter_chunks(handle, chunk_bytes, long_line)
        for chunk in _readable(chunks, summary):
            summary.bytes_done = chunk.offset + len(chunk.data)
            if not chunk.data.isspace():
                reply = send(chunk)
                summary.requests += 1
                summary.accepted += int(reply.get("accepted", 0))
                summary.rejected += int(reply.get("rejected", 0))
                summary.duplicates += bool(reply.get("duplicate"))
                summary.add_errors(list(reply.get("errors", [])), chunk.first_line,
                                   bool(reply.get("truncated")))
            if progress is not None:
                progress(summary)
    finally:
        close()
    return summary


def _readable(chunks: Iterator[Chunk], summary: IngestSummary) -> Iterator[Chunk]:
    """`chunks`, with damaged gzip data said for a user; what was sent before it stands (sending
    the file again skips it: the server knows it by its offsets)."""
    try:
        yield from chunks
    except DECOMPRESSION_ERRORS as exc:
        raise IngestClientError(f"{describe(exc)}, after {summary.bytes_done:,} bytes of text; "
                                "everything before that was sent") from None


def _post(http: httpx.Client, endpoint: str, body: bytes, headers: dict[str, str],
          retries: int) -> dict[str, Any]:
    delay = 0.5
    for attempt in range(retries + 1):
        try:
            response = http.post(endpoint, content=body, headers=headers)
        except httpx.TransportError as exc:
            if attempt == retries:
                raise IngestClientError(f"could not reach {endpoint}: {exc}") from exc
        else:
            if response.status_code in (200, 422):
                reply: dict[str, Any] = response.json()
                return reply
            if response.status_code not in RETRY_STATUSES or attempt == retries:
                raise _refused(response)
            delay = max(delay, _retry_after(response))
        time.sleep(min(delay, 30.0))
        delay *= 2
    raise AssertionError("unreachable")


def _refused(response: httpx.Response) -> IngestClientError:
    try:
        body = response.json()
        code, message = body.get("error"), body.get("message", response.text)
    except ValueError:
        code, message = None, response.text[:500]
    return IngestClientError(f"server answered {response.status_code}: {message}",
                             status=response.status_code, code=code)


def _retry_after(response: httpx.Response) -> float:
    value = response.headers.get("retry-after", "")
    return float(value) if value.isdigit() else 0.0


def _open(source: str | Path | BinaryIO) -> tuple[BinaryIO, int | None, Callable[[], None]]:
    """The text to send (gzip-compressed input decompressed as it is read, stream.compressed),
    its size where known, and how to close what was opened here."""
    opened: BinaryIO | None = None
    if isinstance(source, str) and source == "-":
        raw: BinaryIO = sys.stdin.buffer
    elif isinstance(source, str | Path):
        raw = opened = open(source, "rb")  # noqa: SIM115 - closed by the close() returned
    else:
        raw = source
    text = maybe_gunzip(raw)
    # progress counts bytes of text: a file's size is that only when it is not compressed
    total = os.fstat(opened.fileno()).st_size if opened is not None and text is raw else None

    def close() -> None:
        if text is not raw:
            text.close()  # the decompressor; it leaves the file underneath open
        if opened is not None:
            opened.close()

    return text, total, close


def _content_type(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; use one of: {', '.join(FORMATS)}")
    return CONTENT_TYPES[fmt]
