"""The curated builtins a snippet sees: pure functions and types, the Exception family, nothing else.

Names come from allowlist.BUILTIN_NAMES; the values are the real builtins except `range`, which is
capped so that `list(range(10**12))` fails with a clear error instead of exhausting memory. `print`
is not here: RestrictedPython rewrites it to the per-snippet collector (guards.PrintBuffer).
"""

from __future__ import annotations

import builtins as _py
from typing import Any

from sandbox.runtime.allowlist import BUILTIN_NAMES, MAX_RANGE


def limited_range(*args: int) -> range:
    """range() with at most MAX_RANGE items."""
    r = range(*args)
    try:
        n = len(r)
    except OverflowError:
        n = MAX_RANGE + 1
    if n > MAX_RANGE:
        raise ValueError(f"range() of more than {MAX_RANGE:,} items is not allowed in the sandbox")
    return r


def safe_builtins() -> dict[str, Any]:
    """A fresh dict of the allowed builtins (each loaded snippet gets its own copy)."""
    table: dict[str, Any] = {name: getattr(_py, name) for name in BUILTIN_NAMES if name != "print"}
    table["range"] = limited_range
    table["None"] = None
    table["True"] = True
    table["False"] = False
    return table
