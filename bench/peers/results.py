"""Runner results, normalised and checked against the reference (used by bench_pipeline.py).

W1 rows are compared exactly, as a map from (window start, host) to (count, bytes). W2 outputs
are compared as a multiset: their count and the sum of a 64-bit hash of each event's fields, so
a runner may emit events in any order but may not drop, duplicate or alter one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from transform import transform

W2_FIELDS = ("ts", "host", "ip", "method", "path", "status", "bytes", "ua", "referer", "is_error", "route")
WINDOW_KEYS = ("window", "window_start", "start", "_pw_window_start")

W1Rows = dict[tuple[int, str], tuple[int, int]]


def w1_rows(rows: Iterable[dict[str, Any]]) -> W1Rows:
    """Rows of {window, host, events, bytes} as a map; a Pathway `diff` of -1 retracts a row."""
    result: W1Rows = {}
    for row in rows:
        diff = row.get("diff", 1)
        key = (_epoch(_window_of(row)), str(row["host"]))
        value = (int(row["events"]), int(row["bytes"]))
        if diff == -1:
            if result.get(key) == value:
                del result[key]
            continue
        if key in result:
            raise ValueError(f"two rows for window {key[0]} host {key[1]!r}")
        result[key] = value
    return result


def _window_of(row: dict[str, Any]) -> Any:
    for key in WINDOW_KEYS:
        if key in row:
            return row[key]
    raise KeyError(f"no window start column (looked for {', '.join(WINDOW_KEYS)}) in {sorted(row)}")


def _epoch(value: Any) -> int:
    """A window start as epoch seconds, whether it came as a number, a datetime or an ISO string."""
    if isinstance(value, dict) and "start" in value:  # a window struct {start, end}
        value = value["start"]
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return int(moment.timestamp())
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(f"window start {value} is not a whole second")
    return int(value)


def w1_digest(rows: W1Rows) -> str:
    text = "\n".join(f"{w},{h},{c},{b}" for (w, h), (c, b) in sorted(rows.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def w1_compare(got: W1Rows, want: W1Rows) -> str | None:
    """None when equal, else what differs, with a few examples."""
    if got == want:
        return None
    missing = [k for k in want if k not in got]
    extra = [k for k in got if k not in want]
    wrong = [k for k in want if k in got and got[k] != want[k]]
    notes = [f"{len(got):,} rows vs {len(want):,}"]
    if missing:
        notes.append(f"{len(missing):,} missing (e.g. {missing[0]})")
    if extra:
        notes.append(f"{len(extra):,} extra (e.g. {extra[0]})")
    if wrong:
        notes.append(f"{len(wrong):,} differ (e.g. {wrong[0]}: {got[wrong[0]]} vs {want[wrong[0]]})")
    return "; ".join(notes)


def w2_hash(event: dict[str, Any]) -> int:
    """One output event's 64-bit fingerprint over every field, robust to key order."""
    values = [event[name] for name in W2_FIELDS]
    if not isinstance(event["is_error"], bool):
        raise ValueError(f"is_error is {type(event['is_error']).__name__}, not bool, in {event}")
    return int.from_bytes(hashlib.blake2b(orjson.dumps(values), digest_size=8).digest(), "little")


@dataclass(slots=True)
class W2Sum:
    """An order-independent checksum of a multiset of events: their count and fingerprint sum."""

    count: int = 0
    total: int = 0

    def add(self, event: dict[str, Any]) -> None:
        diff = int(event.pop("diff", 1))  # Pathway's update multiplicity
        if diff != 1:
            raise ValueError(f"an output row with diff {diff}: a retraction in a static run")
        self.count += 1
        self.total = (self.total + w2_hash(event)) % (1 << 64)

    def digest(self) -> str:
        return f"{self.count}:{self.total:016x}"


@dataclass(slots=True)
class Reference:
    w1: W1Rows = field(default_factory=dict)
    w2: W2Sum = field(default_factory=W2Sum)
    w2_hashes: set[int] = field(default_factory=set)


def reference_w1(events: Path) -> W1Rows:
    """DuckDB's answer to W1, computed in this process: the rows every runner must reproduce."""
    import duckdb
    from w1_duckdb import QUERY

    con = duckdb.connect()
    literal = "'" + str(events).replace("'", "''") + "'"
    rows = w1_rows({"window": w, "host": h, "events": c, "bytes": b}
                   for w, h, c, b in con.execute(QUERY.format(path=literal)).fetchall())
    kept = con.execute(f"SELECT count(*) FROM read_json_auto({literal}) WHERE status >= 400").fetchone()
    if kept is None or sum(c for c, _ in rows.values()) != kept[0]:
        raise SystemExit("reference: DuckDB's window counts do not add up to its filtered event count")
    return rows


def reference_w2(events: Path) -> tuple[W2Sum, set[int]]:
    total, hashes = W2Sum(), set()
    with events.open("rb") as lines:
        for line in lines:
            event = transform(orjson.loads(line))
            total.add(event)
            hashes.add(w2_hash(event))
    return total, hashes


def check_rows(workload: str, lines: Iterator[bytes], ref: Reference) -> str | None:
    """Check a runner's NDJSON result rows; None when they match the reference."""
    if workload == "w1":
        return w1_compare(w1_rows(orjson.loads(line) for line in lines if line.strip()), ref.w1)
    got = W2Sum()
    for line in lines:
        if line.strip():
            got.add(orjson.loads(line))
    if (got.count, got.total) == (ref.w2.count, ref.w2.total):
        return None
    return f"{got.count:,} events, checksum {got.digest()} vs {ref.w2.digest()}"


def check_report(workload: str, text: bytes, ref: Reference, count: int) -> str | None:
    """Check a `logbus test --json` report: counts, and every output it shows (it keeps 100)."""
    try:
        report = orjson.loads(text)
    except orjson.JSONDecodeError:
        return f"stdout is not a JSON report: {text[:200]!r}"
    problems = []
    if not report.get("ok"):
        problems.append(f"report not ok: diagnostics {report.get('diagnostics')}, "
                        f"errors {report.get('errors')}")
    if report.get("events_read") != count:
        problems.append(f"events_read {report.get('events_read')} != {count}")
    outputs = report.get("outputs") or []
    if workload == "w1":
        if report.get("output_count") != len(ref.w1):
            problems.append(f"output_count {report.get('output_count')} != {len(ref.w1)} reference rows")
        shown = w1_rows(outputs)
        wrong = [k for k, v in shown.items() if ref.w1.get(k) != v]
        if wrong:
            problems.append(f"{len(wrong)} shown rows differ (e.g. {wrong[0]}: {shown[wrong[0]]} vs "
                            f"{ref.w1.get(wrong[0])})")
    else:
        if report.get("output_count") != ref.w2.count:
            problems.append(f"output_count {report.get('output_count')} != {ref.w2.count}")
        unknown = [e for e in outputs if w2_hash(e) not in ref.w2_hashes]
        if unknown:
            problems.append(f"{len(unknown)} of {len(outputs)} shown outputs are not in the reference "
                            f"(e.g. {unknown[0]})")
    if not outputs:
        problems.append("the report shows no outputs to check")
    return "; ".join(problems) or None
