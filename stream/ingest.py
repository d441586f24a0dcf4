"""The ingest core: one request body in, events appended to the log, bad lines to dead letters.

It knows nothing of HTTP: the HTTP route, the CLI's local mode and tests all call
`ingest_bytes`, and each IngestError carries the HTTP status it maps to.

- Formats: `application/x-ndjson` (also `application/ndjson`, `application/jsonl`,
  `application/json-lines`, `application/x-jsonlines`) is one JSON object per line; `text/plain` is
  one event per line, stored as `{"message": line}`. A charset other than UTF-8 is refused.
- `Content-Encoding: gzip` is decompressed with a cap on the decompressed size, so a small zip
  bomb costs at most MAX_DECODED_BYTES of memory before it is refused with 413.
- Limits: MAX_BODY_BYTES (16 MiB) as received, MAX_DECODED_BYTES (64 MiB) after decompression.
- A request is atomic: its good events, its dead letters and its idempotency key are stored in
  one transaction, or nothing is. Bad lines never fail the request: each becomes a dead letter
  with its line number (1-based, within this body) and the good lines around it are kept.
- Streams are created on first ingest (as Vector and Loki do) with the request's format; an
  invalid stream name is refused (400) instead of being created.
- With an idempotency key, a retried request stores nothing and gets the first response back
  (duplicate=True); the same key with a different body is refused (409).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from primitives.runtime import DeadLetter
from stream.inputs import Format, read_events
from stream.log import (
    EmbeddedLog,
    IdempotencyConflict,
    InvalidName,
    StreamLimitReached,
    check_stream,
)
from stream.log.names import check_idempotency_key

MAX_BODY_BYTES = 16 << 20
MAX_DECODED_BYTES = 64 << 20
MAX_ERRORS = 100  # per-line errors returned in a response
MAX_STORED_DEAD_LETTERS = 1000  # per request; the rest are counted in one summary dead letter
BATCH_ROWS = 65_536  # events per stored batch

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl",
                          "application/json-lines", "application/x-jsonlines"})
LINES_TYPES = frozenset({"text/plain"})
CONTENT_TYPES: dict[str, str] = {"ndjson": "application/x-ndjson", "lines": "text/plain; charset=utf-8"}


class IngestError(Exception):
    """A request that cannot be ingested; `status` is the HTTP status it maps to."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": str(self)}


class EmptyBody(IngestError):
    code = "empty_body"


class PayloadTooLarge(IngestError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(IngestError):
    status = 415
    code = "unsupported_media_type"


class IngestConflict(IngestError):
    status = 409
    code = "idempotency_conflict"


class IngestForbidden(IngestError):
    status = 403
    code = "forbidden"


@dataclass(slots=True)
class IngestResult:
    """The outcome of one request. `errors` holds the first MAX_ERRORS rejected lines."""

    stream: str
    accepted: int
    rejected: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    truncated: bool = False
    first_offset: int | None = None
    duplicate: bool = False
    created: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"stream": self.stream, "accepted": self.accepted, "rejected": self.rejected,
                "first_offset": self.first_offset, "duplicate": self.duplicate, "created": self.created,
                "errors": self.errors, "truncated": self.truncated}


def ingest_bytes(log: EmbeddedLog, tenant: str, stream: str, body: bytes, *, content_type: str | None,
                 content_encoding: str | None = None, idempotency_key: str | None = None) -> IngestResult:
    """Parse `body` and append its events to `stream` (created if new); see the module docstring."""
    try:
        check_stream(stream)
    except InvalidName as exc:
        raise IngestError(str(exc), code="invalid_stream") from None
    fmt = body_format(content_type)
    if idempotency_key is not None:
        try:
            check_idempotency_key(idempotency_key)
        except InvalidName as exc:
            raise IngestError(str(exc), code="invalid_idempotency_key") from None
    data = decode_body(body, content_encoding)
    if not data or data.isspace():
        raise EmptyBody("request body is empty: send one event per line (NDJSON objects or text lines)")
    fingerprint = hashlib.blake2b(data, digest_size=16).hexdigest() if idempotency_key else None
    try:
        if idempotency_key is not None:
            earlier = log.find_append(tenant, stream, idempotency_key, fingerprint=fingerprint)
            if earlier is not None:
                return _replayed(stream, earlier.first_offset, earlier.receipt)
        created = log.create_stream(tenant, stream, format=fmt)
        tables, dead, reasons = _parse(data, fmt)
        rejected = reasons.total()
        accepted = sum(t.num_rows for t in tables)
        if accepted == 0 and rejected == 0:
            raise EmptyBody("request body holds only blank lines: send one event per line")
        errors = [_error(d) for d in dead[:MAX_ERRORS]]
        receipt = {"accepted": accepted, "rejected": rejected, "errors": errors,
                   "truncated": rejected > len(errors)}
        stored = _stored_dead_letters(dead, reasons)
        result = log.append(tenant, stream, tables, idempotency_key=idempotency_key, fingerprint=fingerprint,
                            receipt=receipt, dead_letters=stored)
    except IdempotencyConflict as exc:
        raise IngestConflict(str(exc)) from None
    except StreamLimitReached as exc:
        raise IngestForbidden(str(exc), code="stream_limit") from None
    if result.duplicate:  # a concurrent retry won the race
        return _replayed(stream, result.first_offset, result.receipt)
    return IngestResult(stream, accepted, rejected, errors, rejected > len(errors),
                        result.first_offset if accepted else None, False, created)


def body_format(content_type: str | None) -> Format:
    """The input format named by a Content-Type header (UnsupportedMediaType otherwise)."""
    accepted = "send application/x-ndjson (one JSON object per line) or text/plain (one event per line)"
    if not content_type:
        raise UnsupportedMediaType(f"missing Content-Type: {accepted}")
    media, *params = (part.strip().lower() for part in content_type.split(";"))
    for param in params:
        name, _, value = param.partition("=")
        if name.strip() == "charset" and value.strip().strip('"') not in ("utf-8", "utf8", "us-ascii"):
            raise UnsupportedMediaType(f"charset {value.strip()!r} is not supported: send UTF-8")
    if media in NDJSON_TYPES:
        return "ndjson"
    if media in LINES_TYPES:
        return "lines"
    hint = "; for a JSON document per line use application/x-ndjson" if media == "application/json" else ""
    raise UnsupportedMediaType(f"Content-Type {media!r} is not supported: {accepted}{hint}")


def decode_body(body: bytes, content_encoding: str | None) -> bytes:
    """The body after Content-Encoding, within MAX_BODY_BYTES / MAX_DECODED_BYTES."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body is {len(body):,} bytes; the limit is {MAX_BODY_BYTES:,} "
                              "(split the input into several requests of whole lines)")
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        data = body
    elif encoding in ("gzip", "x-gzip"):
        data = _gunzip(body)
    else:
        raise UnsupportedMediaType(f"Content-Encoding {content_encoding!r} is not supported: "
                                   "send gzip or no encoding")
    if len(data) > MAX_DECODED_BYTES:
        raise PayloadTooLarge(f"request body is {len(data):,} bytes; the limit is {MAX_DECODED_BYTES:,}")
    return data


def _gunzip(body: bytes) -> bytes:
    """Decompress every gzip member, never producing more than MAX_DECODED_BYTES (+1)."""
    out: list[bytes] = []
    total = 0
    rest = body
    try:
        while rest:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            chunk = inflater.decompress(rest, MAX_DECODED_BYTES + 1 - total)
            total += len(chunk)
            if total > MAX_DECODED_BYTES:
                raise PayloadTooLarge(f"gzip body decompresses to more than {MAX_DECODED_BYTES:,} bytes, the "
                                      "limit; send smaller requests")
            out.append(chunk)
            if not inflater.eof:
                raise IngestError("gzip body is truncated: send the complete compressed body",
                                  code="bad_gzip")
            rest = inflater.unused_data
            if not rest.strip(b"\0"):  # trailing padding after the last member
                break
    except zlib.error as exc:
        raise IngestError(f"body is not valid gzip ({exc}); send gzip data or drop the Content-Encoding "
                          "header", code="bad_gzip") from None
    return b"".join(out)


def _parse(data: bytes, fmt: Format) -> tuple[list[pa.Table], list[DeadLetter], Counter[str]]:
    """Tables of good events, the first dead letters (bounded memory), and every rejection's reason."""
    tables: list[pa.Table] = []
    dead: list[DeadLetter] = []
    reasons: Counter[str] = Counter()
    # one parsing thread per request: concurrent requests are this server's parallelism; the
    # body is what Content-Encoding made of it, with its own inflation bound (_gunzip above)
    for batch in read_events(io.BytesIO(data), fmt, batch_size=BATCH_ROWS, workers=1,
                             gunzip=False):
        if batch.table.num_rows:
            tables.append(batch.table)
        reasons.update(d.reason for d in batch.dead_letters)
        dead.extend(batch.dead_letters[: MAX_STORED_DEAD_LETTERS + 1 - len(dead)])
    return tables, dead, reasons


def _stored_dead_letters(dead: list[DeadLetter], reasons: Counter[str]) -> list[DeadLetter]:
    """At most MAX_STORED_DEAD_LETTERS per request, then one that counts the rest by reason."""
    if len(dead) <= MAX_STORED_DEAD_LETTERS:
        return dead
    kept = dead[:MAX_STORED_DEAD_LETTERS]
    omitted = reasons - Counter(d.reason for d in kept)
    first_dropped = dead[MAX_STORED_DEAD_LETTERS].line
    counts = ", ".join(f"{reason}: {n:,}" for reason, n in omitted.most_common())
    summary = DeadLetter(
        step="input", reason="too_many_errors", line=first_dropped,
        message=f"{omitted.total():,} more rejected lines of this request, from line {first_dropped} on, "
                f"were not stored one by one ({counts}); the first {MAX_STORED_DEAD_LETTERS} show what to fix"
    )
    return [*kept, summary]


def _error(dead: DeadLetter) -> dict[str, Any]:
    prefix = f"line {dead.line}: "
    message = dead.message[len(prefix):] if dead.message.startswith(prefix) else dead.message
    return {"line": dead.line, "reason": dead.reason, "message": message}


def _replayed(stream: str, first_offset: int, receipt: dict[str, Any] | None) -> IngestResult:
    receipt = receipt or {}
    accepted = int(receipt.get("accepted", 0))
    return IngestResult(stream, accepted, int(receipt.get("rejected", 0)), list(receipt.get("errors", [])),
                        bool(receipt.get("truncated", False)), first_offset if accepted else None,
                        duplicate=True, created=False)
