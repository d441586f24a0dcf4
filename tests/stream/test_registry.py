"""Deployed pipeline versions: N+1 per deploy, status transitions, rollback, and an audit of everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from primitives.spec import code_hash, load_spec
from stream.registry import PipelineRegistry, RegistryError, UnknownPipeline

SPEC = """name: errors
source: web
steps:
  - filter: "status >= {status}"
"""


def _deploy(registry: PipelineRegistry, status: int = 500, tenant: str = "acme") -> int:
    text = SPEC.format(status=status)
    spec = load_spec(text)
    return registry.deploy(tenant, text, spec, code_hash(spec), "alice")


def test_each_deploy_is_the_next_version_and_becomes_current(tmp_path: Path) -> None:
    registry = PipelineRegistry(tmp_path)
    assert _deploy(registry, 500) == 1
    assert _deploy(registry, 400) == 2
    current = registry.get("acme", "errors")
    assert (current.version, current.status) == (2, "active")
    assert "status >= 400" in current.spec_text
    assert [v.version for v in registry.versions("acme", "errors")] == [1, 2]
    assert registry.versions("acme", "errors")[0].code_hash != current.code_hash
    # Tenants are separate namespaces.
    assert _deploy(registry, 300, tenant="other") == 1
    assert [d.tenant for d in registry.pipelines()] == ["acme", "other"]


def test_state_survives_reopening(tmp_path: Path) -> None:
    registry = PipelineRegistry(tmp_path)
    _deploy(registry)
    registry.pause("acme", "errors", "bob", "maintenance")
    registry.close()
    again = PipelineRegistry(tmp_path)
    current = again.get("acme", "errors")
    assert (current.status, current.reason) == ("paused", "maintenance")
    assert (tmp_path / "state" / "registry.sqlite3").exists()


def test_pause_resume_retire_and_their_preconditions(tmp_path: Path) -> None:
    registry = PipelineRegistry(tmp_path)
    _deploy(registry)
    with pytest.raises(RegistryError, match="not paused"):
        registry.resume("acme", "errors", "bob")
    assert registry.pause("acme", "errors", "bob").status == "paused"
    with pytest.raises(RegistryError, match="only an active pipeline can be paused"):
        registry.pause("acme", "errors", "bob")
    assert registry.resume("acme", "errors", "bob").status == "active"
    assert registry.retire("acme", "errors", "bob").status == "retired"
    with pytest.raises(RegistryError, match="already retired"):
        registry.retire("acme", "errors", "bob")
    with pytest.raises(RegistryError, match="deploy it again"):
        registry.rollback("acme", "errors", "bob")
    # Deploying a retired pipeline again makes it active with a new version.
    assert _deploy(registry) == 2
    assert registry.get("acme", "errors").status == "active"
    assert [d.name for d in registry.pipelines(status="retired")] == []


def test_rollback_makes_an_earlier_version_current(tmp_path: Path) -> None:
    registry = PipelineRegistry(tmp_path)
    _deploy(registry, 500)
    with pytest.raises(RegistryError, match="no version before 1"):
        registry.rollback("acme", "errors", "bob")
    _deploy(registry, 400)
    _deploy(registry, 300)
    assert registry.rollback("acme", "errors", "bob").version == 2
    assert registry.rollback("acme", "errors", "bob", to_version=1).version == 1
    assert "status >= 500" in registry.get("acme", "errors").spec_text
    with pytest.raises(RegistryError, match=r"choose one of \[2, 3\]"):
        registry.rollback("acme", "errors", "bob", to_version=7)


def test_every_action_is_audited_with_actor_time_and_detail(tmp_path: Path) -> None:
    registry = PipelineRegistry(tmp_path)
    _deploy(registry, 500)
    _deploy(registry, 400)
    registry.pause("acme", "errors", "executor", "error budget spent")
    registry.resume("acme", "errors", "carol")
    registry.rollback("acme", "errors", "dave")
    registry.retire("acme", "errors", "erin", "replaced")
    registry.record("acme", "errors", 1, "restart", "executor", {"why": "sink error"})
    entries = registry.audit("acme", "errors")
    assert [(e["action"], e["actor"], e["version"]) for e in entries] == [
        ("restart", "executor", 1), ("retire", "erin", 1), ("rollback", "dave", 1), ("resume", "carol", 2),
        ("pause", "executor", 2), ("deploy", "alice", 2), ("deploy", "alice", 1)]
    assert entries[4]["detail"] == {"reason": "error budget spent"}
    assert entries[2]["detail"] == {"from_version": 2}
    assert entries[-1]["detail"]["source"] == "web" and len(entries[-1]["detail"]["code_hash"]) == 64
    assert all(e["at"] > 0 for e in entries)


def test_unknown_pipeline_and_bad_input_get_clear_errors(tmp_path: Path) -> None:
    registry = PipelineRegistry(tmp_path)
    with pytest.raises(UnknownPipeline, match="not deployed for tenant 'acme'"):
        registry.get("acme", "nope")
    spec = load_spec(SPEC.format(status=500))
    with pytest.raises(RegistryError, match="tenant 'Bad/Tenant' is invalid"):
        registry.deploy("Bad/Tenant", "x", spec, code_hash(spec), "alice")
    with pytest.raises(RegistryError, match="actor must name who acts"):
        registry.deploy("acme", "x", spec, code_hash(spec), " ")
    with pytest.raises(RegistryError, match="status 'running' is not one of"):
        registry.pipelines(status="running")  # type: ignore[arg-type]
