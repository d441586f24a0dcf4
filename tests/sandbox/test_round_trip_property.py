"""Events through the sandbox and back are the events that went in: random tables of awkward
values (integers past int64 and float precision, NUL and astral characters, empty and nested
containers, a field whose type changes between events, odd keys), through snippets that return
the event as is, touch one field, or return it twice. Whatever path a column takes (the host's
own column reused, values over the wire, JSON-tagged text), the values must not change."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from primitives.batch import from_events, to_events
from sandbox.isolation import launcher
from sandbox.limits import Limits
from sandbox.pool import SandboxPool
from tests.stream.test_inputs_differential import _without_nulls

BIG = 12345678901234567890
SCALARS: list[Any] = [None, True, False, 0, -1, 2**53 + 1, 2**63 - 1, -(2**63), 2**63, 2**64, BIG, -BIG,
                      1.5, -0.0, 1e300, "", "é", "😀", "a\x00b", "line\nbreak", "2024-01-01T00:00:00Z",
                      '{"not": "json"}']
KEYS = ["a", "b", "n", "a.b", "ключ", "with space"]

SNIPPETS = {
    "as is": "def transform(event):\n    return event\n",
    "touched": "def transform(event):\n    event['touched'] = True\n    return event\n",
    "twice": "def transform(event):\n    return [event, dict(event)]\n",
}


def value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.random()
    if depth < 2 and kind < 0.15:
        return {rng.choice(KEYS): value(rng, depth + 1) for _ in range(rng.randint(0, 2))}
    if depth < 2 and kind < 0.25:
        return [value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return rng.choice(SCALARS)


def events(rng: random.Random) -> list[dict[str, Any]]:
    # a field keeps one type in most tables (the common case) and changes type in some
    stable = {key: value(rng) for key in KEYS}
    mixed = rng.random() < 0.5
    return [{key: value(rng) if mixed else stable[key] for key in rng.sample(KEYS, rng.randint(1, len(KEYS)))}
            for _ in range(rng.randint(1, 25))]


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    limits = Limits(memory_bytes=256 << 20, batch_deadline_base_s=2.0, event_deadline_s=0.5,
                    round_trip_events=8)  # several round trips per table
    with SandboxPool(limits, _launcher=launcher()) as pool:
        yield pool


@pytest.mark.parametrize("seed", range(40))
def test_values_come_back_unchanged(pool: SandboxPool, seed: int) -> None:
    rng = random.Random(seed)
    table = from_events(events(rng))
    sent = [_without_nulls(e) for e in to_events(table)]
    name = rng.choice(list(SNIPPETS))
    result = pool.run_table("acme", "transform", SNIPPETS[name], table)
    assert not result.errors, result.errors
    assert result.table is not None
    back = [_without_nulls(e) for e in to_events(result.table)]
    if name == "touched":
        sent = [{**e, "touched": True} for e in sent]
    if name == "twice":
        sent = [e for event in sent for e in (event, event)]
    assert back == sent
    assert [type(v) for e in back for v in e.values()] == [type(v) for e in sent for v in e.values()]
