"""No step's outcome may depend on how its input is cut into batches: the live executor reads
adaptive batch sizes, a replay after a restart reads other ones, and a trial run cuts a file
differently again. Random out-of-order streams through the declarative steps that keep state
(dedupe, aggregate, derive) and the stateless ones around them, as one batch, in random cuts and
one event at a time: the same outputs, signals and dead letters each time."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from primitives.spec import load_spec
from tests.primitives.conftest import PipelineRun, run_pipeline

BASE = 1_700_000_000

PIPELINES = {
    "dedupe": """
  - filter: "status >= 400 OR CAST(host AS VARCHAR) = 'a'"
  - dedupe:
      by: [host, status]
      within: 20s
""",
    "sample then transform": """
  - sample:
      rate: 0.5
      by: [host]
  - transform:
      set:
        slow: "ms > 500"
""",
    "aggregate then derive": """
  - aggregate:
      window: {size: 30s, every: 10s}
      by: [host]
      lateness: 5s
      measures:
        errors: "count(*) FILTER (WHERE status >= 500)"
        worst: "max(ms)"
  - derive:
      when: "errors >= 2"
      title: "{errors} errors on {host}"
      dedup: "{host}"
      suppress: 45s
""",
    "session aggregate": """
  - aggregate:
      window: {gap: 15s}
      by: [host]
      lateness: 10s
      measures:
        events: "count(*)"
        slowest: "max(ms)"
""",
    "derive over events": """
  - derive:
      when: "status >= 500"
      dedup: "{host}"
      title: "errors on {host}"
      suppress: 20s
""",
}


# A key whose type changes between events: which of them share a batch decides how the field is
# stored (an int column, text, or JSON-tagged text when "a" and 1 meet). Floats are left out: a
# batch stores an int beside a float as a float, and SQL then reads 1 as 1.0 (see the guide).
DRIFTING_HOSTS: list[Any] = ["a", "b", 1, 2, "1", True]


def stream(rng: random.Random, drift: bool) -> list[dict[str, Any]]:
    events, now = [], BASE
    for _ in range(rng.randint(1, 80)):
        now += rng.choice([0, 1, 2, 4, 7])
        t = now - (rng.randint(5, 80) if rng.random() < 0.15 else 0)
        host = rng.choice(DRIFTING_HOSTS) if drift else rng.choice("abc")
        events.append({"ts": t, "host": host, "status": rng.choice([200, 200, 404, 500, 503]),
                       "ms": rng.randint(1, 900)})
    return events


def cut(rng: random.Random, events: list[dict[str, Any]], pieces: int) -> list[list[dict[str, Any]]]:
    points = sorted(rng.sample(range(1, len(events)), min(len(events) - 1, pieces - 1))) if pieces > 1 else []
    return [events[a:b] for a, b in zip([0, *points], [*points, len(events)], strict=True)]


def outcome(run: PipelineRun) -> tuple[Counter[str], dict[str, Any], Counter[str]]:
    """Outputs and dead letters as multisets (a window's rows may close in another order when
    batches end elsewhere; the rows themselves must not differ), signals by id in final state."""
    outputs = Counter(json.dumps(row, sort_keys=True) for row in run.outputs)
    dead = Counter(json.dumps([d.step, d.reason, d.event], sort_keys=True, default=str)
                   for d in run.dead_letters)
    return outputs, run.signals, dead


@pytest.mark.parametrize("drift", [False, True], ids=["steady key", "drifting key"])
@pytest.mark.parametrize("name", list(PIPELINES))
@pytest.mark.parametrize("seed", range(15))
def test_outcome_does_not_depend_on_batching(name: str, seed: int, drift: bool) -> None:
    rng = random.Random(f"{name}/{seed}/{drift}")
    spec = load_spec(f"name: batching\nsource: s\ntime: ts\nsteps:{PIPELINES[name]}")
    events = stream(rng, drift)
    expected = outcome(run_pipeline(spec, [events], None))
    for pieces in (2, rng.randint(3, 10), len(events)):
        assert outcome(run_pipeline(spec, cut(rng, events, pieces), None)) == expected, pieces
    assert sum(expected[0].values()) + len(expected[1]) > 0 or len(events) < 8  # not vacuous
