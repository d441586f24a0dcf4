"""Gzip-compressed event files (rotated logs) read as the text they hold, in `logbus test` (the
reader) and `logbus ingest` (the file client); damaged gzip data costs only what follows it."""

from __future__ import annotations

import gzip
import io
import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import orjson
import pytest

from primitives.batch import to_events
from stream import inputs
from stream.compressed import maybe_gunzip
from stream.ingest_client import MIN_CHUNK_BYTES, IngestClientError, ingest_file_local
from stream.inputs import read_events
from stream.log import EmbeddedLog

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def _read(source: object, **kwargs: object) -> tuple[list[dict[str, object]], list[tuple[int | None, str]]]:
    batches = list(read_events(source, **kwargs))  # type: ignore[arg-type]
    events = [row for batch in batches for row in to_events(batch.table)]
    return events, [(d.line, d.reason) for batch in batches for d in batch.dead_letters]


def _ndjson(count: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    lines = [orjson.dumps({"i": i, "pad": "x" * rng.randint(0, 400)}) for i in range(count)]
    lines[count // 3] = b"{broken"  # a bad line keeps its line number through decompression
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("workers", [1, 2])
def test_a_gzipped_file_reads_as_the_plain_one(tmp_path: Path, workers: int,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "CHUNK_BYTES", 64 << 10)  # many chunks
    data = _ndjson(5000)
    plain, packed = tmp_path / "e.ndjson", tmp_path / "e.ndjson.gz"
    plain.write_bytes(data)
    packed.write_bytes(gzip.compress(data))
    assert _read(packed, workers=workers) == _read(plain, workers=workers)
    assert _read(io.BytesIO(gzip.compress(data)), workers=workers) == _read(plain, workers=workers)
    assert _read(plain)[1] == [(5000 // 3 + 1, "bad_json")]


def test_the_name_does_not_decide_only_the_bytes_do(tmp_path: Path) -> None:
    data = _ndjson(100)
    plain_named_gz, gzip_named_plain = tmp_path / "a.gz", tmp_path / "b.ndjson"
    plain_named_gz.write_bytes(data)
    gzip_named_plain.write_bytes(gzip.compress(data))
    assert _read(plain_named_gz) == _read(gzip_named_plain) == _read(io.BytesIO(data))


def test_concatenated_gzip_members_read_whole(tmp_path: Path) -> None:
    """`cat a.gz b.gz > both.gz` (and logrotate's delaycompress runs) give several members."""
    first, second = _ndjson(50, seed=1), _ndjson(70, seed=2)
    both = tmp_path / "both.gz"
    both.write_bytes(gzip.compress(first) + gzip.compress(second))
    assert _read(both)[0] == _read(io.BytesIO(first + second))[0]


@pytest.mark.parametrize("chunk", [16 << 10, None])  # None: the reader's own 8 MiB chunks
@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_gzip_keeps_the_events_before_it_and_says_where_it_stopped(
        tmp_path: Path, damage: str, chunk: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk is not None:
        monkeypatch.setattr(inputs, "CHUNK_BYTES", chunk)
    data = _ndjson(20_000, seed=3)
    packed = bytearray(gzip.compress(data))
    middle = len(packed) // 2
    if damage == "truncate":
        del packed[middle:]
    else:
        for offset in range(middle, middle + 64):
            packed[offset] ^= 0xFF
    path = tmp_path / "damaged.gz"
    path.write_bytes(bytes(packed))
    events, dead = _read(path, workers=2)
    expected, _ = _read(io.BytesIO(data))
    # about half the text comes before the damage; at most a step of it (16 KiB) is lost with it
    assert len(expected) * 0.4 < len(events) < len(expected)
    if damage == "truncate":
        assert events == expected[: len(events)]  # a prefix, every event exact
    else:  # deflate has no per-block checksum: text shortly before the detection can be wrong
        assert events[:5000] == expected[:5000]  # the damage sits about halfway through
    stops = [(line, reason) for line, reason in dead if reason == "bad_gzip"]
    assert len(stops) == 1 and dead[-1] == stops[0]
    (line, _), = stops
    assert line is not None and len(events) < line <= len(expected) + 1


def test_gzip_is_not_undone_where_the_caller_says_so() -> None:
    """The HTTP ingest core reads bodies Content-Encoding already decoded, under its own bound."""
    packed = gzip.compress(_ndjson(10))
    events, dead = _read(io.BytesIO(packed), gunzip=False)
    assert events == [] and dead and {reason for _, reason in dead} <= {"invalid_utf8", "bad_json"}


class _Pipe(io.RawIOBase):
    """A stream that can neither peek nor seek, as a raw pipe."""

    def __init__(self, data: bytes) -> None:
        self.data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self.data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_a_stream_that_cannot_peek_or_seek_is_taken_as_it_is() -> None:
    pipe = cast(BinaryIO, _Pipe(gzip.compress(b'{"a": 1}\n')))
    assert maybe_gunzip(pipe) is pipe
    buffered = cast(BinaryIO, io.BufferedReader(_Pipe(gzip.compress(b'{"a": 1}\n'))))
    assert maybe_gunzip(buffered).read() == b'{"a": 1}\n'  # standard input is buffered: peek


def _without_timing(steps: Any) -> list[dict[str, Any]]:
    return [{k: v for k, v in step.items() if k != "seconds"} for step in steps]


def test_logbus_test_reads_a_rotated_gzipped_log_like_the_plain_one(tmp_path: Path) -> None:
    log = DATA / "web_access.log"
    packed = tmp_path / "web_access.log.1.gz"
    packed.write_bytes(gzip.compress(log.read_bytes()))

    def report(events: str, stdin: bytes | None = None) -> dict[str, Any]:
        done = subprocess.run([sys.executable, "-m", "server.cli", "test", "examples/web_scanners.yaml",
                               "--events", events, "--format", "lines", "--json"], cwd=ROOT,
                              input=stdin, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    plain, from_gz, from_stdin = report(str(log)), report(str(packed)), report("-", packed.read_bytes())
    for key in ("events_read", "outputs", "signals", "dead_letters", "dead_letter_reasons"):
        assert from_gz[key] == plain[key] == from_stdin[key], key
    assert _without_timing(from_gz["steps"]) == _without_timing(plain["steps"]) == _without_timing(
        from_stdin["steps"])
    assert plain["signals"] and plain["events_read"] == 2660


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    with EmbeddedLog(tmp_path / "log") as log:
        yield log


def test_ingest_sends_a_gzipped_file_as_its_text(log: EmbeddedLog, tmp_path: Path) -> None:
    data = _ndjson(3000, seed=4)
    packed = tmp_path / "events.ndjson.gz"
    packed.write_bytes(gzip.compress(data))
    summary = ingest_file_local(log, "acme", "web", packed, "ndjson", chunk_bytes=MIN_CHUNK_BYTES)
    assert (summary.accepted, summary.rejected) == (2999, 1)
    assert [(e["line"], e["reason"]) for e in summary.errors] == [(3000 // 3 + 1, "bad_json")]
    assert summary.bytes_total is None  # a compressed file's size says nothing of its text
    again = ingest_file_local(log, "acme", "web", packed, "ndjson", chunk_bytes=MIN_CHUNK_BYTES)
    assert again.duplicates == again.requests == summary.requests  # same text, same keys


def test_ingest_of_damaged_gzip_stops_with_a_clear_error_after_sending_what_came_before(
        log: EmbeddedLog, tmp_path: Path) -> None:
    data = _ndjson(20_000, seed=5)
    packed = tmp_path / "cut.gz"
    packed.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])
    with pytest.raises(IngestClientError, match="cut short"):
        ingest_file_local(log, "acme", "web", packed, "ndjson", chunk_bytes=MIN_CHUNK_BYTES)
    table, _ = log.read("acme", "web", log.start_offset("acme", "web"), 1_000_000)
    sent = [row["i"] for row in table.to_pylist()]
    good = [i for i in range(20_000) if i != 20_000 // 3]  # the broken line is not sent
    assert 0 < len(sent) < len(good) and sent == good[: len(sent)]
