"""Run a loaded snippet over a batch of events: the worker's hot loop.

Each event is handed to the entrypoint inside `try/except Exception`; a failure (exception or bad
output) costs that event only, reported with the snippet line and function. Results are checked at
the boundary: transform/derive -> list[dict], keep -> bool, rule -> a match record; every output is
plain JSON data of bounded size and depth (dict/list subclasses and tuples are converted, anything
else is a `bad_output` error that says what was returned and what to return instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import chain, repeat
from math import isfinite
from operator import itemgetter
from typing import Any

from sandbox.runtime.allowlist import (
    MAX_INT,
    MAX_INT_BITS,
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
_by_index = itemgetter("index")


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
        if MIN_INT <= v <= MAX_INT:
            return 8
        bits: int = v.bit_length()
        if bits > MAX_INT_BITS:
            raise BadOutput(f"{path} is an int of more than {MAX_INT_BITS:,} bits; return it as a str")
        return bits // 3 + 2  # at most this many decimal digits (and a sign)
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
    elif type(value) is dict or (type(value) is not list and isinstance(value, Mapping)):
        value, budget = _plain_dict(value, depth, budget, caps, path)  # (exact types first: the
    elif isinstance(value, list | tuple) or type(value).__name__ == "deque":  # ABC test is slow)
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
            if not (MIN_INT <= v <= MAX_INT and k.isascii()):
                _scalar_size(k, path)
                budget -= _scalar_size(v, f"{path}[{k!r}]") - 8  # a wide int costs its digits
        elif t is bool or v is None:
            budget -= len(k) + 9
            if not k.isascii():
                _scalar_size(k, path)
        elif t is float:
            budget -= len(k) + 12
            if not (isfinite(v) and k.isascii()):
                _scalar_size(k, path)
                _scalar_size(v, f"{path}[{k!r}]")
        else:  # a nested dict goes straight in: _plain would only find out that it is one
            if not k.isascii():
                _scalar_size(k, path)
            new, budget = (_plain_dict if t is dict else _plain)(v, depth + 1, budget - len(k) - 4, caps,
                                                                 f"{path}[{k!r}]")
            if new is not v:
                changed = changed or []
                changed.append((k, new))
    if budget < 0:
        raise BadOutput(f"the output is larger than {caps.max_bytes} bytes (at {path})")
    if changed:
        for k, new in changed:
            out[k] = new
    return out, budget


# -- the bulk check of one-dict outputs ---------------------------------------------------------
# Most transforms return one flat dict per event, mostly with the same keys. For those, the checks
# of _plain_dict reduce to a few facts per column (the values under one key across events), each
# decided by one C-level pass over exact builtin types: which types occur, min/max of the ints,
# the sum of the floats (NaN or inf make it non-finite), whether every str is ASCII, the longest
# str. Nothing here calls a method a snippet could define: the types are established first (by
# `type()`, which dispatches nothing), and only exact str/int/float/bool/None values reach an
# operation. Any doubt sends a row to _plain_dict, the exact checker, which also writes every
# error message: this path never rejects, it only vouches for rows _plain_dict would pass as is.

_BULK_MIN = 32  # below this, building columns costs more than it saves
_JOIN_MAX = 1 << 24  # chars: above this, ASCII is tested str by str rather than joined
_STR_ONLY = frozenset({str})
_TEXT = frozenset({str, type(None)})
_SCALARS = frozenset({str, int, float, bool, type(None)})
_NUMBERS = frozenset({int, float, bool, type(None)})
# The per-row cost _plain_dict charges a value, besides len(key): _scalar_size(v) + 4.
_NUMBER_COST, _FLAG_COST, _STR_COST = 12, 9, 6


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")  # a lone surrogate fails (joining strs never pairs two of them)
    except UnicodeEncodeError:
        return False
    return True


def _scan(column: list[Any], slow: set[int]) -> int:
    """Exact per-value check of a column that mixes types: rows with a value that is not a valid
    JSON scalar go to `slow`; returns the largest cost of the others."""
    worst = _FLAG_COST
    for row, value in enumerate(column):
        try:
            size = _scalar_size(value, "")
        except BadOutput:
            size = -1
        if size < 0:
            slow.add(row)
        elif size + 4 > worst:
            worst = size + 4
    return worst


def _column_cost(column: list[Any], slow: set[int]) -> int:
    """Checks one column; rows it cannot vouch for go to `slow`. Returns an upper bound of what
    _plain_dict charges any other row for its value here (len(key) aside)."""
    kinds = set(map(type, column))
    if kinds <= _TEXT:
        texts = list(filter(None, column)) if type(None) in kinds else column  # "" is fine too
        longest = max(map(len, texts), default=0)
        # one join then one O(1) flag test, unless the join could be huge (a shared long str)
        if longest * len(texts) <= _JOIN_MAX:
            ascii_only = "".join(texts).isascii()
        else:
            ascii_only = all(map(str.isascii, texts))
        if not ascii_only:
            return _scan(column, slow)  # some are non-ASCII: only a per-value encode can tell
        return max(_STR_COST + longest, _FLAG_COST)
    if kinds <= _NUMBERS:
        if int not in kinds and float not in kinds:
            return _FLAG_COST
        numbers = list(filter(None, column)) if type(None) in kinds else column
        try:
            # NaN or inf anywhere makes the sum NaN or inf (a finite overflow only costs a scan)
            if float in kinds and not isfinite(sum(numbers)):
                return _scan(column, slow)
            if int in kinds and not MIN_INT <= min(numbers, default=0) <= max(numbers, default=0) <= MAX_INT:
                return _scan(column, slow)
        except OverflowError:  # an int too large for the float sum
            return _scan(column, slow)
        return _NUMBER_COST
    return _scan(column, slow)


def _same_shape(outs: list[dict[str, Any]], names: list[str], max_bytes: int) -> set[int] | None:
    """Rows of `outs` that _plain_dict must see; None for all. Every row has exactly the keys
    `names`, exact strs, in that order."""
    joined = "".join(names)
    if not joined.isascii() and not _utf8(joined):
        return None  # a key that is not valid UTF-8: the exact checker says which
    # one flat list of the values; each column is a slice of it (a C-level copy, no lookups)
    flat = list(chain.from_iterable(map(dict.values, outs)))
    width = len(names)
    slow: set[int] = set()
    bound = 2 + len(joined)
    for col in range(width):
        bound += _column_cost(flat[col::width], slow)
        if len(slow) * 4 > len(outs):
            return None  # mostly nested or odd values: the exact checker has to walk them anyway
    return slow if bound <= max_bytes else None


def _exact_rows(outs: list[dict[str, Any]], caps: OutputCaps) -> set[int] | None:
    """Rows of `outs` (exact dicts) that _plain_dict must see; the others are plain JSON data
    within the caps exactly as they are. None: all of them."""
    if len(outs) < _BULK_MIN or caps.max_depth < 1:
        return None  # too few rows to be worth the columns, or every dict is too deep anyway
    sample = outs[:: len(outs) // 4][:5]
    if sum(_SCALARS.issuperset(map(type, out.values())) for out in sample) < 3:
        return None  # mostly nested rows (judging by five): the exact checker walks them anyway
    keys = list(chain.from_iterable(outs))
    if _STR_ONLY.issuperset(map(type, keys)):  # every key an exact str, so comparing them below
        names = list(outs[0])                   # runs no snippet-defined __eq__
        if keys == names * len(outs):
            return _same_shape(outs, names, caps.max_bytes)  # the common case: one shape
        fits = list(map(names.__eq__, map(list, outs)))
    else:
        keyed = list(map(_STR_ONLY.issuperset, map(map, repeat(type), outs)))
        names = list(outs[next((row for row, ok in enumerate(keyed) if ok), 0)])
        fits = [ok and list(out) == names for ok, out in zip(keyed, outs, strict=True)]
    # Rows differ in keys: those shaped like the first row with good keys are checked together,
    # the others by the exact checker (when they are few).
    rows = [row for row, fit in enumerate(fits) if fit]
    if len(rows) * 4 < len(outs) * 3:
        return None
    inner = _same_shape([outs[row] for row in rows], names, caps.max_bytes)
    if inner is None:
        return None
    return set(range(len(outs))).difference(rows) | {rows[row] for row in inner}


def _check_dicts(values: list[Any], indices: list[int], caps: OutputCaps, fn: str,
                 errors: list[dict[str, Any]]) -> None:
    """values[i] for i in indices is the exact dict event i returned: replace it by [dict], or by
    None with an error in `errors`."""
    outs = [values[i] for i in indices]
    try:
        slow = _exact_rows(outs, caps)
    except Exception:  # MemoryError building columns of huge outputs, say: the exact checker decides
        slow = None
    if slow is None:
        exact: Iterable[int] = range(len(outs))
    else:
        for i, out in zip(indices, outs, strict=True):
            values[i] = [out]
        exact = sorted(slow)
    max_bytes = caps.max_bytes
    for row in exact:
        i = indices[row]
        try:
            values[i] = [_plain_dict(outs[row], 0, max_bytes, caps, _RETURNED)[0]]
        except Exception as exc:
            values[i] = None
            errors.append(_error(i, exc, fn))


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
        # Outputs are checked after the loop, all together: one column-wise pass over the common
        # case (one flat dict per event) costs a fraction of a per-field walk. Checking after the
        # last call also means what is checked is exactly what is sent, even if a later call
        # mutated an earlier output.
        single: list[int] = []
        other: list[int] = []
        for i, event in enumerate(events):
            prints.index = i
            try:
                out = fn(event)
                values[i] = out
                (single if type(out) is dict else other).append(i)
            except Exception as exc:  # one bad event never stops the batch
                errors.append(_error(i, exc, name))
        failed = len(errors)
        for i in other:
            try:
                values[i] = _records(values[i], name, caps)
            except Exception as exc:
                values[i] = None
                errors.append(_error(i, exc, name))
        _check_dicts(values, single, caps, name, errors)
        if len(errors) > failed:
            errors.sort(key=_by_index)
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
