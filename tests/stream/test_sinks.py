"""The Parquet sink: idempotent per offset range, schema drift readable, compaction invisible."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from primitives.runtime import DeadLetter
from stream.sinks import OutputSink, run_query
from stream.sinks import table as table_module
from stream.sinks.table import MANIFEST

DAY1 = 1_733_788_800.0  # 2024-12-10T00:00:00Z
DAY2 = DAY1 + 86_400


class Clock:
    def __init__(self, now: float = DAY1) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sink(tmp_path: Path) -> OutputSink:
    return OutputSink(tmp_path, "acme", grace_s=0, compact_after=None, clock=Clock())


def rows(data_dir: Path, sql: str, tenant: str = "acme") -> list[list[Any]]:
    return run_query(data_dir, tenant, sql, limit=10_000).rows


def batch(first: int, last: int, tag: str = "a", day: str = "2024-12-10") -> pa.Table:
    """One output row per source offset, so that doubled or missing offsets show in counts."""
    return pa.table({"timestamp": [f"{day}T00:00:{i % 60:02d}Z" for i in range(first, last + 1)],
                     "src": list(range(first, last + 1)), "tag": [tag] * (last - first + 1)})


def live_paths(sink: OutputSink, kind: str, pipeline: str) -> list[str]:
    return sorted(entry.path for _, entry in sink.table(kind, pipeline).live_files())


def test_view_reads_batches_whose_schema_drifted(sink: OutputSink, tmp_path: Path) -> None:
    sink.write_outputs("web-errors", 1, pa.table({"timestamp": ["2024-12-10T01:00:00Z"], "n": [1]}), 0, 0)
    sink.write_outputs("web-errors", 1, pa.table({"timestamp": ["2024-12-10T02:00:00Z"], "n": [2],
                                                  "extra": ["e"]}), 1, 1)
    third = pa.table({"timestamp": ["2024-12-10T03:00:00Z"], "n": ["three"]})
    sink.write_outputs("web-errors", 2, third, 2, 2)
    result = run_query(tmp_path, "acme", "SELECT n, extra FROM web_errors ORDER BY timestamp")
    assert result.columns == ["n", "extra"]
    assert result.types == ["VARCHAR", "VARCHAR"]  # int and string unify as text
    assert result.rows == [["1", None], ["2", "e"], ["three", None]]


def test_nested_value_against_another_kind_reads_as_json(sink: OutputSink, tmp_path: Path) -> None:
    sink.write_outputs("p", 1, pa.table({"timestamp": ["2024-12-10T01:00:00Z"], "ctx": [{"a": 1}]}), 0, 0)
    sink.write_outputs("p", 1, pa.table({"timestamp": ["2024-12-10T02:00:00Z"], "ctx": ["plain"]}), 1, 1)
    sink.write_outputs("p", 1, pa.table({"timestamp": ["2024-12-10T03:00:00Z"], "ctx": [[1, 2]]}), 2, 2)
    sink.write_outputs("p", 1, pa.table({"timestamp": ["2024-12-10T04:00:00Z"], "other": [5]}), 3, 3)
    result = run_query(tmp_path, "acme", "SELECT ctx, ctx->>'a' AS a FROM p ORDER BY timestamp")
    assert result.types[0] == "JSON"
    assert result.rows == [['{"a":1}', "1"], ['"plain"', None], ["[1,2]", None], [None, None]]


def test_structs_with_different_fields_merge_without_json(sink: OutputSink, tmp_path: Path) -> None:
    sink.write_outputs("p", 1, pa.table({"timestamp": ["2024-12-10T01:00:00Z"], "ctx": [{"a": 1}]}), 0, 0)
    sink.write_outputs("p", 1, pa.table({"timestamp": ["2024-12-10T02:00:00Z"], "ctx": [{"b": "x"}]}), 1, 1)
    result = run_query(tmp_path, "acme", "SELECT ctx.a, ctx.b FROM p ORDER BY timestamp")
    assert result.rows == [[1, None], [None, "x"]]


def test_outputs_are_partitioned_by_event_date_else_processing_date(sink: OutputSink, tmp_path: Path) -> None:
    table = pa.table({"at": ["2024-12-09T23:59:59Z", "2024-12-11T00:00:00Z", None], "v": [1, 2, 3]})
    sink.write_outputs("p", 1, table, 5, 7, time_field="at")
    assert live_paths(sink, "outputs", "p") == [
        "date=2024-12-09/5-7.1.parquet", "date=2024-12-10/5-7.1.parquet", "date=2024-12-11/5-7.1.parquet"]
    assert rows(tmp_path, "SELECT v FROM p ORDER BY v") == [[1], [2], [3]]


def test_replaying_the_same_range_replaces_it(sink: OutputSink, tmp_path: Path) -> None:
    sink.write_outputs("p", 1, batch(0, 9, "first"), 0, 9)
    sink.write_outputs("p", 1, batch(0, 9, "replay"), 0, 9)
    assert rows(tmp_path, "SELECT tag, count(*) FROM p GROUP BY tag") == [["replay", 10]]
    assert not any(p.name.startswith(".tmp-") for p in tmp_path.rglob("*"))


def test_replay_on_the_next_day_removes_the_old_partition(tmp_path: Path) -> None:
    clock = Clock(DAY1)
    sink = OutputSink(tmp_path, "acme", grace_s=0, compact_after=None, clock=clock)
    no_time = pa.table({"v": list(range(10))})
    sink.write_outputs("p", 1, no_time, 0, 9)
    clock.now = DAY2
    sink.write_outputs("p", 1, no_time, 0, 9)
    assert live_paths(sink, "outputs", "p") == ["date=2024-12-11/0-9.2.parquet"]
    assert rows(tmp_path, "SELECT count(*), count(DISTINCT v) FROM p") == [[10, 10]]
    assert not (tmp_path / "tenants/acme/outputs/p/date=2024-12-10/0-9.1.parquet").exists()


def test_replay_split_differently_never_doubles_an_offset(sink: OutputSink, tmp_path: Path) -> None:
    sink.write_outputs("p", 1, batch(0, 99), 0, 99)
    sink.write_outputs("p", 1, batch(100, 149), 100, 149)  # crashed before its commit, say
    # the executor re-reads from its committed position 100 with another batch size
    sink.write_outputs("p", 1, batch(100, 119, "b"), 100, 119)
    assert rows(tmp_path, "SELECT count(*), max(src) FROM p") == [[120, 119]]  # [120-149] gone until re-read
    sink.write_outputs("p", 1, batch(120, 159, "b"), 120, 159)
    assert rows(tmp_path, "SELECT count(*), count(DISTINCT src), max(src) FROM p") == [[160, 160, 159]]


def test_overlapping_replay_into_a_compacted_file_keeps_its_other_batches(sink: OutputSink,
                                                                         tmp_path: Path) -> None:
    for first in range(0, 100, 10):
        sink.write_outputs("p", 1, batch(first, first + 9), first, first + 9)
    assert sink.compact("p", min_files=4) == 9
    assert len(live_paths(sink, "outputs", "p")) == 1
    sink.write_outputs("p", 1, batch(90, 94, "replay"), 90, 94)
    assert rows(tmp_path, "SELECT tag, count(*), min(src), max(src) FROM p GROUP BY tag ORDER BY tag") == [
        ["a", 90, 0, 89], ["replay", 5, 90, 94]]


def test_empty_write_of_a_range_still_supersedes(sink: OutputSink, tmp_path: Path) -> None:
    sink.write_outputs("p", 1, batch(0, 9), 0, 9)
    sink.write_outputs("p", 1, batch(10, 19), 10, 19)
    sink.write_outputs("p", 1, batch(0, 0).slice(0, 0), 10, 19)
    assert rows(tmp_path, "SELECT count(*), max(src) FROM p") == [[10, 9]]


def test_a_crash_before_the_manifest_commit_leaves_nothing_visible(sink: OutputSink, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    sink.write_outputs("p", 1, batch(0, 9), 0, 9)
    manifest = (tmp_path / "tenants/acme/outputs/p" / MANIFEST).read_bytes()

    def crash(self: object, *args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(table_module.ParquetTable, "_commit", crash)
    with pytest.raises(OSError, match="disk gone"):
        sink.write_outputs("p", 1, batch(10, 19), 10, 19)
    monkeypatch.undo()
    assert (tmp_path / "tenants/acme/outputs/p" / MANIFEST).read_bytes() == manifest
    assert (tmp_path / "tenants/acme/outputs/p/date=2024-12-10/10-19.2.parquet").exists()  # orphan
    assert rows(tmp_path, "SELECT count(*) FROM p") == [[10]]
    assert sink.table("outputs", "p").sweep() == 1
    assert not (tmp_path / "tenants/acme/outputs/p/date=2024-12-10/10-19.2.parquet").exists()


def test_superseded_files_wait_out_the_grace_period(tmp_path: Path) -> None:
    clock = Clock(DAY1)
    sink = OutputSink(tmp_path, "acme", grace_s=60, compact_after=None, clock=clock)
    sink.write_outputs("p", 1, batch(0, 9), 0, 9)
    old = tmp_path / "tenants/acme/outputs/p/date=2024-12-10/0-9.1.parquet"
    sink.write_outputs("p", 1, batch(0, 9, "b"), 0, 9)
    assert old.exists()  # a query that started on the previous manifest may still read it
    clock.now += 61
    sink.write_outputs("p", 1, batch(10, 19), 10, 19)
    assert not old.exists()


def test_signals_view_keeps_the_latest_state_per_id(sink: OutputSink, tmp_path: Path) -> None:
    def signal(sid: str, count: int, last_seen: str) -> dict[str, Any]:
        return {"id": sid, "pipeline": "ssh", "version": 1, "step": "brute", "severity": "high",
                "title": "brute force", "dedup": "1.2.3.4", "count": count,
                "first_seen": "2024-12-10T00:00:00Z", "last_seen": last_seen, "context": {"ip": "1.2.3.4"},
                "samples": [{"n": count}]}

    sink.write_signals("ssh", 1, [signal("s1", 5, "2024-12-10T00:01:00Z")], 0, 99)
    sink.write_signals("ssh", 1, [signal("s1", 9, "2024-12-10T00:05:00Z"), signal("s2", 1, "x")], 100, 199)
    sink.write_signals("ssh", 1, [signal("s1", 9, "2024-12-10T00:05:00Z"), signal("s2", 1, "x")], 100, 199)
    result = run_query(tmp_path, "acme", "SELECT id, count, last_seen, context->>'ip', samples FROM signals "
                       "ORDER BY id")
    assert result.rows == [["s1", 9, "2024-12-10T00:05:00Z", "1.2.3.4", '[{"n":9}]'],
                           ["s2", 1, "x", "1.2.3.4", '[{"n":1}]']]


def test_signal_without_id_is_refused_with_the_reason(sink: OutputSink) -> None:
    with pytest.raises(ValueError, match=r"signal #0 of pipeline 'ssh' has no string 'id'"):
        sink.write_signals("ssh", 1, [{"count": 1}], 0, 0)


def test_dead_letters_view_has_the_event_and_the_offset_range(sink: OutputSink, tmp_path: Path) -> None:
    letters = [DeadLetter("enrich", "error", "KeyError: 'ip'", {"msg": "x", "n": 1}, 4),
               DeadLetter("parse", "parse", "not JSON", None, None)]
    sink.write_dead_letters("web", 3, letters, 10, 19)
    sink.write_dead_letters("web", 3, letters[:1], 10, 19)  # replay of the range
    result = run_query(tmp_path, "acme", "SELECT pipeline, version, step, reason, message, event->>'msg', "
                       "line, first_offset, last_offset FROM dead_letters")
    assert result.rows == [["web", 3, "enrich", "error", "KeyError: 'ip'", "x", 4, 10, 19]]


def test_empty_tenant_still_has_signals_and_dead_letters_views(tmp_path: Path) -> None:
    assert rows(tmp_path, "SELECT count(*) FROM signals") == [[0]]
    assert run_query(tmp_path, "acme", "SELECT * FROM dead_letters").columns[:4] == [
        "pipeline", "version", "step", "reason"]


def _drifting_batches(sink: OutputSink) -> None:
    for i in range(12):
        first = i * 10
        table = batch(first, first + 9)
        if i % 3 == 1:
            table = table.append_column("n", pa.array([f"s{i}"] * 10))
        elif i % 3 == 2:
            table = table.append_column("n", pa.array([i] * 10))
        if i == 5:
            table = table.append_column("ctx", pa.array([{"k": i}] * 10))
        if i == 7:
            table = table.append_column("ctx", pa.array(["text"] * 10))
        sink.write_outputs("p", 1, table, first, first + 9)


def test_compaction_does_not_change_query_results(sink: OutputSink, tmp_path: Path) -> None:
    _drifting_batches(sink)
    sql = "SELECT * FROM p ORDER BY src"
    before = run_query(tmp_path, "acme", sql, limit=10_000)
    assert sink.compact("p", min_files=8) > 0
    after = run_query(tmp_path, "acme", sql, limit=10_000)
    assert len(live_paths(sink, "outputs", "p")) < 12
    assert (after.columns, after.types, after.rows) == (before.columns, before.types, before.rows)
    assert len(after.rows) == 120


def test_compaction_skips_a_group_that_a_writer_superseded_meanwhile(
        sink: OutputSink, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for first in range(0, 80, 10):
        sink.write_outputs("p", 1, batch(first, first + 9), first, first + 9)
    real_read = pq.read_table
    raced: list[bool] = []

    def read_and_race(*args: Any, **kwargs: Any) -> pa.Table:
        table = real_read(*args, **kwargs)
        if not raced:  # the executor replays [0-9] while compaction is merging the old files
            raced.append(True)
            sink.write_outputs("p", 2, batch(0, 9, "replay"), 0, 9)
        return table

    monkeypatch.setattr(pq, "read_table", read_and_race)
    sink.compact("p", min_files=4)
    monkeypatch.undo()
    assert raced
    assert rows(tmp_path, "SELECT tag, count(*), count(DISTINCT src) FROM p GROUP BY tag ORDER BY tag") == [
        ["a", 70, 70], ["replay", 10, 10]]
    sink.compact("p", min_files=4)  # the next compaction merges what the race left
    assert len(live_paths(sink, "outputs", "p")) == 1
    assert rows(tmp_path, "SELECT count(*), count(DISTINCT src) FROM p") == [[80, 80]]


def test_queries_during_concurrent_writes_and_compaction_see_whole_batches(tmp_path: Path) -> None:
    sink = OutputSink(tmp_path, "acme", grace_s=60, compact_after=None)  # files outlive their manifest
    sink.write_outputs("p", 1, batch(0, 9), 0, 9)
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for first in range(10, 400, 10):
                sink.write_outputs("p", 1, batch(first, first + 9), first, first + 9)
                if first % 100 == 0:
                    sink.compact("p", min_files=4)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    seen = []
    while thread.is_alive():
        count, distinct = rows(tmp_path, "SELECT count(*), count(DISTINCT src) FROM p")[0]
        assert count == distinct and count % 10 == 0
        seen.append(count)
    thread.join()
    assert not errors
    assert rows(tmp_path, "SELECT count(*), count(DISTINCT src) FROM p") == [[400, 400]]
    assert len(seen) >= 1


def test_manifest_ranges_stay_disjoint(sink: OutputSink, tmp_path: Path) -> None:
    for first, last in [(0, 9), (10, 19), (5, 14), (0, 30), (31, 40), (25, 35)]:
        sink.write_outputs("p", 1, batch(first, last), first, last)
    data = json.loads((tmp_path / "tenants/acme/outputs/p" / MANIFEST).read_text())
    ranges = sorted((a, b) for f in data["files"] for a, b, _ in f["ranges"])
    assert ranges == [(25, 35)]  # each write removed every range it overlapped
    assert rows(tmp_path, "SELECT count(*), count(DISTINCT src) FROM p") == [[11, 11]]


@pytest.mark.parametrize(("first", "last"), [(-1, 3), (5, 4), (1.0, 2)])
def test_bad_offset_range_is_refused(sink: OutputSink, first: Any, last: Any) -> None:
    with pytest.raises(ValueError, match="offset range must be integers with 0 <= first <= last"):
        sink.write_outputs("p", 1, batch(0, 0), first, last)


def test_bad_pipeline_name_cannot_spell_a_path(sink: OutputSink) -> None:
    with pytest.raises(ValueError, match=re.escape("pipeline name '../x' is invalid")):
        sink.write_outputs("../x", 1, batch(0, 0), 0, 0)


def test_compaction_never_rereads_files_that_are_already_big(tmp_path: Path) -> None:
    """Each compaction merges only small files, so its cost does not grow with the partition."""
    from stream.sinks.table import ParquetTable

    sink = OutputSink(tmp_path, "t", compact_after=None)
    for batch in range(6):
        first = batch * 10
        sink.write_outputs("p", 1, pa.table({"n": list(range(first, first + 10))}), first, first + 9,
                           time_field="none")
    table = sink.table("outputs", "p")
    assert isinstance(table, ParquetTable)
    assert table.compact(min_files=2, small_bytes=1) == 0  # every file counts as big: nothing to do
    assert table.compact(min_files=2) == 5  # all small: merged into one
    big = [e for _, e in table.live_files()]
    assert len(big) == 1
    for batch in range(6, 9):
        first = batch * 10
        sink.write_outputs("p", 1, pa.table({"n": list(range(first, first + 10))}), first, first + 9,
                           time_field="none")
    size_of_merged = (table.root / big[0].path).stat().st_size
    assert table.compact(min_files=2, small_bytes=size_of_merged) == 2  # only the 3 new files merge
    assert big[0].path in {e.path for _, e in table.live_files()}  # the big file was left alone


COMPACT_MEMORY = """
import sys
import pyarrow as pa
from stream.sinks.parquet import OutputSink

sink = OutputSink(sys.argv[1], "t", compact_after=None)
rows = 40_000
for batch in range(16):  # 16 files of ~1.3 MB each in Arrow: ~21 MB together
    first = batch * rows
    texts = [f"{first + i:012d}-some-log-text-that-is-not-short" for i in range(rows)]
    sink.write_outputs("p", 1, pa.table({"n": range(first, first + rows), "text": texts}),
                       first, first + rows - 1, time_field="none")
pool = pa.default_memory_pool()
before = pool.max_memory()
table = sink.table("outputs", "p")
assert table.compact(min_files=2) == 15
print(before, pool.max_memory(), sum(e.rows for _, e in table.live_files()))
"""


def test_compaction_streams_one_file_at_a_time(tmp_path: Path) -> None:
    """A compaction's peak memory is about one input file, not all of them at once (it used to
    concatenate every small file of a partition in memory: the sawtooth in the burst benchmark)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", COMPACT_MEMORY, str(tmp_path)], capture_output=True,
                         text=True, check=True, cwd=Path(__file__).resolve().parents[2]).stdout.split()
    before, after, rows = (int(x) for x in out)
    assert rows == 16 * 40_000
    one_file = 40_000 * (8 + 4 + 46)  # n, text offsets, text bytes
    assert after - before < 4 * one_file, (before, after)  # all 16 together would be 16x
