"""The log's value types: what an append, a read and a stream listing hand back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Where an append landed. `duplicate`: an earlier append with the same key, returned again."""

    first_offset: int
    count: int
    duplicate: bool = False
    dead_letters: int = 0
    receipt: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A stored batch (sliced when a read starts inside it) and when it was appended."""

    first_offset: int
    appended_at: float
    table: pa.Table

    @property
    def next_offset(self) -> int:
        return self.first_offset + int(self.table.num_rows)


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """Per-stream settings. A retention value of None means the log's default; float("inf")
    for `retention_age_s` keeps a stream's events regardless of age."""

    time_field: str | None = None
    format: str | None = None
    retention_age_s: float | None = None
    retention_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A stream's retained range and what is known about its contents (times in epoch seconds)."""

    name: str
    start_offset: int
    end_offset: int
    batches: int
    bytes: int
    created_at: float
    first_ingest_at: float | None
    last_ingest_at: float | None
    min_time: float | None  # event time range, when the time field holds recognisable times
    max_time: float | None
    dead_letters: int
    settings: StreamSettings
    consumers: dict[str, int] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return self.end_offset - self.start_offset

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "events": self.events, "start_offset": self.start_offset,
                "end_offset": self.end_offset, "batches": self.batches, "bytes": self.bytes,
                "created_at": self.created_at, "first_ingest_at": self.first_ingest_at,
                "last_ingest_at": self.last_ingest_at, "min_time": self.min_time, "max_time": self.max_time,
                "dead_letters": self.dead_letters, "time_field": self.settings.time_field,
                "format": self.settings.format, "consumers": dict(self.consumers)}
