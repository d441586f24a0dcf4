"""Reading event files into Arrow batches: NDJSON and raw lines.

Bad input never stops a read. Every line that cannot become an event (malformed JSON, invalid
UTF-8, a JSON value that is not an object, a line over the size cap, nesting deeper than the cap,
an event past the field budget of stream.widths) becomes a dead letter carrying its 1-based line
number and the reason, and the good lines around it are kept. Line endings: LF, CRLF and bare CR
all end a line (loghub files mix them); empty lines are skipped.

NDJSON takes a fast path through Arrow's JSON reader (chunks parsed side by side where there is
more than one core) and falls back, for a chunk that it refuses, to a per-line parse that can say
which line is wrong. Arrow's reader infers timestamps from ISO strings and would hand the pipeline
a different value than the file holds, so a chunk where it did that is also re-read per line:
events keep their original strings.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from primitives.batch import concat, from_events, slice_rows
from primitives.runtime import DeadLetter
from stream.compressed import DECOMPRESSION_ERRORS, describe, maybe_gunzip
from stream.prefetch import map_ahead
from stream.widths import (
    MAX_FIELDS,
    FieldBudget,
    event_leaves,
    fits,
    schema_leaves,
    too_many_fields,
)

Format = Literal["ndjson", "lines"]
FORMATS: tuple[str, ...] = ("ndjson", "lines")

MAX_LINE_BYTES = 1 << 20  # 1 MiB: an event larger than this is refused, not half-parsed
MAX_DEPTH = 64  # deeper JSON is refused: nobody's log event nests deeper, attackers' do
# The deepest nesting Arrow's reader may be handed. It recurses once per level: a line of 20,000
# `[` overflowed an 8 MiB thread stack and killed the process (measured; 10,000 levels still
# parsed, so a level takes 400-800 bytes of stack). 4,096 levels need at most ~3.3 MiB. A line
# that might nest deeper (longer than this many bytes and holding more `[` and `{`) is parsed on
# its own by the per-line path, which checks its depth first.
SAFE_DEPTH = 4096
CHUNK_BYTES = 8 << 20
# Parsing threads: bounds the threads and the memory read ahead (workers + 1 chunks and their
# tables). Only 1 and 2 were measured (bench/bench_readers.py); 8 is a guess, not a finding.
MAX_WORKERS = 8
# With a limit, the first read: the limit times a generous event size (loghub lines are 100-300
# bytes; a guess too small costs only another read), and never under 64 KiB.
TYPICAL_EVENT_BYTES = 512
MIN_READ_BYTES = 64 << 10
_NEWLINES = re.compile(rb"\r\n|\r|\n")
_INNER_BLANK_LINE = r"\n[ \t\r]*\n"  # an empty or whitespace-only line between two others
_KEY_END = r'"[ \t\r\n]*:'  # the end of every key (and of some strings that hold `":`)
# Type inference is handed at most a probe of this many bytes, and rows x keys of at most this
# many cells (see _read_json): ~80 ms in the worst case, where every key is new. A probe of
# clean logs holds 30-200 lines and costs well under a millisecond.
PROBE_BYTES = 16 << 10
PROBE_CELLS = 1 << 20
# Arrow spends ~15 us on each column it makes: a probe holds at most this many keys (the cap on
# distinct fields, counting keys that repeat in a list of objects generously).
PROBE_KEYS = 16 * MAX_FIELDS
# What is read against the schema known so far in one go, once a chunk's probe missed a field
# (_Pieces); and how many pieces a chunk may halve, or parts infer, before the per-line path (whose
# cost is linear) reads it instead: enough for a few dozen fields that first come late, and a bound
# on the work that input built to need more can cause.
PIECE_BYTES = 2 << 20
PROBES_PER_BLOB = 64
_BOM = b"\xef\xbb\xbf"
_EXACT_INTEGERS = float(2**53)  # every integer up to this magnitude is exactly a float64
# orjson reads an integer outside [-2**63, 2**64) as a float, silently; every such integer has
# at least 19 digits. A line with a run that long is parsed again by the json module, whose
# integers are exact (the line is valid JSON: orjson took it). orjson refuses a number past a
# float's range (over 308 digits) outright: that line is a dead letter, raw text kept.
_LONG_DIGITS = re.compile(rb"[0-9]{19}")


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
    workers: int | None = None,
    gunzip: bool = True,
) -> Iterator[InputBatch]:
    """Yield batches of at most `batch_size` events, in file order, up to `limit` events.

    Chunks are parsed by `workers` threads ahead of the caller (default: one per CPU, at most
    MAX_WORKERS; 1 parses on the caller's thread). A server reading many small bodies at once
    passes 1: its requests are its parallelism. Gzip-compressed input is read as the text it
    holds (`stream.compressed`) unless `gunzip` is False; where its data is damaged, the events
    before the damage are kept and one dead letter says from which line on nothing could be
    read."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown input format {fmt!r}; use one of: {', '.join(FORMATS)}")
    parse_chunk = _ndjson_chunk if fmt == "ndjson" else _lines_chunk

    def parse(chunk: tuple[int, bytes, int]) -> list[InputBatch]:
        first_line, body, endings = chunk
        return list(parse_chunk(body, first_line, batch_size, endings))

    if workers is None:
        workers = min(available_cpus(), MAX_WORKERS)
    remaining = limit
    # with a limit, the first read is about what the limit needs (then doubling): `--limit 1000`
    # need not read and parse a whole chunk, nor the chunks parsed ahead of it
    first_read = None if limit is None else max(MIN_READ_BYTES, limit * TYPICAL_EVENT_BYTES)
    if remaining is not None and remaining <= 0:
        return
    try:
        for batches in map_ahead(parse, _chunks(source, first_read, gunzip), workers):
            for batch in batches:
                if remaining is not None:
                    if batch.table.num_rows > remaining:
                        batch.table = slice_rows(batch.table, 0, remaining)
                    remaining -= batch.table.num_rows
                yield batch
                if remaining is not None and remaining <= 0:
                    return  # before the next chunk is asked for: nothing more is read
    except _Unreadable as stop:
        yield InputBatch(pa.table({}), [stop.dead_letter()], stop.line)


def read_all(source: str | Path | BinaryIO, fmt: Format = "ndjson", *,
             limit: int | None = None) -> InputBatch:
    """The whole input as one batch (tests, small files)."""
    tables, dead = [], []
    for batch in read_events(source, fmt, limit=limit):
        tables.append(batch.table)
        dead.extend(batch.dead_letters)
    table = concat(tables)
    return InputBatch(table, dead)


class _Unreadable(Exception):
    """The input cannot be read on from `line` (damaged gzip data)."""

    def __init__(self, line: int, why: str) -> None:
        super().__init__(why)
        self.line, self.why = line, why

    def dead_letter(self) -> DeadLetter:
        return DeadLetter(step="input", reason="bad_gzip",
                          message=f"line {self.line}: {self.why}; no line from here on could be read",
                          event={"line": self.line}, line=self.line)


def _chunks(source: str | Path | BinaryIO, first_read: int | None = None,
            gunzip: bool = True) -> Iterator[tuple[int, bytes, int]]:
    """Whole lines, about CHUNK_BYTES at a time, with the 1-based number of each chunk's first line
    and the chunk's count of line endings. With `first_read`, the first read takes that many
    bytes and each later one twice the one before, up to CHUNK_BYTES.

    A chunk never ends inside a line nor between the CR and LF of a CRLF pair. Line numbers carry
    from chunk to chunk by counting line endings (LF, CRLF, bare CR) with bytes.count, so that no
    chunk has to be split into lines unless it is read line by line.

    A line still open past MAX_LINE_BYTES is kept to its first MAX_LINE_BYTES + 1 bytes, enough
    to refuse it as too large and show its start, and the rest of it is dropped as it is read:
    memory stays bounded and nothing is copied over and over, whatever its length (a binary
    file, or a small gzip bomb that inflates to one endless line)."""
    # closed in the finally below
    stream: BinaryIO = open(source, "rb") if isinstance(source, str | Path) else source  # noqa: SIM115
    try:
        carry = b""
        line_no = 1
        skipping = False  # inside an over-long line, dropping bytes up to its end
        size = CHUNK_BYTES if first_read is None else min(first_read, CHUNK_BYTES)
        reader = maybe_gunzip(stream) if gunzip else stream
        while True:
            try:
                chunk = reader.read(size)
            except DECOMPRESSION_ERRORS as exc:  # what came before stands; the rest is lost
                raise _Unreadable(line_no, describe(exc)) from None
            size = min(2 * size, CHUNK_BYTES)
            if skipping and chunk:
                end = _first_line_end(chunk)
                if end < 0:
                    continue
                chunk, skipping = chunk[end:], False
            data = carry + chunk if carry else chunk
            if chunk:
                # keep the last (possibly partial) line, and a trailing CR that may precede an LF
                cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
                if cut == len(data) - 1 and data.endswith(b"\r"):
                    cut = max(data.rfind(b"\n", 0, cut), data.rfind(b"\r", 0, cut))
                if cut < 0:
                    carry = data
                    # a trailing CR ends the line (an LF may follow): only an open line is cut
                    if len(carry) > MAX_LINE_BYTES + 1 and not carry.endswith(b"\r"):
                        carry, skipping = carry[: MAX_LINE_BYTES + 1], True
                    continue
                body, carry = data[: cut + 1], data[cut + 1 :]
            else:
                body, carry = data, b""
            if body:
                endings = _line_endings(body)
                yield line_no, body, endings
                line_no += endings
            if not chunk:
                break
    finally:
        if stream is not source:
            stream.close()


def _first_line_end(chunk: bytes) -> int:
    ends = [at for at in (chunk.find(b"\n"), chunk.find(b"\r")) if at >= 0]
    return min(ends, default=-1)


def _line_endings(body: bytes) -> int:
    lf = body.count(b"\n")
    if b"\r" not in body:  # memchr: much cheaper than counting CRLF pairs
        return lf
    return lf + body.count(b"\r") - body.count(b"\r\n")


def _split_lines(body: bytes) -> list[bytes]:
    parts = _NEWLINES.split(body)
    if body.endswith((b"\n", b"\r")):
        parts.pop()  # the empty string after the final line ending
    return parts


def _line_groups(body: bytes, first_line: int, batch_size: int) -> Iterator[tuple[int, list[bytes]]]:
    """The slow path's view of a chunk: its lines, `batch_size` at a time, with their first line."""
    lines = _split_lines(body)
    for start in range(0, len(lines), batch_size):
        yield first_line + start, lines[start : start + batch_size]


def _slices(table: pa.Table, first_line: int, batch_size: int) -> Iterator[InputBatch]:
    """Batches of a chunk read in one go, where row i is line first_line + i."""
    for start in range(0, table.num_rows, batch_size):
        yield InputBatch(slice_rows(table, start, batch_size), [], first_line + start)


def _lines_chunk(body: bytes, first_line: int, batch_size: int, _endings: int) -> Iterator[InputBatch]:
    """`--format lines` for one chunk: decode once and split on str line endings (the count of
    line endings that NDJSON uses is not needed here). A chunk with
    invalid UTF-8, an empty line or a line that may be over the cap goes line by line, so that
    each bad line gets its own dead letter and every batch its true first line."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        messages = text.split("\n")
        if text.endswith("\n"):
            messages.pop()
        # a str line of n characters is at most 4n bytes: only a long one needs its bytes counted
        short = len(body) <= MAX_LINE_BYTES or max(map(len, messages)) <= MAX_LINE_BYTES // 4
        if short and "" not in messages:
            yield from _slices(pa.table({"message": pa.array(messages, pa.string())}), first_line, batch_size)
            return
    for line, lines in _line_groups(body, first_line, batch_size):
        yield _message_lines(lines, line)


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


def _ndjson_chunk(body: bytes, first_line: int, batch_size: int, endings: int) -> Iterator[InputBatch]:
    table = _fast_chunk(body, endings)
    if table is not None:
        yield from _slices(table, first_line, batch_size)
        return
    for line, lines in _line_groups(body, first_line, batch_size):
        yield from _parse_lines(lines, line)


def _fast_chunk(body: bytes, endings: int) -> pa.Table | None:
    """A whole chunk through Arrow's reader without splitting it into lines, or None when only the
    per-line path can read it exactly.

    The fast result is used only when row i is certainly line i and every line is one valid
    object: LF endings only (Arrow does not end a line at a bare CR), no blank or whitespace-only
    line (Arrow skips those, and would then shift row numbers), as many rows as lines (Arrow
    reads `{..} {..}` on one line as two events), no line over the size cap, no line that might
    nest deeper than SAFE_DEPTH, valid UTF-8 with no byte order mark (Arrow copies bytes into
    strings unchecked), and no float that may not be what the file wrote (see
    `_has_inexact_float`)."""
    if b"\r" in body and body.count(b"\r") != body.count(b"\r\n"):
        return None
    if not body.isascii() and (not _valid_utf8(body) or body.startswith(_BOM) or b"\n" + _BOM in body):
        return None
    if _has_blank_line(body) or _has_long_line(body, MAX_LINE_BYTES) or _may_nest_too_deep(body):
        return None
    # with no bare CR, `endings` (from _chunks) is the count of LFs: one per line but a last one
    rows = endings + (not body.endswith(b"\n"))
    table = _read_json(body, rows)
    if table is None or table.num_rows != rows:
        return None
    if _has_inexact_float(table):
        return None
    return table


def _parse_lines(lines: list[bytes], first_line: int) -> Iterator[InputBatch]:
    """A group of lines from a chunk that `_fast_chunk` refused: most groups hold no bad line, so
    Arrow's reader is tried on the group first, under the same checks as a whole chunk (a group
    with a byte order mark, two objects on a line or a NaN must not pass here either), and line
    by line where they fail. Empty lines are no events: they are left out of the group. A line
    that might nest deeper than SAFE_DEPTH is read on its own by the per-line path, and the runs
    of lines around it still go to Arrow."""
    if any(len(line) > SAFE_DEPTH and _may_nest_too_deep(line) for line in lines):
        start = 0
        for index, line in enumerate(lines):
            if len(line) > SAFE_DEPTH and _may_nest_too_deep(line):
                if index > start:
                    yield from _parse_lines(lines[start:index], first_line + start)
                yield from _slow_ndjson([line], first_line + index)
                start = index + 1
        if start < len(lines):
            yield from _parse_lines(lines[start:], first_line + start)
        return
    present = [line for line in lines if line]
    if present:
        table = _fast_chunk(b"\n".join(present), len(present) - 1)
        if table is not None:
            yield InputBatch(table, [], first_line)
            return
    yield from _slow_ndjson(lines, first_line)


def _read_json(blob: bytes, rows: int) -> pa.Table | None:
    """Arrow's reader over `blob` (`rows` lines), or None where it refuses it or where the table
    would be wider or sparser than stream.widths allows.

    Arrow's type inference costs rows x fields, and a blob can hold as many fields as lines, so it
    is never handed more than a probe: the first lines (`_probe_end`) are inferred, and the rest
    is read against their schema, where Arrow stops at the first field or type the schema lacks.
    That read gives the same table inference would: the schema names every field, in the order
    inference would find them, and Arrow converts only integers to floats against it, which
    inference does too. Where it stops, the rest is read in pieces (`_Pieces`)."""
    end = _probe_end(blob)
    probe = _infer(blob[:end]) if end else None
    if probe is None or not fits(len(schema_leaves(probe.schema)), rows, len(blob)):
        return None
    if end == len(blob):
        return probe
    table = _read_against(blob, probe.schema)
    if table is not None:
        return table
    return _Pieces(probe, rows, len(blob)).read(blob, end)


class _Pieces:
    """The rest of a blob after its probe, read PIECE_BYTES at a time against the schema known so
    far. A piece Arrow stops in is halved until the part with the new field or type is small
    enough to infer alone (a probe's size); its schema joins the known one by Arrow's permissive
    promotion, which follows inference's rules (an int and a float field make a float one, null
    joins anything, structs merge their fields, a number and a string refuse), and the parts are
    concatenated the same way. So a field that first comes late costs its chunk a few pieces'
    reading, and a chunk of ever-new keys stops, within its field budget, at a bounded cost."""

    def __init__(self, probe: pa.Table, rows: int, nbytes: int) -> None:
        self.tables = [probe]
        self.schema = probe.schema
        self.rows, self.nbytes = rows, nbytes
        self.probes = PROBES_PER_BLOB

    def read(self, blob: bytes, start: int) -> pa.Table | None:
        while start < len(blob):
            stop = blob.rfind(b"\n", start, start + PIECE_BYTES) + 1
            stop = len(blob) if start + PIECE_BYTES >= len(blob) or stop <= start else stop
            if not self._piece(blob[start:stop]):
                return None
            start = stop
        try:
            return pa.concat_tables(self.tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return None

    def _piece(self, piece: bytes) -> bool:
        table = _read_against(piece, self.schema)
        if table is not None:
            self.tables.append(table)
            return True
        self.probes -= 1
        end = _probe_end(piece)
        if self.probes < 0 or end == 0:
            return False
        if end == len(piece):
            inferred = _infer(piece)
            return inferred is not None and self._join(inferred)
        middle = piece.rfind(b"\n", 0, len(piece) // 2) + 1 or end
        return self._piece(piece[:middle]) and self._piece(piece[middle:])

    def _join(self, table: pa.Table) -> bool:
        try:
            schema = pa.unify_schemas([self.schema, table.schema], promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            return False  # a number and a string in one field: inference refuses it too
        if not fits(len(schema_leaves(schema)), self.rows, self.nbytes):
            return False
        self.schema = schema
        self.tables.append(table)
        return True


def _probe_end(blob: bytes) -> int:
    """Where the probe ends: whole lines, at most PROBE_BYTES (or the first line), holding few
    enough keys that inferring them is cheap whatever they are: rows x keys at most PROBE_CELLS.
    0 when even the first line holds more keys than that: the per-line path reads it."""
    end = len(blob)
    if end > PROBE_BYTES:
        end = blob.rfind(b"\n", 0, PROBE_BYTES) + 1 or blob.find(b"\n") + 1 or len(blob)
    while True:
        rows = blob.count(b"\n", 0, end - 1) + 1
        keys = _keys_at_most(blob, end)
        if keys <= PROBE_KEYS and rows * max(keys, 1) <= PROBE_CELLS:
            return end
        if rows == 1:
            return 0
        end = blob.rfind(b"\n", 0, end // 2) + 1 or blob.find(b"\n") + 1


def _keys_at_most(blob: bytes, end: int) -> int:
    """An upper bound on the keys in blob[:end]: every key is a string followed by a colon."""
    whole = _as_binary_array(memoryview(blob)[:end])
    return int(pc.count_substring_regex(whole, _KEY_END)[0].as_py())


def _read_against(blob: bytes, schema: pa.Schema) -> pa.Table | None:
    """`blob` read with `schema`; None where a line has a field or a type it lacks."""
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    try:
        return pa_json.read_json(io.BytesIO(blob), read_options=_read_options(len(blob)),
                                 parse_options=options)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


def _infer(blob: bytes) -> pa.Table | None:
    """Arrow's reader with type inference, or None where it refuses `blob`. Where Arrow inferred
    timestamps from ISO strings the blob is read again with those columns forced to strings:
    events keep the strings the file holds."""
    read_options = _read_options(len(blob))
    try:
        table = pa_json.read_json(io.BytesIO(blob), read_options=read_options)
        if _too_deep(table.schema):  # first: the other schema walks recurse per level
            return None
        if _has_inferred_time(table.schema):
            schema = pa.schema([f.with_type(_time_as_string(f.type)) for f in table.schema])
            table = pa_json.read_json(io.BytesIO(blob), read_options=read_options,
                                      parse_options=pa_json.ParseOptions(explicit_schema=schema))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if _has_inferred_time(table.schema) or _too_deep(table.schema):
        return None
    return table


def _read_options(size: int) -> pa_json.ReadOptions:
    """One block, no threads of Arrow's own: chunks are parsed side by side instead (see
    read_events and stream.prefetch), which scales better than Arrow's per-call threads."""
    return pa_json.ReadOptions(use_threads=False, block_size=max(size + 1, 1 << 16))


@functools.cache
def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _has_blank_line(body: bytes) -> bool:
    first_end = body.find(b"\n")
    last_start = body.rfind(b"\n") + 1
    return (not body[: first_end if first_end >= 0 else len(body)].strip()
            or (last_start < len(body) and not body[last_start:].strip())
            or _has_inner_blank_line(body))


def _has_inner_blank_line(body: bytes) -> bool:
    """`_INNER_BLANK_LINE` searched by Arrow (RE2) over the chunk's own bytes, without a copy: a
    third of the time `re` takes, and with the GIL released, so the other parsing threads and
    the pipeline keep going (`re` held it for ~3 ms per 8 MiB chunk)."""
    return bool(pc.match_substring_regex(_as_binary_array(body), _INNER_BLANK_LINE)[0].as_py())


def _as_binary_array(data: bytes | memoryview) -> pa.Array:
    """`data` as a one-value Arrow binary array, without a copy, for Arrow's regex kernels."""
    offsets = pa.array([0, len(data)], pa.int64()).buffers()[1]
    return pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])


def _valid_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _long_lines(body: bytes, limit: int) -> Iterator[tuple[int, int]]:
    """Start and end of each line of `body` over `limit` bytes (a CR before its LF counted, which
    only sends a line at the limit to the exact path). Jumps to the last LF within reach, so
    ordinary lines cost a few look-ups per `limit` bytes rather than one each."""
    pos, end = 0, len(body)
    while end - pos > limit:
        newline = body.rfind(b"\n", pos, pos + limit + 1)
        if newline >= 0:
            pos = newline + 1
            continue
        line_end = body.find(b"\n", pos + limit)
        line_end = end if line_end < 0 else line_end
        yield pos, line_end
        pos = line_end + 1


def _has_long_line(body: bytes, limit: int) -> bool:
    return any(True for _ in _long_lines(body, limit))


def _may_nest_too_deep(body: bytes) -> bool:
    """Whether some line of `body` might nest deeper than SAFE_DEPTH: only a line longer than
    SAFE_DEPTH bytes can, and only if it holds more `[` and `{` than that."""
    return any(body.count(b"[", start, end) + body.count(b"{", start, end) > SAFE_DEPTH
               for start, end in _long_lines(body, SAFE_DEPTH))


def _has_inexact_float(table: pa.Table) -> bool:
    """A float, at any depth, that the per-line parse would read differently: NaN or Infinity
    (Arrow's reader accepts them; JSON does not), or a magnitude of 2**53 or more. Arrow turns an
    integer beyond int64 into a float, and every integer of a column that also holds a float;
    past 2**53 a float is no longer the integer the file wrote (12345678901234567890 would come
    out as 12345678901234567168). The per-line parse keeps such integers exact (primitives.batch
    tags them as JSON). A true float that large only costs its chunk the slower path."""
    def walk(array: pa.Array) -> bool:
        t = array.type
        if pa.types.is_floating(t):
            return bool(pc.any(pc.invert(pc.less(pc.abs(array), _EXACT_INTEGERS))).as_py())
        if pa.types.is_struct(t):
            return any(walk(array.field(i)) for i in range(t.num_fields))
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return walk(array.flatten())
        return False

    return any(walk(chunk) for column in table.columns if _has_float(column.type) for chunk in column.chunks)


def _has_float(t: pa.DataType) -> bool:
    if pa.types.is_floating(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_float(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return _has_float(t.value_type)
    return False


def _is_time(t: pa.DataType) -> bool:
    return bool(pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_time(t))


def _time_as_string(t: pa.DataType) -> pa.DataType:
    if _is_time(t):
        return pa.string()
    if pa.types.is_struct(t):
        fields = [t.field(i) for i in range(t.num_fields)]
        return pa.struct([f.with_type(_time_as_string(f.type)) for f in fields])
    if pa.types.is_list(t):
        return pa.list_(t.value_field.with_type(_time_as_string(t.value_type)))
    if pa.types.is_large_list(t):
        return pa.large_list(t.value_field.with_type(_time_as_string(t.value_type)))
    return t


def _has_inferred_time(schema: pa.Schema) -> bool:
    def walk(t: pa.DataType) -> bool:
        if _is_time(t):
            return True
        if pa.types.is_struct(t):
            return any(walk(t.field(i).type) for i in range(t.num_fields))
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            return walk(t.value_type)
        return False

    return any(walk(f.type) for f in schema)


def _too_deep(schema: pa.Schema) -> bool:
    """Whether a field nests MAX_DEPTH levels or more. Walked with a stack of its own, not by
    recursion: Arrow hands over up to SAFE_DEPTH levels."""
    pending = [(f.type, 0) for f in schema]  # a type, and how many containers hold it
    while pending:
        t, above = pending.pop()
        if pa.types.is_struct(t):
            inner = [t.field(i).type for i in range(t.num_fields)]
        elif pa.types.is_list(t) or pa.types.is_large_list(t):
            inner = [t.value_type]
        else:
            continue
        if above + 1 >= MAX_DEPTH:  # this container is level above + 1
            return True
        pending.extend((child, above + 1) for child in inner)
    return False


def _slow_ndjson(lines: list[bytes], first_line: int) -> Iterator[InputBatch]:
    """Line by line: an event that would take its table past the field budget (stream.widths) is a
    dead letter, and one that would make it too sparse starts the next table."""
    events: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    budget = FieldBudget()
    table_line = first_line
    for offset, raw in enumerate(lines):
        if not raw or raw.isspace():
            continue
        error = _line_too_large(raw) or _nesting_too_deep(raw)
        if error is None:
            try:
                value = orjson.loads(raw)
                if _LONG_DIGITS.search(raw):  # maybe an integer orjson made a float: exact ints
                    value = json.loads(raw)
            except orjson.JSONDecodeError as exc:
                error = _json_error(raw, exc)
            else:
                if isinstance(value, dict):
                    leaves = event_leaves(value)
                    placed = budget.place(leaves, len(raw))
                    if placed != "refused":
                        if placed == "starts":
                            yield InputBatch(from_events(events), dead, table_line)
                            events, dead, table_line = [], [], first_line + offset
                        events.append(value)
                        continue
                    error = ("too_many_fields", too_many_fields(leaves, budget))
                else:
                    error = ("not_an_object", f"line holds a JSON {type(value).__name__}, not an object; "
                         "send one JSON object per line")
        dead.append(_dead(first_line + offset, raw, *error))
    yield InputBatch(from_events(events), dead, table_line)


def event_tables(events: list[dict[str, Any]]) -> Iterator[InputBatch]:
    """Events given as values (an agent's inline test events) as tables, under the same field
    budget as events read from input; the dead letter of the n-th event says `event n`."""
    batch: list[dict[str, Any]] = []
    dead: list[DeadLetter] = []
    budget = FieldBudget()
    for number, event in enumerate(events, start=1):
        leaves = event_leaves(event)
        try:
            text = orjson.dumps(event, default=str)
        except TypeError:  # a lone surrogate: from_events says where, as the agent's error
            text = json.dumps(event, default=str).encode()
        placed = budget.place(leaves, len(text))
        if placed == "refused":
            preview = text[:200].decode("utf-8", "replace")
            dead.append(DeadLetter(step="input", reason="too_many_fields",
                                   message=f"event {number}: {too_many_fields(leaves, budget)}",
                                   event={"raw": preview, "event": number}))
            continue
        if placed == "starts":
            yield InputBatch(from_events(batch), dead)
            batch, dead = [], []
        batch.append(event)
    yield InputBatch(from_events(batch), dead)


def _json_error(raw: bytes, exc: orjson.JSONDecodeError) -> tuple[str, str]:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return "invalid_utf8", f"line is not valid UTF-8 (byte {bad.start}); send UTF-8 text"
    return "bad_json", f"malformed JSON: {exc.msg} at column {exc.colno}"


def _line_too_large(raw: bytes) -> tuple[str, str] | None:
    if len(raw) > MAX_LINE_BYTES:
        # a line read on past the cap was kept to MAX_LINE_BYTES + 1 bytes (_chunks): size unknown
        size = f"is {len(raw):,} bytes" if len(raw) > MAX_LINE_BYTES + 1 else "is over the limit"
        return "too_large", f"line {size}; the limit is {MAX_LINE_BYTES:,} bytes per event"
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
