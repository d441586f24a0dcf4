"""One event must not cost its whole batch. `status >= 400` cannot bind on a batch where one event
holds `"status": "x"` (the field is then text), and a sender could blind a detection pipeline that
way, one such event per batch. The engine re-runs such a step on halves of the batch, retyped,
until the events it fails on stand alone; the effort per batch is bounded."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest

from primitives.batch import from_events
from primitives.runtime import StepResult
from stream import engine as engine_module
from stream.engine import Engine
from stream.validation import validate_pipeline

T0 = 1_700_000_000
STEPS = {
    "filter": '  - filter: "status >= 400"\n',
    "transform": '  - transform:\n      set: {family: "status // 100"}\n',
    "derive": '  - derive:\n      when: "status >= 500"\n      dedup: "{host}"\n',
}


def build(step: str) -> Engine:
    validation = validate_pipeline(f"name: iso\nsource: s\ntime: ts\nsteps:\n{STEPS[step]}")
    assert validation.spec is not None
    return Engine(validation.spec, run_code=None)


def events(n: int, bad: set[int]) -> list[dict[str, Any]]:
    return [{"ts": T0 + i, "host": f"h{i % 3}", "status": "x" if i in bad else (500 if i % 2 else 404)}
            for i in range(n)]


@pytest.mark.parametrize("step", list(STEPS))
def test_only_the_events_a_step_fails_on_are_dead_letters(step: str) -> None:
    engine = build(step)
    bad = {7, 2500, 4999}
    out = engine.process(from_events(events(5000, bad)))
    assert sum(t.num_rows for t in out.events) == 4997
    assert sorted(d.event["ts"] - T0 for d in out.dead_letters if d.reason == "error" and d.event) == [
        7, 2500, 4999]
    assert all("failed on this event" in d.message for d in out.dead_letters if d.reason == "error")
    assert engine.stats[0].errors == 3
    if step == "derive":  # the alerts of a run without the bad events, each in its latest state
        clean = build(step).process(from_events([e for i, e in enumerate(events(5000, bad)) if i not in bad]))
        assert out.signals == clean.signals and len(out.signals) >= 3


def test_a_batch_of_only_bad_events_costs_a_bounded_effort(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = build("filter")
    runtime = engine._steps[0][1]
    calls = []
    real = runtime.process

    def counted(batch: pa.Table) -> StepResult:
        calls.append(batch.num_rows)
        return real(batch)

    monkeypatch.setattr(runtime, "process", counted)
    out = engine.process(from_events(events(20_000, bad=set(range(20_000)))))
    assert out.events == [] and len(out.dead_letters) == 20_000
    assert len(calls) <= 1 + engine_module.ISOLATION_CALLS
