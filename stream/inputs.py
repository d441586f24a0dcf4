"""Reading event files into Arrow batches: NDJSON and raw lines.

Bad input never stops a read. Every line that cannot become an event (malformed JSON, invalid
UTF-8, a JSON value that is not an object, a line over the size cap, nesting deeper than the cap)
becomes a dead letter carrying its 1-based line number and the reason, and the good lines around
it are kept. Line endings: LF, CRLF and bare CR all end a line (loghub files mix them); empty
lines are skipped.

NDJSON takes a fast path through Arrow's multi-threaded JSON reader and falls back, for a chunk
that it refuses, to a per-line parse that can say which line is wrong. Arrow's reader infers
timestamps from ISO strings and would hand the pipeline a different value than the file holds,
so a chunk where it did that is also re-read per line: events keep their original strings.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import pyarrow as pa
import pyarrow.json as pa_json

from primitives.batch import from_events
from primitives.runtime import DeadLetter

Format = Literal["ndjson", "lines"]
FORMATS: tuple[str, ...] = ("ndjson", "lines")

MAX_LINE_BYTES = 1 << 20  # 1 MiB: an event larger than this is refused, not half-parsed
MAX_DEPTH = 64  # deeper JSON is refused: nobody's log event nests deeper, attackers' do
CHUNK_BYTES = 8 << 20
_NEWLINES = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class InputBatch:
    """Events read from one chunk of input, plus the lines that could not be read."""

    table: pa.Table
    dead_letters: list[DeadLetter] = field(default_factory=list)
    first_line: int = 1


def read_events(
    source: str | Path | BinaryIO,
    fmt: Format = "ndjson",
    *,
    limit: int | None = None,
    batch_size: int = 65_536,
) -> Iterator[InputBatch]:
    """Yield batches of at most `batch_size` events, in file order, up to `limit` events."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; use one of: {', '.join(FORMATS)}")
    remaining = limit
    for first_line, lines in _chunked_lines(source, batch_size):
        if remaining is not None and remaining <= 0:
            return
        batch = _parse_lines(lines, first_line) if fmt == "ndjson" else _message_lines(lines, first_line)
        if remaining is not None:
            if batch.table.num_rows > remaining:
                batch.table = batch.table.slice(0, remaining)
            remaining -= batch.table.num_rows
        yield batch


def read_all(source: str | Path | BinaryIO, fmt: Format = "ndjson", *, limit: int | None = None) -> InputBatch:
    """The whole input as one batch (tests, small files)."""
    tables, dead = [], []
    for batch in read_events(source, fmt, limit=limit):
        tables.append(batch.table)
        dead.extend(batch.dead_letters)
    table = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    return InputBatch(table, dead)


def _chunked_lines(source: str | Path | BinaryIO, batch_size: int) -> Iterator[tuple[int, list[bytes]]]:
    """Split the input on any line ending, without ever cutting a CRLF pair in two."""
    stream: BinaryIO
    if isinstance(source, str | Path):
        stream = open(source, "rb")  # noqa: SIM115 - closed in the finally below
    else:
        stream = source
    try:
        carry = b""
        line_no = 1
        pending: list[bytes] = []
        while True:
            chunk = stream.read(CHUNK_BYTES)
            data = carry + chunk
            if chunk:
                # keep the last (possibly partial) line, and a trailing CR that may precede an LF
                cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
                if cut == len(data) - 1 and data.endswith(b"\r"):
                    cut = max(data.rfind(b"\n", 0, cut), data.rfind(b"\r", 0, cut))
                if cut < 0:
                    carry = data
                    continue
                body, carry = data[: cut + 1], data[cut + 1 :]
            else:
                body, carry = data, b""
            parts = _NEWLINES.split(body)
            if body.endswith((b"\n", b"\r")):
                parts.pop()  # the empty string after the final line ending
            for part in parts:
                pending.append(part)
                if len(pending) >= batch_size:
                    yield line_no, pending
                    line_no += len(pending)
                    pending = []
            if not chunk:
                break
        if pending:
            yield line_no, pending
    finally:
        if stream is not source:
            stream.close()


def _message_lines(lines: list[bytes], first_line: int) -> InputBatch:
    """`--format lines`: each non-empty line becomes {"message": line}."""
    messages: list[str] = []
    dead: list[DeadLetter] = []
    for offset, raw in enumerate(lines):
        if not raw:
            continue
        error = _line_too_large(raw)
        if error is None:
            try:
                messages.append(raw.decode("utf-8"))
                continue
            except UnicodeDecodeError as exc:
                error = ("invalid_utf8", f"line is not valid UTF-8 (byte {exc.start}); send UTF-8 text")
        dead.append(_dead(first_line + offset, raw, *error))
    return InputBatch(pa.table({"message": pa.array(messages, pa.string())}), dead, first_line)


def _parse_lines(lines: list[bytes], first_line: int) -> InputBatch:
    blob = b"\n".join(line for line in lines if line and len(line) <= MAX_LINE_BYTES)
    if blob and all(len(line) <= MAX_LINE_BYTES for line in lines):
        table = _fast_ndjson(blob)
        if table is not None:
            return InputBatch(table, [], first_line)
    return _slow_ndjson(lines, first_line)


def _fast_ndjson(blob: bytes) -> pa.Table | None:
    try:
        table = pa_json.read_json(io.BytesIO(blob), read_options=pa_json.ReadOptions(block_size=1 << 24))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if _has_inferred_time(table.schema) or _too_deep(table.schema):
        return None
    return table


def _has_inferred_time(schema: pa.Schema) -> bool:
    def walk(t: pa.DataType) -> bool:
        if pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t):
            return True
        if pa.types.is_struct(t):
            return any(walk(t.field(i).type) for i in range(t.num_fields))
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return walk(t.value_type)
        return False

    return any(walk(f.type) for f in schema)


def _too_deep(schema: pa.Schema) -> bool:
    def depth(t: pa.DataType) -> int:
        if pa.types.is_struct(t):
            return 1 + max((depth(t.field(i).type) for i in range(t.num_fields)), default=0)
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return 1 + depth(t.value_type)
        return 0

    return any(depth(f.type) >= MAX_DEPTH for f in schema)


def _slow_ndjson(lines: list[bytes], first_line: int) -> InputBatch:
    events: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    for offset, raw in enumerate(lines):
        if not raw or raw.isspace():
            continue
        error = _line_too_large(raw) or _nesting_too_deep(raw)
        if error is None:
            try:
                value = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                error = _json_error(raw, exc)
            else:
                if isinstance(value, dict):
                    events.append(value)
                    continue
                error = ("not_an_object", f"line holds a JSON {type(value).__name__}, not an object; "
                         "send one JSON object per line")
        dead.append(_dead(first_line + offset, raw, *error))
    return InputBatch(from_events(events), dead, first_line)


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> tuple[str, str]:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return "invalid_utf8", f"line is not valid UTF-8 (byte {bad.start}); send UTF-8 text"
    return "bad_json", f"malformed JSON: {exc.msg} at column {exc.colno}"


def _line_too_large(raw: bytes) -> tuple[str, str] | None:
    if len(raw) > MAX_LINE_BYTES:
        return "too_large", f"line is {len(raw):,} bytes; the limit is {MAX_LINE_BYTES:,} bytes per event"
    return None


def _nesting_too_deep(raw: bytes) -> tuple[str, str] | None:
    if raw.count(b"[") + raw.count(b"{") < MAX_DEPTH:
        return None
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    if deepest > MAX_DEPTH:
        return "too_deep", f"JSON nests {deepest} levels deep; the limit is {MAX_DEPTH}"
    return None


def _dead(line: int, raw: bytes, reason: str, message: str) -> DeadLetter:
    preview = raw[:200].decode("utf-8", "backslashreplace")
    return DeadLetter(step="input", reason=reason, message=f"line {line}: {message}",
                      event={"raw": preview, "line": line}, line=line)
