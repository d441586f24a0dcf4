"""Every example the guide shows runs: validated, then executed over realistic events.

The guide is what agents copy from, so each example pipeline is run through the real engine, with
code steps in real sandbox workers, over events shaped like its source stream, and must finish with
no step errors and produce something (events or signals).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from primitives.guide import examples, render_guide
from sandbox import SandboxPool
from stream.trial import run_trial

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
START = datetime(2024, 12, 10, 6, 0, tzinfo=UTC)


def web_events() -> list[dict[str, Any]]:
    events = []
    for i in range(600):
        events.append({
            "timestamp": (START + timedelta(seconds=i)).isoformat().replace("+00:00", "Z"),
            "host": "web-1" if i % 3 else "web-2",
            "client_ip": f"10.0.0.{i % 50}",
            "path": "/Admin/login" if i % 7 == 0 else f"/items/{i % 13}",
            "status": 500 if i % 4 == 0 else (403 if i % 7 == 0 else 200),
            "bytes": 100 + i,
            "duration_ms": i % 50,
        })
    return events


def auth_events() -> list[dict[str, Any]]:
    events = []
    for i in range(300):
        ip = f"203.0.113.{i % 3}"
        user = "root" if i % 2 else "invalid user  admin"
        text = (f"Failed password for {user} from {ip} port {40000 + i} ssh2" if i % 5
                else f"Accepted password for alice from {ip} port {40000 + i} ssh2")
        events.append({"timestamp": (START + timedelta(seconds=2 * i)).isoformat().replace("+00:00", "Z"),
                       "message": text, "user": "alice" if i % 5 == 0 else "root", "src_ip": ip})
    return events


EVENTS = {"web": web_events, "auth": auth_events}


@pytest.fixture(scope="module")
def pool():  # type: ignore[no-untyped-def]
    with SandboxPool() as shared:
        yield shared


@pytest.mark.parametrize("kind", sorted(examples()))
def test_guide_example_runs_without_errors_and_produces_results(kind: str, pool: SandboxPool) -> None:
    text = examples()[kind]
    assert text.strip().splitlines()[0] in render_guide(kind)
    source = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("source:"))
    report = run_trial(text, events=EVENTS[source](), pool=pool, base_dir=str(GOLDEN))
    assert report.validation.valid, report.validation.diagnostics
    assert report.failed_steps == [], report.errors
    assert report.output_count + len(report.signals) > 0, report.steps
