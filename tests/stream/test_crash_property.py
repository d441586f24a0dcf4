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
from tests.stream.test_executor import _run_with_crash
from tests.stream.test_trial_matches_live import AGGREGATE, SPEC, events

SPECS = {"rules": SPEC.format(name="rules"), "windows": AGGREGATE.format(name="windows")}


def tables(rng: random.Random) -> list[pa.Table]:
    """The trial-vs-live stream (out of order, a last event that closes every window), cut at
    random points into the appends the log receives."""
    stream = events(rng.randrange(1 << 30))
    cuts = sorted(rng.sample(range(1, len(stream)), 8))
    return [from_events(stream[a:b]) for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]


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
    crash_at = rng.randint(60, 500)
    interval = rng.choice([0.0, 60.0])
    clean = _run_with_crash(tmp_path / "clean", pool, SPECS[name], name, parts, None)
    crashed = _run_with_crash(tmp_path / "crashed", pool, SPECS[name], name, parts, crash_at, stage,
                              state_interval_s=interval)
    assert len(clean.signals(name)) >= 3
    assert crashed.signals(name) == clean.signals(name)
    assert sorted(map(str, crashed.rows(name))) == sorted(map(str, clean.rows(name)))
