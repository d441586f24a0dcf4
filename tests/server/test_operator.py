"""Operator commands on a data directory: apply refuses what would not run; every state change is
audited with the local user and visible in `logbus status`; `query` only reads."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Any

import pytest

from tests.server.test_serve import TRANSFORM, events, logbus, ndjson

BROKEN_CODE = TRANSFORM.replace('event["n"] * 2', 'event["missing"] * 2')
BAD_SPEC = TRANSFORM.replace("transform: |", "transfrom: |")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A data directory with 200 events in stream `web` of tenant default, ingested locally."""
    source = tmp_path / "events.ndjson"
    source.write_bytes(ndjson(events(0, 200)))
    done = logbus(tmp_path / "data", "ingest", "web", str(source), "--local", "--json")
    assert json.loads(done.stdout)["accepted"] == 200
    return tmp_path / "data"


def _spec(tmp_path: Path, text: str, name: str = "p.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _status(data: Path) -> dict[str, dict[str, object]]:
    report = json.loads(logbus(data, "status", "--json").stdout)
    return {p["name"]: p for p in report["pipelines"]}


def test_apply_refuses_an_invalid_spec_and_a_failing_step_and_deploys_nothing(data: Path,
                                                                           tmp_path: Path) -> None:
    invalid = logbus(data, "pipelines", "apply", _spec(tmp_path, BAD_SPEC), check=False)
    assert invalid.returncode == 1
    assert "not a valid pipeline" in invalid.stderr and "transfrom" in invalid.stderr
    failing = logbus(data, "pipelines", "apply", _spec(tmp_path, BROKEN_CODE), check=False)
    assert failing.returncode == 1
    assert "failed on the last 200 events" in failing.stderr and "line 2" in failing.stderr
    assert json.loads(logbus(data, "pipelines", "list", "--json").stdout) == []
    missing = logbus(data, "pipelines", "apply", str(tmp_path / "nope.yaml"), check=False)
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_apply_says_when_a_new_pipeline_will_skip_the_stored_events(data: Path, tmp_path: Path) -> None:
    """`start: latest` (the default) on a stream that has events: the user is told, on the first
    version only, and how to process those events too."""
    def apply(text: str, name: str) -> dict[str, Any]:
        done = logbus(data, "pipelines", "apply", _spec(tmp_path, text, name), "--json")
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    latest = TRANSFORM.replace("start: earliest\n", "")
    first = apply(latest, "l1.yaml")
    assert any("start: earliest" in note and "'web'" in note for note in first["notes"]), first["notes"]
    second = apply(latest.replace("* 2", "* 3"), "l2.yaml")
    assert second["version"] == 2 and second["notes"] == []  # v2 continues from v1's position
    earliest = apply(TRANSFORM.replace("name: doubler", "name: from-start"), "e.yaml")
    assert earliest["version"] == 1 and earliest["notes"] == []
    other = _spec(tmp_path, latest.replace("name: doubler", "name: other"), "o.yaml")
    assert "add `start: earliest`" in logbus(data, "pipelines", "apply", other).stdout


def test_lifecycle_is_audited_with_the_local_user_and_visible_in_status(data: Path, tmp_path: Path) -> None:
    v1 = _spec(tmp_path, TRANSFORM, "v1.yaml")
    v2 = _spec(tmp_path, TRANSFORM.replace("* 2", "* 3"), "v2.yaml")
    applied = json.loads(logbus(data, "pipelines", "apply", v1, "--json").stdout)
    assert applied["version"] == 1 and applied["changed"] and applied["sampled_events"] == 200
    assert applied["trial"]["ok"] and applied["trial"]["outputs"] == 200
    again = json.loads(logbus(data, "pipelines", "apply", v1, "--json").stdout)
    assert again["version"] == 1 and again["changed"] is False  # unchanged: no new version
    assert json.loads(logbus(data, "pipelines", "apply", v2, "--json").stdout)["version"] == 2

    status = _status(data)["doubler"]
    assert status["version"] == 2 and status["state"] == "server not running"
    assert status["position"] is None and status["end_offset"] == 200  # never ran: no checkpoint yet

    assert "version 1, active" in logbus(data, "pipelines", "rollback", "doubler").stdout
    logbus(data, "pipelines", "pause", "doubler", "--reason", "noisy")
    assert _status(data)["doubler"]["state"] == "paused" and _status(data)["doubler"]["reason"] == "noisy"
    again_pause = logbus(data, "pipelines", "pause", "doubler", check=False)
    assert again_pause.returncode == 1 and "is paused, not active" in again_pause.stderr
    logbus(data, "pipelines", "resume", "doubler")
    rolled = json.loads(logbus(data, "pipelines", "rollback", "doubler", "--to", "2", "--json").stdout)
    assert rolled["version"] == 2 and rolled["status"] == "active"
    logbus(data, "pipelines", "retire", "doubler", "--reason", "replaced")
    listed = json.loads(logbus(data, "pipelines", "list", "--json").stdout)
    assert [(p["name"], p["version"], p["status"], p["source"]) for p in listed] == [
        ("doubler", 2, "retired", "web")]
    assert _status(data)["doubler"]["state"] == "retired"

    audit = json.loads(logbus(data, "pipelines", "audit", "doubler", "--json").stdout)
    assert [(e["action"], e["version"]) for e in reversed(audit)] == [
        ("deploy", 1), ("deploy", 2), ("rollback", 1), ("pause", 1), ("resume", 1), ("rollback", 2),
        ("retire", 2)]
    assert {e["actor"] for e in audit} == {getpass.getuser()}
    assert audit[0]["detail"] == {"reason": "replaced"}
    human = logbus(data, "pipelines", "audit").stdout
    assert "retire" in human and getpass.getuser() in human


def test_unknown_pipeline_and_bad_usage_exit_codes(data: Path) -> None:
    unknown = logbus(data, "pipelines", "pause", "ghost", check=False)
    assert unknown.returncode == 1
    assert "not deployed" in unknown.stderr and "pipelines apply" in unknown.stderr
    assert logbus(data, "pipelines", check=False).returncode == 2
    assert logbus(data, "serve", "--port", "0", check=False).returncode == 2
    assert logbus(data, "query", "SELECT 1", "--limit", "0", check=False).returncode == 2
    assert logbus(data, "ingest", "web", "missing.ndjson", check=False).returncode == 2
    nourl = logbus(data, "ingest", "web", "-", "--url", "http://127.0.0.1:1", check=False)
    assert nourl.returncode == 2 and "LOGBUS_TOKEN" in nourl.stderr


@pytest.mark.parametrize("command", [["serve"], ["ingest"], ["pipelines"], ["pipelines", "apply"],
                                     ["pipelines", "rollback"], ["query"], ["status"], ["token", "create"]])
def test_every_command_explains_itself_with_examples(tmp_path: Path, command: list[str]) -> None:
    done = logbus(tmp_path, *command, "--help")
    assert "examples:" in done.stdout and "logbus " + command[0] in done.stdout


def test_query_reads_and_refuses_writes(data: Path) -> None:
    done = logbus(data, "query", "SELECT count(*) AS n FROM signals", "--json")
    assert json.loads(done.stdout)["rows"] == [[0]]
    for sql in ("DELETE FROM signals", "CREATE TABLE x AS SELECT 1", "COPY signals TO '/tmp/x.csv'",
                "SELECT 1; SELECT 2", "SELECT * FROM read_csv('/etc/passwd')"):
        refused = logbus(data, "query", sql, check=False)
        assert refused.returncode == 1 and refused.stdout == "", sql
        assert refused.stderr.startswith("logbus query: "), refused.stderr
    human = logbus(data, "query", "SELECT 42 AS answer").stdout
    assert human.split() == ["answer", "42"]


def test_ingest_rerun_stores_nothing_twice_and_reports_bad_lines(data: Path, tmp_path: Path) -> None:
    source = tmp_path / "events.ndjson"
    again = json.loads(logbus(data, "ingest", "web", str(source), "--local", "--json").stdout)
    assert again["accepted"] == 200 and again["duplicates"] == 1  # the same chunk: stored once
    bad = tmp_path / "bad.ndjson"
    bad.write_bytes(b'{"n": 1}\nnot json\n{"n": 2}\n')
    done = logbus(data, "ingest", "web", str(bad), "--local")
    assert done.stdout.startswith("2 events into web (1 rejected") and "line 2" in done.stderr
    from stream.log import EmbeddedLog

    with EmbeddedLog(data / "log", readonly=True) as log:
        assert log.end_offset("default", "web") == 202
