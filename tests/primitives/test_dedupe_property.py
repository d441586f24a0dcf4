"""dedupe against a reference written from its docstring: an event is forwarded when no event of
its key was forwarded less than `within` before or after it (event time), a key is forgotten once
the newest event time seen is 2 x `within` past a forward, and the judgement is made event by
event in arrival order. Random out-of-order streams, several keys, random batches."""

from __future__ import annotations

import random
from typing import Any

import pytest

from primitives.spec import load_spec
from tests.primitives.conftest import run_pipeline

BASE = 1_700_000_000


def reference(events: list[dict[str, Any]], within: int) -> list[int]:
    forwarded: dict[str, list[int]] = {}
    newest: int | None = None
    kept = []
    for event in events:
        t, key = event["ts"], event["k"]
        remembered = [f for f in forwarded.get(key, []) if newest is None or f > newest - 2 * within]
        if all(abs(t - f) >= within for f in remembered):
            remembered.append(t)
            kept.append(event["n"])
        forwarded[key] = remembered
        newest = t if newest is None else max(newest, t)
    return kept


@pytest.mark.parametrize("seed", range(150))
def test_dedupe_forwards_what_the_reference_forwards(seed: int) -> None:
    rng = random.Random(seed)
    within = rng.choice([5, 10, 30])
    events, now = [], BASE
    for n in range(rng.randint(1, 60)):
        now += rng.choice([0, 1, 2, 3, 7])
        t = now - (rng.randint(1, 40) if rng.random() < 0.25 else 0)
        events.append({"n": n, "ts": t, "k": rng.choice("ab")})
    spec = load_spec(f"name: d\nsource: s\ntime: ts\nsteps:\n  - dedupe:\n      by: [k]\n"
                     f"      within: {within}s\n")
    cuts = sorted(rng.sample(range(1, len(events)), min(len(events) - 1, rng.randint(0, 5))))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    assert [row["n"] for row in run_pipeline(spec, batches, None).outputs] == reference(events, within)
