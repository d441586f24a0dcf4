"""run_table: Arrow in, columns over the wire, Arrow out, round trips pipelined, same answers as run.

The hostile-worker cases use the test-only raw mode: the snippet's module body replaces the
worker's own column builder (`__main__._columnar`), so the worker answers with frames that break
the protocol in one precise way each; the host must refuse them (crash / bad_output for those
events) and go on serving.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

from sandbox.columns import JSON_TAG
from sandbox.isolation import Launcher
from sandbox.limits import Limits
from sandbox.pool import SandboxPool
from sandbox.runtime import codec

FAN_OUT = """
def transform(event):
    n = event["n"]
    if n % 5 == 4:
        raise ValueError("no fours")
    if n % 3 == 0:
        return None
    if n % 3 == 1:
        return [{"n": n, "copy": 1}, {"n": n, "copy": 2, "extra": "x"}]
    event["doubled"] = n * 2
    return event
"""


def decoded(table: pa.Table) -> list[dict[str, Any]]:
    """Rows of a run_table output, JSON-tagged columns read back as their values."""
    columns = {}
    for field, column in zip(table.schema, table.columns, strict=True):
        values = column.to_pylist()
        if field.metadata and field.metadata.get(JSON_TAG):
            values = [None if v is None else json.loads(v) for v in values]
        columns[field.name] = values
    return (
        [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
        if columns
        else []
    )


@pytest.fixture
def trips_pool(small_limits: Limits, spec: Launcher) -> Iterator[SandboxPool]:
    """Round trips of 4 events, so a dozen rows already make a pipelined run."""
    limits = Limits(
        memory_bytes=small_limits.memory_bytes,
        batch_deadline_base_s=1.0,
        batch_deadline_per_event_s=0.001,
        event_deadline_s=0.3,
        round_trip_events=4,
        max_kills_before_quarantine=3,
    )
    with SandboxPool(limits, _launcher=spec) as pool:
        yield pool


def test_outputs_equal_run_with_fan_out_drops_and_errors(trips_pool: SandboxPool) -> None:
    events = [{"n": i, "host": f"h{i % 2}", "note": None} for i in range(20)]
    table = pa.Table.from_pylist(events)
    by_rows = trips_pool.run("acme", "transform", FAN_OUT, [dict(e) for e in events])
    by_table = trips_pool.run_table("acme", "transform", FAN_OUT, table)
    flat = [row for value in by_rows.values if value for row in value]
    assert by_table.table is not None and by_table.values is None
    names = list(dict.fromkeys(name for row in flat for name in row))  # every key any row has
    assert by_table.table.column_names == names
    assert by_table.table.to_pylist() == [{name: row.get(name) for name in names} for row in flat]
    expected_index = [
        i for i in range(20) if i % 5 != 4 and i % 3 != 0 for _ in range(2 if i % 3 == 1 else 1)
    ]
    assert by_table.source_index == expected_index
    assert [(e.index, e.reason, e.line) for e in by_table.errors] == [
        (4, "error", 5),
        (9, "error", 5),
        (14, "error", 5),
        (19, "error", 5),
    ]
    assert by_table.errors == by_rows.errors
    assert by_table.stats.batches > 3, "20 events in round trips of 4 should take several trips"


def test_null_fields_reach_the_snippet_as_none_and_absent_output_keys_as_null(pool: SandboxPool) -> None:
    table = pa.table({"a": [1, None], "b": ["x", "y"]})
    source = (
        "def transform(event):\n    if event['a'] is None:\n"
        "        return {'saw': sorted(event), 'none': True}\n"
        "    return {'saw': sorted(event)}\n"
    )
    result = pool.run_table("acme", "transform", source, table)
    assert result.table is not None
    assert result.table.to_pylist() == [{"saw": ["a", "b"], "none": None}, {"saw": ["a", "b"], "none": True}]


def test_mixed_types_in_one_column_are_kept_as_json_tagged_text(pool: SandboxPool) -> None:
    table = pa.table({"n": [0, 1, 2, 3]})
    source = "def transform(event):\n    return {'v': [7, 'seven', 7.5, None][event['n']], 'n': event['n']}\n"
    result = pool.run_table("acme", "transform", source, table)
    assert result.table is not None and not result.errors
    assert result.table.schema.field("n").type == pa.int64()
    assert decoded(result.table) == [
        {"v": 7, "n": 0},
        {"v": "seven", "n": 1},
        {"v": 7.5, "n": 2},
        {"v": None, "n": 3},
    ]


def test_types_that_differ_between_round_trips_are_unified(trips_pool: SandboxPool) -> None:
    table = pa.table({"n": list(range(12))})
    # ints in the first trips, strs in the last: each trip alone is uniform, the whole is not
    source = (
        "def transform(event):\n    n = event['n']\n    return {'v': n if n < 6 else str(n), 'f': n / 2}\n"
    )
    result = trips_pool.run_table("acme", "transform", source, table)
    assert result.table is not None and result.stats.batches >= 3
    assert decoded(result.table) == [{"v": n if n < 6 else str(n), "f": n / 2} for n in range(12)]


def test_nested_values_travel_both_ways(pool: SandboxPool) -> None:
    events = [
        {"tags": ["a", "b"], "geo": {"lat": 1.5, "city": "Oslo"}, "n": 1},
        {"tags": [], "geo": {"lat": -2.0, "city": None}, "n": 2},
    ]
    source = (
        "def transform(event):\n    event['count'] = len(event['tags'])\n"
        "    event['pair'] = {'city': event['geo']['city'], 'tags': event['tags'] + ['z']}\n"
        "    return event\n"
    )
    result = pool.run_table("acme", "transform", source, pa.Table.from_pylist(events))
    assert result.table is not None and not result.errors
    assert result.table.to_pylist() == [
        {**events[0], "count": 2, "pair": {"city": "Oslo", "tags": ["a", "b", "z"]}},
        {**events[1], "count": 0, "pair": {"city": None, "tags": ["z"]}},
    ]


def test_json_tagged_input_columns_are_decoded_for_the_snippet(pool: SandboxPool) -> None:
    field = pa.field("v", pa.string(), metadata={JSON_TAG: b"1"})
    table = pa.table([pa.array(['{"k": 1}', '"text"', "3", None])], schema=pa.schema([field]))
    source = "def keep(event):\n    return isinstance(event['v'], dict) or event['v'] == 'text'\n"
    result = pool.run_table("acme", "keep", source, table)
    assert result.values == [True, True, False, False] and result.table is None


def test_keep_and_rule_return_one_value_per_row(pool: SandboxPool) -> None:
    table = pa.table({"status": [200, 500, 503]})
    keep = pool.run_table("acme", "keep", "def keep(event):\n    return event['status'] >= 500\n", table)
    assert keep.values == [False, True, True] and keep.source_index is None
    rule = pool.run_table("acme", "rule", "def rule(event):\n    return event['status'] == 503\n", table)
    assert rule.values is not None and [v["match"] for v in rule.values] == [False, False, True]


def test_empty_table_starts_no_worker(pool: SandboxPool) -> None:
    result = pool.run_table(
        "acme", "transform", "def transform(event):\n    return event\n", pa.table({"a": []})
    )
    assert result.table is not None and result.table.num_rows == 0 and result.source_index == []
    assert result.stats.worker_starts == 0
    keep = pool.run_table("acme", "keep", "def keep(event):\n    return True\n", pa.table({"a": []}))
    assert keep.values == []


def test_rows_without_fields_and_tables_without_columns(pool: SandboxPool) -> None:
    table = pa.table({"x": pa.nulls(3)}).drop_columns(["x"])  # 3 rows, no columns
    result = pool.run_table("acme", "transform", "def transform(event):\n    return {}\n", table)
    assert result.table is not None and (result.table.num_rows, result.table.num_columns) == (3, 0)
    assert result.source_index == [0, 1, 2]


def test_timeout_in_the_middle_round_trip_is_bisected_and_later_trips_still_run(
    trips_pool: SandboxPool,
) -> None:
    source = (
        "def transform(event):\n    if event['n'] == 5:\n        while True:\n            pass\n"
        "    return {'n': event['n']}\n"
    )
    result = trips_pool.run_table("acme", "transform", source, pa.table({"n": list(range(12))}))
    assert [(e.index, e.reason) for e in result.errors] == [(5, "timeout")]
    assert result.table is not None
    assert result.table.column("n").to_pylist() == [n for n in range(12) if n != 5]
    assert result.source_index == [n for n in range(12) if n != 5]
    # only the trip holding event 5 was bisected: it and its halves' stuck parts were killed
    assert 2 <= result.stats.kills <= 3
    assert result.stats.batches == 5  # every trip ran once, pipelined
    assert not trips_pool.quarantined("acme", "transform", source)


def test_timeouts_in_two_trips_of_one_batch_count_one_strike(trips_pool: SandboxPool) -> None:
    source = "def keep(event):\n    while event['n'] in (2, 9):\n        pass\n    return True\n"
    for round_ in range(trips_pool.limits.max_kills_before_quarantine - 1):
        result = trips_pool.run_table("acme", "keep", source, pa.table({"n": list(range(12))}))
        assert [(e.index, e.reason) for e in result.errors] == [(2, "timeout"), (9, "timeout")], round_
        assert result.values == [None if n in (2, 9) else True for n in range(12)]
    assert not trips_pool.quarantined("acme", "keep", source)


def test_run_on_rows_is_pipelined_too(trips_pool: SandboxPool) -> None:
    source = "def transform(event):\n    if event['n'] == 6:\n        raise KeyError('x')\n    return event\n"
    result = trips_pool.run("acme", "transform", source, [{"n": i} for i in range(13)])
    assert [v[0]["n"] if v else None for v in result.values] == [None if i == 6 else i for i in range(13)]
    assert [(e.index, e.error_type) for e in result.errors] == [(6, "KeyError")]
    assert result.stats.batches >= 4 and result.stats.worker_starts == 1


def test_not_a_table_is_refused(pool: SandboxPool) -> None:
    with pytest.raises(TypeError, match=r"pyarrow\.Table"):
        pool.run_table("acme", "transform", "def transform(event):\n    return event\n", [{"a": 1}])


# --- a hostile worker --------------------------------------------------------------------------

HOSTILE = """
import sys

def _hostile(values):
    return ANSWER

sys.modules["__main__"]._columnar = _hostile

def transform(event):
    return event
"""

BAD_ANSWERS = {
    "columns of different lengths": '{"names": ["a", "b"], '
    '"columns": [[1] * len(values), [1] * (len(values) + 1)], '
    '"rows": len(values), "source_index": None}',
    "source_index out of range": '{"names": ["a"], "columns": [[1] * len(values)], "rows": len(values), '
    '"source_index": [len(values) + 5] * len(values)}',
    "source_index decreasing": '{"names": ["a"], "columns": [[1, 2]], "rows": 2, "source_index": [1, 0]}',
    "names not strs": '{"names": [1], "columns": [[1] * len(values)], "rows": len(values), '
    '"source_index": None}',
    "duplicate names": '{"names": ["a", "a"], "columns": [[1] * len(values)] * 2, "rows": len(values), '
    '"source_index": None}',
    "rows not a count": '{"names": [], "columns": [], "rows": "many", "source_index": None}',
    "bytes values": '{"names": ["a"], "columns": [[b"raw"] * len(values)], "rows": len(values), '
    '"source_index": None}',
    "bytes inside nested values": '{"names": ["a"], "columns": [[[b"raw"]] * len(values)], '
    '"rows": len(values), '
    '"source_index": None}',
    "wrong row count without source_index": '{"names": ["a"], "columns": [[1] * (len(values) + 1)], '
    '"rows": len(values) + 1, "source_index": None}',
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_malformed_columns_from_a_worker_fail_as_crash_and_the_host_carries_on(
    raw_pool: SandboxPool, case: str
) -> None:
    source = HOSTILE.replace("ANSWER", BAD_ANSWERS[case])
    result = raw_pool.run_table("hostile", "transform", source, pa.table({"n": [1, 2]}))
    assert [(e.index, e.reason) for e in result.errors] == [(0, "crash"), (1, "crash")], case
    assert result.table is not None and result.table.num_rows == 0
    assert result.stats.kills >= 3  # the pair, then each event alone, all refused
    after = raw_pool.run_table(
        "hostile", "transform", "def transform(event):\n    return event\n", pa.table({"n": [3]})
    )
    assert after.table is not None and after.table.to_pylist() == [{"n": 3}] and not after.errors


def test_an_oversized_columnar_answer_is_refused_as_bad_output(raw_pool: SandboxPool) -> None:
    cap = raw_pool.limits.output_bytes_per_batch
    answer = (
        f'{{"names": ["a"], "columns": [["x" * {cap}] * len(values)], "rows": len(values), '
        '"source_index": None}'
    )
    result = raw_pool.run_table(
        "hostile", "transform", HOSTILE.replace("ANSWER", answer), pa.table({"n": [1]})
    )
    assert [(e.index, e.reason) for e in result.errors] == [(0, "bad_output")]


def test_a_failed_event_with_an_output_row_is_refused() -> None:
    message = {
        "ok": True,
        "names": ["a"],
        "columns": [[1]],
        "rows": 1,
        "source_index": [0],
        "logs": [],
        "errors": [{"index": 0, "reason": "error", "error_type": "ValueError", "message": "m"}],
    }
    with pytest.raises(codec.ProtocolError, match="failed has an output row"):
        codec.check_columns(message, 2, 10)
    message["source_index"] = [1]
    assert codec.check_columns(message, 2, 10)[2] == [1]


# --- unchanged columns are not sent back -------------------------------------------------------

REWRITE_ONE = """
def transform(event):
    event["method"] = event["method"].lower()
    event["nested"]["seen"] = True
    return event
"""


def test_unchanged_scalar_columns_come_back_as_the_hosts_own_and_changed_ones_as_values(
    pool: SandboxPool,
) -> None:
    table = pa.table({
        "method": ["GET", "POST", "put"],
        "status": pa.array([200, 500, 404], pa.int32()),  # a type the worker's answer could not name
        "path": ["/a", "/b", None],
        "nested": [{"seen": False}, {"seen": False}, {"seen": False}],
    })
    result = pool.run_table("acme", "transform", REWRITE_ONE, table)
    assert result.table is not None and not result.errors
    assert result.table.column("method").to_pylist() == ["get", "post", "put"]
    # unchanged: the input column itself (its int32 type proves no round trip through values)
    assert result.table.schema.field("status").type == pa.int32()
    assert result.table.column("path").to_pylist() == ["/a", "/b", None]
    # a struct changed in place is never taken for unchanged, though each row holds the same dict
    assert result.table.column("nested").to_pylist() == [{"seen": True}] * 3


def test_a_failed_or_fanned_out_event_sends_every_column_as_values(pool: SandboxPool) -> None:
    source = ("def transform(event):\n    if event['n'] == 1:\n        raise ValueError('x')\n"
              "    return event\n")
    result = pool.run_table("acme", "transform", source, pa.table({"n": pa.array([0, 1, 2], pa.int16())}))
    assert [e.index for e in result.errors] == [1]
    assert result.table is not None and result.table.column("n").to_pylist() == [0, 2]
    assert result.table.schema.field("n").type == pa.int64()  # rebuilt from values, not reused


def test_the_worker_marks_only_identical_scalar_columns() -> None:
    from sandbox.runtime import worker_main

    kept, changed = ["a", "b"], ["x", "y"]
    reply = {"names": ["k", "c", "new"], "columns": [list(kept), ["x", "z"], [1, 2]], "source_index": None}
    worker_main._mark_unchanged(reply, {"k": kept, "c": changed})
    assert reply["same"] == [0] and reply["columns"] == [[], ["x", "z"], [1, 2]]
    fanned = {"names": ["k"], "columns": [list(kept)], "source_index": [0, 0]}
    worker_main._mark_unchanged(fanned, {"k": kept})
    assert "same" not in fanned and fanned["columns"] == [kept]
    request = {"names": ["k", "d"], "columns": [kept, [{"n": 1}, {"n": 2}]], "scalars": [True, False]}
    assert list(worker_main._input_columns(request)) == ["k"]  # a dict column may change in place
    assert worker_main._input_columns({**request, "scalars": None}) == {}  # the host did not say


BAD_SAME = {
    "listed column not empty": '{"names": ["n"], "columns": [[1] * len(values)], "rows": len(values), '
    '"source_index": None, "same": [0]}',
    "a column the input lacks": '{"names": ["ghost"], "columns": [[]], "rows": len(values), '
    '"source_index": None, "same": [0]}',
    "with a source_index": '{"names": ["n"], "columns": [[]], "rows": len(values), '
    '"source_index": list(range(len(values))), "same": [0]}',
    "position out of range": '{"names": ["n"], "columns": [[]], "rows": len(values), '
    '"source_index": None, "same": [3]}',
    "positions repeated": '{"names": ["n"], "columns": [[]], "rows": len(values), '
    '"source_index": None, "same": [0, 0]}',
    "not a list": '{"names": ["n"], "columns": [[]], "rows": len(values), '
    '"source_index": None, "same": "n"}',
}


@pytest.mark.parametrize("case", sorted(BAD_SAME))
def test_a_false_claim_of_unchanged_columns_fails_as_crash(raw_pool: SandboxPool, case: str) -> None:
    source = HOSTILE.replace("ANSWER", BAD_SAME[case])
    result = raw_pool.run_table("hostile", "transform", source, pa.table({"n": [1, 2]}))
    assert [(e.index, e.reason) for e in result.errors] == [(0, "crash"), (1, "crash")], case
    assert result.table is not None and result.table.num_rows == 0


def test_unchanged_columns_survive_pieces_that_disagree_on_another_column(trips_pool: SandboxPool) -> None:
    """Round trips of 4: `x` is an int in the first piece and a str after, so the pieces are merged
    from Python values; the unchanged `n` (reused from the input in each piece) is among them."""
    source = "def transform(event):\n    event['x'] = 1 if event['n'] < 4 else 's'\n    return event\n"
    table = pa.table({"n": pa.array(range(10), pa.int32()), "tag": [f"t{i}" for i in range(10)]})
    result = trips_pool.run_table("acme", "transform", source, table)
    assert result.table is not None and not result.errors
    assert decoded(result.table) == [{"n": i, "tag": f"t{i}", "x": 1 if i < 4 else "s"} for i in range(10)]
