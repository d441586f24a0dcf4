"""The output table under random use: batches whose value column changes type from batch to batch
(int, float, text, bool, struct, list, a JSON-tagged mix), some empty, some replayed (the same
range written again, as after a crash) and compactions in between. Every source offset's row must
be read back exactly once, with its value present where it was written, whatever the drift."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from primitives.batch import from_events
from stream.sinks import OutputSink, run_query

KINDS: list[Any] = [
    lambda r: r.randint(-5, 5), lambda r: r.random(), lambda r: r.choice(["x", "é", ""]),
    lambda r: r.random() < 0.5, lambda r: {"a": r.randint(0, 3)}, lambda r: [r.randint(0, 3)],
    lambda r: r.choice([1, "one", {"a": 1}, [1]]),  # a mix in one batch: JSON-tagged text
]


def batch_rows(rng: random.Random, first: int, last: int) -> list[dict[str, Any]]:
    kind = rng.choice(KINDS)
    rows = []
    for offset in range(first, last + 1):
        if rng.random() < 0.3:
            continue  # a filtered-out event: no output row for this offset
        row: dict[str, Any] = {"timestamp": f"2024-12-10T00:{offset % 60:02d}:00Z", "src": offset}
        if rng.random() < 0.8:
            row["v"] = kind(rng)
        if rng.random() < 0.3:
            row["w"] = rng.choice(KINDS)(rng)
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(25))
def test_every_offset_reads_back_once_with_its_value_whatever_the_drift(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    sink = OutputSink(tmp_path, "acme", grace_s=0, compact_after=rng.choice([None, 3]))
    written: dict[int, dict[str, Any]] = {}
    batches = []
    for index in range(rng.randint(5, 25)):
        first = index * 10
        rows = batch_rows(rng, first, first + 9)
        batches.append((first, first + 9, rows))
        sink.write_outputs("p", 1, from_events(rows), first, first + 9)
        written.update({row["src"]: row for row in rows})
        if rng.random() < 0.3:  # a replay of an earlier range writes what it wrote before
            again = rng.choice(batches)
            sink.write_outputs("p", 1, from_events(again[2]), again[0], again[1])
        if rng.random() < 0.2:
            sink.compact("p", min_files=2)
    if not written:
        return
    result = run_query(tmp_path, "acme", "SELECT src, v IS NOT NULL FROM p ORDER BY src", limit=10_000)
    assert [row[0] for row in result.rows] == sorted(written)  # each offset once: none lost, none doubled
    assert [row[1] for row in result.rows] == ["v" in written[src] for src in sorted(written)]
