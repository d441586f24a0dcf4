"""Durations in specs: `250ms`, `60s`, `5m`, `1h`, `1d`, compounds like `1h30m`, or a bare number of seconds.

`Duration` is the annotated type options models use: it accepts those spellings (and `timedelta`
values, for defaults), rejects anything else with one message an agent can act on, and serialises
back to the shortest canonical text (`90s` -> `1m30s`), so equal durations hash equally in
`code_hash` whichever way they were written.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_UNITS: dict[str, timedelta] = {
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
    "ms": timedelta(milliseconds=1),
}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
# A year is more than any window, suppression or dedupe span needs; a cap keeps arithmetic sane.
MAX_DURATION = timedelta(days=366)


def _refuse(value: Any) -> ValueError:
    shown = repr(value) if not isinstance(value, str) else f"'{value}'"
    if len(shown) > 40:
        shown = shown[:37] + "...'"
    return ValueError(f"{shown} is not a duration; use 60s, 5m, 1h")


def parse_duration(value: Any) -> timedelta:
    """`"60s"`, `"5m"`, `"1h"`, `"1d"`, `"250ms"`, `"1h30m"` or a number of seconds -> `timedelta`.

    Negative and non-finite values, booleans and anything longer than `MAX_DURATION` are refused.
    """
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool):
        raise _refuse(value)
    elif isinstance(value, int | float):
        if not math.isfinite(value) or value < 0 or value > MAX_DURATION.total_seconds():
            raise _refuse(value)
        result = timedelta(seconds=value)
    elif isinstance(value, str):
        text = value.strip().lower()
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            return parse_duration(float(text) if "." in text else int(text))
        if not _WHOLE.fullmatch(text):
            raise _refuse(value)
        result = timedelta()
        for number, unit in _PART.findall(text):
            result += _UNITS[unit] * float(number)
    else:
        raise _refuse(value)
    if result < timedelta() or result > MAX_DURATION:
        raise _refuse(value)
    return result


def format_duration(duration: timedelta) -> str:
    """The canonical spelling: largest units first, `0s` for zero (`timedelta(seconds=90)` -> `1m30s`)."""
    micros = duration // timedelta(microseconds=1)
    if micros == 0:
        return "0s"
    parts = []
    for unit in ("d", "h", "m", "s", "ms"):
        size = _UNITS[unit] // timedelta(microseconds=1)
        count, micros = divmod(micros, size)
        if count:
            parts.append(f"{count}{unit}")
    if micros:  # sub-millisecond rest: keep it exact rather than round it away
        parts.append(f"{micros / 1000:g}ms")
    return "".join(parts)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    WithJsonSchema({"type": ["string", "number"], "description": "e.g. 250ms, 60s, 5m, 1h, 1d"}),
]
