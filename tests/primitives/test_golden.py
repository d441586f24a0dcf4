"""Behaviour as data: every `tests/golden/*.yaml` case, run through the step runtimes directly.

A case is `pipeline` (the spec), `events` (input), optional `batches: N` (split the input into N
batches, to carry state across them) and `expect` with any of: `outputs` (the exact events, in
order), `signals` (the listed keys of each signal, in order of first firing, latest state per id)
and `dead_letters` (the listed keys of each dead letter, in order). Code steps run in the real
sandbox. tests/stream/test_golden.py runs the same cases through the stream engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from primitives.registry import STEPS
from primitives.runtime import CodeRunner
from primitives.spec import spec_from_data
from tests.primitives.conftest import run_pipeline

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = sorted(GOLDEN.glob("*.yaml"))
KNOWN_KEYS = {"pipeline", "events", "batches", "expect"}


def split(events: list[dict[str, Any]], parts: int) -> list[list[dict[str, Any]]]:
    size = max(1, -(-len(events) // max(1, parts)))
    return [events[i : i + size] for i in range(0, len(events), size)] or [[]]


def test_every_step_kind_has_a_golden_case() -> None:
    covered = {path.name.split("_", 1)[0] for path in CASES}
    assert set(STEPS) <= covered, f"no golden case for: {sorted(set(STEPS) - covered)}"


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden_case(path: Path, sandbox_runner: CodeRunner) -> None:
    case = yaml.safe_load(path.read_text())
    assert set(case) <= KNOWN_KEYS, f"{path.name}: unknown keys {sorted(set(case) - KNOWN_KEYS)}"
    expect = case["expect"]
    assert expect and set(expect) <= {"outputs", "signals", "dead_letters"}, path.name
    spec = spec_from_data(case["pipeline"])
    run = run_pipeline(spec, split(case.get("events") or [], int(case.get("batches", 1))), sandbox_runner,
                       base_dir=str(GOLDEN))
    if "outputs" in expect:
        assert run.outputs == expect["outputs"]
    if "signals" in expect:
        signals = list(run.signals.values())
        assert len(signals) == len(expect["signals"]), signals
        assert [{k: s.get(k) for k in want} for s, want in zip(signals, expect["signals"], strict=True)] == \
            expect["signals"]
    if "dead_letters" in expect:
        dead = run.dead_letters
        assert len(dead) == len(expect["dead_letters"]), dead
        got = [{k: getattr(d, k) for k in want} for d, want in zip(dead, expect["dead_letters"], strict=True)]
        assert got == expect["dead_letters"]
