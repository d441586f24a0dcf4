"""Events without fields (`{}` lines, or events whose every field a step dropped) are events: they
are counted, aggregated and stored like any other. Arrow's tables without columns keep their rows,
but its slice does not clamp to them and take and concat drop them (primitives.batch has helpers);
this once turned a file of three `{}` lines into 65,536 events."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from primitives.batch import concat, from_events, rows_only, slice_rows, take_rows, to_events
from primitives.spec import load_spec
from stream.inputs import read_all, read_events
from stream.log import EmbeddedLog
from stream.trial import run_trial
from tests.primitives.conftest import run_pipeline

EMPTY = b"{}\n{}\n{}\n"


def test_the_helpers_keep_the_rows_of_a_table_without_columns() -> None:
    three = from_events([{}, {}, {}])
    assert (three.num_rows, three.num_columns) == (3, 0)
    assert [slice_rows(three, 0, 65_536).num_rows, slice_rows(three, 2, 5).num_rows,
            slice_rows(three, 5).num_rows] == [3, 1, 0]
    assert take_rows(three, [0, 2]).num_rows == 2 and concat([three, rows_only(2)]).num_rows == 5
    assert to_events(concat([three, from_events([{"a": 1}])])) == [{"a": None}] * 3 + [{"a": 1}]


def test_empty_objects_read_from_a_file_are_three_events() -> None:
    assert read_all(io.BytesIO(EMPTY)).table.num_rows == 3
    assert read_all(io.BytesIO(EMPTY), limit=2).table.num_rows == 2
    assert [b.table.num_rows for b in read_events(io.BytesIO(EMPTY * 3), batch_size=4)] == [4, 4, 1]


def test_a_trial_counts_and_aggregates_events_without_fields(tmp_path: Path) -> None:
    (tmp_path / "empty.ndjson").write_bytes(EMPTY)
    spec = "name: e\nsource: s\nsteps:\n  - aggregate:\n      window: 60s\n      measures: {n: count(*)}\n"
    report = run_trial(spec, source=tmp_path / "empty.ndjson")
    assert report.events_read == 3
    # no time field: each event is a no_time dead letter, all three of them
    assert report.dead_letters == 3 and report.dead_letter_reasons == {"no_time": 3}


def test_a_step_that_drops_every_field_loses_no_event() -> None:
    spec = load_spec("name: k\nsource: s\nsteps:\n  - transform:\n      keep: [missing]\n"
                     "  - derive:\n      when: 'true'\n      dedup: all\n")
    events: list[dict[str, Any]] = [{"a": 1}, {"b": "x"}, {"a": 2, "b": "y"}]
    for batches in ([events], [[e] for e in events]):
        run = run_pipeline(spec, batches, None)
        assert run.outputs == [{}, {}, {}]
        # derive saw all three (none has a time, so each is a no_time dead letter, not lost)
        assert [(d.step, d.reason, d.event) for d in run.dead_letters] == [("derive", "no_time", {})] * 3


def test_the_log_stores_and_reads_events_without_fields(tmp_path: Path) -> None:
    with EmbeddedLog(tmp_path / "log") as log:
        log.create_stream("t", "s")
        log.append("t", "s", rows_only(3))
        log.append("t", "s", from_events([{"a": 1}]))
        assert log.end_offset("t", "s") == 4
        assert log.read("t", "s", 0)[0].num_rows == 4 and log.read("t", "s", 1)[0].num_rows == 3
