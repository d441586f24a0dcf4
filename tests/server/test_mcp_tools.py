"""The agent tools through the MCP SDK's in-memory client, over real components.

Real: the embedded log (OpenSSH_2k.log ingested as lines), the sandbox pool, the registry, the
executor writing Parquet through OutputSink, DuckDB queries. Two tenants share the data directory
to prove isolation. The reviewer side goes through `server.reviews` (a person's action, not a tool).

Tool schemas are pinned in `snapshots/tools.json`. After a deliberate change to a tool's inputs or
outputs, regenerate it and review the diff:

    LOGBUS_UPDATE_SNAPSHOTS=1 python3 -m pytest tests/server/test_mcp_tools.py -k snapshot
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp.client import Client
from mcp.types import CallToolResult, TextContent

from sandbox import SandboxPool
from server.lifecycle import AgentContext, Lifecycle
from server.mcp_server import ERROR_CODES, MAX_TEXT, build_server
from server.reviews import ReviewError
from stream.executor import Executor, ExecutorConfig
from stream.ingest import ingest_bytes
from stream.log import EmbeddedLog
from stream.sinks import OutputSink

ROOT = Path(__file__).resolve().parents[2]
SSH_LOG = ROOT.parent / "shared" / "data" / "loghub" / "OpenSSH_2k.log"
SNAPSHOT = Path(__file__).parent / "snapshots" / "tools.json"
# The example, started from the earliest event so that the live executor sees the ingested sample.
BRUTE = (ROOT / "examples" / "ssh_brute_force.yaml").read_text().replace("time: timestamp\n",
                                                                         "time: timestamp\nstart: earliest\n")
FAILURES = """\
name: ssh-failures
source: auth
steps:
  - filter: "message LIKE '%Failed password%'"
  - id: tag
    transform: |
      def transform(event):
          event["kind"] = "failure"
          return event
"""
TOOLS = {"get_guide", "list_streams", "describe_stream", "sample_events", "validate_pipeline",
         "test_pipeline", "submit_pipeline", "list_pipelines", "get_pipeline", "list_signals", "query", "tap"}
WRITING = {"test_pipeline", "submit_pipeline"}


@dataclass
class World:
    data: Path
    log: EmbeddedLog
    pool: SandboxPool
    executor: Executor
    acme: AgentContext
    globex: AgentContext


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("logbus")
    log = EmbeddedLog(data / "log")
    ingest_bytes(log, "acme", "auth", SSH_LOG.read_bytes(), content_type="text/plain")
    web = b'{"status": 200, "path": "/"}\n{"status": 500, "path": "/admin"}\n'
    ingest_bytes(log, "globex", "web", web, content_type="application/x-ndjson")
    pool = SandboxPool()
    executor = Executor(data, log, sink_factory=OutputSink, outbox=None, pool=pool,
                        config=ExecutorConfig(poll_s=0.2))
    executor.start()
    acme = AgentContext("acme", "author", data, log, pool, executor)
    globex = AgentContext("globex", "author", data, log, pool, executor)
    yield World(data, log, pool, executor, acme, globex)
    executor.close()
    pool.close()
    log.close()


@pytest.fixture(scope="module")
def deployed(world: World) -> str:
    """ssh-brute-force tested, submitted, approved by a reviewer and caught up by the executor."""
    life = Lifecycle(world.acme)
    run = life.test(BRUTE, limit=2000)
    review = life.submit(BRUTE, run["run_id"], "alerts on SSH brute force")
    world.acme.reviews.approve("acme", review["review_id"], reviewer="rita", role="reviewer", comment="ok")
    assert world.executor.wait_caught_up("acme", "ssh-brute-force", timeout=60)
    return "ssh-brute-force"


def call(context: AgentContext, tool: str, args: dict[str, Any] | None = None,
         seen: list[tuple[float, float | None, str | None]] | None = None) -> CallToolResult:
    async def go() -> CallToolResult:
        async def on_progress(progress: float, total: float | None, message: str | None) -> None:
            if seen is not None:
                seen.append((progress, total, message))

        async with Client(build_server(context)) as client:
            return await client.call_tool(tool, args or {}, progress_callback=on_progress)

    return anyio.run(go)


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text(result)
    content: dict[str, Any] = result.structured_content
    assert content is not None
    return content


def error(result: CallToolResult, code: str) -> dict[str, Any]:
    assert result.is_error, text(result)
    content: dict[str, Any] = result.structured_content
    assert content is not None and content["error"] == code, content
    assert code in ERROR_CODES
    assert text(result).startswith(f"error {code}: ")
    return content


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def tool_schemas(context: AgentContext) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with Client(build_server(context)) as client:
            tools = (await client.list_tools()).tools
        return [{"name": t.name, "inputSchema": t.input_schema, "outputSchema": t.output_schema,
                 "annotations": t.annotations.model_dump(mode="json", by_alias=True, exclude_none=True)
                 if t.annotations else None}
                for t in sorted(tools, key=lambda t: t.name)]

    return anyio.run(go)


# -- the surface ---------------------------------------------------------------------------------------

def test_server_offers_exactly_the_design_tools_with_read_only_hints(world: World) -> None:
    schemas = tool_schemas(world.acme)
    assert {s["name"] for s in schemas} == TOOLS
    for schema in schemas:
        assert schema["annotations"]["readOnlyHint"] is (schema["name"] not in WRITING), schema["name"]
        assert schema["outputSchema"]["properties"]["truncated"]["type"] == "boolean"
        assert "tenant" not in schema["inputSchema"]["properties"]
        for name, prop in schema["inputSchema"]["properties"].items():
            assert prop.get("description"), f"{schema['name']}.{name} has no description"


def test_tool_schemas_match_the_snapshot(world: World) -> None:
    schemas = tool_schemas(world.acme)
    if os.environ.get("LOGBUS_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(json.dumps(schemas, indent=1, sort_keys=True) + "\n")
    assert schemas == json.loads(SNAPSHOT.read_text()), "tool schemas changed; see the module docstring"


def test_guide_tool_resource_and_unknown_topic(world: World) -> None:
    assert "## Spec format" in ok(call(world.acme, "get_guide"))["text"]
    assert "filter" in ok(call(world.acme, "get_guide", {"topic": "filter"}))["text"]
    assert "topics:" in error(call(world.acme, "get_guide", {"topic": "nope"}), "unknown_topic")["message"]

    async def read() -> str:
        async with Client(build_server(world.acme)) as client:
            contents = (await client.read_resource("logbus://guide")).contents[0]
            return str(getattr(contents, "text", ""))

    assert "## Spec format" in anyio.run(read)


# -- looking at streams -----------------------------------------------------------------------------------

def test_list_and_describe_stream_from_real_lines(world: World) -> None:
    streams = ok(call(world.acme, "list_streams"))["streams"]
    assert [(s["name"], s["events"], s["format"]) for s in streams] == [("auth", 2000, "lines")]
    assert streams[0]["top_fields"] == ["message"]
    schema = ok(call(world.acme, "describe_stream", {"stream": "auth"}))
    assert schema["fields"] == [{"field": "message", "type": "string", "null_rate": 0.0}]
    assert "parse" in schema["hint"]
    assert "streams: auth" in error(call(world.acme, "describe_stream", {"stream": "web"}),
                                    "unknown_stream")["message"]


def test_describe_stream_adds_examples_and_top_values_only_with_detail(world: World) -> None:
    concise = ok(call(world.acme, "describe_stream", {"stream": "auth"}))
    full = ok(call(world.acme, "describe_stream", {"stream": "auth", "detail": True}))
    assert "examples" not in concise["fields"][0] and "top_values" not in concise["fields"][0]
    field = full["fields"][0]
    assert (field["field"], field["type"], field["null_rate"]) == ("message", "string", 0.0)
    assert len(field["examples"]) == 3 and all(isinstance(e, str) for e in field["examples"])
    assert 1 <= len(field["top_values"]) <= 5 and field["top_values"][0]["count"] >= 1
    rest = [{k: v for k, v in r.items() if k != "fields"} for r in (concise, full)]
    assert rest[0] == rest[1]


def test_sample_events_filters_with_checked_sql(world: World) -> None:
    sample = ok(call(world.acme, "sample_events", {"stream": "auth", "limit": 5,
                                                   "where": "message LIKE '%Failed password%'"}))
    assert len(sample["events"]) == 5 and sample["scanned"] == 2000
    assert all("Failed password" in e["message"] for e in sample["events"])
    assert sample["offsets"] == sorted(sample["offsets"]) and sample["offsets"][-1] < 2000
    refused = error(call(world.acme, "sample_events", {"stream": "auth", "where": "read_csv('/etc/passwd')"}),
                    "invalid_where")
    problem = refused["diagnostics"][0]
    assert problem["step"] == "where" and problem["code"].startswith("sql")
    error(call(world.acme, "sample_events", {"stream": "auth", "limit": 0}), "invalid_argument")


def test_long_text_is_capped_and_flagged(world: World) -> None:
    result = call(world.acme, "sample_events", {"stream": "auth", "limit": 500})
    assert ok(result)["truncated"] is True and len(ok(result)["events"]) == 500
    assert len(text(result)) <= MAX_TEXT and text(result).endswith("[truncated; the structured content has "
                                                                   "everything]")


# -- validate and test ------------------------------------------------------------------------------------

def test_validate_returns_code_hash_or_diagnostics_with_step_and_line(world: World) -> None:
    valid = ok(call(world.acme, "validate_pipeline", {"pipeline": FAILURES}))
    assert valid["valid"] is True and len(valid["code_hash"]) == 64 and valid["diagnostics"] == []
    bad = FAILURES.replace('event["kind"] = "failure"', 'import os')
    refused = error(call(world.acme, "validate_pipeline", {"pipeline": bad}), "invalid_pipeline")
    problem = refused["diagnostics"][0]
    assert problem["step"] == "tag" and problem["line"] == 2 and "os" in problem["message"]
    assert set(problem) == {"code", "message", "step", "line", "hint"}
    assert "step 'tag' line 2" in text(call(world.acme, "validate_pipeline", {"pipeline": bad}))


def test_test_pipeline_runs_in_the_sandbox_with_progress(world: World) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    run = ok(call(world.acme, "test_pipeline", {"pipeline": BRUTE, "limit": 2000}, progress))
    assert run["ok"] is True and run["run_id"].startswith("run_") and run["events_read"] == 2000
    assert run["signal_count"] == 11 and run["signals"][0]["severity"] == "high"
    assert [s["id"] for s in run["steps"]][-1] == "brute_force" and run["steps"][0]["in"] == 2000
    assert progress and progress[-1][0] == 2000 and progress[-1][1] == 2000


def test_test_pipeline_is_concise_unless_detail_is_asked(world: World) -> None:
    concise = ok(call(world.acme, "test_pipeline", {"pipeline": FAILURES, "limit": 500}))
    full = ok(call(world.acme, "test_pipeline", {"pipeline": FAILURES, "limit": 500, "detail": True}))
    assert concise["output_count"] == full["output_count"] > 100  # counts are whole either way
    assert len(concise["outputs"]) == 5 and len(full["outputs"]) == 100  # the trial keeps 100
    assert concise["omitted"] == {"outputs": 95} and full["omitted"] == {}
    untimed = [[{k: v for k, v in step.items() if k != "seconds"} for step in r["steps"]]
               for r in (concise, full)]
    assert concise["outputs"] == full["outputs"][:5] and untimed[0] == untimed[1]
    brute = ok(call(world.acme, "test_pipeline", {"pipeline": BRUTE, "limit": 2000}))
    assert brute["signal_count"] == 11 and len(brute["signals"]) == 11  # under the concise 20


def test_concise_test_failure_keeps_ten_error_groups(world: World) -> None:
    # errors group by step, reason, type and line: a raise on each of 16 lines makes up to 16 groups
    raises = "\n".join(f"          if event['n'] == {n}:\n              raise ValueError()"
                       for n in range(16))
    crashing = FAILURES.replace('          event["kind"] = "failure"', raises)
    events = [{"message": "Failed password", "n": n} for n in range(16)]
    args = {"pipeline": crashing, "events": events}
    concise = error(call(world.acme, "test_pipeline", args), "test_failed")
    full = error(call(world.acme, "test_pipeline", {**args, "detail": True}), "test_failed")
    assert len(full["errors"]) == 16 and len(concise["errors"]) == 10
    assert concise["omitted"]["errors"] == 6 and "errors" not in full["omitted"]
    assert len(concise["diagnostics"]) == 16, "the actionable diagnostics are not cut"


def test_inline_cases_pass_or_fail_the_run(world: World) -> None:
    line = "Dec 10 06:55:46 LabSZ sshd[24200]: Failed password for root from 1.2.3.4 port 22 ssh2"
    kept = {"outputs": 1, "output_contains": {"kind": "failure"}}
    cases = [{"name": "kept", "event": {"message": line}, "expect": kept},
             {"name": "wrong", "event": {"message": "hello"}, "expect": {"outputs": 1}}]
    failed = error(call(world.acme, "test_pipeline", {"pipeline": FAILURES, "tests": cases}), "test_failed")
    assert failed["run_id"].startswith("run_") and failed["ok"] is False
    assert [c["passed"] for c in failed["tests"]] == [True, False]
    assert failed["diagnostics"][0]["code"] == "test-case-failed"
    assert "wrong: expected 1 outputs, got 0" in failed["diagnostics"][0]["message"]
    error(call(world.acme, "test_pipeline", {"pipeline": FAILURES, "events": []}), "no_events")
    error(call(world.acme, "test_pipeline", {"pipeline": "name: x"}), "invalid_pipeline")


def test_inline_events_that_are_not_valid_unicode_are_the_agents_error_not_ours(world: World) -> None:
    # JSON's "\\ud800" escape reaches the server as a lone surrogate, which no table can hold
    events = [{"message": "x"}, {"message": "ok", "extra": {"tags": ["fine", "a\ud800b"]}}]
    failed = error(call(world.acme, "test_pipeline", {"pipeline": FAILURES, "events": events}),
                   "invalid_argument")
    assert failed["message"].startswith("event 1['extra']['tags'][1] holds text that is not valid Unicode")
    case = [{"name": "bad", "event": {"message": "\udc80"}, "expect": {"outputs": 0}}]
    args = {"pipeline": FAILURES, "events": [{"message": "x"}], "tests": case}
    error(call(world.acme, "test_pipeline", args), "invalid_argument")


def test_code_errors_are_grouped_with_their_line(world: World) -> None:
    crashing = FAILURES.replace('event["kind"] = "failure"', 'event["kind"] = 1 / 0')
    failed = error(call(world.acme, "test_pipeline", {"pipeline": crashing, "limit": 50}), "test_failed")
    problem = failed["diagnostics"][0]
    assert problem["step"] == "tag" and problem["line"] == 2 and "ZeroDivisionError" in problem["message"]


# -- submit and review ------------------------------------------------------------------------------------

def test_submit_requires_a_passing_run_of_exactly_this_code_hash(world: World) -> None:
    args = {"pipeline": FAILURES, "summary": "tags failed logins"}
    error(call(world.acme, "submit_pipeline", {**args, "run_id": "run_missing"}), "unknown_run")
    passing = ok(call(world.acme, "test_pipeline", {"pipeline": FAILURES, "limit": 100}))["run_id"]
    changed = FAILURES.replace("failure", "fail")
    error(call(world.acme, "submit_pipeline", {**args, "pipeline": changed, "run_id": passing}),
          "code_hash_mismatch")
    crashing = FAILURES.replace('event["kind"] = "failure"', 'event["kind"] = 1 / 0')
    failed = error(call(world.acme, "test_pipeline", {"pipeline": crashing, "limit": 20}), "test_failed")
    error(call(world.acme, "submit_pipeline", {**args, "pipeline": crashing, "run_id": failed["run_id"]}),
          "run_failed")
    error(call(world.globex, "submit_pipeline", {**args, "run_id": passing}), "unknown_run")

    review = ok(call(world.acme, "submit_pipeline", {**args, "run_id": passing}))
    assert review["status"] == "pending_review" and review["review_id"] in review["how_to_decide"]
    assert review["version"] == 1  # a new pipeline: approval makes it version 1 (N+1)
    assert f"logbus review approve {review['review_id']}" in review["how_to_decide"]
    listed = ok(call(world.acme, "list_pipelines", {"status": "pending_review"}))["pipelines"]
    assert [(p["name"], p["pending_review"]) for p in listed] == [("ssh-failures", review["review_id"])]
    shown = ok(call(world.acme, "get_pipeline", {"name": "ssh-failures"}))
    assert shown["deployed"] is False and shown["reviews"][0]["status"] == "pending_review"


def test_only_a_reviewer_other_than_the_author_decides(world: World) -> None:
    life = Lifecycle(world.acme)
    text_ = FAILURES.replace("ssh-failures", "ssh-reject")
    review = life.submit(text_, life.test(text_, limit=50)["run_id"], "try")
    reviews = world.acme.reviews
    with pytest.raises(ReviewError) as denied:
        reviews.approve("acme", review["review_id"], reviewer="someone", role="author")
    assert denied.value.code == "forbidden"
    with pytest.raises(ReviewError) as own:
        reviews.approve("acme", review["review_id"], reviewer="agent", role="reviewer")
    assert own.value.code == "forbidden"
    with pytest.raises(ReviewError) as other_tenant:
        reviews.approve("globex", review["review_id"], reviewer="rita", role="reviewer")
    assert other_tenant.value.code == "unknown_review"
    reviews.reject("acme", review["review_id"], reviewer="rita", role="reviewer", comment="use a rule step")
    shown = ok(call(world.acme, "get_pipeline", {"name": "ssh-reject"}))
    assert (shown["reviews"][0]["status"], shown["reviews"][0]["comment"]) == ("rejected", "use a rule step")
    with pytest.raises(ReviewError) as again:
        reviews.approve("acme", review["review_id"], reviewer="rita", role="reviewer")
    assert again.value.code == "already_decided"
    actions = [a["action"] for a in world.acme.registry.audit("acme", "ssh-reject")]
    assert actions == ["review_rejected", "review_requested"]


# -- a deployed pipeline ----------------------------------------------------------------------------------

def test_get_pipeline_shows_version_live_status_and_decision(world: World, deployed: str) -> None:
    shown = ok(call(world.acme, "get_pipeline", {"name": deployed}))
    assert shown["deployed"] is True and shown["status"] == "active" and shown["version"] == 1
    assert shown["live"]["counters"]["events_in"] == 2000 and shown["live"]["lag"] == 0
    assert shown["reviews"][0]["status"] == "approved" and shown["reviews"][0]["version"] == 1
    assert not {"spec", "versions", "audit"} & set(shown), "the concise default leaves these out"
    full = ok(call(world.acme, "get_pipeline", {"name": deployed, "detail": True}))
    assert full["spec"] == BRUTE and [v["version"] for v in full["versions"]] == [1]
    assert [a["action"] for a in full["audit"]][:3] == ["review_approved", "deploy", "review_requested"]
    assert {k: v for k, v in full.items() if k not in ("spec", "versions", "audit", "live")} == \
        {k: v for k, v in shown.items() if k != "live"}
    assert ok(call(world.acme, "list_pipelines", {"status": "active"}))["pipelines"][0]["name"] == deployed
    error(call(world.acme, "get_pipeline", {"name": "nope"}), "unknown_pipeline")
    error(call(world.acme, "list_pipelines", {"status": "odd"}), "invalid_argument")


def test_signals_and_query_see_what_the_executor_wrote(world: World, deployed: str) -> None:
    signals = ok(call(world.acme, "list_signals", {"pipeline": deployed}))
    assert len(signals["signals"]) == 11 and signals["more"] is False
    assert signals["signals"][0]["title"].startswith("SSH brute force from ")
    assert ok(call(world.acme, "list_signals", {"severity": "critical"}))["signals"] == []
    assert len(ok(call(world.acme, "list_signals", {"severity": "medium", "limit": 3}))["signals"]) == 3
    assert ok(call(world.acme, "list_signals", {"since": "2030-01-01T00:00:00Z"}))["signals"] == []
    error(call(world.acme, "list_signals", {"since": "yesterday"}), "invalid_argument")
    error(call(world.acme, "list_signals", {"severity": "urgent"}), "invalid_argument")
    rows = ok(call(world.acme, "query", {"sql": "SELECT count(*) AS n FROM signals"}))
    assert rows["rows"] == [[11]] and rows["more_rows"] is False
    refused = error(call(world.acme, "query", {"sql": "DROP VIEW signals"}), "query_error")
    assert refused["diagnostics"][0]["code"] == "not_read_only"


def test_tap_samples_the_running_pipeline_live(world: World, deployed: str) -> None:
    lines = b"".join(SSH_LOG.read_bytes().splitlines(keepends=True)[:300])  # 70 failed passwords

    def ingest_later() -> None:  # new events arrive while the tap waits
        time.sleep(0.3)
        ingest_bytes(world.log, "acme", "auth", lines, content_type="text/plain")

    feeder = threading.Thread(target=ingest_later, daemon=True)
    feeder.start()
    tapped = ok(call(world.acme, "tap", {"pipeline": deployed, "step": "user_and_ip", "limit": 5}))
    feeder.join()
    assert tapped["mode"] == "live" and tapped["version"] == 1 and tapped["complete"] is True
    assert len(tapped["events"]) == 5 and all(e["src_ip"] and e["user"] for e in tapped["events"])
    assert tapped["source_events"] is None and tapped["note"] is None
    assert world.executor.wait_caught_up("acme", deployed, timeout=60)
    quiet = Lifecycle(world.acme).tap(deployed, "failed_only", limit=3, timeout_s=0.2)
    assert quiet["mode"] == "live" and quiet["events"] == [] and quiet["complete"] is False
    assert "only 0 of 3 events left step 'failed_only'" in quiet["note"]


def test_tap_replays_the_deployed_version_without_an_executor(world: World, deployed: str) -> None:
    attached = AgentContext("acme", "author", world.data, world.log, world.pool)  # stdio attach mode
    tapped = ok(call(attached, "tap", {"pipeline": deployed, "step": "user_and_ip", "limit": 5}))
    assert tapped["mode"] == "replay" and tapped["version"] == 1 and tapped["source_events"] == 1000
    assert len(tapped["events"]) == 5 and all(e["src_ip"] for e in tapped["events"])
    assert tapped["signals"] == []  # the rule step after user_and_ip did not run
    assert "syslog, failed_only" in error(call(world.acme, "tap", {"pipeline": deployed, "step": "x"}),
                                          "unknown_step")["message"]
    error(call(world.acme, "tap", {"pipeline": "nope"}), "unknown_pipeline")


def test_resources_and_prompt(world: World, deployed: str) -> None:
    async def go() -> tuple[str, str, str]:
        async with Client(build_server(world.acme)) as client:
            schema = (await client.read_resource("logbus://streams/auth/schema")).contents[0]
            pipeline = (await client.read_resource(f"logbus://pipelines/{deployed}")).contents[0]
            prompt = await client.get_prompt("write_detection", {"stream": "auth", "goal": "find scans"})
            message = prompt.messages[0].content
            return (str(getattr(schema, "text", "")), str(getattr(pipeline, "text", "")),
                    str(getattr(message, "text", "")))

    schema, pipeline, prompt = anyio.run(go)
    assert json.loads(schema)["fields"][0]["field"] == "message"
    assert json.loads(pipeline)["version"] == 1
    assert "'auth'" in prompt and "find scans" in prompt and "submit_pipeline" in prompt


# -- tenants and roles ------------------------------------------------------------------------------------

def test_another_tenant_sees_none_of_it(world: World, deployed: str) -> None:
    g = world.globex
    assert [s["name"] for s in ok(call(g, "list_streams"))["streams"]] == ["web"]
    error(call(g, "describe_stream", {"stream": "auth"}), "unknown_stream")
    error(call(g, "sample_events", {"stream": "auth"}), "unknown_stream")
    assert ok(call(g, "list_pipelines"))["pipelines"] == []
    error(call(g, "get_pipeline", {"name": deployed}), "unknown_pipeline")
    error(call(g, "tap", {"pipeline": deployed}), "unknown_pipeline")
    assert ok(call(g, "list_signals"))["signals"] == []
    assert ok(call(g, "query", {"sql": "SELECT count(*) FROM signals"}))["rows"] == [[0]]
    refused = error(call(g, "query", {"sql": f"SELECT * FROM {deployed.replace('-', '_')}"}), "query_error")
    assert refused["diagnostics"][0]["code"] == "forbidden_table"


def test_a_non_author_credential_cannot_use_the_agent_tools(world: World) -> None:
    reviewer = AgentContext("acme", "reviewer", world.data, world.log, world.pool, world.executor)
    assert "author credential" in error(call(reviewer, "list_streams"), "forbidden")["message"]


def test_an_unexpected_failure_reaches_the_agent_with_its_text(world: World,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug or a broken disk is not the agent's to fix, but its text must not vanish."""
    from server.lifecycle import Lifecycle

    def broken(self: Lifecycle) -> dict[str, Any]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Lifecycle, "list_streams", broken)
    result = call(world.acme, "list_streams")
    assert result.is_error
    content = result.structured_content
    assert content is not None and content["error"] == "internal"
    assert "OSError" in text(result) and "No space left on device" in text(result)
