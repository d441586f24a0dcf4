"""What finding the events an aggregate's measures fail on costs (primitives/isolation.py).

    python3 bench/bench_isolation.py [--scale 1.0] [--out bench/out/isolation.md]

When a window's GROUP BY fails, the aggregate step sends only the events it fails on to the dead
letters. Two searches run side by side on the same events, each in this process:

- the step as it is: a query per kind of values, one that evaluates the measures' inputs under
  TRY, then the rest (`AggregateRuntime._isolate`);
- the halving search it replaced: each window and key alone, halving its events until each failing
  one stands alone (the step's own fallback, `_by_group`, given all the queries it wants).

Workloads (--scale multiplies the event counts):
- type flood: 22,000 events over 20 hosts in one minute, every 11th with `"bytes": "x"`, measure
  `sum(bytes)` (text where a number is wanted: what anyone with an ingest token can send);
- value flood: 6,000 events over 5 hosts, every 3rd with `"size": "-"` (a parsed 304's bytes),
  measure `sum(CAST(size AS BIGINT))`.

Reported: seconds for process + finish, queries run, dead letters, output rows; both searches
must give the same rows and dead letters (else the exit status is 1).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from primitives.batch import from_events, to_events  # noqa: E402
from primitives.isolation import QueryBudget  # noqa: E402
from primitives.runtime import BuildContext, StepResult  # noqa: E402
from primitives.steps.aggregate import AggregateOptions, AggregateRuntime  # noqa: E402


def workloads(scale: float) -> dict[str, tuple[dict[str, str], list[dict[str, Any]]]]:
    def ts(i: int, n: int) -> str:
        return f"2024-01-01T00:00:{i * 60 // n:02d}Z"

    n1, n2 = int(22_000 * scale), int(6_000 * scale)
    return {
        "type flood (sum over \"x\")": (
            {"n": "count(*)", "total": "sum(bytes)"},
            [{"ts": ts(i, n1), "host": f"h{i % 20}", "bytes": "x" if i % 11 == 0 else i} for i in range(n1)]),
        "value flood (CAST of \"-\")": (
            {"n": "count(*)", "bytes": "sum(CAST(size AS BIGINT))"},
            [{"ts": ts(i, n2), "host": f"h{i % 5}", "size": "-" if i % 3 == 0 else str(i)}
             for i in range(n2)]),
    }


def runtime(measures: dict[str, str], halving: bool) -> tuple[AggregateRuntime, list[int]]:
    options = AggregateOptions.model_validate({"window": "60s", "by": ["host"], "measures": measures,
                                               "lateness": "0s"})
    step = AggregateRuntime(options, BuildContext("bench", 1, "agg", "ts"))
    queries = [0]
    query = step.sql.query

    def counting(table: Any, sql: str) -> Any:
        queries[0] += 1
        return query(table, sql)

    step.sql.query = counting  # type: ignore[method-assign]
    if halving:
        def by_halving(closed: Any, extra: list[str]) -> StepResult:
            failing: dict[int, str] = {}
            events = step._by_group(closed, list(range(closed.num_rows)), extra, failing, QueryBudget(10**9))
            dead = step._letters(closed, failing)
            return StepResult(events=events, dead_letters=dead, errors=len(dead))

        step._isolate = by_halving  # type: ignore[method-assign]
    return step, queries


def measure(measures: dict[str, str], events: list[dict[str, Any]], halving: bool) -> dict[str, Any]:
    step, queries = runtime(measures, halving)
    batch = from_events(events)
    started = time.perf_counter()
    results = [step.process(batch), step.finish()]
    seconds = time.perf_counter() - started
    rows = sorted(repr(sorted(r.items())) for res in results if res.events is not None
                  for r in to_events(res.events))
    dead = sorted(repr(d.event) for res in results for d in res.dead_letters)
    return {"seconds": seconds, "queries": queries[0], "rows": rows, "dead": dead}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the event counts (1.0)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args()
    lines = ["# Aggregate isolation benchmark", "",
             f"command: `python3 bench/bench_isolation.py --scale {args.scale}`", "",
             f"- machine: {platform.machine()}, Python {platform.python_version()}, in one process", "",
             "| workload | events | search | seconds | queries | dead letters | rows |",
             "|---|---:|---|---:|---:|---:|---:|"]
    ok = True
    for name, (measures, events) in workloads(args.scale).items():
        fast = measure(measures, events, halving=False)
        slow = measure(measures, events, halving=True)
        same = fast["rows"] == slow["rows"] and fast["dead"] == slow["dead"]
        ok &= same
        for label, result in (("the step (kinds, TRY)", fast), ("halving per window and key", slow)):
            lines.append(f"| {name} | {len(events):,} | {label} | {result['seconds']:.3f} | "
                         f"{result['queries']:,} | {len(result['dead']):,} | {len(result['rows'])} |")
        lines.append(f"| {name} | | ratio | {slow['seconds'] / fast['seconds']:.0f}× | | "
                     f"{'same result' if same else 'RESULTS DIFFER'} | |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
