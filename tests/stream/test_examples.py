"""The example pipelines in examples/ run on the shared real logs and find what is really there.

Each expectation is computed independently here, in plain Python over the raw file, and compared
with what the pipeline (real sandbox workers for its code steps) reports.
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from sandbox import SandboxPool
from stream.trial import run_trial

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
EXAMPLES = ROOT / "examples"

FAILED = re.compile(r"Failed password for (?:invalid user )?.+? from (\S+) port")
REPEATED = re.compile(r"message repeated (\d+) times: \[ ?(.*)\]")


def ips_with_burst(path: Path, threshold: int = 5, window: timedelta = timedelta(seconds=60)) -> set[str]:
    """Source IPs with >= threshold failed passwords inside some 60 s span (repeats count N times)."""
    times: dict[str, list[datetime]] = defaultdict(list)
    for raw in path.read_bytes().decode().splitlines():
        stamp = datetime.strptime("2024 " + raw[:15], "%Y %b %d %H:%M:%S")
        repeats, text = 1, raw
        repeated = REPEATED.search(raw)
        if repeated:
            repeats, text = int(repeated.group(1)), repeated.group(2)
        match = FAILED.search(text)
        if match:
            times[match.group(1)].extend([stamp] * repeats)
    found = set()
    for ip, stamps in times.items():
        stamps.sort()
        if any(stamps[i + threshold - 1] - stamps[i] < window for i in range(len(stamps) - threshold + 1)):
            found.add(ip)
    return found


@pytest.fixture(scope="module")
def pool():  # type: ignore[no-untyped-def]
    with SandboxPool() as shared:
        yield shared


def test_ssh_brute_force_alerts_once_per_attacking_ip(pool: SandboxPool) -> None:
    log = DATA / "loghub" / "OpenSSH_2k.log"
    expected = ips_with_burst(log)
    assert len(expected) == 11  # the data's ground truth, computed above

    report = run_trial((EXAMPLES / "ssh_brute_force.yaml").read_bytes(), source=log, fmt="lines", pool=pool)

    assert report.ok, report.to_dict()
    assert sorted(s["dedup"] for s in report.signals) == sorted(expected)
    assert all(s["count"] >= 5 for s in report.signals)


def test_apache_error_log_parses_every_line(pool: SandboxPool) -> None:
    report = run_trial((EXAMPLES / "apache_errors.yaml").read_bytes(),
                       source=DATA / "loghub" / "Apache_2k.log", fmt="lines", pool=pool)
    assert report.ok, report.to_dict()
    assert report.events_read == 2000
    assert report.output_count == 2000
    assert report.dead_letters == 0
    assert {"level", "message"} <= set(report.outputs[0])


def test_web_scanner_pipeline_flags_the_webshell(pool: SandboxPool) -> None:
    report = run_trial((EXAMPLES / "web_scanners.yaml").read_bytes(),
                       source=DATA / "web_access.log", fmt="lines", pool=pool)
    assert report.ok, report.to_dict()
    assert report.signals, "the scanners and the webshell in web_access.log must raise signals"
    assert any("cmd.jsp" in str(s) for s in report.signals)
