"""The embedded log: offsets, replay, idempotency, schema changes, retention, concurrency, durability."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from primitives.runtime import DeadLetter
from stream.log import (
    EmbeddedLog,
    IdempotencyConflict,
    InvalidName,
    OffsetOutOfRange,
    ReadOnlyLog,
    StreamLimitReached,
    UnknownStream,
)
from stream.log.codec import encode_table
from stream.log.embedded import DB_FILE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    with EmbeddedLog(tmp_path / "log") as log:
        log.create_stream("acme", "web")
        yield log


def _numbers(start: int, stop: int) -> pa.Table:
    return pa.table({"n": pa.array(range(start, stop), pa.int64())})


def _all(log: EmbeddedLog, tenant: str, stream: str, start: int = 0) -> pa.Table:
    tables = []
    offset = start
    while offset < log.end_offset(tenant, stream):
        table, offset = log.read(tenant, stream, offset, 1_000_000)
        tables.append(table)
    return pa.concat_tables(tables, promote_options="permissive")


# -- offsets and replay ------------------------------------------------------------------------

def test_offsets_are_contiguous_per_stream_and_separate_across_streams_and_tenants(log: EmbeddedLog) -> None:
    log.create_stream("acme", "auth")
    log.create_stream("other", "web")
    first = log.append("acme", "web", _numbers(0, 3))
    second = log.append("acme", "web", [_numbers(3, 5), _numbers(5, 9)])
    assert (first.first_offset, first.count) == (0, 3)
    assert (second.first_offset, second.count) == (3, 6)
    assert log.append("acme", "auth", _numbers(0, 2)).first_offset == 0
    assert log.append("other", "web", _numbers(0, 1)).first_offset == 0
    assert log.end_offset("acme", "web") == 9
    assert _all(log, "acme", "web")["n"].to_pylist() == list(range(9))
    assert _all(log, "other", "web")["n"].to_pylist() == [0]


def test_a_read_from_the_middle_of_a_batch_starts_at_that_event(log: EmbeddedLog) -> None:
    log.append("acme", "web", _numbers(0, 10))
    log.append("acme", "web", _numbers(10, 20))
    table, next_offset = log.read("acme", "web", 7, 5)
    assert table["n"].to_pylist() == [7, 8, 9, 10, 11]  # row i is the event at offset 7 + i
    assert next_offset == 12
    table, next_offset = log.read("acme", "web", next_offset, 100)
    assert table["n"].to_pylist() == list(range(12, 20))
    assert next_offset == 20
    table, next_offset = log.read("acme", "web", 20, 100)
    assert table.num_rows == 0 and next_offset == 20


def test_a_read_outside_the_retained_range_names_the_range(log: EmbeddedLog) -> None:
    log.append("acme", "web", _numbers(0, 5))
    with pytest.raises(OffsetOutOfRange, match=r"outside the retained range \[0, 5\]") as info:
        log.read("acme", "web", 6)
    assert (info.value.start_offset, info.value.end_offset) == (0, 5)
    with pytest.raises(OffsetOutOfRange):
        log.read("acme", "web", -1)


def test_read_batches_returns_stored_batches_with_their_ingest_time(log: EmbeddedLog) -> None:
    before = time.time()
    log.append("acme", "web", _numbers(0, 4))
    log.append("acme", "web", _numbers(4, 6))
    batches = log.read_batches("acme", "web", 2)
    assert [(b.first_offset, b.next_offset) for b in batches] == [(2, 4), (4, 6)]
    assert batches[0].table["n"].to_pylist() == [2, 3]
    assert all(before <= b.appended_at <= time.time() for b in batches)


# -- schema changes ----------------------------------------------------------------------------

def test_reads_unify_fields_that_appear_disappear_and_widen(log: EmbeddedLog) -> None:
    log.append("acme", "web", pa.table({"a": [1, 2], "b": ["x", "y"]}))
    log.append("acme", "web", pa.table({"a": [2.5], "c": [{"k": 1}]}))
    table, next_offset = log.read("acme", "web", 0)
    assert next_offset == 3
    assert table.schema.field("a").type == pa.float64()
    assert table.to_pylist() == [
        {"a": 1.0, "b": "x", "c": None},
        {"a": 2.0, "b": "y", "c": None},
        {"a": 2.5, "b": None, "c": {"k": 1}},
    ]


def test_a_type_conflict_ends_the_read_at_a_batch_boundary_keeping_values(log: EmbeddedLog) -> None:
    log.append("acme", "web", pa.table({"status": [200, 404]}))
    log.append("acme", "web", pa.table({"status": ["teapot"]}))
    table, next_offset = log.read("acme", "web", 0)
    assert table["status"].to_pylist() == [200, 404] and next_offset == 2
    table, next_offset = log.read("acme", "web", next_offset)
    assert table["status"].to_pylist() == ["teapot"] and next_offset == 3


# -- idempotency -------------------------------------------------------------------------------

def test_a_retried_append_returns_the_original_offsets_and_stores_nothing(log: EmbeddedLog) -> None:
    first = log.append("acme", "web", _numbers(0, 3), idempotency_key="req-1", fingerprint="f1",
                       receipt={"accepted": 3})
    log.append("acme", "web", _numbers(3, 4))
    again = log.append("acme", "web", _numbers(0, 3), idempotency_key="req-1", fingerprint="f1")
    assert again.duplicate and (again.first_offset, again.count) == (first.first_offset, 3)
    assert again.receipt == {"accepted": 3}
    assert log.end_offset("acme", "web") == 4
    assert log.find_append("acme", "web", "req-1") == again
    assert log.find_append("acme", "web", "never-used") is None


def test_an_idempotency_key_reused_for_other_content_is_refused(log: EmbeddedLog) -> None:
    log.append("acme", "web", _numbers(0, 3), idempotency_key="req-1", fingerprint="f1")
    with pytest.raises(IdempotencyConflict, match="'req-1' was already used"):
        log.append("acme", "web", _numbers(0, 9), idempotency_key="req-1", fingerprint="f2")
    assert log.end_offset("acme", "web") == 3


def test_idempotency_keys_are_forgotten_after_their_time_to_live(tmp_path: Path) -> None:
    with EmbeddedLog(tmp_path, idempotency_ttl_s=60) as log:
        log.create_stream("acme", "web")
        log.append("acme", "web", _numbers(0, 1), idempotency_key="k")
        assert log.apply_retention(now=time.time() + 30).idempotency_keys_expired == 0
        assert log.apply_retention(now=time.time() + 61).idempotency_keys_expired == 1
        assert not log.append("acme", "web", _numbers(1, 2), idempotency_key="k").duplicate


# -- dead letters, settings, names -------------------------------------------------------------

def test_dead_letters_are_stored_with_the_append_and_listed_per_stream(log: EmbeddedLog) -> None:
    dead = [DeadLetter(step="input", reason="bad_json", message="line 2: malformed JSON",
                       event={"raw": "{oops", "line": 2}, line=2)]
    result = log.append("acme", "web", _numbers(0, 1), dead_letters=dead)
    assert result.dead_letters == 1
    [stored] = log.dead_letters("acme", "web")
    assert stored["line"] == 2 and stored["reason"] == "bad_json" and stored["raw"] == "{oops"
    assert log.stream_info("acme", "web").dead_letters == 1


def test_streams_list_counts_settings_and_event_time_range(log: EmbeddedLog) -> None:
    log.configure_stream("acme", "web", time_field="ts", retention_age_s=3600)
    log.append("acme", "web", pa.table({"ts": ["2026-01-01T00:00:00Z", "2026-01-01T00:01:00+00:00"]}))
    log.create_stream("acme", "auth", format="lines")
    [auth, web] = log.list_streams("acme")
    assert (web.name, web.events, web.batches, web.end_offset) == ("web", 2, 1, 2)
    assert (web.min_time, web.max_time) == (1767225600.0, 1767225660.0)
    assert web.settings.time_field == "ts" and web.settings.retention_age_s == 3600
    assert (auth.name, auth.events, auth.min_time, auth.settings.format) == ("auth", 0, None, "lines")
    assert not log.create_stream("acme", "web")  # already there: settings untouched
    assert log.settings("acme", "web").time_field == "ts"


def test_bad_names_and_unknown_streams_get_clear_errors(log: EmbeddedLog) -> None:
    with pytest.raises(InvalidName, match=r"stream name '\.\./etc' is invalid"):
        log.create_stream("acme", "../etc")
    with pytest.raises(InvalidName, match="tenant name 'A/B' is invalid"):
        log.create_stream("A/B", "web")
    with pytest.raises(UnknownStream, match="stream 'nope' does not exist for tenant 'acme'"):
        log.read("acme", "nope", 0)
    with pytest.raises(UnknownStream):
        log.append("acme", "nope", _numbers(0, 1))
    with pytest.raises(InvalidName, match="idempotency key"):
        log.append("acme", "web", _numbers(0, 1), idempotency_key="has space")
    assert log.list_streams("ghost") == []


def test_the_stream_count_per_tenant_is_capped(tmp_path: Path) -> None:
    with EmbeddedLog(tmp_path, max_streams=2) as log:
        log.create_stream("acme", "a")
        log.create_stream("acme", "b")
        with pytest.raises(StreamLimitReached, match="already has 2 streams"):
            log.create_stream("acme", "c")


# -- retention ---------------------------------------------------------------------------------

def _three_batches(log: EmbeddedLog) -> list[float]:
    for start in (0, 10, 20):
        log.append("acme", "web", _numbers(start, start + 10))
        time.sleep(0.02)
    return [b.appended_at for b in log.read_batches("acme", "web", 0, 1000)]


def test_retention_by_age_deletes_only_whole_batches_past_the_age(log: EmbeddedLog) -> None:
    log.configure_stream("acme", "web", retention_age_s=100)
    times = _three_batches(log)
    now = times[1] + 100 - 0.01  # the first batch is past the age, the second not quite
    report = log.apply_retention(now=now)
    [web] = report.streams
    assert (web.deleted_batches, web.deleted_events, web.start_offset) == (1, 10, 10)
    assert log.start_offset("acme", "web") == 10 and log.end_offset("acme", "web") == 30
    assert _all(log, "acme", "web", 10)["n"].to_pylist() == list(range(10, 30))
    with pytest.raises(OffsetOutOfRange):
        log.read("acme", "web", 5)


def test_retention_by_size_keeps_the_newest_batches_within_the_limit(log: EmbeddedLog) -> None:
    _three_batches(log)
    newest_two = len(encode_table(_numbers(10, 20))) + len(encode_table(_numbers(20, 30)))
    log.configure_stream("acme", "web", retention_bytes=newest_two)
    [web] = log.apply_retention().streams
    assert (web.deleted_batches, web.deleted_events) == (1, 10)
    assert log.stream_info("acme", "web").bytes == newest_two
    assert log.start_offset("acme", "web") == 10


def test_retention_never_deletes_what_a_consumer_has_not_processed_and_says_who(log: EmbeddedLog) -> None:
    log.configure_stream("acme", "web", retention_age_s=1)
    _three_batches(log)
    assert log.register_consumer("acme", "web", "ssh-brute@3", start="earliest") == 0
    log.register_consumer("acme", "web", "fast", start="latest")
    later = time.time() + 10
    [held] = log.apply_retention(now=later).streams
    assert held.deleted_batches == 0 and held.held_batches == 3 and held.held_events == 30
    assert [(h.consumer, h.position) for h in held.held_by] == [("ssh-brute@3", 0)]
    assert "'ssh-brute@3' at offset 0" in held.message and "force=True" in held.message
    assert log.start_offset("acme", "web") == 0

    log.commit_position("acme", "web", "ssh-brute@3", 15)  # inside the second batch
    [partial] = log.apply_retention(now=later).streams
    assert partial.deleted_batches == 1 and partial.held_batches == 2
    assert log.start_offset("acme", "web") == 10

    [forced] = log.apply_retention(now=later, force=True).streams
    assert forced.deleted_batches == 2 and [h.consumer for h in forced.lost_by] == ["ssh-brute@3"]
    assert log.start_offset("acme", "web") == log.end_offset("acme", "web") == 30


def test_offsets_are_never_reused_after_retention_empties_a_stream(log: EmbeddedLog) -> None:
    log.configure_stream("acme", "web", retention_age_s=1)
    log.append("acme", "web", _numbers(0, 5))
    log.apply_retention(now=time.time() + 10)
    assert log.stream_info("acme", "web").events == 0
    assert log.append("acme", "web", _numbers(5, 6)).first_offset == 5
    assert log.read("acme", "web", 5)[0]["n"].to_pylist() == [5]


# -- consumers ---------------------------------------------------------------------------------

def test_consumer_positions_are_registered_committed_and_checked(log: EmbeddedLog) -> None:
    log.append("acme", "web", _numbers(0, 5))
    assert log.register_consumer("acme", "web", "p1") == 5  # latest by default
    assert log.register_consumer("acme", "web", "p1", start="earliest") == 5  # already registered
    log.commit_position("acme", "web", "p1", 3)
    assert log.position("acme", "web", "p1") == 3
    assert log.position("acme", "web", "p2") is None
    with pytest.raises(OffsetOutOfRange, match=r"must be an offset in \[0, 5\]"):
        log.commit_position("acme", "web", "p1", 6)
    assert log.consumers("acme", "web") == {"p1": 3}
    assert log.remove_consumer("acme", "web", "p1") and log.consumers("acme", "web") == {}


# -- concurrency -------------------------------------------------------------------------------

def test_threads_append_and_read_concurrently_without_losing_or_reusing_offsets(log: EmbeddedLog) -> None:
    errors: list[BaseException] = []

    def writer(tag: int) -> None:
        try:
            for i in range(20):
                log.append("acme", "web", pa.table({"tag": [tag] * 5, "i": [i] * 5}))
        except BaseException as exc:
            errors.append(exc)

    def reader() -> None:
        try:
            for _ in range(40):
                end = log.end_offset("acme", "web")
                if end:
                    table, nxt = log.read("acme", "web", 0, end)
                    assert table.num_rows == nxt == end  # a snapshot never shows a partial append
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)] + [
        threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    table = _all(log, "acme", "web")
    assert table.num_rows == 400
    for tag in range(4):  # each writer's appends are whole and in its own order
        assert [i for g, i in zip(table["tag"].to_pylist(), table["i"].to_pylist(), strict=True)
                if g == tag] == [i for i in range(20) for _ in range(5)]


def test_a_read_only_log_reads_what_the_writer_committed_and_refuses_writes(log: EmbeddedLog) -> None:
    log.append("acme", "web", _numbers(0, 3))
    with EmbeddedLog(log.root, readonly=True) as reader:
        assert reader.read("acme", "web", 0)[0]["n"].to_pylist() == [0, 1, 2]
        log.append("acme", "web", _numbers(3, 4))
        assert reader.end_offset("acme", "web") == 4
        with pytest.raises(ReadOnlyLog):
            reader.append("acme", "web", _numbers(0, 1))


def test_a_read_only_log_sees_no_stream_while_another_process_is_creating_the_database(
        tmp_path: Path) -> None:
    """Between the file's creation and the writer's first transaction (`logbus status` beside a
    server starting up), a read-only reader finds an empty database: no streams, not an error."""
    path = tmp_path / "log" / "acme" / DB_FILE
    path.parent.mkdir(parents=True)
    sqlite3.connect(path).close()  # the file exists, its tables do not yet
    with EmbeddedLog(tmp_path / "log", readonly=True) as reader:
        assert not reader.has_stream("acme", "web")
        assert reader.list_streams("acme") == []
        with EmbeddedLog(tmp_path / "log") as writer:  # the writer gets there: now it is readable
            writer.create_stream("acme", "web")
            writer.append("acme", "web", _numbers(0, 2))
            assert reader.has_stream("acme", "web") and reader.end_offset("acme", "web") == 2


_CHILD = textwrap.dedent("""
    import sys
    import pyarrow as pa
    from stream.log import EmbeddedLog
    log = EmbeddedLog(sys.argv[1])
    log.create_stream("acme", "web")
    tag, rounds = int(sys.argv[2]), int(sys.argv[3])
    for i in range(rounds):
        batch = pa.table({"tag": [tag] * 100, "i": list(range(i * 100, i * 100 + 100))})
        result = log.append("acme", "web", batch)
        print(result.first_offset, result.count, flush=True)
""")


def _child(root: Path, tag: int, rounds: int) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(root), str(tag), str(rounds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_two_writer_processes_never_get_the_same_offsets(tmp_path: Path) -> None:
    children = [_child(tmp_path, tag, 30) for tag in (1, 2)]
    acks = [line.split() for child in children for line in child.communicate(timeout=120)[0].splitlines()]
    assert all(child.returncode == 0 for child in children)
    ranges = sorted((int(first), int(first) + int(count)) for first, count in acks)
    assert ranges == [(i * 100, i * 100 + 100) for i in range(60)]
    with EmbeddedLog(tmp_path) as log:
        assert _all(log, "acme", "web").num_rows == 6000


def test_every_acknowledged_append_survives_kill_9_and_nothing_half_written_shows(tmp_path: Path) -> None:
    acked: list[tuple[int, int]] = []
    for attempt in range(3):  # kill it three times, each time right after an acknowledgement
        child = _child(tmp_path, attempt, 10_000)
        assert child.stdout is not None
        for _ in range(5 + 7 * attempt):
            ack = child.stdout.readline().split()
            acked.append((int(ack[0]), int(ack[1])))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        child.stdout.close()
        assert child.returncode == -signal.SIGKILL
    with EmbeddedLog(tmp_path) as log:
        end = log.end_offset("acme", "web")
        table = _all(log, "acme", "web")
    assert table.num_rows == end  # every stored batch is whole and readable
    assert end >= max(first + count for first, count in acked)
    rows = list(zip(table["tag"].to_pylist(), table["i"].to_pylist(), strict=True))
    for first, count in acked:
        tag = rows[first][0]
        assert rows[first : first + count] == [(tag, rows[first][1] + k) for k in range(count)]
    assert rows[end - 1][1] % 100 == 99  # the last stored batch ends where its append ended


def test_a_read_does_not_join_batches_of_different_fields_into_one_sparse_table(log: EmbeddedLog) -> None:
    # 40 batches of 100 events, each batch with 20 fields of its own (stored within the readers'
    # field budget): one table of all of them would be 4,000 rows x 800 fields, 40 times the cells
    for b in range(40):
        log.append("acme", "web", pa.table({f"b{b}_f{f}": list(range(100)) for f in range(20)}))
    offset, reads, values = 0, 0, {}
    while offset < log.end_offset("acme", "web"):
        table, offset = log.read("acme", "web", offset, 100_000)
        assert table.num_rows * table.num_columns <= 2 * table.num_rows * 20  # twice what it holds
        values.update({name: [v for v in table.column(name).to_pylist() if v is not None]
                       for name in table.column_names})
        reads += 1
    assert offset == 4000 and 20 <= reads < 40
    assert len(values) == 800 and all(column == list(range(100)) for column in values.values())


def test_a_read_joins_batches_of_one_schema_whole(log: EmbeddedLog) -> None:
    for b in range(40):
        log.append("acme", "web", _numbers(b * 100, b * 100 + 100))
    table, next_offset = log.read("acme", "web", 0, 100_000)
    assert next_offset == 4000 and table.column("n").to_pylist() == list(range(4000))
