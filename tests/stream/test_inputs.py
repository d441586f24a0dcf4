"""Input files become Arrow batches; every bad line becomes a dead letter with its line number."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest

from primitives.batch import to_events
from stream import inputs
from stream.inputs import read_all, read_events

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _read(data: bytes, fmt: str = "ndjson", **kwargs):  # type: ignore[no-untyped-def]
    return read_all(io.BytesIO(data), fmt, **kwargs)  # type: ignore[arg-type]


def test_lines_format_splits_on_lf_crlf_and_bare_cr() -> None:
    batch = _read(b"one\r\ntwo\rthree\nfour", "lines")
    assert batch.table.column("message").to_pylist() == ["one", "two", "three", "four"]
    assert batch.dead_letters == []


def test_crlf_split_across_read_chunks_is_one_line_ending(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "CHUNK_BYTES", 4)
    batch = _read(b"abc\r\ndef\r\nghi\r\n", "lines")
    assert batch.table.column("message").to_pylist() == ["abc", "def", "ghi"]


def test_apache_log_mixing_crlf_and_cr_loses_no_line() -> None:
    batch = read_all(SHARED / "loghub" / "Apache_2k.log", "lines")
    messages = batch.table.column("message").to_pylist()
    assert len(messages) == 2000
    assert not any("\r" in m or "\n" in m for m in messages)


def test_ndjson_fast_path_keeps_values() -> None:
    rows = [{"a": i, "s": f"x{i}", "nested": {"k": i}} for i in range(100)]
    batch = _read(("\n".join(json.dumps(r) for r in rows) + "\n").encode())
    assert batch.table.num_rows == 100
    assert batch.table.slice(3, 1).to_pylist()[0]["nested"] == {"k": 3}


def test_iso_timestamps_stay_the_strings_the_file_holds() -> None:
    data = b'{"ts": "2024-01-01 00:00:00"}\n{"ts": "2024-01-01 00:00:01"}\n'
    batch = _read(data)
    assert batch.table.column("ts").to_pylist() == ["2024-01-01 00:00:00", "2024-01-01 00:00:01"]


def test_bad_lines_become_dead_letters_and_good_lines_are_kept() -> None:
    deep = b"[" * 2000 + b"]" * 2000
    data = b"\n".join([
        b'{"ok": 1}',
        b'{"broken": ',
        b'\xff\xfe{"bad": "utf8"}',
        b"[1, 2, 3]",
        b'{"nested": ' + deep + b"}",
        b'{"big": "' + b"x" * (inputs.MAX_LINE_BYTES + 10) + b'"}',
        b'{"ok": 2}',
    ])
    batch = _read(data)
    assert batch.table.column("ok").to_pylist() == [1, 2]
    reasons = {d.line: d.reason for d in batch.dead_letters}
    assert reasons == {2: "bad_json", 3: "invalid_utf8", 4: "not_an_object", 5: "too_deep", 6: "too_large"}
    assert all(d.message.startswith(f"line {d.line}: ") for d in batch.dead_letters)


def test_a_field_changing_type_between_events_does_not_lose_events() -> None:
    batch = _read(b'{"v": 1}\n{"v": "one"}\n{"v": {"x": 1}}\n')
    assert batch.table.num_rows == 3
    assert batch.dead_letters == []


def test_limit_stops_after_n_events() -> None:
    data = b"".join(b'{"i": %d}\n' % i for i in range(1000))
    batches = list(read_events(io.BytesIO(data), "ndjson", limit=250, batch_size=100))
    assert [b.table.num_rows for b in batches] == [100, 100, 50]


class _CountingReader(io.BytesIO):
    """A file that records how many bytes were asked of it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked = 0

    def read(self, size: int | None = -1, /) -> bytes:
        out = super().read(size)
        self.asked += len(out)
        return out


def _numbered_lines(count: int) -> bytes:
    return b"".join(b'{"i": %d, "pad": "%s"}\n' % (i, b"x" * (i % 300)) for i in range(count))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("limit", [0, 1, 7, 1000])
def test_a_limit_reads_about_what_it_needs(workers: int, limit: int) -> None:
    """`--limit N` on a file bigger than a chunk: the events are the first N, and the reader
    asks for the first read's size and, parsing ahead, a few doublings of it, not whole chunks."""
    data = _numbered_lines(60_000)
    assert len(data) > inputs.CHUNK_BYTES
    source = _CountingReader(data)
    batches = read_events(source, limit=limit, workers=workers, gunzip=False)  # no 2-byte look first
    got = [row for batch in batches for row in to_events(batch.table)]
    assert [row["i"] for row in got] == list(range(limit))
    first = max(inputs.MIN_READ_BYTES, limit * inputs.TYPICAL_EVENT_BYTES)
    assert source.asked <= first * (2 ** (workers + 1) - 1) < len(data) // 2


@pytest.mark.parametrize("limit", [5000, 59_999, 60_000, 10**9])
def test_a_limit_gives_the_first_events_of_a_full_read(limit: int) -> None:
    data = _numbered_lines(60_000)
    got = [row["i"] for batch in read_events(io.BytesIO(data), limit=limit) for row in to_events(batch.table)]
    assert got == list(range(min(limit, 60_000)))


def test_empty_input_gives_no_events() -> None:
    assert _read(b"").table.num_rows == 0
    assert _read(b"\n\r\n\r", "lines").table.num_rows == 0


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown input format 'csv'"):
        list(read_events(io.BytesIO(b""), "csv"))  # type: ignore[arg-type]


def _no_slow_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(lines: list[bytes], first_line: int) -> None:
        raise AssertionError(f"per-line path taken at line {first_line}")

    monkeypatch.setattr(inputs, "_slow_ndjson", refuse)
    monkeypatch.setattr(inputs, "_split_lines", refuse)


def test_clean_chunks_take_the_fast_path_with_true_first_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_slow_path(monkeypatch)
    monkeypatch.setattr(inputs, "CHUNK_BYTES", 100)
    data = b"".join(b'{"i": %d}\r\n' % i for i in range(50))
    batches = list(read_events(io.BytesIO(data), "ndjson", batch_size=3))
    rows = [(b.first_line, b.table.column("i").to_pylist()) for b in batches]
    assert all(first == values[0] + 1 for first, values in rows)
    assert [v for _, values in rows for v in values] == list(range(50))


def test_a_bad_line_in_a_later_chunk_reports_its_true_line_number(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "CHUNK_BYTES", 64)
    lines = [b'{"i": %d}' % i for i in range(40)]
    lines[33] = b'{"i": 33,'
    # mixed endings before the bad line: each counts as one line
    data = b"\r\n".join(lines[:10]) + b"\r" + b"\n".join(lines[10:]) + b"\n"
    batch = _read(data)
    assert [(d.line, d.reason) for d in batch.dead_letters] == [(34, "bad_json")]
    assert batch.table.num_rows == 39


def test_timestamp_looking_strings_stay_strings_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_slow_path(monkeypatch)
    data = b'{"ts": "2024-01-01 00:00:00", "n": {"d": "2024-01-02"}, "l": ["2024-01-03T00:00:00"]}\n' * 3
    table = _read(data).table
    assert table.column("ts").to_pylist() == ["2024-01-01 00:00:00"] * 3
    assert table.column("n").to_pylist() == [{"d": "2024-01-02"}] * 3
    assert table.column("l").to_pylist() == [["2024-01-03T00:00:00"]] * 3


def test_what_arrow_accepts_but_json_does_not_is_still_a_dead_letter() -> None:
    # Arrow's reader takes two objects on one line (here balanced by a whitespace-only line that
    # it skips), NaN, and invalid UTF-8 inside a string; each is one bad line with its number.
    data = b'{"a": 1} {"a": 2}\n   \n{"a": 3}\n{"a": NaN}\n{"a": "\xff"}\n{"a": 4}\n'
    batch = _read(data)
    assert batch.table.column("a").to_pylist() == [3, 4]
    assert [(d.line, d.reason) for d in batch.dead_letters] == [(1, "bad_json"), (4, "bad_json"),
                                                                 (5, "invalid_utf8")]


def test_lines_format_reports_invalid_utf8_in_a_later_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inputs, "CHUNK_BYTES", 16)
    data = b"alpha\r\nbeta\rgamma\ndelta\nep\xffsilon\nzeta\n"
    batch = _read(data, "lines")
    assert batch.table.column("message").to_pylist() == ["alpha", "beta", "gamma", "delta", "zeta"]
    assert [(d.line, d.reason) for d in batch.dead_letters] == [(5, "invalid_utf8")]


def test_lines_over_the_cap_are_refused_on_both_formats() -> None:
    big = b"x" * (inputs.MAX_LINE_BYTES + 1)
    assert [d.line for d in _read(b"a\n" + big + b"\nb\n", "lines").dead_letters] == [2]
    exact = b'{"s": "' + b"y" * (inputs.MAX_LINE_BYTES - 9) + b'"}'
    batch = _read(b'{"s": "a"}\n' + exact + b"\n" + b'{"s": "' + big + b'"}\n')
    assert batch.table.num_rows == 2
    assert [(d.line, d.reason) for d in batch.dead_letters] == [(3, "too_large")]


def test_integers_beyond_what_a_float_holds_keep_their_exact_values() -> None:
    # Arrow's reader makes an integer beyond int64 a float, and with it every integer of its column
    # (1 would become 1.0), and past 2**53 a float is not the integer the file wrote. Such a chunk
    # goes to the per-line parse, which keeps them exact.
    big, beyond_float = 12345678901234567890, 9007199254740993  # > int64 max; 2**53 + 1
    data = (b'{"id": 1, "n": {"v": 2}, "l": [3]}\n'
            b'{"id": %d, "n": {"v": %d}, "l": [%d]}\n'
            b'{"id": 1.5, "x": %d}\n' % (big, -big, big, beyond_float))
    rows = to_events(_read(data).table)
    assert [row["id"] for row in rows] == [1, big, 1.5]
    assert type(rows[0]["id"]) is int
    assert [row["n"] and row["n"]["v"] for row in rows] == [2, -big, None]
    assert [row["l"] for row in rows] == [[3], [big], None]
    assert rows[2]["x"] == beyond_float


def test_floats_within_exact_range_stay_on_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    _no_slow_path(monkeypatch)
    data = b'{"f": 1.5, "i": 9007199254740992, "g": -9007199254740991.0}\n{"f": 2, "i": 1, "g": 0.25}\n'
    table = _read(data).table
    assert table.column("f").to_pylist() == [1.5, 2.0]  # int and float in one field: float64
    assert table.column("i").to_pylist() == [9007199254740992, 1]
    assert table.column("g").to_pylist() == [-9007199254740991.0, 0.25]


def test_integers_up_to_a_floats_range_are_exact_and_longer_ones_dead_letters() -> None:
    wide = int("9" * 300)
    batch = _read(b'{"a": 1}\n{"a": ' + b"9" * 4400 + b'}\n{"a": %d}\n' % wide)
    assert to_events(batch.table) == [{"a": 1}, {"a": wide}]
    assert [(d.line, d.reason) for d in batch.dead_letters] == [(2, "bad_json")]
    assert batch.dead_letters[0].event["raw"].startswith('{"a": 999')  # the line is kept


@pytest.mark.parametrize("seed", range(200))
def test_the_blank_line_check_finds_what_python_re_finds(seed: int) -> None:
    """The fast path's inner-blank-line check runs in Arrow's RE2 (no GIL, no copy); it must
    answer as Python's `re` does for the same pattern, on any mix of line ends, whitespace,
    look-alike whitespace (VT, FF, NBSP) and multi-byte UTF-8."""
    import random
    import re

    rng = random.Random(seed)
    pieces = [b"\n", b"\n", b" ", b"\t", b"\r", b"\r\n", b"a", b'{"k": 1}', b"\xc3\xa9", b"\xc2\xa0",
              b"\x0b", b"\x0c", b"\x00", b"\\n"]
    body = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
    expected = re.search(rb"\n[ \t\r]*\n", body) is not None
    assert inputs._has_inner_blank_line(body) is expected, body


class _OneEndlessLine(io.RawIOBase):
    """`size` bytes of one line with no end in sight, then two good lines; made as it is read."""

    def __init__(self, size: int, ending: bytes) -> None:
        self.left, self.tail = size, ending + b'{"a": 1}\n{"a": 2}\n'

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.left:
            n = min(len(buffer), self.left)
            buffer[:n] = b"x" * n
            self.left -= n
            return n
        n = min(len(buffer), len(self.tail))
        buffer[:n], self.tail = self.tail[:n], self.tail[n:]
        return n


@pytest.mark.parametrize("fmt", ["ndjson", "lines"])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_an_endless_line_costs_bounded_memory_and_only_itself(fmt: str, ending: bytes) -> None:
    """A binary file, or a small gzip bomb, can hold one line of hundreds of MB: it must become
    one too_large dead letter, read in bounded memory, and the lines after it keep their numbers."""
    import tracemalloc

    size = 96 << 20
    tracemalloc.start()
    try:
        batches = list(read_events(cast(BinaryIO, _OneEndlessLine(size, ending)), fmt))  # type: ignore[arg-type]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size // 2  # the whole line once would be 96 MB; chunks are 8 MB
    dead = [(d.line, d.reason, d.message) for batch in batches for d in batch.dead_letters]
    assert [(line, reason) for line, reason, _ in dead] == [(1, "too_large")]
    assert "over the limit" in dead[0][2]
    rows = [row for batch in batches for row in to_events(batch.table)]
    expected = [{"a": 1}, {"a": 2}] if fmt == "ndjson" else [{"message": '{"a": 1}'}, {"message": '{"a": 2}'}]
    assert rows == expected


_DEEP_PROBE = r'''
import io, json, sys, tempfile
from stream.ingest import ingest_bytes
from stream.inputs import read_events
from stream.log import EmbeddedLog

out = []
for depth in (63, 64, 1000, 5000, 20000, 100000):
    for closed in (True, False):
        deep = b'{"a": ' + b"[" * depth + (b"]" * depth + b"}" if closed else b"")
        # good lines around it, so that its chunk would otherwise take Arrow's fast path
        data = b'{"ok": 1}\n' + deep + b'\n{"ok": 2}\n'
        for workers in (1, 2):
            batches = list(read_events(io.BytesIO(data), workers=workers))
            out.append([depth, closed, workers, [r.get("ok") for b in batches for r in b.table.to_pylist()],
                        [[d.line, d.reason] for b in batches for d in b.dead_letters]])
with tempfile.TemporaryDirectory() as tmp, EmbeddedLog(tmp) as log:
    body = b'{"ok": 1}\n' + b'{"a": ' + b"[" * 50000 + b"]" * 50000 + b'}\n{"ok": 2}\n'
    result = ingest_bytes(log, "acme", "web", body, content_type="application/x-ndjson")
    out.append(["ingest", result.accepted, result.rejected])
print(json.dumps(out))
'''


def test_deep_nesting_is_a_dead_letter_and_never_reaches_arrows_stack() -> None:
    """Arrow's JSON reader recurses per nesting level: 20,000 levels overflowed its stack and
    killed the process (`logbus test`, and the HTTP ingest server with it). Every depth must end
    as a too_deep dead letter, or bad_json when never closed, with the lines around it kept. Run
    in a child process: a regression is a crash, reported here as one."""
    done = subprocess.run([sys.executable, "-c", _DEEP_PROBE], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"the reader crashed (exit {done.returncode}): {done.stderr[-2000:]}"
    *reads, ingest = json.loads(done.stdout)
    for depth, closed, workers, kept, dead in reads:
        accepted = depth == 63 and closed  # 64 levels with the object itself: the limit, allowed
        assert kept == ([1, None, 2] if accepted else [1, 2]), (depth, closed, workers)
        expected = None if accepted else "too_deep" if depth >= 64 else "bad_json"
        assert dead == ([[2, expected]] if expected else []), (depth, closed, workers)
    assert ingest == ["ingest", 2, 1]


@pytest.mark.parametrize(("lists", "inner", "allowed"), [
    (62, b"{}", True), (63, b"{}", False),      # an empty object at the bottom is a level too
    (62, b'{"x": 1}', True), (63, b'{"x": 1}', False),
    (63, b"1", True), (64, b"1", False),
])
def test_the_depth_limit_is_the_same_on_the_fast_path_and_line_by_line(
        lists: int, inner: bytes, allowed: bool) -> None:
    deep = b'{"a": ' + b"[" * lists + inner + b"]" * lists + b"}"
    good = b'{"ok": 1}'
    fast = read_all(io.BytesIO(b"\n".join([good, deep, good]) + b"\n"))  # a chunk Arrow takes
    slow = read_all(io.BytesIO(b"\n".join([good, deep, b"{broken", good]) + b"\n"))  # line by line
    for batch, bad in ((fast, []), (slow, [(3, "bad_json")])):
        dead = [(d.line, d.reason) for d in batch.dead_letters]
        assert dead == ([] if allowed else [(2, "too_deep")]) + bad
        assert batch.table.num_rows == (3 if allowed else 2)
