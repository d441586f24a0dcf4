"""The agent tools over the real transports, as agents reach them: real processes, real sockets.

- stdio: `logbus serve --stdio` as a child process, driven by the MCP SDK's stdio client (what
  Claude Desktop and Claude Code do).
- streamable HTTP at `/mcp` of `logbus serve` on a free 127.0.0.1 port, with bearer tokens made by
  `logbus token create`: who may connect (401/403), Host/Origin refusals, tenant isolation, and a
  whole agent loop on OpenSSH_2k.log up to alerts, with the reviewer's approval through the CLI.

Every server is started by the test that uses it and stopped (SIGTERM) before it ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
import pytest
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

ROOT = Path(__file__).resolve().parents[2]
SSH_LOG = ROOT.parent / "shared" / "data" / "loghub" / "OpenSSH_2k.log"
TOOLS = {"get_guide", "list_streams", "describe_stream", "sample_events", "validate_pipeline",
         "test_pipeline", "submit_pipeline", "list_pipelines", "get_pipeline", "list_signals", "query", "tap"}
# The example, from the earliest event: once approved, the live pipeline replays what was ingested.
FIXED = (ROOT / "examples" / "ssh_brute_force.yaml").read_text().replace("time: timestamp\n",
                                                                         "time: timestamp\nstart: earliest\n")
FIX = "          repeat = event.get(\"repeat\") or 1\n          return [event] * repeat\n"
BUG = "          return [event] * event[\"repeats\"]\n"  # a typo: the field is `repeat`
BUGGY = FIXED.replace(FIX, BUG)
INVALID = ("name: bad\nsource: auth\nsteps:\n  - id: tag\n    transform: |\n      def transform(event):\n"
           "          import os\n          return event\n")
INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
              "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                         "clientInfo": {"name": "probe", "version": "0"}}}
MCP_HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


# -- processes ------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def logbus(data: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "LOGBUS_DATA": str(data)}, timeout=120)
    if check:
        assert done.returncode == 0, f"logbus {' '.join(args)} -> {done.returncode}\n{done.stderr}"
    return done


@dataclass
class Server:
    url: str
    port: int
    data: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def token(self, tenant: str, role: str) -> str:
        return logbus(self.data, "token", "create", "--tenant", tenant, "--role", role).stdout.strip()


@contextmanager
def served(data: Path) -> Iterator[Server]:
    port = free_port()
    log = data.parent / f"serve-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "server.cli", "serve", "--data", str(data), "--port",
                                 str(port)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", port, data, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{server.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"logbus serve did not become healthy\n{log.read_text()}"
            time.sleep(0.1)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# -- MCP over HTTP --------------------------------------------------------------------------------------

class Agent:
    """An MCP client over streamable HTTP with one bearer token; each call is its own connection."""

    def __init__(self, server: Server, token: str) -> None:
        self.url, self.token = f"{server.url}/mcp", token

    def session(self, work: Any) -> Any:
        async def go() -> Any:
            headers = {"authorization": f"Bearer {self.token}"}
            async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(120.0)) as http, \
                    Client(streamable_http_client(self.url, http_client=http)) as client:
                return await work(client)

        return anyio.run(go)

    def call(self, tool: str, args: dict[str, Any] | None = None) -> CallToolResult:
        async def work(client: Client) -> CallToolResult:
            return await client.call_tool(tool, args or {})

        result: CallToolResult = self.session(work)
        return result

    def ok(self, tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        result = self.call(tool, args)
        assert not result.is_error, text(result)[:800]
        assert result.structured_content is not None
        return dict(result.structured_content)

    def error(self, tool: str, args: dict[str, Any], code: str) -> dict[str, Any]:
        result = self.call(tool, args)
        assert result.is_error and result.structured_content is not None, text(result)[:800]
        assert result.structured_content["error"] == code, result.structured_content
        return dict(result.structured_content)


def text(result: CallToolResult) -> str:
    block = result.content[0]
    assert isinstance(block, TextContent)
    return block.text


def raw(server: Server, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{server.url}/mcp", json=INITIALIZE, headers={**MCP_HEADERS, **headers}, timeout=30)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the HTTP tests; tenant acme holds the SSH log in stream auth."""
    data = tmp_path_factory.mktemp("mcp-http") / "data"
    with served(data) as server:
        ingest = server.token("acme", "ingest")
        logbus(data, "ingest", "auth", str(SSH_LOG), "--format", "lines", "--url", server.url,
               "--token", ingest)
        yield server


# -- stdio ----------------------------------------------------------------------------------------------

def test_stdio_session_lists_the_tools_and_validates(tmp_path: Path) -> None:
    params = StdioServerParameters(command=sys.executable, cwd=ROOT,
                                   args=["-m", "server.cli", "serve", "--stdio", "--data",
                                         str(tmp_path / "d")])

    async def go() -> tuple[set[str], CallToolResult, CallToolResult]:
        with open(tmp_path / "stderr.log", "w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                good = await client.call_tool("validate_pipeline", {"pipeline": FIXED})
                bad = await client.call_tool("validate_pipeline", {"pipeline": INVALID})
        return names, good, bad

    names, good, bad = anyio.run(go)
    assert names == TOOLS
    assert not good.is_error and good.structured_content and good.structured_content["valid"] is True
    assert bad.is_error and bad.structured_content is not None
    problem = bad.structured_content["diagnostics"][0]
    assert (problem["step"], problem["line"]) == ("tag", 2) and "os" in problem["message"]
    logged = (tmp_path / "stderr.log").read_text()
    assert "serving MCP on stdio as tenant 'default'" in logged and "stopping" in logged


# -- who may connect ------------------------------------------------------------------------------------

def test_no_or_unknown_token_is_401_and_non_author_roles_403(world: Server) -> None:
    missing = raw(world, {})
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    assert "logbus token create" in missing.json()["message"]
    assert raw(world, {"authorization": "Bearer lb_not-a-real-token"}).status_code == 401
    assert raw(world, {"authorization": "Basic dXNlcjpwdw=="}).status_code == 401
    for role in ("reviewer", "ingest"):
        refused = raw(world, {"authorization": f"Bearer {world.token('acme', role)}"})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden", role
    assert raw(world, {"authorization": f"Bearer {world.token('acme', 'author')}"}).status_code == 200
    admin = world.token("acme", "admin")
    assert raw(world, {"authorization": f"Bearer {admin}"}).status_code == 200
    admin_id = json.loads(logbus(world.data, "token", "list", "--json").stdout)[-1]["id"]
    logbus(world.data, "token", "revoke", str(admin_id))
    assert raw(world, {"authorization": f"Bearer {admin}"}).status_code == 401  # at once, no restart


def test_wrong_host_or_origin_is_refused_before_authentication(world: Server) -> None:
    auth = {"authorization": f"Bearer {world.token('acme', 'author')}"}
    assert raw(world, {**auth, "host": f"evil.example:{world.port}"}).status_code == 421
    assert raw(world, {**auth, "origin": "http://evil.example"}).status_code == 403
    assert raw(world, {**auth, "origin": "null"}).status_code == 403
    assert raw(world, {"host": "evil.example"}).status_code == 421  # no token needed to be refused
    for origin in (f"http://localhost:{world.port}", "http://127.0.0.1:3000", "http://[::1]:5173"):
        assert raw(world, {**auth, "origin": origin}).status_code == 200, origin
    assert raw(world, {**auth, "host": f"localhost:{world.port}"}).status_code == 200


# -- tenants --------------------------------------------------------------------------------------------

def test_another_tenant_sees_nothing_of_acme(world: Server) -> None:
    acme = Agent(world, world.token("acme", "author"))
    globex = Agent(world, world.token("globex", "author"))
    run = acme.ok("test_pipeline", {"pipeline": FIXED.replace("ssh-brute-force", "ssh-iso"), "limit": 200})
    assert [s["name"] for s in acme.ok("list_streams")["streams"]] == ["auth"]

    assert globex.ok("list_streams")["streams"] == []
    globex.error("describe_stream", {"stream": "auth"}, "unknown_stream")
    globex.error("sample_events", {"stream": "auth"}, "unknown_stream")
    globex.error("test_pipeline", {"pipeline": FIXED}, "unknown_stream")
    globex.error("submit_pipeline", {"pipeline": FIXED.replace("ssh-brute-force", "ssh-iso"),
                                     "run_id": run["run_id"], "summary": "steal"}, "unknown_run")
    assert globex.ok("list_pipelines")["pipelines"] == []
    globex.error("get_pipeline", {"name": "ssh-iso"}, "unknown_pipeline")
    globex.error("tap", {"pipeline": "ssh-iso"}, "unknown_pipeline")
    assert globex.ok("list_signals")["signals"] == []
    assert globex.ok("query", {"sql": "SELECT count(*) FROM signals"})["rows"] == [[0]]


# -- the whole loop -------------------------------------------------------------------------------------

def test_agent_loop_over_http_from_bug_to_alerts(world: Server) -> None:
    agent = Agent(world, world.token("acme", "author"))
    streams = agent.ok("list_streams")["streams"]
    assert streams[0]["name"] == "auth" and streams[0]["events"] == 2000

    # 1. the first draft has a bug: the diagnostic names the step, the line and the error
    failed = agent.error("test_pipeline", {"pipeline": BUGGY, "limit": 2000}, "test_failed")
    problem = next(d for d in failed["diagnostics"] if d["step"] == "expand_repeats")
    assert problem["line"] == 2 and "KeyError" in problem["message"] and "repeats" in problem["message"]
    agent.error("submit_pipeline", {"pipeline": BUGGY, "run_id": failed["run_id"], "summary": "x"},
                "run_failed")

    # 2. the fix passes on the same 2,000 events with the 11 expected alerts
    passed = agent.ok("test_pipeline", {"pipeline": FIXED, "limit": 2000})
    assert passed["ok"] is True and passed["signal_count"] == 11 and passed["events_read"] == 2000

    # 3. submit; the agent has no tool to approve with, and its role cannot approve through the CLI
    submitted = agent.ok("submit_pipeline", {"pipeline": FIXED, "run_id": passed["run_id"],
                                             "summary": "one alert per IP with 5+ failed passwords in 60 s"})
    review_id = submitted["review_id"]
    assert submitted["status"] == "pending_review" and f"logbus review approve {review_id}" in \
        submitted["how_to_decide"]
    assert not {"approve", "approve_pipeline", "deploy", "promote"} & agent.session(
        lambda client: _tool_names(client))
    refused = logbus(world.data, "review", "approve", review_id, "--token", world.token("acme", "author"),
                     check=False)
    assert refused.returncode == 1 and "role reviewer" in refused.stderr and "'author'" in refused.stderr
    other = world.token("globex", "reviewer")
    wrong_tenant = logbus(world.data, "review", "approve", review_id, "--token", other, check=False)
    assert wrong_tenant.returncode == 1 and "no review" in wrong_tenant.stderr
    listed = json.loads(logbus(world.data, "review", "list", "--tenant", "acme", "--status", "pending_review",
                               "--json").stdout)
    assert [r["review_id"] for r in listed] == [review_id]
    shown = logbus(world.data, "review", "show", review_id, "--tenant", "acme").stdout
    assert "test run" in shown and "passed" in shown and "11 signals" in shown and "expand_repeats" in shown

    # 4. a reviewer approves with the CLI; the running server picks the new version up from the registry
    approved = logbus(world.data, "review", "approve", review_id, "--tenant", "acme", "--reviewer", "rita",
                      "--comment", "thresholds look right")
    assert "approved by rita" in approved.stdout and "version 1" in approved.stdout
    decision = agent.ok("get_pipeline", {"name": "ssh-brute-force"})["reviews"][0]
    assert (decision["status"], decision["reviewer"], decision["comment"]) == ("approved", "rita",
                                                                              "thresholds look right")

    # 5. the live pipeline replays the stream: the alerts are visible to the agent over MCP
    deadline = time.monotonic() + 60
    signals: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        signals = agent.ok("list_signals", {"pipeline": "ssh-brute-force", "limit": 100})["signals"]
        if len(signals) >= 11:
            break
        time.sleep(0.5)
    assert len(signals) == 11, signals
    assert all(s["title"].startswith("SSH brute force from ") and s["severity"] == "high" for s in signals)
    assert agent.ok("query", {"sql": "SELECT count(*) FROM signals"})["rows"] == [[11]]
    shown_live = agent.ok("get_pipeline", {"name": "ssh-brute-force"})
    assert shown_live["status"] == "active" and shown_live["version"] == 1


async def _tool_names(client: Client) -> set[str]:
    return {tool.name for tool in (await client.list_tools()).tools}


def test_stdio_attaches_when_a_server_already_runs_on_the_data_directory(world: Server,
                                                                          tmp_path: Path) -> None:
    """A second client's stdio server must not fail on the lock: it serves the tools and leaves the
    pipelines to the running server. Over stdio the caller is tenant default: acme stays invisible."""
    params = StdioServerParameters(command=sys.executable, cwd=ROOT,
                                   args=["-m", "server.cli", "serve", "--stdio", "--data", str(world.data)])

    async def go() -> CallToolResult:
        with open(tmp_path / "stderr.log", "w") as errlog:
            async with Client(stdio_client(params, errlog=errlog)) as client:
                return await client.call_tool("list_streams", {})

    streams = anyio.run(go)
    assert not streams.is_error and streams.structured_content == {"streams": [], "truncated": False}
    logged = (tmp_path / "stderr.log").read_text()
    assert f"another logbus serve (pid {world.proc.pid}) runs the pipelines" in logged
    assert world.proc.poll() is None
