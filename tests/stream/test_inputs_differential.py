"""The NDJSON reader against a plain reference: random files of hostile lines, cut into chunks of
random sizes, must give what a per-line `json.loads` gives -- the same events with the same values,
and the same dead letters with the same line numbers. The reader's fast path (Arrow's reader over
whole chunks) is an optimisation; this is the test that it never changes a value or loses a line."""

from __future__ import annotations

import io
import json
import math
import random
import re
from typing import Any

import pytest

from primitives.batch import to_events
from stream import inputs

BIG = 12345678901234567890
LINES: list[bytes] = [
    b'{"a": 1, "s": "x"}',
    b'{"a": 2.5, "s": "y", "b": true}',
    b'{"a": "text now", "n": {"v": 1, "w": [1, 2]}}',
    b'{"a": %d}' % BIG,  # beyond int64: Arrow would make it a float
    b'{"a": -%d, "n": {"v": -%d}}' % (BIG, BIG),  # beyond what orjson keeps an integer
    b'{"a": 9007199254740993, "f": 0.1}',  # 2**53 + 1
    b'{"ts": "2024-01-01T00:00:00Z", "d": "2024-01-02"}',  # Arrow would infer timestamps
    b'{"s": "caf\\u00e9 \\"q\\" \\\\ \xc3\xa9"}',
    b'{"a": 1, "a": 2}',  # duplicate key: the last one counts
    b'{"l": [], "o": {}, "z": null}',
    b'{"a": NaN}',  # JSON has no NaN
    b'{"a": 1e400}',  # a number no float holds
    b'{"s": "\\ud800"}',  # a lone surrogate: no Unicode string
    b'{"s": "\\ud83d\\ude00 \\u0000", "e": 1E2}',  # a surrogate pair, NUL, an exponent
    b'{"a": 1} {"a": 2}',  # two objects on one line
    b'{"a": 1,',  # truncated
    b'[1, 2]',  # not an object
    b'42',
    b'{"s": "\xff\xfe"}',  # invalid UTF-8
    b'\xef\xbb\xbf{"a": 3}',  # a byte order mark
    b'{"deep": ' + b'[' * 70 + b']' * 70 + b'}',
    b'{"long": "' + b'x' * 300 + b'"}',  # over the cap the test sets
    b'',
    b'   ',
    b'\t',
]
ENDINGS = [b"\n", b"\r\n", b"\r"]
LINE_CAP = 200


def reference(data: bytes) -> tuple[list[dict[str, Any]], list[tuple[int, str]]]:
    """Per line: split on LF, CRLF and CR; skip blank lines; json.loads the rest (exact integers)."""
    events, dead = [], []
    lines = re.split(rb"\r\n|\r|\n", data)
    if data.endswith((b"\n", b"\r")):
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        if len(raw) > LINE_CAP:
            dead.append((number, "too_large"))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            dead.append((number, "invalid_utf8"))
            continue
        try:
            value = json.loads(text, parse_constant=_refuse, parse_float=_finite)
            _check_strings(value)
        except (ValueError, RecursionError):
            dead.append((number, "bad_json"))
            continue
        if _depth(value) > inputs.MAX_DEPTH:
            dead.append((number, "too_deep"))
        elif not isinstance(value, dict):
            dead.append((number, "not_an_object"))
        else:
            events.append(value)
    return events, dead


def _refuse(constant: str) -> None:
    raise ValueError(f"{constant} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _check_strings(value: Any) -> None:
    """A lone surrogate escape parses, but is no Unicode text: refused like invalid UTF-8."""
    if isinstance(value, str):
        value.encode("utf-8")  # UnicodeEncodeError is a ValueError
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


def _without_nulls(value: Any) -> Any:
    """Arrow cannot tell a missing key from null, nor a missing struct from null: compare without."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def _typed(value: Any) -> Any:
    """1 and 1.0 as one value (the reader makes a field of ints and floats float64, by design);
    past 2**53 a float is left alone, so an integer read as a float does not compare equal."""
    if isinstance(value, dict):
        return {k: _typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_typed(v) for v in value]
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


@pytest.mark.parametrize("seed", range(150))
def test_any_chunking_of_hostile_lines_reads_like_the_per_line_reference(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(inputs, "CHUNK_BYTES", rng.choice([16, 64, 300, 1024, 1 << 16]))
    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", LINE_CAP)
    # a probe shorter than the chunk: the rest is read against the probe's schema, and where a
    # field or a type comes late, in pieces whose schemas join (inputs._read_json, _Pieces)
    monkeypatch.setattr(inputs, "PROBE_BYTES", rng.choice([1, 40, 120, 16 << 10]))
    monkeypatch.setattr(inputs, "PIECE_BYTES", rng.choice([1, 50, 200, 2 << 20]))
    # mostly well-formed lines, as real files are, so that many chunks take the fast path
    lines = [rng.choice(LINES[:10]) if rng.random() < 0.8 else rng.choice(LINES) for _ in range(40)]
    data = b"".join(line + rng.choice(ENDINGS) for line in lines)
    if rng.random() < 0.3:
        data = data.rstrip(b"\r\n")  # no line ending after the last line
    expected_events, expected_dead = reference(data)

    batches = list(inputs.read_events(io.BytesIO(data), "ndjson", batch_size=rng.choice([3, 7, 1000]),
                                      workers=rng.choice([1, 2, 3])))
    events = [row for batch in batches for row in to_events(batch.table)]
    dead = [(d.line, d.reason) for batch in batches for d in batch.dead_letters]

    assert sorted(dead) == expected_dead
    assert [_typed(_without_nulls(e)) for e in events] == [_typed(_without_nulls(e)) for e in expected_events]


TEXT_LINES = [b"plain", b"  indented\t", b"caf\xc3\xa9", b"\xff bad", b"", b" ", b"x" * 300, b'{"a": 1}',
              b"tab\there", b"\x00nul"]


def lines_reference(data: bytes) -> tuple[list[str], list[tuple[int, str]]]:
    """`--format lines`: every non-empty line is {"message": line}, as it is (whitespace kept)."""
    messages, dead = [], []
    lines = re.split(rb"\r\n|\r|\n", data)
    if data.endswith((b"\n", b"\r")):
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if not raw:
            continue
        if len(raw) > LINE_CAP:
            dead.append((number, "too_large"))
            continue
        try:
            messages.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            dead.append((number, "invalid_utf8"))
    return messages, dead


@pytest.mark.parametrize("seed", range(60))
def test_any_chunking_of_raw_lines_reads_like_the_reference(seed: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(seed)
    monkeypatch.setattr(inputs, "CHUNK_BYTES", rng.choice([16, 64, 300, 1 << 16]))
    monkeypatch.setattr(inputs, "MAX_LINE_BYTES", LINE_CAP)
    data = b"".join(rng.choice(TEXT_LINES) + rng.choice(ENDINGS) for _ in range(40))
    if rng.random() < 0.3:
        data = data.rstrip(b"\r\n")
    batches = list(inputs.read_events(io.BytesIO(data), "lines", batch_size=rng.choice([3, 1000]),
                                      workers=rng.choice([1, 2, 3])))
    messages = [m for batch in batches for m in batch.table.column("message").to_pylist()]
    dead = sorted((d.line, d.reason) for batch in batches for d in batch.dead_letters)
    assert (messages, dead) == lines_reference(data)
