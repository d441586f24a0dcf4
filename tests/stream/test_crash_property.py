"""kill -9 at a random point of a random out-of-order stream: the outputs and alerts after the
restart equal an uninterrupted run's. Rules and derive keep state across batches (alert books,
snapshotted), aggregates keep open windows (rebuilt by replay); a replay reads other batch sizes
than the first run did, which is what makes out-of-order input the hard case."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from primitives.batch import from_events
from sandbox import SandboxPool
from tests.stream.test_executor import T0, _run_with_crash
from tests.stream.test_trial_matches_live import AGGREGATE, SPEC

SPECS = {"rules": SPEC.format(name="rules"), "windows": AGGREGATE.format(name="windows")}


def tables(rng: random.Random) -> list[pa.Table]:
    events, now = [], T0
    for n in range(500):
        now += rng.choice([0, 1, 1, 2])
        late = rng.randint(3, 40) if rng.random() < 0.2 else 0
        events.append({"n": n, "ts": now - late, "host": rng.choice(["a", "b", "c"]),
                       "status": rng.choice([200, 200, 500, 503])})
    events.append({"n": 500, "ts": now + 3600, "host": "a", "status": 200})  # closes the last windows
    cuts = sorted(rng.sample(range(1, len(events)), 8))
    return [from_events(events[a:b]) for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    with SandboxPool() as pool:
        yield pool


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("name", list(SPECS))
def test_a_crash_anywhere_changes_nothing(tmp_path: Path, pool: SandboxPool, name: str, seed: int) -> None:
    rng = random.Random(f"{name}/{seed}")
    parts = tables(rng)
    stage = rng.choice(["begin", "sink", "outbox"])
    crash_at = rng.randint(60, 400)
    interval = rng.choice([0.0, 60.0])
    clean = _run_with_crash(tmp_path / "clean", pool, SPECS[name], name, parts, None)
    crashed = _run_with_crash(tmp_path / "crashed", pool, SPECS[name], name, parts, crash_at, stage,
                              state_interval_s=interval)
    assert len(clean.signals(name)) >= 3
    assert crashed.signals(name) == clean.signals(name)
    assert sorted(map(str, crashed.rows(name))) == sorted(map(str, clean.rows(name)))
