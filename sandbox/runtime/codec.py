"""Frames between the host and a sandbox worker: a 4-byte big-endian length, then one msgpack map.

A batch travels as ONE msgpack payload (one C-level pack and one unpack per batch, never JSON per
event). Both ends read with hard bounds: a length prefix above the agreed cap is refused before
a byte of the body is read, and unpacking refuses every extension type but one: BIGINT, an int
beyond msgpack's 64 bits (a 128-bit id, say) as ASCII decimal text of bounded length. The host
additionally checks the shape of every response (`check_response`): everything a worker sends
is treated as hostile.

Messages (host -> worker): {"op": "init", "config": {...}, "kind", "source"}, then batches in one
of two input forms: rows {"op": "batch", "events": [{...}, ...]} or columns {"op": "batch",
"names": [str], "columns": [[...] per name], "count": int} (the worker builds one dict per row),
either with "output": "rows" (default) or "columns". Worker -> host: {"ok": True, "layers": {...},
...} after init, then per batch {"ok": True, "values": [...], "errors": [...], "logs": [...],
"cpu_s": float, "maxrss_kb": int}, where a transform/derive batch asked for "columns" output
carries instead of "values" the output rows as columns: {"names": [str], "columns": [[...]],
"source_index": [int] | None} (None: output row i came from input event i). On failure {"ok":
False, "error": kind, "message": str, "line": int | None}.
"""

from __future__ import annotations

import datetime as _dt
import re
import struct
from decimal import Decimal
from typing import Any

import msgpack

from sandbox.runtime.allowlist import MAX_INT_BITS

HEADER = struct.Struct(">I")
MAX_FRAME = 2**31 - 1
ERROR_FIELDS = ("index", "reason", "error_type", "message", "line", "function")
REASONS = frozenset({"error", "timeout", "memory", "crash", "bad_output"})


BIGINT = 1  # the msgpack extension code of ints wider than 64 bits
# 19 digits at least (anything msgpack cannot carry has them), as many as MAX_INT_BITS allows
_BIGINT_TEXT = re.compile(rb"-?[1-9][0-9]{18,%d}" % (MAX_INT_BITS * 30103 // 100_000))


class ProtocolError(Exception):
    """The peer sent something outside the protocol; the connection cannot be trusted further."""


def _default(value: Any) -> Any:
    if type(value) is int:  # msgpack asks only for ints it cannot pack itself: wider than 64 bits
        if value.bit_length() > MAX_INT_BITS:
            raise TypeError(f"cannot send an int of more than {MAX_INT_BITS:,} bits to the sandbox")
        return msgpack.ExtType(BIGINT, str(value).encode("ascii"))
    # Arrow's to_pylist gives datetimes for timestamp columns and Decimals for decimal ones; the
    # snippet sees them as ISO-8601 strings / floats, the same as events that arrived as JSON.
    if isinstance(value, _dt.datetime | _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, tuple | set | frozenset):
        return list(value)
    raise TypeError(f"cannot send a {type(value).__name__} to the sandbox; events must be JSON-like data")


def encode(message: dict[str, Any]) -> bytes:
    """Serialise one message into a frame (header + body)."""
    body: bytes = msgpack.packb(message, use_bin_type=True, default=_default, datetime=False)
    if len(body) > MAX_FRAME:
        raise ValueError(f"frame of {len(body)} bytes exceeds the protocol maximum")
    return HEADER.pack(len(body)) + body


def _ext(code: int, data: bytes) -> Any:
    if code != BIGINT:
        raise ProtocolError(f"msgpack extension type {code} is not part of the protocol")
    value = int(data) if _BIGINT_TEXT.fullmatch(data) else 0
    if -(2**63) <= value < 2**64:  # not digits, or an int that msgpack carries itself
        raise ProtocolError("a BIGINT extension must hold the decimal digits of an int wider than 64 bits")
    return value


def decode(body: bytes) -> dict[str, Any]:
    """Parse one frame body into a message map; raise ProtocolError for anything else."""
    try:
        message = msgpack.unpackb(
            body, raw=False, strict_map_key=True, ext_hook=_ext, timestamp=0, use_list=True
        )
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises several types for malformed or oversized input
        raise ProtocolError(f"undecodable frame: {type(exc).__name__}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a frame must hold a map")
    return message


def frame_length(header: bytes, limit: int) -> int:
    length: int = HEADER.unpack(header)[0]
    if length > limit:
        raise ProtocolError(f"frame of {length} bytes exceeds the cap of {limit} bytes")
    return length


def check_response(
    message: dict[str, Any], events: int, max_logs: int
) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
    """Validate a batch response's shape; returns (values, errors, logs) or raises ProtocolError."""
    values, errors, logs = message.get("values"), message.get("errors"), message.get("logs", [])
    if message.get("ok") is not True or not isinstance(values, list) or len(values) != events:
        raise ProtocolError("response values missing or of the wrong length")
    if not isinstance(errors, list) or len(errors) > events:
        raise ProtocolError("response errors malformed")
    checked: list[dict[str, Any]] = []
    for error in errors:
        if not isinstance(error, dict):
            raise ProtocolError("an error entry is not a map")
        index, reason = error.get("index"), error.get("reason")
        if type(index) is not int or not 0 <= index < events or reason not in REASONS:
            raise ProtocolError("an error entry has a bad index or reason")
        line, function = error.get("line"), error.get("function")
        checked.append(
            {
                "index": index,
                "reason": reason,
                "error_type": _short(error.get("error_type"), 100),
                "message": _short(error.get("message"), 2000),
                "line": line if type(line) is int else None,
                "function": _short(function, 100) if isinstance(function, str) else None,
            }
        )
    if not isinstance(logs, list):
        raise ProtocolError("response logs malformed")
    return values, checked, [_short(x, 4096) for x in logs[:max_logs]]


def check_columns(
    message: dict[str, Any], events: int, max_logs: int
) -> tuple[list[str], list[list[Any]], list[int], list[dict[str, Any]], list[str], list[int]]:
    """Validate a columnar transform/derive response; (names, columns, source_index, errors, logs,
    same).

    Checked here: `rows` is an int; names are unique strs; one list per name, each `rows` long;
    source_index is None (then exactly one row per event, so no event failed) or one int per row,
    in range, non-decreasing, never naming an event that failed. `same` (optional) lists distinct
    column positions the worker says it left unchanged: allowed only with one row per event, and
    those columns must be empty lists (the host uses its own input column of that name, and
    refuses a name the input did not have). The values themselves are checked when the host
    builds Arrow arrays from them (sandbox/columns.py).
    """
    names, columns = message.get("names"), message.get("columns")
    rows, source = message.get("rows"), message.get("source_index")
    if message.get("ok") is not True or not isinstance(names, list) or not isinstance(columns, list):
        raise ProtocolError("columnar response: names or columns missing")
    if type(rows) is not int or rows < 0:
        raise ProtocolError("columnar response: rows is not a count")
    if len(names) != len(columns) or not all(type(n) is str for n in names) or len(set(names)) != len(names):
        raise ProtocolError("columnar response: names must be unique strs, one per column")
    same = message.get("same", [])
    if (type(same) is not list or not all(type(i) is int and 0 <= i < len(names) for i in same)
            or len(set(same)) != len(same)):
        raise ProtocolError("columnar response: same must list distinct column positions")
    if same and source is not None:
        raise ProtocolError("columnar response: unchanged columns need one row per event")
    unchanged = set(same)
    if not all(type(c) is list and len(c) == (0 if i in unchanged else rows) for i, c in enumerate(columns)):
        raise ProtocolError("columnar response: every column must be a list of `rows` values "
                            "(an empty one if it is listed as unchanged)")
    _, errors, logs = check_response({**message, "values": [None] * events}, events, max_logs)
    if source is None:
        if rows != events or errors:
            raise ProtocolError("columnar response: without source_index there must be one row per event")
        return names, columns, list(range(events)), errors, logs, same
    if type(source) is not list or len(source) != rows:
        raise ProtocolError("columnar response: source_index must hold one int per output row")
    previous = 0
    for index in source:
        if type(index) is not int or not previous <= index < events:
            raise ProtocolError("columnar response: source_index out of range or decreasing")
        previous = index
    if errors and not {e["index"] for e in errors}.isdisjoint(source):
        raise ProtocolError("columnar response: an event that failed has an output row")
    return names, columns, source, errors, logs, same


def _short(value: Any, limit: int) -> str:
    text = value if isinstance(value, str) else ""
    return text if len(text) <= limit else text[:limit] + "…"
