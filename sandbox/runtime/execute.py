"""Run a loaded snippet over a batch of events: the worker's hot loop.

Each event is handed to the entrypoint inside `try/except Exception`; a failure (exception or bad
output) costs that event only, reported with the snippet line and function. Results are checked at
the boundary: transform/derive -> list[dict], keep -> bool, rule -> a match record; every output is
plain JSON data of bounded size and depth (dict/list subclasses and tuples are converted, anything
else is a `bad_output` error that says what was returned and what to return instead).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from math import isfinite
from typing import Any

from sandbox.runtime.allowlist import (
    MAX_INT,
    MAX_OUTPUT_BYTES,
    MAX_OUTPUT_DEPTH,
    MAX_PRINT_BYTES,
    MAX_PRINT_LINES,
    MAX_TEXT_FIELD,
    MIN_INT,
    SEVERITIES,
)
from sandbox.runtime.loader import Entrypoints, snippet_frame


@dataclass(frozen=True, slots=True)
class OutputCaps:
    """Limits on what one input event may produce (sizes are approximate JSON bytes)."""

    max_bytes: int = MAX_OUTPUT_BYTES
    max_depth: int = MAX_OUTPUT_DEPTH
    max_text: int = MAX_TEXT_FIELD
    max_print_lines: int = MAX_PRINT_LINES
    max_print_bytes: int = MAX_PRINT_BYTES


DEFAULT_CAPS = OutputCaps()
_SEVERITIES = frozenset(SEVERITIES)
_RETURNED = "the returned dict"


class BadOutput(Exception):
    """The snippet returned something that is not allowed; the message is for the agent."""


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} ({text[:60] + '...' if len(text) > 60 else text})"


def _scalar_size(v: Any, path: str) -> int:
    """Size of a JSON scalar, or -1 when v is not one; raises BadOutput on bad scalars."""
    t = type(v)
    if t is str:
        if not v.isascii():
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise BadOutput(f"{path} is a str that is not valid UTF-8 (lone surrogate)") from None
        return len(v) + 2
    if t is int:
        if not MIN_INT <= v <= MAX_INT:
            raise BadOutput(f"{path} is an int outside the 64-bit range; return it as a str")
        return 8
    if t is bool or v is None:
        return 5
    if t is float:
        if not isfinite(v):
            raise BadOutput(f"{path} is {v!r}; only finite floats are JSON data (use None)")
        return 8
    return -1


def _plain(value: Any, depth: int, budget: int, caps: OutputCaps, path: str) -> tuple[Any, int]:
    """(value as plain JSON data, remaining budget); raises BadOutput."""
    size = _scalar_size(value, path)
    if size >= 0:
        budget -= size
    elif isinstance(value, Mapping):
        value, budget = _plain_dict(value, depth, budget, caps, path)
    elif isinstance(value, list | tuple) or type(value).__name__ == "deque":
        if depth >= caps.max_depth:
            raise BadOutput(f"{path} is nested deeper than {caps.max_depth} levels")
        items = value if type(value) is list else list(value)
        for i, item in enumerate(items):
            new, budget = _plain(item, depth + 1, budget, caps, f"{path}[{i}]")
            if new is not item:
                items[i] = new
            if budget < 0:
                break
        value = items
        budget -= 2
    else:
        hint = {"set": "sorted(list(value))", "frozenset": "sorted(list(value))", "bytes": "value.decode()",
                "datetime": "value.isoformat()", "date": "value.isoformat()"}.get(type(value).__name__)
        raise BadOutput(f"{path} is {_describe(value)}, which is not JSON data"
                        + (f"; return {hint}" if hint else ""))
    if budget < 0:
        raise BadOutput(f"the output is larger than {caps.max_bytes} bytes (at {path})")
    return value, budget


def _plain_dict(d: Mapping[Any, Any], depth: int, budget: int, caps: OutputCaps,
                path: str) -> tuple[dict[str, Any], int]:
    # The hot path of every transform: scalar checks are inlined (a call per field would cost more
    # than the snippet itself); the budget is checked per container, which bounds the overshoot by
    # one container's scalars (already in memory) while still stopping shared-reference blowups.
    if depth >= caps.max_depth:
        raise BadOutput(f"{path} is nested deeper than {caps.max_depth} levels")
    out: dict[str, Any] = d if type(d) is dict else dict(d)
    changed: list[tuple[str, Any]] | None = None
    budget -= 2
    for k, v in out.items():
        if type(k) is not str:
            raise BadOutput(f"{path} has a key {_describe(k)}; keys must be str (use str(key))")
        t = type(v)
        if t is str:
            budget -= len(k) + len(v) + 6
            if not (v.isascii() and k.isascii()):
                _scalar_size(k, path)
                _scalar_size(v, f"{path}[{k!r}]")
        elif t is int:
            budget -= len(k) + 12
            if not MIN_INT <= v <= MAX_INT:
                _scalar_size(v, f"{path}[{k!r}]")
        elif t is bool or v is None:
            budget -= len(k) + 9
        elif t is float:
            budget -= len(k) + 12
            if not isfinite(v):
                _scalar_size(v, f"{path}[{k!r}]")
        else:
            new, budget = _plain(v, depth + 1, budget - len(k) - 4, caps, f"{path}[{k!r}]")
            if new is not v:
                changed = changed or []
                changed.append((k, new))
    if budget < 0:
        raise BadOutput(f"the output is larger than {caps.max_bytes} bytes (at {path})")
    if changed:
        for k, new in changed:
            out[k] = new
    return out, budget


def _records(value: Any, fn: str, caps: OutputCaps) -> list[dict[str, Any]]:
    """transform/derive result -> list of plain dicts."""
    if value is None:
        return []
    if type(value) is dict or isinstance(value, Mapping):
        return [_plain_dict(value, 0, caps.max_bytes, caps, _RETURNED)[0]]
    if type(value) is list or type(value) is tuple:
        budget = caps.max_bytes
        out = []
        for i, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise BadOutput(f"{fn}() must return a dict, a list of dicts or None; item {i} of the "
                                f"returned list is {_describe(item)}")
            record, budget = _plain_dict(item, 0, budget, caps, f"item {i}")
            out.append(record)
        return out
    raise BadOutput(f"{fn}() must return a dict, a list of dicts or None; got {_describe(value)}")


def _text(value: Any, fn: str, caps: OutputCaps) -> str | None:
    if value is None or (type(value) is str and len(value) <= caps.max_text):
        return value
    if type(value) is str:
        raise BadOutput(f"{fn}() returned a str longer than {caps.max_text} characters")
    raise BadOutput(f"{fn}() must return a str or None; got {_describe(value)}")


def _rule_record(ep: Entrypoints, event: Any, matched: Any, caps: OutputCaps) -> dict[str, Any]:
    if type(matched) is not bool:
        raise BadOutput(f"rule() must return a bool; got {_describe(matched)}")
    record: dict[str, Any] = {"match": matched, "dedup": None, "title": None, "severity": None,
                              "context": None}
    if not matched:
        return record
    extras = ep.extras
    if "dedup" in extras:
        record["dedup"] = _text(extras["dedup"](event), "dedup", caps)
    if "title" in extras:
        record["title"] = _text(extras["title"](event), "title", caps)
    if "severity" in extras:
        sev = extras["severity"](event)
        if sev is not None and (type(sev) is not str or sev not in _SEVERITIES):
            raise BadOutput(f"severity() must return one of {', '.join(SEVERITIES)} or None; "
                            f"got {_describe(sev)}")
        record["severity"] = sev
    if "context" in extras:
        ctx = extras["context"](event)
        if ctx is not None:
            if not isinstance(ctx, Mapping):
                raise BadOutput(f"context() must return a dict or None; got {_describe(ctx)}")
            ctx = _plain_dict(ctx, 0, caps.max_bytes, caps, "the context dict")[0]
        record["context"] = ctx
    return record


def _error(index: int, exc: BaseException, function: str | None = None) -> dict[str, Any]:
    line, frame_fn = snippet_frame(exc)
    if isinstance(exc, BadOutput):
        reason = "bad_output"
    elif isinstance(exc, MemoryError):
        reason = "memory"
    else:
        reason = "error"
    message = str(exc)
    if len(message) > 500:
        message = message[:500] + "..."
    return {"index": index, "reason": reason, "error_type": type(exc).__name__, "message": message,
            "line": line, "function": frame_fn or function}


def run_events(ep: Entrypoints, events: list[dict[str, Any]],
               caps: OutputCaps = DEFAULT_CAPS) -> tuple[list[Any], list[dict[str, Any]], list[str]]:
    """Call the entrypoint once per event: (values, errors, print lines); values[i] is None on error.

    Events are passed as they come: each is already a fresh object decoded from the batch codec,
    so the snippet may mutate it and no copy is made here (a deep copy would halve throughput).
    """
    prints = ep.prints
    prints.max_lines, prints.max_bytes = caps.max_print_lines, caps.max_print_bytes
    fn: Callable[[Any], Any] = ep.entry
    name = ep.name
    values: list[Any] = [None] * len(events)
    errors: list[dict[str, Any]] = []
    kind = ep.kind
    # One loop per kind: this is the hot path, so the kind is not re-tested per event.
    if kind == "transform" or kind == "derive":
        max_bytes = caps.max_bytes
        for i, event in enumerate(events):
            prints.index = i
            try:
                out = fn(event)
                if type(out) is dict:  # the common case: one plain dict
                    values[i] = [_plain_dict(out, 0, max_bytes, caps, _RETURNED)[0]]
                else:
                    values[i] = _records(out, name, caps)
            except Exception as exc:  # one bad event never stops the batch
                errors.append(_error(i, exc, name))
    elif kind == "rule":
        for i, event in enumerate(events):
            prints.index = i
            try:
                values[i] = _rule_record(ep, event, fn(event), caps)
            except Exception as exc:
                errors.append(_error(i, exc, name))
    else:
        for i, event in enumerate(events):
            prints.index = i
            try:
                out = fn(event)
                if type(out) is not bool:
                    raise BadOutput(f"keep() must return a bool; got {_describe(out)}")
                values[i] = out
            except Exception as exc:
                errors.append(_error(i, exc, name))
    return values, errors, prints.drain()
