"""The executor's output sink: a pipeline's output events, signals and dead letters as Parquet files.

Each write is atomic and idempotent per (pipeline, source-offset range): see `table.py` for the
manifest scheme that makes a replay of the same range replace it, and a replay split differently
supersede it, without ever counting an offset's rows twice. Output events are partitioned by the
date of their event time (the spec's `time` field; rows without one go to the processing date);
signals and dead letters by processing date.

    <data>/tenants/<tenant>/outputs/<view>/date=YYYY-MM-DD/<first>-<last>.<generation>.parquet
    <data>/tenants/<tenant>/signals/<view>/...        (one row per signal version written)
    <data>/tenants/<tenant>/dead_letters/<view>/...

`<view>` is the pipeline name with `-` replaced by `_` (its DuckDB view name). Call every write
for every batch, even with nothing in it: an empty write of a range still supersedes what an
earlier, crashed attempt at that range left behind.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from primitives.eventtime import event_times
from primitives.runtime import DeadLetter
from primitives.spec import NAME
from stream.log.names import check_tenant
from stream.sinks.table import ParquetTable

KINDS = ("outputs", "signals", "dead_letters")
DEFAULT_TIME_FIELD = "timestamp"

SIGNAL_SCHEMA = pa.schema([
    ("id", pa.string()), ("pipeline", pa.string()), ("version", pa.int64()), ("step", pa.string()),
    ("severity", pa.string()), ("title", pa.string()), ("dedup", pa.string()), ("count", pa.int64()),
    ("first_seen", pa.string()), ("last_seen", pa.string()), ("context", pa.string()),
    ("samples", pa.string()), ("first_offset", pa.int64()), ("last_offset", pa.int64()),
])
DEAD_LETTER_SCHEMA = pa.schema([
    ("pipeline", pa.string()), ("version", pa.int64()), ("step", pa.string()), ("reason", pa.string()),
    ("message", pa.string()), ("event", pa.string()), ("line", pa.int64()), ("first_offset", pa.int64()),
    ("last_offset", pa.int64()), ("written_at", pa.string()),
])


def view_name(pipeline: str) -> str:
    """The DuckDB view (and directory) name of a pipeline's output."""
    return pipeline.replace("-", "_")


def tenant_dir(data_dir: str | Path, tenant: str) -> Path:
    return Path(data_dir).resolve() / "tenants" / check_tenant(tenant)


class OutputSink:
    """Writes one tenant's pipeline results. Safe to share between threads and processes."""

    def __init__(self, data_dir: str | Path, tenant: str, *, grace_s: float = 660.0,
                 compact_after: int | None = 64, clock: Callable[[], float] = time.time) -> None:
        self.root = tenant_dir(data_dir, tenant)
        self.tenant = tenant
        self.grace_s = grace_s
        self.compact_after = compact_after  # auto-compact a table once a partition holds this many files
        self.clock = clock

    def table(self, kind: str, pipeline: str) -> ParquetTable:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
        return ParquetTable(self.root / kind / view_name(_check_pipeline(pipeline)), grace_s=self.grace_s,
                            clock=self.clock)

    def write_outputs(self, pipeline: str, version: int, table: pa.Table, first_offset: int,
                      last_offset: int, *, time_field: str | None = DEFAULT_TIME_FIELD) -> list[str]:
        """Make offsets [first_offset, last_offset] of `pipeline` hold exactly these output rows.
        Returns the files written (relative to the pipeline's output directory)."""
        _check_range(first_offset, last_offset)
        if not isinstance(table, pa.Table):
            raise TypeError(f"write_outputs needs a pyarrow.Table; got {type(table).__name__}")
        parts = self._by_event_date(table, time_field or DEFAULT_TIME_FIELD)
        return self._write("outputs", pipeline, version, first_offset, last_offset, parts)

    def write_signals(self, pipeline: str, version: int, signals: list[dict[str, Any]], first_offset: int,
                      last_offset: int) -> list[str]:
        """Store the signal versions emitted by this offset range (the `signals` view keeps the latest
        per id). Signals need at least an `id`; the other fields of primitives.signals.Signal are kept."""
        _check_range(first_offset, last_offset)
        rows = []
        for index, signal in enumerate(signals):
            if not isinstance(signal, dict) or not isinstance(signal.get("id"), str) or not signal["id"]:
                raise ValueError(f"signal #{index} of pipeline {pipeline!r} has no string 'id'; signals are "
                                 "upserted by id (see primitives.signals.signal_id)")
            rows.append({
                "id": signal["id"], "pipeline": signal.get("pipeline", pipeline),
                "version": _int(signal.get("version", version)), "step": _str(signal.get("step")),
                "severity": _str(signal.get("severity")), "title": _str(signal.get("title")),
                "dedup": _str(signal.get("dedup")), "count": _int(signal.get("count")),
                "first_seen": _str(signal.get("first_seen")), "last_seen": _str(signal.get("last_seen")),
                "context": _json(signal.get("context", {})), "samples": _json(signal.get("samples", [])),
                "first_offset": first_offset, "last_offset": last_offset,
            })
        table = pa.Table.from_pylist(rows, schema=SIGNAL_SCHEMA)
        return self._write("signals", pipeline, version, first_offset, last_offset,
                           {self._today(): table})

    def write_dead_letters(self, pipeline: str, version: int, letters: list[DeadLetter], first_offset: int,
                           last_offset: int) -> list[str]:
        """Store the events of this offset range that left the pipeline without output, and why."""
        _check_range(first_offset, last_offset)
        now = datetime.fromtimestamp(self.clock(), UTC).isoformat().replace("+00:00", "Z")
        rows = [{
            "pipeline": pipeline, "version": version, "step": letter.step, "reason": letter.reason,
            "message": letter.message, "event": None if letter.event is None else _json(letter.event),
            "line": letter.line, "first_offset": first_offset, "last_offset": last_offset, "written_at": now,
        } for letter in letters]
        table = pa.Table.from_pylist(rows, schema=DEAD_LETTER_SCHEMA)
        return self._write("dead_letters", pipeline, version, first_offset, last_offset,
                           {self._today(): table})

    def compact(self, pipeline: str, *, min_files: int = 8) -> int:
        """Merge small files of each partition (outputs, signals, dead letters) of `pipeline`; query
        results do not change. Returns how many files were merged away."""
        merged = 0
        for kind in KINDS:
            table = self.table(kind, pipeline)
            merged += table.compact(min_files=min_files)
            table.sweep()
        return merged

    # -- internals ------------------------------------------------------------------------------
    def _write(self, kind: str, pipeline: str, version: int, first: int, last: int,
               parts: dict[str, pa.Table]) -> list[str]:
        table = self.table(kind, pipeline)
        written = table.replace_range(first, last, int(version), parts)
        if self.compact_after is not None and written:
            counts: dict[str, int] = {}
            for _, entry in table.live_files():
                counts[entry.partition] = counts.get(entry.partition, 0) + 1
            if max(counts.values(), default=0) >= self.compact_after:
                table.compact(min_files=self.compact_after)
        return written

    def _today(self) -> str:
        return "date=" + datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d")

    def _by_event_date(self, table: pa.Table, time_field: str) -> dict[str, pa.Table]:
        if table.num_rows == 0:
            return {}
        dates = pc.strftime(event_times(table, time_field), format="%Y-%m-%d")
        dates = pc.fill_null(dates, self._today()[len("date="):])
        parts = {}
        for day in pc.unique(dates).to_pylist():
            parts[f"date={day}"] = table.filter(pc.equal(dates, day))
        return parts


def _check_pipeline(pipeline: str) -> str:
    if not isinstance(pipeline, str) or not NAME.fullmatch(pipeline):
        raise ValueError(f"pipeline name {pipeline!r} is invalid: use lowercase letters, digits, - and _")
    return pipeline


def _check_range(first: int, last: int) -> None:
    if not (isinstance(first, int) and isinstance(last, int)) or first < 0 or last < first:
        raise ValueError(f"offset range must be integers with 0 <= first <= last; got [{first!r}, {last!r}]")


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))


def _str(value: Any) -> str | None:
    return None if value is None else str(value)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)
