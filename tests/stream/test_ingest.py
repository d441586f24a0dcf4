"""The ingest core and the local-mode file client: formats, limits, bad lines, idempotency."""

from __future__ import annotations

import gzip
import io
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from stream.ingest import (
    MAX_BODY_BYTES,
    MAX_DECODED_BYTES,
    MAX_ERRORS,
    MAX_STORED_DEAD_LETTERS,
    EmptyBody,
    IngestConflict,
    IngestError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ingest_bytes,
)
from stream.ingest_client import MIN_CHUNK_BYTES, ingest_file_local, iter_chunks
from stream.log import EmbeddedLog

NDJSON = "application/x-ndjson"


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    with EmbeddedLog(tmp_path / "log") as log:
        yield log


def _events(log: EmbeddedLog, stream: str = "web", tenant: str = "acme") -> list[dict[str, object]]:
    table, _ = log.read(tenant, stream, log.start_offset(tenant, stream), 1_000_000)
    events: list[dict[str, object]] = table.to_pylist()
    return events


def test_good_ndjson_is_appended_and_the_stream_created_on_first_ingest(log: EmbeddedLog) -> None:
    body = b'{"a": 1, "s": "x"}\n{"a": 2, "s": "y"}\n'
    first = ingest_bytes(log, "acme", "web", body, content_type=NDJSON)
    assert (first.accepted, first.rejected, first.first_offset, first.created) == (2, 0, 0, True)
    second = ingest_bytes(log, "acme", "web", body, content_type="application/jsonl; charset=utf-8")
    assert (second.first_offset, second.created) == (2, False)
    assert _events(log) == [{"a": 1, "s": "x"}, {"a": 2, "s": "y"}] * 2
    assert log.settings("acme", "web").format == "ndjson"


def test_bad_lines_become_dead_letters_with_line_numbers_and_good_lines_are_kept(log: EmbeddedLog) -> None:
    deep = b"[" * 1000 + b"]" * 1000
    huge = b'{"blob": "' + b"x" * (5 << 20) + b'"}'
    body = b"\r\n".join([
        b'{"n": 1}',            # line 1
        b'{"n": 2',             # line 2: malformed
        b'{"n": "\xff"}',       # line 3: invalid UTF-8
        b"[1, 2]",              # line 4: not an object
        b'{"d": ' + deep + b"}",  # line 5: 1,000 levels deep
        huge,                   # line 6: 5 MB
    ]) + b'\r{"n": 7}\n{"n": 8}\r\n'  # CR, LF and CRLF mixed
    result = ingest_bytes(log, "acme", "web", body, content_type=NDJSON)
    assert (result.accepted, result.rejected) == (3, 5)
    assert [(e["line"], e["reason"]) for e in result.errors] == [
        (2, "bad_json"), (3, "invalid_utf8"), (4, "not_an_object"), (5, "too_deep"), (6, "too_large")]
    assert all(not e["message"].startswith(f"line {e['line']}:") for e in result.errors)  # said once
    assert _events(log) == [{"n": 1}, {"n": 7}, {"n": 8}]
    stored = sorted(log.dead_letters("acme", "web"), key=lambda d: d["line"])
    assert [d["reason"] for d in stored] == [e["reason"] for e in result.errors]
    assert stored[0]["raw"] == '{"n": 2' and len(stored[4]["raw"]) <= 1000


def test_text_lines_become_message_events_whatever_the_line_ending(log: EmbeddedLog) -> None:
    result = ingest_bytes(log, "acme", "syslog", b"one\rtwo\r\nthree\n\nfour", content_type="text/plain")
    assert result.accepted == 4
    assert [e["message"] for e in _events(log, "syslog")] == ["one", "two", "three", "four"]
    assert log.settings("acme", "syslog").format == "lines"


def test_gzip_bodies_are_decompressed_and_bombs_refused_before_they_fill_memory(log: EmbeddedLog) -> None:
    ok = ingest_bytes(log, "acme", "web", gzip.compress(b'{"n": 1}\n' * 3), content_type=NDJSON,
                      content_encoding="gzip")
    assert ok.accepted == 3
    bomb = gzip.compress(b"\n" * (MAX_DECODED_BYTES + 1024), compresslevel=9)
    assert len(bomb) < MAX_BODY_BYTES // 100
    with pytest.raises(PayloadTooLarge, match="decompresses to more than") as info:
        ingest_bytes(log, "acme", "web", bomb, content_type=NDJSON, content_encoding="gzip")
    assert info.value.status == 413
    with pytest.raises(IngestError, match="not valid gzip") as bad:
        ingest_bytes(log, "acme", "web", b"not gzip at all", content_type=NDJSON, content_encoding="gzip")
    assert (bad.value.status, bad.value.code) == (400, "bad_gzip")
    with pytest.raises(IngestError, match="truncated"):
        ingest_bytes(log, "acme", "web", gzip.compress(b'{"n": 1}\n' * 100)[:-12], content_type=NDJSON,
                     content_encoding="gzip")
    assert log.end_offset("acme", "web") == 3


def test_empty_and_oversized_bodies_and_unknown_types_get_their_status(log: EmbeddedLog) -> None:
    cases: list[tuple[bytes, str | None, str | None, type[IngestError], int, str]] = [
        (b"", NDJSON, None, EmptyBody, 400, "body is empty"),
        (b"\n\r\n  \n", NDJSON, None, EmptyBody, 400, "body is empty"),
        (b"x" * (MAX_BODY_BYTES + 1), NDJSON, None, PayloadTooLarge, 413, "limit is 16,777,216"),
        (b'{"n": 1}', "application/json", None, UnsupportedMediaType, 415, "use application/x-ndjson"),
        (b'{"n": 1}', None, None, UnsupportedMediaType, 415, "missing Content-Type"),
        (b"x", "text/plain; charset=latin-1", None, UnsupportedMediaType, 415, "send UTF-8"),
        (b"x", "text/plain", "br", UnsupportedMediaType, 415, "send gzip or no encoding"),
    ]
    for body, content_type, encoding, error, status, message in cases:
        with pytest.raises(error, match=message) as info:
            ingest_bytes(log, "acme", "web", body, content_type=content_type, content_encoding=encoding)
        assert info.value.status == status
    assert not log.has_stream("acme", "web")  # nothing refused created a stream


def test_an_invalid_stream_name_is_refused_not_created(log: EmbeddedLog) -> None:
    with pytest.raises(IngestError, match="stream name 'Web Logs' is invalid") as info:
        ingest_bytes(log, "acme", "Web Logs", b'{"n": 1}\n', content_type=NDJSON)
    assert (info.value.status, info.value.code) == (400, "invalid_stream")
    assert log.list_streams("acme") == []


def test_a_retried_request_returns_the_first_response_and_stores_nothing(log: EmbeddedLog) -> None:
    body = b'{"n": 1}\nnope\n{"n": 3}\n'
    first = ingest_bytes(log, "acme", "web", body, content_type=NDJSON, idempotency_key="req-42")
    retry = ingest_bytes(log, "acme", "web", body, content_type=NDJSON, idempotency_key="req-42")
    assert not first.duplicate and retry.duplicate
    assert (retry.accepted, retry.rejected, retry.first_offset, retry.errors) == (
        first.accepted, first.rejected, first.first_offset, first.errors)
    assert log.end_offset("acme", "web") == 2 and len(log.dead_letters("acme", "web")) == 1
    with pytest.raises(IngestConflict, match="different content") as info:
        ingest_bytes(log, "acme", "web", b'{"n": 9}\n', content_type=NDJSON, idempotency_key="req-42")
    assert info.value.status == 409


def test_errors_are_capped_in_the_response_and_in_the_dead_letters(log: EmbeddedLog) -> None:
    body = b'{"ok": true}\n' + b"{bad\n" * 1500
    result = ingest_bytes(log, "acme", "web", body, content_type=NDJSON)
    assert (result.accepted, result.rejected) == (1, 1500)
    assert len(result.errors) == MAX_ERRORS and result.truncated
    stored = log.dead_letters("acme", "web", limit=5000)
    assert len(stored) == MAX_STORED_DEAD_LETTERS + 1
    summary = stored[0]  # newest first: the summary was stored last
    assert summary["reason"] == "too_many_errors" and summary["line"] == MAX_STORED_DEAD_LETTERS + 2
    assert "500 more rejected lines" in summary["message"] and "bad_json: 500" in summary["message"]


def test_a_body_of_only_bad_lines_appends_nothing_but_keeps_the_dead_letters(log: EmbeddedLog) -> None:
    result = ingest_bytes(log, "acme", "web", b"{bad\n[]\n", content_type=NDJSON)
    assert (result.accepted, result.rejected, result.first_offset) == (0, 2, None)
    assert log.end_offset("acme", "web") == 0 and len(log.dead_letters("acme", "web")) == 2


# -- the file client, local mode ---------------------------------------------------------------

def test_chunks_hold_whole_lines_and_never_split_a_crlf() -> None:
    line = b"x" * 1000
    data = (line + b"\r\n") * 200 + b"tail"
    chunks = list(iter_chunks(io.BytesIO(data), MIN_CHUNK_BYTES))
    assert b"".join(c.data for c in chunks) == data
    assert all(c.data.endswith(b"\r\n") for c in chunks[:-1])
    assert [c.first_line for c in chunks] == [1 + sum(c.data.count(b"\n") for c in chunks[:i])
                                              for i in range(len(chunks))]
    assert len({c.idempotency_key for c in chunks}) == len(chunks)


def test_a_line_longer_than_a_chunk_is_reported_and_skipped() -> None:
    long = b"y" * (MIN_CHUNK_BYTES * 3)
    data = b"a\n" + long + b"\r\nb\n"
    skipped: list[tuple[int, int]] = []
    chunks = list(iter_chunks(io.BytesIO(data), MIN_CHUNK_BYTES, lambda line, n: skipped.append((line, n))))
    assert skipped == [(2, len(long) + 2)]
    assert [(c.first_line, c.data) for c in chunks] == [(1, b"a\n"), (3, b"b\n")]


def test_local_file_ingest_reports_absolute_lines_and_a_rerun_stores_nothing_twice(
        log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "events.ndjson"
    lines = [orjson.dumps({"i": i, "pad": "p" * 200}) for i in range(1000)]
    lines[700] = b"{broken"
    path.write_bytes(b"\n".join(lines) + b"\n")
    seen: list[int] = []
    summary = ingest_file_local(log, "acme", "web", path, "ndjson", chunk_bytes=MIN_CHUNK_BYTES,
                                progress=lambda s: seen.append(s.bytes_done))
    assert summary.requests > 2 and seen[-1] == path.stat().st_size == summary.bytes_total
    assert (summary.accepted, summary.rejected) == (999, 1)
    assert [(e["line"], e["reason"]) for e in summary.errors] == [(701, "bad_json")]
    again = ingest_file_local(log, "acme", "web", path, "ndjson", chunk_bytes=MIN_CHUNK_BYTES)
    assert again.duplicates == again.requests == summary.requests
    assert [e["i"] for e in _events(log)] == [i for i in range(1000) if i != 700]
