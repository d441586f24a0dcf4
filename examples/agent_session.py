"""A real agent loop over MCP on the shared sshd log, printed as a transcript.

What an agent connected to `logbus serve --stdio` does, from first look to an approved detection:
look at the stream, test a pipeline with a bug, read the diagnostic, fix it, test again, submit;
then a person approves with `logbus review approve`, and the agent sees the alerts.

    python3 examples/agent_session.py [--data DIR]

It uses a fresh data directory (a temporary one unless --data is given), ingests
../shared/data/loghub/OpenSSH_2k.log as raw lines into stream `auth`, and runs the tool calls
through the MCP SDK's stdio client against a real `logbus serve --stdio` subprocess.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp.client import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parents[1]
SSH_LOG = ROOT.parent / "shared" / "data" / "loghub" / "OpenSSH_2k.log"
FIXED = (ROOT / "examples" / "ssh_brute_force.yaml").read_text().replace(
    "time: timestamp\n", "time: timestamp\nstart: earliest\n")
GOOD_LINE = '          repeat = event.get("repeat") or 1\n          return [event] * repeat\n'
BUGGY = FIXED.replace(GOOD_LINE, '          return [event] * event["repeats"]\n')


def logbus(data: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "server.cli", *args, "--data", str(data)], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def show(title: str, value: Any) -> None:
    print(f"\n>>> {title}")
    print(value if isinstance(value, str) else json.dumps(value, indent=1, default=str)[:1200])


async def session(data: Path) -> None:
    params = StdioServerParameters(command=sys.executable, cwd=ROOT,
                                   args=["-m", "server.cli", "serve", "--stdio", "--data", str(data)])
    with open(data / "stdio-server.log", "w") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            streams = (await client.call_tool("list_streams", {})).structured_content or {}
            show("list_streams()", [{k: s.get(k) for k in ("name", "events")} for s in streams["streams"]])
            schema = (await client.call_tool("describe_stream", {"stream": "auth"})).structured_content or {}
            show("describe_stream('auth')", [f"{f['field']}: {f['type']}" for f in schema.get("fields", [])])
            bad = await client.call_tool("test_pipeline", {"pipeline": BUGGY, "stream": "auth"})
            show("test_pipeline(buggy) -> isError=" + str(bad.is_error), bad.content[0].text[:600])
            good = await client.call_tool("test_pipeline",
                                          {"pipeline": FIXED, "stream": "auth", "limit": 2000})
            report = good.structured_content or {}
            show("test_pipeline(fixed)", {"run_id": report.get("run_id"), "ok": report.get("ok"),
                                          "signals": len(report.get("signals", []))})
            submitted = await client.call_tool("submit_pipeline", {
                "pipeline": FIXED, "run_id": report["run_id"],
                "summary": "Alert once per source IP with 5+ failed SSH passwords within 60 s"})
            review = submitted.structured_content or {}
            show("submit_pipeline()", review)
            show("$ logbus review approve " + review["review_id"],
                 logbus(data, "review", "approve", review["review_id"], "--comment", "matches the 11 IPs",
                        "--reviewer", "alice"))
            signals: list[Any] = []
            for _ in range(60):
                listed = (await client.call_tool("list_signals", {"limit": 50})).structured_content or {}
                signals = listed.get("signals", [])
                if len(signals) >= 11:
                    break
                time.sleep(0.5)
            show("list_signals()", [f"{s['severity']} {s['title']} (count {s['count']})" for s in signals])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None, help="data directory (default: a fresh temp dir)")
    args = parser.parse_args()
    data = args.data or Path(tempfile.mkdtemp(prefix="logbus-session-"))
    data.mkdir(parents=True, exist_ok=True)
    show("$ logbus ingest auth OpenSSH_2k.log --format lines --local",
         logbus(data, "ingest", "auth", str(SSH_LOG), "--format", "lines", "--local"))
    anyio.run(session, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
