"""The log's errors. Each message names the tenant/stream/offset involved and what to do instead."""

from __future__ import annotations


class LogError(Exception):
    """Base class of every error the embedded log raises on purpose."""


class InvalidName(LogError, ValueError):
    """A tenant, stream or consumer name, a setting or an idempotency key that is not allowed."""


class UnknownStream(LogError, KeyError):
    """The stream has never been created (reads do not create streams; ingest does)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "unknown stream"


class OffsetOutOfRange(LogError, IndexError):
    """A read or a consumer position outside [start_offset, end_offset] of the stream."""

    def __init__(self, message: str, *, start_offset: int, end_offset: int) -> None:
        super().__init__(message)
        self.start_offset = start_offset
        self.end_offset = end_offset


class IdempotencyConflict(LogError):
    """An idempotency key reused for different content: the retry is not a retry."""


class StreamLimitReached(LogError):
    """The tenant already has the maximum number of streams."""


class ReadOnlyLog(LogError):
    """A write through a log opened with readonly=True."""
