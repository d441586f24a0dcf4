"""`logbus serve --tail PATH=STREAM`: follow a file as `tail -F` does, without losing or repeating a line.

- Start: at the end of the last whole line (`start="end"`, the default) or at the beginning
  (`start="beginning"`). A file that appears later, or one that replaces the followed file, is
  always read from its beginning: nothing in it has been seen.
- Lines: only whole lines are sent (LF, CRLF or bare CR end one); a partial last line waits for its
  line ending. A CRLF split across two reads is harmless: the lone LF reads as an empty line, and
  empty lines are skipped. Batches of at most `max_chunk_bytes` go through `ingest_bytes` as
  `lines` (`{"message": line}`) or `ndjson`; bad lines become the stream's dead letters there.
- Rotation by rename (a new file under the name: another device/inode): the old file, still open,
  is read to its end, and the switch waits until it stopped growing for one poll (at most
  `rotate_wait_s`), because a daemon keeps writing to the old file until it reopens its log. Its
  last line is then sent even without a line ending: nobody will finish it.
- Truncation (copytruncate: the size falls below the position), or the first bytes of the file no
  longer being the ones read (the file was rewritten in place, or a new file got the old inode
  number): the file is read again from the beginning.
- An absent file is waited for, and a deleted one is read to its end while its writer holds it.
- Position: device, inode, offset and a hash of the file's first bytes are saved (JSON, fsynced,
  atomically replaced) in `state_dir` after each batch, so a restart resumes where it stopped;
  if the file was rotated while LogBus was down, the old file is found again by its inode in the
  same directory and finished first. Each batch is appended with an idempotency key made of
  (device, inode, generation, start, end offsets), written to the state file *before* the append:
  after a crash between append and save, the restart sends the same bytes with the same key and
  the log answers "duplicate" instead of storing them twice.

Why polling (every 200 ms) and not inotify: inotify is Linux-only, needs a C binding or ctypes, does
not work on NFS or many container overlay mounts, and loses events when its queue overflows, so a
correct follower needs the stat-and-compare loop anyway. A stat per poll per file costs microseconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any, Literal

from stream.ingest import CONTENT_TYPES, EmptyBody, IngestError, ingest_bytes
from stream.inputs import FORMATS, Format
from stream.log import EmbeddedLog, check_stream, check_tenant

log = logging.getLogger(__name__)

POLL_S = 0.2
MAX_CHUNK_BYTES = 4 << 20  # more than the 1 MiB line cap, so a chunk with no line ending is dead-lettered
HEAD_BYTES = 256  # identity of a file beyond its inode, as Vector's checksum fingerprint
ROTATE_WAIT_S = 5.0
TAIL_FROM_END_SCAN = 64 << 10
Start = Literal["end", "beginning"]


class TailError(ValueError):
    """A tail that cannot be set up (bad path, stream, format); the message says what to change."""


class FileTail:
    """Follows one file into one stream, in a thread (`start`/`stop`) or step by step (`poll_once`)."""

    def __init__(self, log_: EmbeddedLog, path: str | os.PathLike[str], stream: str, *, state_dir: str | Path,
                 tenant: str = "default", fmt: Format = "lines", start: Start = "end", poll_s: float = POLL_S,
                 max_chunk_bytes: int = MAX_CHUNK_BYTES, rotate_wait_s: float = ROTATE_WAIT_S) -> None:
        try:
            check_stream(stream)
            check_tenant(tenant)
        except ValueError as exc:
            raise TailError(str(exc)) from None
        if fmt not in FORMATS:
            raise TailError(f"tail format {fmt!r} is invalid: use one of {', '.join(FORMATS)}")
        if start not in ("end", "beginning"):
            raise TailError(f"tail start {start!r} is invalid: use 'end' or 'beginning'")
        self.log, self.stream, self.tenant, self.fmt, self.start_at = log_, stream, tenant, fmt, start
        self.path = Path(os.path.abspath(path))
        if self.path.is_dir():
            raise TailError(f"tail path {str(path)!r} is a directory: name a file")
        self.poll_s, self.max_chunk_bytes, self.rotate_wait_s = poll_s, max_chunk_bytes, rotate_wait_s
        ident = hashlib.sha256(f"{tenant}\0{stream}\0{self.path}".encode()).hexdigest()[:16]
        self.state_path = Path(state_dir) / f"{ident}.json"
        self.metrics: dict[str, int] = dict.fromkeys(
            ("events", "dead_letters", "bytes", "batches", "duplicates", "rotations", "truncations",
             "errors"), 0)
        self._fd: int | None = None
        self._dev = self._ino = self._offset = self._gen = 0
        self._head_len, self._head = 0, ""
        self._epoch = ""
        self._rotating_since: float | None = None
        self._loaded = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Resume from the saved position (or start as configured), then poll in a daemon thread."""
        with self._lock:
            try:
                self._resume()
            except Exception:  # the log refused the pending batch: the first poll tries again
                self._loaded = False
                self.metrics["errors"] += 1
                log.exception("tail %s -> %s: resuming failed; retrying", self.path, self.stream)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"tail-{self.stream}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batch in flight, save the position, close the file; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._lock:
            self._close()

    def status(self) -> dict[str, Any]:
        return {"path": str(self.path), "stream": self.stream, "tenant": self.tenant, "offset": self._offset,
                "inode": self._ino, "following": self._fd is not None, **self.metrics}

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the disk, the log: retried from the saved position on the next poll
                self.metrics["errors"] += 1
                log.exception("tail %s -> %s: poll failed; retrying", self.path, self.stream)
                self._stop.wait(min(5.0, self.poll_s * 10))
            self._stop.wait(self.poll_s)

    # -- one poll ------------------------------------------------------------------------------

    def poll_once(self) -> int:
        """Send what was appended since the last poll, follow a rotation or truncation; bytes consumed."""
        with self._lock:
            if not self._loaded:
                self._resume()
            if self._fd is None and not self._open_path(from_start=True):
                return 0
            assert self._fd is not None
            current = os.fstat(self._fd)
            if current.st_size < self._offset or not self._same_head():  # checked before reading past it
                self.metrics["truncations"] += 1
                log.info("tail %s: truncated or rewritten; reading it again from the beginning", self.path)
                self._restart_file()
            moved = self._drain()
            named = _stat(self.path)
            if named is not None and (named.st_dev, named.st_ino) != (current.st_dev, current.st_ino):
                now = time.monotonic()
                self._rotating_since = self._rotating_since or now
                if moved == 0 or now - self._rotating_since >= self.rotate_wait_s:
                    moved += self._drain(final=True)
                    self.metrics["rotations"] += 1
                    self._close()
                    if self._open_path(from_start=True):
                        moved += self._drain()
            return moved

    def _drain(self, *, final: bool = False) -> int:
        """Append every whole line from the position to the end of the open file (all bytes if final)."""
        assert self._fd is not None
        total = 0
        while not self._stop.is_set() or final:
            data = os.pread(self._fd, self.max_chunk_bytes, self._offset)
            if not data:
                break
            at_end = len(data) < self.max_chunk_bytes
            cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
            if (final and at_end) or (cut == 0 and not at_end):
                cut = len(data)  # a rotated file's unfinished line, or a line over the chunk size
            if cut == 0:
                break
            self._send(data[:cut])
            total += cut
            if at_end:
                break  # what is left, if anything, is a partial line
        return total

    def _send(self, body: bytes) -> None:
        start, end = self._offset, self._offset + len(body)
        key = f"tail:{self._epoch}:{self._dev}:{self._ino}:{self._gen}:{start}:{end}"
        self._save(pending={"start": start, "end": end, "key": key})
        self._ingest(body, key)
        self._offset = end
        self._update_head()
        self._save()

    def _ingest(self, body: bytes, key: str) -> None:
        try:
            result = ingest_bytes(self.log, self.tenant, self.stream, body,
                                  content_type=CONTENT_TYPES[self.fmt], idempotency_key=key)
        except EmptyBody:
            return
        except IngestError as exc:  # the stream limit, for instance: retried until an operator fixes it
            raise RuntimeError(f"tail {self.path} -> stream {self.stream!r}: {exc}") from exc
        self.metrics["batches"] += 1
        self.metrics["bytes"] += len(body)
        if result.duplicate:
            self.metrics["duplicates"] += 1
        else:
            self.metrics["events"] += result.accepted
            self.metrics["dead_letters"] += result.rejected

    # -- files and positions -------------------------------------------------------------------

    def _resume(self) -> None:
        """Open the file named by the saved position (or the one at the path) at the right offset."""
        self._loaded = True
        state = self._load()
        if state is None:
            self._epoch = secrets.token_hex(4)
            if self._open_path(from_start=self.start_at == "beginning"):
                self._save()
            return
        self._epoch, self._gen = str(state["epoch"]), int(state["gen"])
        found = self._find(int(state["dev"]), int(state["ino"]), int(state["head_len"]), str(state["head"]))
        if found is None:  # replaced while we were down: all of the file at the path is new
            self._open_path(from_start=True)
            return
        self._fd, self._dev, self._ino = found, int(state["dev"]), int(state["ino"])
        self._offset, self._head_len = int(state["offset"]), int(state["head_len"])
        self._head = str(state["head"])
        if os.fstat(found).st_size < self._offset:
            self._restart_file()
            return
        pending = state.get("pending")
        size = os.fstat(found).st_size
        if pending and int(pending["start"]) == self._offset and size >= int(pending["end"]):
            # a batch that may have been appended before the crash: same bytes, same key, no duplicate
            body = os.pread(found, int(pending["end"]) - self._offset, self._offset)
            self._ingest(body, str(pending["key"]))
            self._offset = int(pending["end"])
            self._update_head()
            self._save()

    def _find(self, dev: int, ino: int, head_len: int, head: str) -> int | None:
        """An open descriptor of the saved file: at its path, or renamed in the same directory."""
        candidates = [self.path]
        with contextlib.suppress(OSError):
            candidates += sorted(p for p in self.path.parent.iterdir() if p != self.path)
        for candidate in candidates:
            st = _stat(candidate)
            if st is None or (st.st_dev, st.st_ino) != (dev, ino):
                continue
            try:
                fd = os.open(candidate, os.O_RDONLY)
            except OSError:
                continue
            if _head_hash(fd, head_len) == head:
                return fd
            os.close(fd)
        return None

    def _open_path(self, *, from_start: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("tail %s: cannot open (%s); retrying", self.path, exc)
            return False
        st = os.fstat(fd)
        self._fd, self._dev, self._ino = fd, st.st_dev, st.st_ino
        self._gen += 1  # a new file: idempotency keys never repeat an earlier file's
        self._rotating_since = None
        self._offset = 0 if from_start else _last_line_end(fd, st.st_size)
        self._head_len, self._head = 0, _head_hash(fd, 0)
        self._update_head()
        self._save()
        return True

    def _restart_file(self) -> None:
        assert self._fd is not None
        self._gen += 1
        self._offset, self._head_len, self._head = 0, 0, _head_hash(self._fd, 0)
        self._update_head()
        self._save()

    def _same_head(self) -> bool:
        return self._fd is not None and _head_hash(self._fd, self._head_len) == self._head

    def _update_head(self) -> None:
        """Fingerprint the first bytes already read (up to HEAD_BYTES), so a rewrite is recognised."""
        if self._fd is not None and self._head_len < HEAD_BYTES and self._offset > self._head_len:
            self._head_len = min(self._offset, HEAD_BYTES)
            self._head = _head_hash(self._fd, self._head_len)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _load(self) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("tail %s: unreadable position file %s (%s); starting afresh", self.path,
                        self.state_path, exc)
            return None
        return state

    def _save(self, *, pending: dict[str, Any] | None = None) -> None:
        state = {"path": str(self.path), "tenant": self.tenant, "stream": self.stream, "epoch": self._epoch,
                 "gen": self._gen, "dev": self._dev, "ino": self._ino, "offset": self._offset,
                 "head_len": self._head_len, "head": self._head, "pending": pending,
                 "updated_at": time.time()}
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_path)


def _stat(path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _head_hash(fd: int, length: int) -> str:
    data = os.pread(fd, length, 0) if length > 0 else b""
    return hashlib.blake2b(data, digest_size=8).hexdigest() if len(data) == length else "short"


def _last_line_end(fd: int, size: int) -> int:
    """The offset just after the last line ending (so the line being written is read whole)."""
    start = max(0, size - TAIL_FROM_END_SCAN)
    data = os.pread(fd, size - start, start)
    cut = max(data.rfind(b"\n"), data.rfind(b"\r"))
    return start + cut + 1 if cut >= 0 else (size if start else 0)


def parse_tail_spec(spec: str) -> tuple[str, str, Format]:
    """`PATH=STREAM[:FORMAT]` (the `--tail` argument) as (path, stream, format); TailError otherwise."""
    path, sep, target = spec.rpartition("=")
    if not sep or not path or not target:
        raise TailError(f"--tail {spec!r} is invalid: write PATH=STREAM[:FORMAT], e.g. "
                        "/var/log/auth.log=auth or /var/log/app.json=app:ndjson")
    stream, _, fmt = target.partition(":")
    fmt = fmt or "lines"
    if fmt not in FORMATS:
        raise TailError(f"--tail {spec!r}: format {fmt!r} is invalid; use one of {', '.join(FORMATS)}")
    try:
        check_stream(stream)
    except ValueError as exc:
        raise TailError(f"--tail {spec!r}: {exc}") from None
    return path, stream, fmt  # type: ignore[return-value]  # checked against FORMATS above
