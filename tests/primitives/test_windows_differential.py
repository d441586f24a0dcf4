"""Windows against a reference written from their documented semantics (primitives.windows): random
event streams (out of order, late, several keys), every window kind, random lateness, and the
input cut into random batches. The aggregate step must emit exactly the rows the reference
computes, and send exactly its late events to the dead letters, however the input is batched."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from primitives.spec import PipelineSpec, load_spec
from tests.primitives.conftest import run_pipeline

BASE = 1_700_000_000  # epoch seconds, aligned to every window size used here
Row = tuple[str, str, str, int, int]  # window_start, window_end, key, count, sum


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fixed_reference(events: list[dict[str, Any]], size: int, every: int,
                    lateness: int) -> tuple[set[Row], int]:
    """An event joins each of its windows [s, s + size) that is still open when it arrives: the
    watermark before it (the largest earlier time minus lateness) is below the window's end. An
    event that joins none is late."""
    members: dict[tuple[int, str], list[int]] = defaultdict(list)
    latest, late = None, 0
    for event in events:
        t, key = event["ts"], event["k"]
        watermark = -(2**62) if latest is None else latest - lateness
        first = (t // every) * every - size + every
        joined = False
        for start in range(first, t + 1, every):
            if start <= t < start + size and watermark < start + size:
                members[(start, key)].append(event["v"])
                joined = True
        late += not joined
        latest = t if latest is None else max(latest, t)
    rows = {(iso(s), iso(s + size), k, len(vs), sum(vs)) for (s, k), vs in members.items()}
    return rows, late


def session_reference(events: list[dict[str, Any]], gap: int, lateness: int) -> tuple[set[Row], int]:
    """Per key, events closer than `gap` form one session [first, last + gap). A session closes when
    the watermark reaches its end. An event is late when a session it touches (first - gap < t <
    last + gap) has closed, or, touching none, when its own span [t, t + gap) has."""
    open_: dict[str, list[list[int]]] = defaultdict(list)  # key -> [first, last, count, sum]
    closed: dict[str, list[tuple[int, int]]] = defaultdict(list)
    rows: set[Row] = set()
    latest, late = None, 0
    for event in events:
        t, key, v = event["ts"], event["k"], event["v"]
        watermark = -(2**62) if latest is None else latest - lateness
        latest = t if latest is None else max(latest, t)
        for k, sessions in open_.items():  # close what the watermark has reached
            for s in [s for s in sessions if watermark >= s[1] + gap]:
                sessions.remove(s)
                closed[k].append((s[0], s[1]))
                rows.add((iso(s[0]), iso(s[1] + gap), k, s[2], s[3]))
        touched = [s for s in open_[key] if s[0] - gap < t < s[1] + gap]
        if any(first - gap < t < last + gap for first, last in closed[key]) or (
                not touched and watermark >= t + gap):
            late += 1
            continue
        merged = [min([t, *(s[0] for s in touched)]), max([t, *(s[1] for s in touched)]),
                  1 + sum(s[2] for s in touched), v + sum(s[3] for s in touched)]
        open_[key] = [s for s in open_[key] if s not in touched] + [merged]
    for k, sessions in open_.items():
        rows.update((iso(s[0]), iso(s[1] + gap), k, s[2], s[3]) for s in sessions)
    return rows, late


def stream(rng: random.Random) -> list[dict[str, Any]]:
    """Mostly forward in time with jitter, some stragglers far behind, a few keys."""
    events, now = [], BASE + rng.randint(0, 30)
    for _ in range(rng.randint(1, 60)):
        now += rng.choice([0, 1, 2, 3, 5, 8, 13])
        t = now - (rng.randint(0, 90) if rng.random() < 0.15 else rng.randint(0, 3))
        events.append({"ts": t, "k": rng.choice("abc"), "v": rng.randint(1, 9)})
    return events


def spec(window: str, lateness: int) -> PipelineSpec:
    return load_spec(f"""name: windows
source: s
time: ts
steps:
  - aggregate:
      window: {window}
      by: [k]
      lateness: {lateness}s
      measures:
        n: count(*)
        total: sum(v)
""")


def batches(rng: random.Random, events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    cuts = sorted(rng.sample(range(1, len(events)), min(len(events) - 1, rng.randint(0, 6))))
    return [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]


WINDOWS = ["10s", "30s", "{size: 20s, every: 10s}", "{size: 30s, every: 10s}", "{size: 60s, every: 20s}",
           "{gap: 5s}", "{gap: 15s}", "{gap: 30s}"]


@pytest.mark.parametrize("seed", range(300))
def test_aggregate_matches_the_documented_semantics(seed: int) -> None:
    rng = random.Random(seed)
    window, lateness, events = rng.choice(WINDOWS), rng.choice([0, 5, 20]), stream(rng)
    if window.startswith("{gap"):
        expected, late = session_reference(events, int(window[6:-2]), lateness)
    elif window.startswith("{"):
        size, every = (int(part.split(":")[1].strip().rstrip("s}")) for part in window[1:-1].split(","))
        expected, late = fixed_reference(events, size, every, lateness)
    else:
        size = int(window[:-1])
        expected, late = fixed_reference(events, size, size, lateness)
    run = run_pipeline(spec(window, lateness), batches(rng, events), None)
    rows = {(r["window_start"], r["window_end"], r["k"], r["n"], r["total"]) for r in run.outputs}
    assert len(run.outputs) == len(rows)  # no window emitted twice
    assert rows == expected
    assert sum(d.reason == "late" for d in run.dead_letters) == late
