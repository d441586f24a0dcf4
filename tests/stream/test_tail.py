"""`FileTail`: follows real files in tmp dirs like `tail -F`, through rotation, truncation and restarts.

Most tests drive it with `poll_once()` so each step is deterministic; one runs the thread.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream.log import EmbeddedLog
from stream.sources.tail import FileTail, TailError, parse_tail_spec


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EmbeddedLog]:
    with EmbeddedLog(tmp_path / "log") as opened:
        yield opened


def messages(log: EmbeddedLog, stream: str = "app") -> list[str]:
    if not log.has_stream("default", stream):
        return []
    table, _ = log.read("default", stream, 0, 1_000_000)
    return [str(m) for m in table.column("message").to_pylist()] if table.num_rows else []


def tail(log: EmbeddedLog, tmp_path: Path, path: Path, **options: object) -> FileTail:
    """A follower positioned as `start()` positions it (the first poll), without its thread."""
    follower = FileTail(log, path, "app", state_dir=tmp_path / "state" / "tail", **options)  # type: ignore[arg-type]
    follower.poll_once()
    return follower


def write(path: Path, data: str, mode: str = "a") -> None:
    with open(path, mode, newline="") as handle:
        handle.write(data)


def test_starts_at_the_end_and_sends_only_appended_whole_lines(log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    write(path, "old 1\nold 2\npartial-at-start", "w")
    follower = tail(log, tmp_path, path)
    follower.poll_once()
    assert messages(log) == []
    write(path, " finished\nnew 1\r\nnew 2\rnew 3\nhalf")
    follower.poll_once()
    # the line being written at start is read whole; a partial last line waits for its line ending
    assert messages(log) == ["partial-at-start finished", "new 1", "new 2", "new 3"]
    write(path, " line\n")
    follower.poll_once()
    assert messages(log)[-1] == "half line"
    follower.stop()


def test_start_beginning_reads_the_existing_lines(log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    write(path, "a\nb\n", "w")
    follower = tail(log, tmp_path, path, start="beginning")
    follower.poll_once()
    assert messages(log) == ["a", "b"]
    follower.stop()


def test_rotation_by_rename_finishes_the_old_file_then_reads_the_new_one(log: EmbeddedLog,
                                                                         tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    write(path, "", "w")
    follower = tail(log, tmp_path, path)
    write(path, "1\n2\n")
    follower.poll_once()
    old = open(path, "a")  # noqa: SIM115 - the daemon still holds the old file after the rename
    os.rename(path, tmp_path / "app.log.1")
    old.write("3 written after the rename\nunterminated last line")
    old.flush()
    write(path, "4 in the new file\n", "w")
    follower.poll_once()  # old file grew this poll: keep reading it, do not switch yet
    follower.poll_once()  # stopped growing: finish it (last line included) and switch
    old.close()
    write(path, "5\n")
    follower.poll_once()
    assert messages(log) == ["1", "2", "3 written after the rename", "unterminated last line",
                             "4 in the new file", "5"]
    assert follower.metrics["rotations"] == 1
    follower.stop()


def test_copytruncate_reads_the_file_again_from_the_beginning(log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    write(path, "", "w")
    follower = tail(log, tmp_path, path)
    write(path, "before 1\nbefore 2\n")
    follower.poll_once()
    shutil.copy(path, tmp_path / "app.log.1")
    os.truncate(path, 0)
    write(path, "after\n")
    follower.poll_once()
    assert messages(log) == ["before 1", "before 2", "after"]
    assert follower.metrics["truncations"] == 1
    follower.stop()


def test_truncated_and_regrown_past_the_position_is_noticed_by_its_first_bytes(log: EmbeddedLog,
                                                                               tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    write(path, "", "w")
    follower = tail(log, tmp_path, path)
    write(path, "short\n")
    follower.poll_once()
    with open(path, "r+") as handle:  # rewritten in place, longer than before, between two polls
        handle.truncate(0)
        handle.write("a different and longer first line\n")
    follower.poll_once()
    assert messages(log) == ["short", "a different and longer first line"]
    follower.stop()


def test_deleted_file_is_waited_for_and_its_successor_read_from_the_start(log: EmbeddedLog,
                                                                          tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    follower = tail(log, tmp_path, path)
    assert follower.poll_once() == 0  # absent at start: nothing to do, no error
    write(path, "first\n", "w")  # a file that appears later is read from its beginning
    follower.poll_once()
    os.unlink(path)
    for _ in range(3):
        follower.poll_once()  # absent for a while
    write(path, "second\n", "w")
    follower.poll_once()
    follower.poll_once()
    assert messages(log) == ["first", "second"]
    assert follower.metrics["errors"] == 0
    follower.stop()


def test_restart_resumes_without_loss_or_duplicates(log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    write(path, "", "w")
    first = tail(log, tmp_path, path)
    write(path, "1\n2\n")
    first.poll_once()
    first.stop()
    write(path, "3\n4\n")  # written while nothing follows the file
    second = tail(log, tmp_path, path)
    second.poll_once()
    write(path, "5\n")
    second.poll_once()
    assert messages(log) == ["1", "2", "3", "4", "5"]
    second.stop()


def test_file_rotated_while_stopped_is_finished_before_the_new_one(log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    write(path, "", "w")
    first = tail(log, tmp_path, path)
    write(path, "1\n")
    first.poll_once()
    first.stop()
    write(path, "2 before rotation\n")
    os.rename(path, tmp_path / "app.log.1")
    write(path, "3 new file\n", "w")
    second = tail(log, tmp_path, path)
    second.poll_once()
    second.poll_once()
    assert messages(log) == ["1", "2 before rotation", "3 new file"]
    second.stop()


def test_crash_between_append_and_position_save_does_not_duplicate(log: EmbeddedLog, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "app.log"
    write(path, "", "w")
    first = tail(log, tmp_path, path)
    first.poll_once()
    write(path, "a\nb\n")
    real_save = FileTail._save

    def save_then_crash(self: FileTail, *, pending: dict[str, object] | None = None) -> None:
        if pending is None:  # the save after the append: the process "dies" first
            raise KeyboardInterrupt("simulated crash")
        real_save(self, pending=pending)

    monkeypatch.setattr(FileTail, "_save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        first.poll_once()
    assert messages(log) == ["a", "b"]  # appended, but the saved position is still before them
    monkeypatch.setattr(FileTail, "_save", real_save)
    first.stop()
    write(path, "c\n")
    second = tail(log, tmp_path, path)
    second.poll_once()
    assert messages(log) == ["a", "b", "c"]
    assert second.metrics["duplicates"] == 1
    second.stop()


def test_ndjson_format_and_bad_lines_become_dead_letters(log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "app.json"
    write(path, "", "w")
    follower = tail(log, tmp_path, path, fmt="ndjson")
    write(path, '{"message": "ok", "n": 1}\nnot json\n')
    follower.poll_once()
    assert messages(log) == ["ok"]
    assert follower.metrics["events"] == 1 and follower.metrics["dead_letters"] == 1
    assert len(log.dead_letters("default", "app")) == 1
    follower.stop()


def test_thread_follows_appends_until_stopped(log: EmbeddedLog, tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    write(path, "", "w")
    follower = tail(log, tmp_path, path, poll_s=0.05)
    follower.start()
    try:
        write(path, "x\ny\n")
        deadline = time.monotonic() + 10
        while messages(log) != ["x", "y"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert messages(log) == ["x", "y"]
    finally:
        follower.stop()
    assert follower.status()["following"] is False


def test_tail_spec_parsing_and_errors() -> None:
    assert parse_tail_spec("/var/log/a=b.log=auth") == ("/var/log/a=b.log", "auth", "lines")
    assert parse_tail_spec("app.json=app:ndjson") == ("app.json", "app", "ndjson")
    with pytest.raises(TailError, match="PATH=STREAM"):
        parse_tail_spec("/var/log/auth.log")
    with pytest.raises(TailError, match="format 'csv' is invalid"):
        parse_tail_spec("a.log=app:csv")
    with pytest.raises(TailError, match="stream name 'Bad Name' is invalid"):
        parse_tail_spec("a.log=Bad Name")
