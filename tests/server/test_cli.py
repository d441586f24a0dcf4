"""The `logbus` command line, run as a user runs it: a real process, real files, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"


def logbus(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, input=stdin.decode()
                          if stdin else None, capture_output=True, text=True, timeout=120)


def test_test_command_reports_json_with_the_documented_keys() -> None:
    sshd = str(DATA / "loghub" / "OpenSSH_2k.log")
    done = logbus("test", "examples/ssh_brute_force.yaml", "--events", sshd, "--format", "lines", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert {"valid", "diagnostics", "steps", "outputs", "signals", "errors", "dead_letters"} <= set(report)
    assert report["valid"] is True and report["dead_letters"] == 0
    assert len(report["signals"]) == 11
    assert report["steps"][0]["id"] == "syslog"


def test_human_report_shows_steps_and_signals() -> None:
    sshd = str(DATA / "loghub" / "OpenSSH_2k.log")
    done = logbus("test", "examples/ssh_brute_force.yaml", "--events", sshd, "--format", "lines")
    assert done.returncode == 0, done.stderr
    assert "signals: 11" in done.stdout
    assert "brute_force" in done.stdout and "rule" in done.stdout


def test_invalid_pipeline_exits_1_and_names_the_line(tmp_path: Path) -> None:
    pipeline = tmp_path / "bad.yaml"
    pipeline.write_text("name: bad\nsource: s\nsteps:\n  - transform: |\n      import os\n"
                        "      def transform(event):\n          return event\n")
    events = tmp_path / "e.ndjson"
    events.write_text('{"a": 1}\n')
    done = logbus("test", str(pipeline), "--events", str(events))
    assert done.returncode == 1
    assert "INVALID" in done.stdout
    assert "step 'transform' line 1: import of 'os' is not allowed" in done.stdout


def test_a_step_that_fails_on_events_exits_1_with_grouped_errors(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nsource: s\nsteps:\n  - transform: |\n      def transform(event):\n"
                        "          event['n'] = int(event['v'])\n          return event\n")
    events = tmp_path / "e.ndjson"
    events.write_text('{"v": "1"}\n{"v": "x"}\n{"v": "y"}\n{"v": "2"}\n')
    done = logbus("test", str(pipeline), "--events", str(events), "--json")
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert report["errors"][0]["count"] == 2 and report["errors"][0]["line"] == 2
    assert report["errors"][0]["error_type"] == "ValueError"
    assert report["dead_letters"] == 2 and len(report["outputs"]) == 2


def test_a_report_larger_than_a_pipe_buffer_arrives_whole(tmp_path: Path) -> None:
    """`logbus test` skips the interpreter's teardown after its report (server.cli.entry): the
    report must still be flushed whole into a pipe that fills up many times over."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nsource: s\nsteps:\n  - filter: \"n % 2 = 0\"\n")
    events = tmp_path / "e.ndjson"
    events.write_text("".join(f'{{"n": {i}, "pad": "{"x" * 20_000}"}}\n' for i in range(300)))
    buffered = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # as users run it
    done = subprocess.run([sys.executable, "-m", "server.cli", "test", str(pipeline), "--events", str(events),
                           "--json"], cwd=ROOT, env=buffered, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout) > 2_000_000 and done.stdout.endswith("}\n")  # its last byte too
    report = json.loads(done.stdout)
    assert report["output_count"] == 150 and [o["n"] for o in report["outputs"]] == list(range(0, 200, 2))


def test_limit_and_stdin(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("name: p\nsource: s\nsteps:\n  - filter: \"a > 1\"\n")
    body = b"".join(b'{"a": %d}\n' % i for i in range(10))
    done = logbus("test", str(pipeline), "--events", "-", "--limit", "5", "--json", stdin=body)
    report = json.loads(done.stdout)
    assert report["events_read"] == 5 and report["output_count"] == 3


@pytest.mark.parametrize(("args", "message"), [
    (["test", "nope.yaml", "--events", "x"], "cannot read pipeline nope.yaml"),
    (["test", "examples/ssh_brute_force.yaml", "--events", "/nonexistent"], "no such event file"),
    (["test", "examples/ssh_brute_force.yaml", "--events", "-", "--limit", "-1"],
     "--limit must be 0 or more"),
])
def test_bad_usage_exits_2_with_a_clear_message(args: list[str], message: str) -> None:
    done = logbus(*args)
    assert done.returncode == 2
    assert message in done.stderr


def test_guide_prints_topics_and_rejects_unknown_ones() -> None:
    done = logbus("guide", "rule")
    assert done.returncode == 0 and done.stdout.startswith("## `rule`")
    python = logbus("guide", "python")
    assert "json" in python.stdout and "import" in python.stdout
    bad = logbus("guide", "nope")
    assert bad.returncode == 2 and "topics:" in bad.stderr


def test_doctor_reports_every_layer() -> None:
    done = logbus("doctor", "--json")
    report = json.loads(done.stdout)
    names = set(report["layers"])
    assert all("active" in layer and layer["detail"] for layer in report["layers"].values())
    assert {"seccomp", "landlock", "rlimits", "network_namespace", "separate_uid"} <= names
    assert done.returncode == (0 if report["ok"] else 1)


def test_help_explains_with_examples() -> None:
    done = logbus("test", "--help")
    assert done.returncode == 0
    assert "examples:" in done.stdout and "--format" in done.stdout


def test_help_loads_no_engine_modules() -> None:
    """`logbus --help` (and every other command's argument parsing) builds the whole parser; the
    engine's libraries must wait for the handler that needs them (this once cost 0.3 s a call)."""
    probe = ("import sys\nfrom server.cli import _parser\n_parser().parse_args(['review', 'list'])\n"
             "print(' '.join(m for m in ('pyarrow', 'pydantic', 'duckdb', 'yaml', 'primitives.spec', "
             "'stream.registry') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


def _threads_after(code: str, env: dict[str, str]) -> int:
    probe = f"import os\n{code}\nprint(len(os.listdir('/proc/self/task')))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="OpenBLAS starts no extra thread on one core")
def test_the_command_starts_no_blas_threads() -> None:
    """numpy (imported by pyarrow) starts an OpenBLAS thread per core that spins before it sleeps:
    LogBus never uses BLAS, so the command asks for none before anything imports numpy. Compared
    with the same imports where the user asked for one thread: no thread more; and the user's own
    setting is kept."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    one = _threads_after("import pyarrow", {**env, "OPENBLAS_NUM_THREADS": "1"})
    numpy_default = _threads_after("import pyarrow", env)
    through_the_command = _threads_after("import server.cli\nimport pyarrow", env)
    assert numpy_default > one  # the probe can see BLAS threads on this machine
    assert through_the_command == one
    kept = "import os\nimport server.cli\nprint(os.environ['OPENBLAS_NUM_THREADS'])"
    done = subprocess.run([sys.executable, "-c", kept], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**env, "OPENBLAS_NUM_THREADS": "2"})
    assert done.stdout.split() == ["2"], done.stderr
