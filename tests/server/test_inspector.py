"""The MCP Inspector's CLI (the reference client from the MCP project) against `logbus serve --stdio`.

A second, independent client implementation (TypeScript SDK) must see the same 12 tools and the
same `isError` result with step, line and message as our Python tests do. The Inspector is pinned
and installed by `scripts/test` into `.cache/npm-inspector` (gitignored); run alone, this test
installs it there itself when npm is available, and fails (never skips) when it is not.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
VERSION = "0.21.2"  # keep in step with INSPECTOR_VERSION in scripts/test
PREFIX = ROOT / ".cache" / "npm-inspector"
BINARY = PREFIX / "node_modules" / ".bin" / "mcp-inspector"
PACKAGE = PREFIX / "node_modules" / "@modelcontextprotocol" / "inspector" / "package.json"
TOOLS = {"get_guide", "list_streams", "describe_stream", "sample_events", "validate_pipeline",
         "test_pipeline", "submit_pipeline", "list_pipelines", "get_pipeline", "list_signals", "query", "tap"}
INVALID = ("name: bad\nsource: auth\nsteps:\n  - id: tag\n    transform: |\n      def transform(event):\n"
           "          import os\n          return event\n")


def inspector() -> Path:
    """The pinned Inspector binary, installed on first use."""
    if BINARY.exists() and PACKAGE.exists() and json.loads(PACKAGE.read_text())["version"] == VERSION:
        return BINARY
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("the MCP Inspector test needs Node.js and npm (node >= 18) on PATH to install "
                    f"@modelcontextprotocol/inspector@{VERSION} into {PREFIX}; install them "
                    "(e.g. apt-get install nodejs npm) and run scripts/test")
    PREFIX.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix",
                           str(PREFIX), f"@modelcontextprotocol/inspector@{VERSION}"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0 and BINARY.exists(), f"npm install of the Inspector failed:\n{done.stderr}"
    return BINARY


def run_cli(data: Path, *method: str) -> dict[str, Any]:
    command = [str(inspector()), "--cli", sys.executable, "-m", "server.cli", "serve", "--stdio",
               "--data", str(data), *method]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"inspector exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_inspector_lists_the_twelve_tools_with_schemas(tmp_path: Path) -> None:
    tools = run_cli(tmp_path / "data", "--method", "tools/list")["tools"]
    assert {tool["name"] for tool in tools} == TOOLS
    validate = next(tool for tool in tools if tool["name"] == "validate_pipeline")
    assert validate["inputSchema"]["required"] == ["pipeline"]
    assert validate["annotations"]["readOnlyHint"] is True
    assert validate["outputSchema"]["properties"]["valid"]["type"] == "boolean"


def test_inspector_sees_an_invalid_pipeline_as_an_error_naming_step_and_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path / "data", "--method", "tools/call", "--tool-name", "validate_pipeline",
                     "--tool-arg", f"pipeline={INVALID}")
    assert result["isError"] is True
    text = result["content"][0]["text"]
    assert text.startswith("error invalid_pipeline: ")
    assert "step 'tag' line 2: import of 'os' is not allowed" in text
    problem = result["structuredContent"]["diagnostics"][0]
    assert (problem["code"], problem["step"], problem["line"]) == ("import-not-allowed", "tag", 2)
