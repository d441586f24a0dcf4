"""Behaviour as data: every `tests/golden/*.yaml` case runs through the real engine.

A case is a pipeline, its input events and what must come out: `outputs` (exact events, in
order), `signals` (the listed keys of each signal, in order of first firing; signals are upserts
by id, so the latest state of each id counts) and `dead_letters` (the listed keys, in order).
`batches: N` splits the input into N batches to exercise state carried across batches. Code steps
run in real sandbox workers, as they do in production.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from primitives.batch import from_events, to_events
from primitives.signals import latest_signals
from primitives.spec import spec_from_data
from sandbox import SandboxPool
from stream.engine import Engine, sandbox_code_runner

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(GOLDEN.glob("*.yaml"))


@pytest.fixture(scope="module")
def pool():  # type: ignore[no-untyped-def]
    with SandboxPool() as shared:
        yield shared


def run_case(case: dict[str, Any], pool: SandboxPool) -> tuple[list[Any], list[Any], list[Any]]:
    spec = spec_from_data(case["pipeline"])
    engine = Engine(spec, run_code=sandbox_code_runner(pool, "golden"), base_dir=str(GOLDEN))
    events = case.get("events") or []
    parts = max(1, int(case.get("batches", 1)))
    size = max(1, -(-len(events) // parts))
    batches = [events[i : i + size] for i in range(0, len(events), size)] or [[]]
    total = engine.process_all(from_events(batch) for batch in batches)
    outputs = [event for table in total.events for event in to_events(table)]
    return outputs, latest_signals(total.signals), total.dead_letters


def test_there_is_a_golden_case_for_every_step_kind() -> None:
    from primitives.registry import STEPS

    covered = {path.name.split("_", 1)[0] for path in CASES}
    assert set(STEPS) <= covered, f"no golden case for: {sorted(set(STEPS) - covered)}"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_case(path: Path, pool: SandboxPool) -> None:
    case = yaml.safe_load(path.read_text())
    expect = case["expect"]
    assert expect, f"{path.name} expects nothing"
    outputs, signals, dead = run_case(case, pool)
    if "outputs" in expect:
        assert outputs == expect["outputs"]
    if "signals" in expect:
        pairs = zip(signals, expect["signals"], strict=False)
        got = [{key: signal.get(key) for key in wanted} for signal, wanted in pairs]
        assert len(signals) == len(expect["signals"]), signals
        assert got == expect["signals"]
    if "dead_letters" in expect:
        got_dead = [{key: getattr(letter, key) for key in wanted}
                    for letter, wanted in zip(dead, expect["dead_letters"], strict=False)]
        assert len(dead) == len(expect["dead_letters"]), dead
        assert got_dead == expect["dead_letters"]
