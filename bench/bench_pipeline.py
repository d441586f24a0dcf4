"""Side-by-side pipeline benchmark: LogBus against DuckDB, jq, plain Python, Bytewax, Pathway, Tenzir.

Two workloads over one generated NDJSON file of web-access events (bench/peers/events.py):
- W1, filter + 60 s tumbling window per host: keep status >= 400, count and sum(bytes) per host
  per window (window = floor(ts / 60) * 60).
- W2, a per-event Python transform (bench/peers/transform.py); jq and Tenzir run its equivalent in
  their own languages.

Every runner is a whole process, timed from spawn to exit: one warm-up run whose output is checked
against a reference (W1: DuckDB's rows; W2: the transform applied in this process), then the
median of `--runs` timed runs with stdout to /dev/null. A runner whose output differs is reported
as MISMATCH (and the exit status is 1); a peer that is not installed gets a "not installed" row,
never a number. A last section runs W1 inside one process on a pre-loaded Arrow table: LogBus's
engine against the same query in DuckDB.

    python3 bench/bench_pipeline.py                       # 400,000 events, 3 runs, everything
    python3 bench/bench_pipeline.py --events 20000 --runs 1 --only logbus,duckdb,python
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
PIPELINES = BENCH / "pipelines"
OUT = BENCH / "out"
sys.path.insert(0, str(PEERS))

from events import generate  # noqa: E402
from results import (  # noqa: E402
    Reference,
    check_report,
    check_rows,
    reference_w1,
    reference_w2,
    w1_compare,
    w1_digest,
    w1_rows,
)
from transform import transform  # noqa: E402

W1_RUNNERS = ("logbus", "duckdb", "jq", "python", "orjson", "bytewax", "pathway", "tenzir")
W2_RUNNERS = ("logbus", "python", "orjson", "jq", "bytewax", "pathway", "tenzir")
SECTIONS = ("inprocess",)
W1_TITLE = "W1: filter status >= 400, then count and sum(bytes) per host per 60 s tumbling window"
W2_TITLE = "W2: per-event Python transform (lower-case method, is_error, route), NDJSON out"


# ---------------------------------------------------------------- runners and environment


@dataclass(frozen=True, slots=True)
class Runner:
    """One way of running a workload: a command line, or the reason it cannot run here."""

    name: str
    argv: list[str] | None
    stdin: Path | None = None
    missing: str = ""
    report: bool = False  # stdout is a `logbus test --json` report, not result rows

    def command(self) -> str:
        text = shlex.join(self.argv or [])
        return f"{text} < {shlex.quote(str(self.stdin))}" if self.stdin else text


@dataclass(frozen=True, slots=True)
class Env:
    events: Path
    count: int
    logbus: list[str]
    peers_venv: Path | None
    peers_python: Path | None
    peers_modules: frozenset[str]
    tenzir: Path | None
    jq: str | None
    orjson_here: bool
    pin: list[str]


def find_peers_venv(requested: str | None) -> Path | None:
    """The peers' virtualenv: `--peers-venv`, else bench/.venv-peers, else /opt/peers."""
    if requested:
        return Path(requested)
    for candidate in (BENCH / ".venv-peers", Path("/opt/peers")):
        if (candidate / "bin" / "python").exists():
            return candidate
    return None


def peer_modules(python: Path) -> frozenset[str]:
    """Which peer libraries the peers' interpreter can import (found, not imported: Pathway is slow)."""
    probe = ("import importlib.util, json; print(json.dumps([m for m in ('bytewax', 'pathway', 'orjson') "
             "if importlib.util.find_spec(m)]))")
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=60,
                              check=True)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(json.loads(done.stdout))


def logbus_command(requested: str | None) -> list[str]:
    if requested:
        return shlex.split(requested)
    # The console script pip put next to this interpreter (what a virtualenv user runs), not a
    # PATH lookup that may find a version manager's shell shim (pyenv's costs ~50 ms a start).
    beside = Path(sys.executable).parent / "logbus"
    if beside.exists():
        return [str(beside)]
    return ["logbus"] if shutil.which("logbus") else [sys.executable, "-m", "server.cli"]


def w1_runners(env: Env) -> dict[str, Runner]:
    f = str(env.events)
    return {
        "logbus": Runner("logbus", [*env.logbus, "test", str(PIPELINES / "filter_aggregate.yaml"),
                                    "--events", f, "--json"], report=True),
        "duckdb": Runner("duckdb", [sys.executable, str(PEERS / "w1_duckdb.py"), f]),
        "jq": _jq(env, ["-n", "-c", "-f", str(PEERS / "w1.jq"), f]),
        "python": Runner("python", [sys.executable, str(PEERS / "w1_python.py"), f]),
        "orjson": _here_orjson(env, "w1_orjson.py"),
        "bytewax": _peer_py(env, "bytewax", "w1_bytewax.py"),
        "pathway": _peer_py(env, "pathway", "w1_pathway.py"),
        "tenzir": _tenzir(env, "w1.tql"),
    }


def w2_runners(env: Env) -> dict[str, Runner]:
    f = str(env.events)
    return {
        "logbus": Runner("logbus", [*env.logbus, "test", str(PIPELINES / "python_transform.yaml"),
                                    "--events", f, "--json"], report=True),
        "python": Runner("python", [sys.executable, str(PEERS / "w2_python.py"), f]),
        "orjson": _here_orjson(env, "w2_orjson.py"),
        "jq": _jq(env, ["-c", "-f", str(PEERS / "w2.jq"), f]),
        "bytewax": _peer_py(env, "bytewax", "w2_bytewax.py"),
        "pathway": _peer_py(env, "pathway", "w2_pathway.py"),
        "tenzir": _tenzir(env, "w2.tql"),
    }


def _jq(env: Env, args: list[str]) -> Runner:
    if env.jq is None:
        return Runner("jq", None, missing="not installed (no `jq` on PATH; apt-get install jq)")
    return Runner("jq", [env.jq, *args])


def _here_orjson(env: Env, script: str) -> Runner:
    if not env.orjson_here:
        return Runner("orjson", None, missing=f"not installed (orjson in {sys.executable})")
    return Runner("orjson", [sys.executable, str(PEERS / script), str(env.events)])


def _peer_py(env: Env, module: str, script: str) -> Runner:
    if env.peers_python is None:
        venv = env.peers_venv or BENCH / ".venv-peers"
        why = f"no virtualenv at {venv}; run bench/setup_peers.sh"
        return Runner(module, None, missing=f"not installed ({why})")
    if module not in env.peers_modules:
        return Runner(module, None, missing=f"not installed (no {module} for {env.peers_python})")
    return Runner(module, [str(env.peers_python), str(PEERS / script), str(env.events)])


def _tenzir(env: Env, program: str) -> Runner:
    if env.tenzir is None:
        venv = env.peers_venv or BENCH / ".venv-peers"
        return Runner("tenzir", None, missing=f"not installed (no bin/tenzir in {venv})")
    return Runner("tenzir", [str(env.tenzir), "-f", str(PEERS / program)], stdin=env.events)


# ---------------------------------------------------------------- running and timing


@dataclass(slots=True)
class Outcome:
    runner: Runner
    status: str = "ok"  # ok | mismatch | failed | not installed
    detail: str = ""
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def run_workload(workload: str, runners: list[Runner], env: Env, ref: Reference, runs: int,
                 timeout: float) -> list[Outcome]:
    outcomes = []
    for runner in runners:
        outcome = Outcome(runner)
        outcomes.append(outcome)
        if runner.argv is None:
            outcome.status, outcome.detail = "not installed", runner.missing
            _say(f"{workload} {runner.name}: {runner.missing}")
            continue
        _say(f"{workload} {runner.name}: warm-up + check ...")
        try:
            problem = _warm_up_and_check(workload, runner, env, ref, timeout)
        except RunFailed as exc:
            outcome.status, outcome.detail = "failed", str(exc)
            _say(f"{workload} {runner.name}: FAILED: {exc}")
            continue
        if problem:
            outcome.status, outcome.detail = "mismatch", problem
            _say(f"!!! {workload} {runner.name}: MISMATCH against the reference: {problem}")
        for index in range(runs):
            try:
                seconds, cpu = _timed_run(runner, env, timeout)
            except RunFailed as exc:
                outcome.status, outcome.detail = "failed", f"timed run {index + 1}: {exc}"
                _say(f"{workload} {runner.name}: FAILED: {outcome.detail}")
                break
            outcome.seconds.append(seconds)
            outcome.cpu.append(cpu)
            _say(f"{workload} {runner.name}: run {index + 1}: {seconds:.3f} s")
    return outcomes


class RunFailed(Exception):
    pass


def _warm_up_and_check(workload: str, runner: Runner, env: Env, ref: Reference, timeout: float) -> str | None:
    """Run once with stdout piped here and check what comes out; this run is not timed."""
    assert runner.argv is not None
    with tempfile.TemporaryFile() as err, _stdin(runner) as stdin:
        proc = subprocess.Popen([*env.pin, *runner.argv], stdin=stdin, stdout=subprocess.PIPE, stderr=err,
                                cwd=ROOT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            assert proc.stdout is not None
            if runner.report:
                problem = check_report(workload, proc.stdout.read(), ref, env.count)
            else:
                problem = check_rows(workload, iter(proc.stdout), ref)
            proc.stdout.read()  # drain whatever a failed check left, so the process can exit
            code = proc.wait()
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            proc.kill()
            proc.wait()
            problem = f"unreadable output: {type(exc).__name__}: {exc}"
            code = 0
        finally:
            killer.cancel()
        if code != 0:  # `logbus test` exits 1 when a step failed: its report says why
            raise RunFailed(_exit_text(code, err, timeout) + (f"; {problem}" if problem else ""))
    return problem


def _timed_run(runner: Runner, env: Env, timeout: float) -> tuple[float, float]:
    """Wall seconds from spawn to exit, and the CPU seconds the process (and its children) used.

    A blocking `wait()` with a kill timer, not `subprocess.run(timeout=...)`: the latter polls
    with sleeps of up to 50 ms, which would round every measurement.
    """
    assert runner.argv is not None
    with tempfile.TemporaryFile() as err, _stdin(runner) as stdin:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.Popen([*env.pin, *runner.argv], stdin=stdin, stdout=subprocess.DEVNULL, stderr=err,
                                cwd=ROOT)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        try:
            code = proc.wait()
        finally:
            killer.cancel()
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0:
            raise RunFailed(_exit_text(code, err, timeout))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


@contextmanager
def _stdin(runner: Runner) -> Iterator[IO[bytes] | int]:
    """The runner's stdin: its input file (Tenzir reads from stdin), or nothing."""
    if runner.stdin is None:
        yield subprocess.DEVNULL
        return
    with runner.stdin.open("rb") as file:
        yield file


def _exit_text(code: int, err: IO[bytes], timeout: float) -> str:
    err.seek(0)
    tail = err.read().decode("utf-8", "replace").strip().splitlines()[-3:]
    why = f"killed after {timeout:.0f} s" if code == -9 else f"exit status {code}"
    return why + (": " + " | ".join(line.strip() for line in tail) if tail else "")


def _say(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- in-process W1


@dataclass(slots=True)
class InProcess:
    note: str = ""
    logbus: list[float] = field(default_factory=list)
    duckdb: list[float] = field(default_factory=list)
    check: str = ""


def in_process_w1(events: Path, count: int, runs: int, ref: Reference) -> InProcess:
    """W1 on a pre-loaded Arrow table: LogBus's engine vs DuckDB, both in this process.

    Reading and parsing the file is not timed; building the engine from the spec is not timed
    either (the executor does it once per pipeline version). Each timed run is a fresh engine fed
    the whole table in one `process()` call, then `finish()` to close the last windows.
    """
    import duckdb
    import pyarrow.json as pa_json

    result = InProcess()
    sys.path.insert(0, str(ROOT))
    try:
        from primitives.spec import load_spec
        from stream.engine import Engine
    except Exception as exc:  # any import-time failure means "not ready", which is what we report
        result.note = f"LogBus engine not importable yet ({type(exc).__name__}: {exc})"
        return result
    table = pa_json.read_json(events)
    spec_text = (PIPELINES / "filter_aggregate.yaml").read_text()
    con = duckdb.connect()
    con.execute(f"SET threads = {len(os.sched_getaffinity(0))}")
    con.register("events", table)
    query = ("SELECT ts // 60 * 60 AS window, host, count(*) AS events, sum(bytes) AS bytes "
             "FROM events WHERE status >= 400 GROUP BY ALL")

    def run_engine() -> list[dict[str, Any]]:
        engine = Engine(load_spec(spec_text), run_code=None)
        started = time.perf_counter()
        tables = engine.process(table).events + engine.finish().events
        result.logbus.append(time.perf_counter() - started)
        return [row for t in tables for row in t.to_pylist()]

    def run_duckdb() -> list[dict[str, Any]]:
        started = time.perf_counter()
        out = con.sql(query).to_arrow_table()
        result.duckdb.append(time.perf_counter() - started)
        return [] if out is None else list(out.to_pylist())

    try:
        engine_rows = _warm_then_time(run_engine, runs, result.logbus)
    except Exception as exc:  # the engine is someone else's work in progress: report, don't crash
        result.note = f"LogBus engine failed on W1 ({type(exc).__name__}: {exc})"
        return result
    duck_rows = _warm_then_time(run_duckdb, runs, result.duckdb)
    problems = [f"{name}: {p}" for name, rows in (("logbus", engine_rows), ("duckdb", duck_rows))
                if (p := w1_compare(w1_rows(rows), ref.w1))]
    result.check = "MISMATCH: " + "; ".join(problems) if problems else f"ok ({len(ref.w1):,} rows)"
    if problems:
        _say(f"!!! in-process W1 {result.check}")
    return result


Rows = list[dict[str, Any]]


def _warm_then_time(run: Callable[[], Rows], runs: int, times: list[float]) -> Rows:
    rows = run()
    times.clear()  # the warm-up's time is not kept
    for _ in range(runs):
        run()
    return rows


# ---------------------------------------------------------------- report


def machine(env: Env, cpus: str) -> list[str]:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    pinned = f"runners pinned with `taskset -c {cpus}`" if env.pin else "runners not pinned"
    return [f"machine: nproc {os.cpu_count()}, CPU {model}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()} ({sys.executable}); {pinned}",
            "versions: " + versions(env)]


def versions(env: Env) -> str:
    parts = []
    try:
        import duckdb

        parts.append(f"duckdb {duckdb.__version__}")
    except ImportError:
        pass
    if env.jq:
        parts.append(_output([env.jq, "--version"]))
    if env.peers_python:
        probe = ("import importlib.metadata as m\nfor d in ('bytewax', 'pathway', 'tenzir', 'orjson'):\n"
                 "    try: print(d, m.version(d))\n    except m.PackageNotFoundError: pass")
        parts.extend(_output([str(env.peers_python), "-c", probe]).splitlines())
    return ", ".join(p for p in parts if p)


def _output(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except OSError:
        return ""


def workload_table(title: str, outcomes: list[Outcome], count: int, reference: str) -> list[str]:
    base = next((o.median for o in outcomes if o.runner.name == "logbus" and o.status == "ok"), None)
    lines = [f"## {title}", "", reference, "",
             "| runner | median s | events/s | time / logbus | CPU s | check |",
             "|---|---:|---:|---:|---:|---|"]
    for o in outcomes:
        median = o.median
        if median is None:
            lines.append(f"| {o.runner.name} | — | — | — | — | {_check_text(o)} |")
            continue
        ratio = f"{median / base:.2f}" if base else "—"
        lines.append(f"| {o.runner.name} | {median:.3f} | {count / median:,.0f} | {ratio} | "
                     f"{statistics.median(o.cpu):.2f} | {_check_text(o)} |")
    lines += ["", "commands:", ""]
    lines += [f"- {o.runner.name}: `{o.runner.command()}`" for o in outcomes if o.runner.argv]
    return [*lines, ""]


def _check_text(o: Outcome) -> str:
    detail = o.detail.replace("|", "\\|")
    if o.status == "ok":
        return "ok"
    if o.status == "mismatch":
        return f"**MISMATCH**: {detail}"
    if o.status == "failed":
        return f"**FAILED**: {detail}"
    return detail


def in_process_table(result: InProcess, count: int) -> list[str]:
    lines = ["## W1 in one process, on a pre-loaded Arrow table", ""]
    if result.note:
        return [*lines, result.note, ""]
    logbus, duck = statistics.median(result.logbus), statistics.median(result.duckdb)
    rate = count / logbus
    lines += ["| engine | median s | events/s | time / logbus |", "|---|---:|---:|---:|",
              f"| logbus `Engine.process` + `finish` | {logbus:.4f} | {rate:,.0f} | 1.00 |",
              f"| duckdb (same query, same Arrow table) | {duck:.4f} | {count / duck:,.0f} | "
              f"{duck / logbus:.2f} |",
              "", f"check: {result.check}",
              f"targets: LogBus ≥ 1,000,000 events/s: {'met' if rate >= 1_000_000 else 'NOT met'}; "
              f"within 1.5× of DuckDB's time: {'met' if logbus <= 1.5 * duck else 'NOT met'} "
              f"({logbus / duck:.2f}×)", ""]
    return lines


# ---------------------------------------------------------------- main


def check_transform_bodies() -> None:
    """LogBus must run the same function body as the peers, or W2 compares different work."""
    import inspect

    import yaml

    spec = yaml.safe_load((PIPELINES / "python_transform.yaml").read_text())
    code = next(step["transform"] for step in spec["steps"] if "transform" in step)
    ours = inspect.getsource(transform).splitlines()[1:]
    theirs = [line for line in code.splitlines()[1:] if line.strip()]
    if [line.strip() for line in ours] != [line.strip() for line in theirs]:
        raise SystemExit("bench/pipelines/python_transform.yaml and bench/peers/transform.py disagree; "
                         "make their function bodies identical")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=400_000, metavar="N",
                        help="events in the file (400000)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per runner after one warm-up (3)")
    parser.add_argument("--only", default="", help="comma-separated runners and sections: "
                        + ",".join((*dict.fromkeys(W1_RUNNERS + W2_RUNNERS), *SECTIONS)) + " (default: all)")
    parser.add_argument("--workloads", default="w1,w2", help="w1, w2 or both (default)")
    parser.add_argument("--peers-venv", default=None,
                        help="virtualenv with bytewax, pathway, tenzir "
                        "(default bench/.venv-peers, else /opt/peers)")
    parser.add_argument("--logbus", default=None,
                        help="LogBus command (default `logbus`, else python -m server.cli)")
    parser.add_argument("--cpus", default="all",
                        help="CPU list for taskset -c (e.g. 0: every runner on one core), or 'all' for the "
                        "whole machine, as users run them (all)")
    parser.add_argument("--seed", type=int, default=42, help="data generator seed (42)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds before a run is killed (300)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    known = {*W1_RUNNERS, *W2_RUNNERS, *SECTIONS}
    args.only = {name.strip() for name in args.only.split(",") if name.strip()} or known
    if unknown := args.only - known:
        parser.error(f"--only: unknown {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}")
    args.workloads = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if not args.workloads <= {"w1", "w2"}:
        parser.error("--workloads takes w1, w2 or w1,w2")
    if args.events < 1 or args.runs < 1:
        parser.error("--events and --runs must be at least 1")
    return args


def make_env(args: argparse.Namespace) -> Env:
    OUT.mkdir(exist_ok=True)
    events = OUT / f"events-{args.events}-seed{args.seed}.ndjson"
    if not events.exists():
        _say(f"generating {args.events:,} events into {events.relative_to(ROOT)} ...")
        generate(events, args.events, args.seed)
    venv = find_peers_venv(args.peers_venv)
    python = venv / "bin" / "python" if venv and (venv / "bin" / "python").exists() else None
    tenzir = venv / "bin" / "tenzir" if venv and (venv / "bin" / "tenzir").exists() else None
    pin: list[str] = []
    if args.cpus != "all":
        if not shutil.which("taskset"):
            raise SystemExit("--cpus needs `taskset` (util-linux); pass --cpus all to run unpinned")
        pin = ["taskset", "-c", args.cpus]
    try:
        import orjson as _  # noqa: F401 - the harness needs it too; this is the runner's check
        orjson_here = True
    except ImportError:
        orjson_here = False
    return Env(events=events, count=args.events, logbus=logbus_command(args.logbus), peers_venv=venv,
               peers_python=python,
               peers_modules=peer_modules(python) if python else frozenset(), tenzir=tenzir,
               jq=shutil.which("jq"), orjson_here=orjson_here, pin=pin)


def byte_compile_logbus() -> None:
    """Write LogBus's bytecode first, as `pip install` does for an installed package. Run from an
    editable checkout under PYTHONDONTWRITEBYTECODE (as on the benchmark machine), a module
    changed since its last .pyc would otherwise be compiled from source in every timed run."""
    import compileall

    for package in ("primitives", "stream", "server", "sandbox"):
        compileall.compile_dir(ROOT / package, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_transform_bodies()
    byte_compile_logbus()
    env = make_env(args)
    size = env.events.stat().st_size
    command = shlex.join(["python3", "bench/bench_pipeline.py", *(sys.argv[1:] if argv is None else argv)])
    lines = ["# LogBus pipeline benchmark", "",
             f"command: `{command}`", "", *(f"- {line}" for line in machine(env, args.cpus)),
             f"- data: `{env.events.relative_to(ROOT)}`: {env.count:,} events, {size / 1e6:.1f} MB "
             f"({size / env.count:.0f} bytes/event), seed {args.seed}",
             f"- method: each runner is a whole process; 1 warm-up run (its output checked against the "
             f"reference), then the median of {args.runs} timed runs with stdout to /dev/null. "
             "`time / logbus` > 1 means LogBus was faster. CPU s is user + system time of the process tree.",
             "- `logbus test` keeps every output in memory but prints only the first 100; its check "
             "compares output_count and each shown output with the reference.", ""]
    ref = Reference()
    failed = False
    if "w1" in args.workloads:
        _say("W1 reference (DuckDB) ...")
        ref.w1 = reference_w1(env.events)
        runners = [r for name, r in w1_runners(env).items() if name in args.only]
        outcomes = run_workload("w1", runners, env, ref, args.runs, args.timeout)
        lines += workload_table(W1_TITLE, outcomes, env.count,
                                f"reference: DuckDB, {len(ref.w1):,} window × host rows, "
                                f"{sum(c for c, _ in ref.w1.values()):,} events kept, "
                                f"digest {w1_digest(ref.w1)}")
        failed |= any(o.status in ("mismatch", "failed") for o in outcomes)
    if "w2" in args.workloads:
        _say("W2 reference (the transform in this process) ...")
        ref.w2, ref.w2_hashes = reference_w2(env.events)
        runners = [r for name, r in w2_runners(env).items() if name in args.only]
        outcomes = run_workload("w2", runners, env, ref, args.runs, args.timeout)
        lines += workload_table(W2_TITLE, outcomes, env.count,
                                "reference: bench/peers/transform.py applied here, "
                                f"checksum {ref.w2.digest()} "
                                "(count : sum of 64-bit hashes over all 11 output fields)")
        failed |= any(o.status in ("mismatch", "failed") for o in outcomes)
    if "inprocess" in args.only and "w1" in args.workloads:
        _say("W1 in-process (LogBus engine vs DuckDB on one Arrow table) ...")
        allowed = _pin_self(args.cpus)
        try:
            result = in_process_w1(env.events, env.count, args.runs, ref)
        finally:
            os.sched_setaffinity(0, allowed)
        lines += in_process_table(result, env.count)
        failed |= result.check.startswith("MISMATCH")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 1 if failed else 0


def _pin_self(cpus: str) -> set[int]:
    """Pin this process like the runners (taskset's CPU list syntax: 0,2-3); returns the old mask."""
    allowed = os.sched_getaffinity(0)
    if cpus != "all":
        chosen: set[int] = set()
        for part in cpus.split(","):
            low, _, high = part.partition("-")
            chosen.update(range(int(low), int(high or low) + 1))
        os.sched_setaffinity(0, chosen)
    return allowed


if __name__ == "__main__":
    sys.exit(main())
