"""A trial run and the live executor must raise the same alerts for the same events: a reviewer
approves what the trial showed. The trial reads the events in one batch; the live executor reads
them from the log in small batches, with its adaptive sizes. Out-of-order events with a rule
and a windowed aggregate feeding derive make any dependence on batch boundaries show."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from primitives.batch import from_events
from sandbox import SandboxPool
from stream.log import EmbeddedLog
from stream.trial import run_trial
from tests.stream.test_executor import T0, TENANT, _executor, _sink, _wait

SPEC = """name: {name}
source: web
start: earliest
time: ts
steps:
  - rule:
      code: |
        def rule(event):
            return event["status"] >= 500
        def dedup(event):
            return event["host"]
        def title(event):
            return "errors on " + event["host"]
      threshold: 3
      window: 20s
      suppress: 40s
      severity: high
"""

AGGREGATE = """name: {name}
source: web
start: earliest
time: ts
steps:
  - aggregate:
      window: {{size: 30s, every: 10s}}
      by: [host]
      lateness: 5s
      measures:
        errors: "count(*) FILTER (WHERE status >= 500)"
  - derive:
      when: "errors >= 3"
      dedup: "{{host}}"
      title: "{{errors}} errors on {{host}}"
      suppress: 60s
"""


def events(seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    out, now = [], T0
    for n in range(600):
        now += rng.choice([0, 1, 1, 2])
        late = rng.randint(3, 40) if rng.random() < 0.2 else 0
        out.append({"n": n, "ts": now - late, "host": rng.choice(["a", "b", "c"]),
                    "status": rng.choice([200, 200, 500, 503])})
    # A live stream has no end, so its last windows stay open; a trial closes every window at the
    # end of its input. One quiet event far ahead closes them live too, and changes nothing else.
    out.append({"n": 600, "ts": now + 3600, "host": "a", "status": 200})
    return out


def summary(signals: dict[str, dict[str, Any]] | list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    values = signals.values() if isinstance(signals, dict) else signals
    return {s["id"]: (s["title"], s["count"], s["first_seen"], s["last_seen"]) for s in values}


def test_trial_and_live_raise_the_same_alerts(tmp_path: Path) -> None:
    stream = events(1)
    with SandboxPool() as pool, EmbeddedLog(tmp_path / "log") as log:
        log.create_stream(TENANT, "web", time_field="ts")
        rng = random.Random(2)
        start = 0
        while start < len(stream):  # appended in uneven pieces, read in small adaptive batches
            size = rng.randint(1, 90)
            log.append(TENANT, "web", from_events(stream[start:start + size]))
            start += size
        executor = _executor(tmp_path, log, pool, batch_size=25, max_batch_size=100)
        for name, text in (("rules", SPEC), ("windows", AGGREGATE)):
            executor.deploy(TENANT, text.format(name=name), actor="alice")
        try:
            for name, text in (("rules", SPEC), ("windows", AGGREGATE)):
                _wait(executor, name)
                trial = run_trial(text.format(name=name), events=stream, pool=pool, tenant=TENANT)
                assert trial.ok, trial.to_dict()
                assert len(trial.signals) >= 3, name  # not vacuous
                assert summary(_sink(tmp_path).signals(name)) == summary(trial.signals), name
        finally:
            executor.stop()
