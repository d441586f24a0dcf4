"""The field budget of the readers (stream.widths): input whose keys vary cannot make a table that
costs rows x fields cells. Before it, 1 MiB of `{"<unique key>": 1}` lines took more than 24 GB
of memory in Arrow's JSON reader: one ingest request could get `logbus serve` killed."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json
import pytest

from primitives.batch import to_events
from stream import inputs
from stream.widths import (
    CELLS_PER_BYTE,
    MAX_FIELDS,
    FieldBudget,
    event_leaves,
    fits,
    max_fields_from,
    schema_leaves,
)

ROOT = Path(__file__).resolve().parents[2]

EVENTS: list[dict[str, Any]] = [
    {"a": 1, "m": {"x": 1, "y": {"z": "s"}}, "l": [{"p": 1}, {"q": 2.5}], "e": {}, "n": [], "t": [1, 2]},
    {"a": 2, "m": {"x": 3}, "b": True},
]


def test_event_leaves_count_what_arrow_makes_columns_of() -> None:
    ndjson = b"".join(json.dumps(event).encode() + b"\n" for event in EVENTS)
    schema = pa_json.read_json(io.BytesIO(ndjson)).schema
    from_events = set().union(*(event_leaves(event) for event in EVENTS))
    assert schema_leaves(schema) == from_events
    assert ("m", "y", "z") in from_events and ("l", "[]", "q") in from_events and ("n", "[]") in from_events


def test_schema_leaves_walk_thousands_of_levels_without_recursion() -> None:
    t: pa.DataType = pa.int64()
    for _ in range(5000):
        t = pa.list_(t)
    assert schema_leaves(pa.schema([("deep", t)])) == {("deep", *["[]"] * 5000)}


def test_fits_is_at_most_max_fields_and_two_cells_per_byte() -> None:
    assert fits(MAX_FIELDS, 1, 10_000) and not fits(MAX_FIELDS + 1, 1, 1 << 20)
    assert fits(10, 100, 500) and not fits(10, 101, 500)


def test_the_budget_refuses_an_event_past_the_limit_and_cuts_sparse_tables() -> None:
    budget = FieldBudget()
    assert budget.place({"a", "b"}, 12) == "joins"
    assert budget.place({"a"}, 8) == "joins"  # 2 rows x 2 fields <= 2 x 20 bytes
    assert budget.place({f"x{i}" for i in range(30)}, 8) == "starts"  # 3 x 32 > 2 x 28
    for i in range(30, MAX_FIELDS - 2):
        assert budget.place({f"x{i}"}, 1000) != "refused"
    assert budget.place({"one more"}, 1000) == "refused"
    assert budget.place({"a", "x5", ("m", "deep")}, 1000) == "refused"
    assert budget.place({"a", "x5"}, 1000) != "refused"  # known fields still come in


_HOSTILE = r'''
import io, json, resource, sys, tempfile, threading, time, os
from stream.inputs import read_events
from stream.widths import schema_leaves

LIMIT_MB = 1500
def watch():  # a regression must fail this test, not take the machine's memory
    while True:
        with open("/proc/self/statm") as statm:
            if int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") > LIMIT_MB << 20:
                os._exit(3)
        time.sleep(0.02)
threading.Thread(target=watch, daemon=True).start()

case = sys.argv[1]
if case == "unique keys":  # the OOM: one new key per line, 1 MiB
    data = "".join('{"r%07d":1}\n' % i for i in range(65_000)).encode()
elif case == "keys in turn":  # 1,000 keys, each line holding one: every key fits, every table sparse
    data = "".join('{"r%07d":1}\n' % (i % 1000) for i in range(200_000)).encode()
elif case == "nested unique keys":
    data = "".join('{"m":{"r%07d":1}}\n' % i for i in range(60_000)).encode()
elif case == "wide then narrow":
    data = ("{" + ",".join('"w%d":1' % j for j in range(900)) + "}\n" + '{"a":1}\n' * 200_000).encode()
elif case == "one wide line":
    data = b'{"ok":1}\n{' + ",".join('"w%d":1' % j for j in range(5000)).encode() + b'}\n{"ok":2}\n'
elif case == "a long list of objects":  # 20,000 keys, 4 fields: fine, read line by line
    objects = [{"a": i, "b": "x", "c": [i], "d": None} for i in range(5000)]
    data = b'{"ok":1}\n' + json.dumps({"l": objects}).encode() + b'\n{"ok":2}\n'
started = time.perf_counter()
if sys.argv[2] == "trial":  # an agent's inline test events (MCP test_pipeline)
    from stream.trial import run_trial
    events = [json.loads(line) for line in data.splitlines()]
    spec = "name: t\nsource: web\nsteps:\n  - filter: \"true\"\n"
    report = run_trial(spec, events=events)
    print(json.dumps({"reasons": report.dead_letter_reasons, "outputs": report.steps[0]["out"],
                      "seconds": time.perf_counter() - started}))
    sys.exit(0)
if sys.argv[2] == "ingest":
    from stream.ingest import ingest_bytes
    from stream.log import EmbeddedLog
    with tempfile.TemporaryDirectory() as tmp, EmbeddedLog(tmp) as log:
        result = ingest_bytes(log, "acme", "web", data, content_type="application/x-ndjson")
        print(json.dumps({"accepted": result.accepted, "rejected": result.rejected,
                          "errors": result.errors[:2], "seconds": time.perf_counter() - started}))
    sys.exit(0)
tables, dead = [], []
for batch in read_events(io.BytesIO(data), workers=int(sys.argv[2])):
    tables.append(batch.table)
    dead.extend([d.line, d.reason, d.message] for d in batch.dead_letters)
print(json.dumps({
    "bytes": len(data), "rows": sum(t.num_rows for t in tables), "seconds": time.perf_counter() - started,
    "widest": max(len(schema_leaves(t.schema)) for t in tables),
    "cells": sum(t.num_rows * len(schema_leaves(t.schema)) for t in tables),
    "dead": dead[:3], "dead_lines": [d[0] for d in dead], "reasons": sorted({d[1] for d in dead}),
    "sample": [r for t in tables for r in t.slice(0, 2).to_pylist()][:2] if case == "one wide line" else None,
    "list": [r for t in tables for r in t.to_pylist() if "l" in r and r["l"]][0]["l"][4999]
            if case == "a long list of objects" else None,
}))
'''


def _hostile(case: str, mode: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", _HOSTILE, case, mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode != 3, f"{case}: the reader went past 1.5 GB of memory"
    assert done.returncode == 0, f"{case}: exit {done.returncode}: {done.stderr[-2000:]}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_new_key_on_every_line_keeps_the_first_thousand_and_dead_letters_the_rest(workers: str) -> None:
    got = _hostile("unique keys", workers)
    assert got["rows"] == MAX_FIELDS and got["cells"] <= CELLS_PER_BYTE * got["bytes"]
    assert got["reasons"] == ["too_many_fields"]
    assert got["dead_lines"] == list(range(MAX_FIELDS + 1, 65_001))
    line, _, message = got["dead"][0]
    assert line == MAX_FIELDS + 1
    assert message.startswith("line 1001: event adds 1 field ('r0001000') past the limit of 1,000")
    assert got["seconds"] < 30


def test_nested_keys_count_as_fields_too() -> None:
    got = _hostile("nested unique keys", "1")
    assert got["rows"] == MAX_FIELDS and got["widest"] <= MAX_FIELDS
    assert got["dead"][0][2].startswith("line 1001: event adds 1 field ('m.r0001000')")


@pytest.mark.parametrize("case", ["keys in turn", "wide then narrow"])
def test_sparse_input_is_kept_whole_in_tables_of_bounded_cells(case: str) -> None:
    got = _hostile(case, "2")
    assert got["dead_lines"] == []
    assert got["rows"] == (200_000 if case == "keys in turn" else 200_001)
    assert got["cells"] <= CELLS_PER_BYTE * got["bytes"] and got["widest"] <= MAX_FIELDS
    assert got["seconds"] < 60


def test_one_line_with_too_many_fields_is_a_dead_letter_and_its_neighbours_stay() -> None:
    got = _hostile("one wide line", "1")
    assert [d[:2] for d in got["dead"]] == [[2, "too_many_fields"]]
    assert got["sample"] == [{"ok": 1}, {"ok": 2}]


def test_a_line_with_many_keys_but_few_fields_is_read_exactly() -> None:
    got = _hostile("a long list of objects", "1")
    assert got["dead_lines"] == [] and got["rows"] == 3
    assert got["list"] == {"a": 4999, "b": "x", "c": [4999], "d": None}


def test_an_ingest_request_of_new_keys_is_answered_not_fatal() -> None:
    got = _hostile("unique keys", "ingest")
    assert (got["accepted"], got["rejected"]) == (MAX_FIELDS, 65_000 - MAX_FIELDS)
    assert got["errors"][0]["reason"] == "too_many_fields"
    assert got["seconds"] < 30


def test_fields_that_first_come_after_the_probe_keep_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clean chunk whose probe misses a field is counted piece by piece and then read by Arrow
    whole: no line goes through the per-line path, and the values are those of the file."""
    def refuse(*_: object) -> None:
        raise AssertionError("per-line path taken")

    monkeypatch.setattr(inputs, "_slow_ndjson", refuse)
    monkeypatch.setattr(inputs, "PROBE_BYTES", 256)
    events: list[dict[str, Any]] = [{"i": i, "s": "x" * (i % 7)} for i in range(3000)]
    events[2500]["late"] = {"deep": [1.5]}
    events[2900]["i"] = 2.5  # an int column becomes a float column, as it would read whole
    data = b"".join(json.dumps(event).encode() + b"\n" for event in events)
    batches = list(inputs.read_events(io.BytesIO(data), workers=1))
    rows = [row for batch in batches for row in to_events(batch.table)]
    assert [row["i"] for row in rows] == [float(event["i"]) for event in events]
    assert [row["s"] for row in rows] == [event["s"] for event in events]
    assert [i for i, row in enumerate(rows) if row.get("late")] == [2500]
    assert rows[2500]["late"] == {"deep": [1.5]}


def test_an_agents_inline_events_are_held_to_the_same_budget() -> None:
    got = _hostile("unique keys", "trial")
    assert got["reasons"] == {"too_many_fields": 65_000 - MAX_FIELDS}
    assert got["outputs"] == MAX_FIELDS
    assert got["seconds"] < 60


@pytest.mark.parametrize("text", ["abc", "0", "-5", "1e3", "100001", "12.5"])
def test_a_bad_field_budget_setting_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="LOGBUS_MAX_FIELDS must be a whole number from 1 to 100,000"):
        max_fields_from({"LOGBUS_MAX_FIELDS": text})


def test_the_field_budget_is_1000_unless_set() -> None:
    assert max_fields_from({}) == max_fields_from({"LOGBUS_MAX_FIELDS": " "}) == 1000
    assert max_fields_from({"LOGBUS_MAX_FIELDS": "2500"}) == 2500


def _logbus_test(tmp_path: Path, setting: str | None) -> subprocess.CompletedProcess[str]:
    events = tmp_path / "wide.ndjson"
    events.write_bytes(b"".join(b'{"r%07d":1}\n' % i for i in range(1500)))
    pipeline = tmp_path / "all.yaml"
    pipeline.write_text('name: all\nsource: web\nsteps:\n  - filter: "true"\n')
    env = {k: v for k, v in os.environ.items() if k != "LOGBUS_MAX_FIELDS"}
    if setting is not None:
        env["LOGBUS_MAX_FIELDS"] = setting
    return subprocess.run([sys.executable, "-m", "server.cli", "test", str(pipeline), "--events", str(events),
                           "--json"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_logs_that_are_wide_by_nature_can_raise_the_budget(tmp_path: Path) -> None:
    default = json.loads(_logbus_test(tmp_path, None).stdout)
    assert (default["steps"][0]["out"], default["dead_letters"]) == (1000, 500)
    raised = json.loads(_logbus_test(tmp_path, "2000").stdout)
    assert (raised["steps"][0]["out"], raised["dead_letters"]) == (1500, 0)
    bad = _logbus_test(tmp_path, "lots")
    assert bad.returncode == 2 and bad.stdout == ""
    expected = "logbus: LOGBUS_MAX_FIELDS must be a whole number from 1 to 100,000, got 'lots'"
    assert bad.stderr.strip() == expected
