"""Event files that are gzip-compressed, read as the text they hold.

Rotated logs are gzipped (logrotate's `access.log.2.gz`), and users point `logbus test --events`
and `logbus ingest` at them as they are. A file is taken as gzip by its first two bytes (the magic
number 1f 8b), not by its name: neither NDJSON nor UTF-8 text can start with them (0x8b is no
UTF-8 lead byte), and a `.gz` name on plain text, or gzip data without one, reads right either
way. Decompression streams: a reader takes a chunk at a time, so a file that inflates to
gigabytes never has to fit in memory.

Readers that take bodies from the network (HTTP ingest) do not come here: there the
Content-Encoding header says what a body is, and the server bounds what it inflates to.
"""

from __future__ import annotations

import gzip
import io
import zlib
from typing import BinaryIO, cast

GZIP_MAGIC = b"\x1f\x8b"

# What reading a damaged gzip stream raises: a bad header or CRC, data cut short, a bad block.
DECOMPRESSION_ERRORS: tuple[type[BaseException], ...] = (gzip.BadGzipFile, EOFError, zlib.error)


def maybe_gunzip(stream: BinaryIO) -> BinaryIO:
    """`stream`, or a decompressing reader over it when its data starts with gzip's magic number.

    The first bytes are looked at without being consumed: with `peek` where the stream has it
    (files, standard input), else by seeking back. A stream that can do neither is taken as it is."""
    if _head(stream) == GZIP_MAGIC:
        return cast(BinaryIO, _Gunzip(stream))
    return stream


class _Gunzip:
    """gzip.GzipFile read in small steps, so that damaged data costs only the text after it.

    A GzipFile call that meets the end of a cut-short file raises and drops all it had inflated
    for that call: asked for a reader's 8 MiB at once, that is up to 8 MiB of good text. Here a
    read is made of STEP-sized calls; when one fails, the text of the calls before it is
    returned, and the error is raised by the next read."""

    STEP = 16 << 10

    def __init__(self, raw: BinaryIO) -> None:
        self._file = gzip.GzipFile(fileobj=raw, mode="rb")
        self._error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        parts: list[bytes] = []
        got = 0
        while size < 0 or got < size:
            try:
                piece = self._file.read(self.STEP if size < 0 else min(self.STEP, size - got))
            except DECOMPRESSION_ERRORS as exc:
                if not parts:
                    raise
                self._error = exc
                break
            if not piece:
                break
            parts.append(piece)
            got += len(piece)
        return b"".join(parts)

    def close(self) -> None:
        self._file.close()  # the stream underneath stays open: its owner closes it


def describe(error: BaseException) -> str:
    """What went wrong in a damaged gzip stream, said for a user."""
    if isinstance(error, EOFError):
        return "the gzip data is cut short (the file may still be being written, or was truncated)"
    # deflate has no checksum per block: damage shows as wrong text until the decoder trips or
    # the member's CRC fails at its end, so what was read just before may be wrong too
    return (f"the gzip data is damaged ({error}); lines read shortly before this point may hold "
            "damaged text too (gzip checks its data only at the end of each member)")


def _head(stream: BinaryIO) -> bytes:
    peek = getattr(stream, "peek", None)
    if peek is not None:
        try:
            return bytes(peek(len(GZIP_MAGIC))[: len(GZIP_MAGIC)])
        except (OSError, ValueError):
            return b""
    try:
        if not stream.seekable():
            return b""
        position = stream.tell()
        head = stream.read(len(GZIP_MAGIC))
        stream.seek(position, io.SEEK_SET)
    except (OSError, ValueError):
        return b""
    return head
