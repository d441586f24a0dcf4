"""The embedded durable log (DESIGN §4): per-tenant streams with offsets, replay and retention.

`EmbeddedLog` is the default on one machine with no services: SQLite in WAL mode, one database
per tenant, each append one fsynced transaction (see `stream.log.db` for why SQLite).
"""

from stream.log.embedded import EmbeddedLog
from stream.log.errors import (
    IdempotencyConflict,
    InvalidName,
    LogError,
    OffsetOutOfRange,
    ReadOnlyLog,
    StreamLimitReached,
    UnknownStream,
)
from stream.log.names import check_stream, check_tenant
from stream.log.records import AppendResult, StoredBatch, StreamInfo, StreamSettings
from stream.log.retention import Hold, RetentionReport, StreamRetention

__all__ = [
    "AppendResult",
    "EmbeddedLog",
    "Hold",
    "IdempotencyConflict",
    "InvalidName",
    "LogError",
    "OffsetOutOfRange",
    "ReadOnlyLog",
    "RetentionReport",
    "StoredBatch",
    "StreamInfo",
    "StreamLimitReached",
    "StreamRetention",
    "StreamSettings",
    "UnknownStream",
    "check_stream",
    "check_tenant",
]
