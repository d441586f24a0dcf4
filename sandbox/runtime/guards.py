"""RestrictedPython wiring: the functions its compiled code calls instead of the raw operations.

RestrictedPython rewrites `a.b` to `_getattr_(a, "b")`, `a[k] = v` to `_write_(a)[k] = v`, loops to
`_getiter_(...)`, `x += y` to `x = _inplacevar_("+=", x, y)`, `f(*a, **k)` to `_apply_(f, ...)`,
`print(...)` to a collector made by `_print_`, and imports go through `__builtins__.__import__`.
These guards are the third layer (the static policy runs before them and is assumed to fail):

- attribute reads are allowed only for names in allowlist.ATTRIBUTES, which never contains a name
  starting with '_', str.format/format_map or the frame/generator walk attributes;
- item writes are allowed only on the plain containers a snippet builds (dict, list and the
  collections types); frozen constants (tuples, frozensets, read-only mappings) refuse them;
- imports resolve only allowlisted modules, to their frozen namespaces;
- print goes to a capped buffer that is returned with the results, never to the host.

The guards are on the hot path (several calls per event), so each is a few bytecodes.
"""

from __future__ import annotations

import importlib
import operator
from collections import Counter, OrderedDict, defaultdict, deque
from collections.abc import Callable
from typing import Any

from RestrictedPython.Guards import guarded_iter_unpack_sequence, guarded_unpack_sequence

from sandbox.runtime.allowlist import (
    ATTRIBUTE_HINTS,
    ATTRIBUTES,
    INTERNAL_IMPORTS,
    MAX_PRINT_BYTES,
    MAX_PRINT_LINES,
    MODULES,
    PACKAGES,
    module_members,
)
from sandbox.runtime.builtins import safe_builtins
from sandbox.runtime.namespaces import Namespace, namespaces

_ALLOWED = ATTRIBUTES


def guarded_getattr(ob: Any, name: str) -> Any:
    """`ob.name` for allowlisted names only (a stricter RestrictedPython `safer_getattr`)."""
    if name in _ALLOWED:
        return getattr(ob, name)
    hint = ATTRIBUTE_HINTS.get(name)
    raise AttributeError(f"attribute '{name}' is not allowed in the sandbox" + (f"; {hint}" if hint else ""))


# Reading items cannot reach anything dangerous here: the only objects a snippet can hold are
# plain data, allowlisted stdlib values and its own functions (no proxies, frames or modules with
# a hostile __getitem__), so the getitem guard is the C-level operator itself.
guarded_getitem = operator.getitem

_WRITABLE = frozenset({dict, list, Counter, defaultdict, OrderedDict, deque})


class _ReadOnly:
    """What `_write_` returns for anything but a plain container: every write fails."""

    __slots__ = ("_type",)

    def __init__(self, ob: Any) -> None:
        self._type = type(ob).__name__

    def _refuse(self, *args: Any) -> None:
        raise TypeError(f"'{self._type}' object is read-only in the sandbox (constants are frozen; "
                        "copy it first, e.g. dict(NAME) or list(NAME))")

    __setitem__ = __delitem__ = _refuse

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_type":
            object.__setattr__(self, name, value)
        else:
            self._refuse()

    def __delattr__(self, name: str) -> None:
        self._refuse()


def guarded_write(ob: Any) -> Any:
    """RestrictedPython `_write_`: like `full_write_guard`, but also allowing the collections types."""
    if type(ob) in _WRITABLE:
        return ob
    return _ReadOnly(ob)


_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
    ">>=": operator.irshift, "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor,
    "@=": operator.imatmul,
}


def guarded_inplacevar(op: str, x: Any, y: Any) -> Any:
    return _INPLACE[op](x, y)


def guarded_apply(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return f(*args, **kwargs)


_EMPTY = Namespace("internal", {})


def guarded_import(name: str, globals: Any = None, locals: Any = None,
                   fromlist: tuple[str, ...] | None = (), level: int = 0) -> Namespace:
    """`__import__` that knows only the allowlist and returns frozen namespaces."""
    spaces = namespaces()
    if level != 0:
        raise ImportError("relative imports are not allowed in the sandbox")
    if name in INTERNAL_IMPORTS and not fromlist:
        importlib.import_module(name)  # already loaded in a worker (preloaded before confinement)
        return _EMPTY
    if name not in MODULES and name not in PACKAGES:
        raise ImportError(f"import of '{name}' is not allowed; allowed modules: {', '.join(MODULES)}")
    for member in fromlist or ():
        if member not in module_members(name):
            raise ImportError(f"cannot import '{member}' from '{name}' in the sandbox")
    if fromlist:
        return spaces[name]
    return spaces[name.split(".", 1)[0]]


class PrintBuffer:
    """Where `print()` goes: lines tagged with the event index, capped per batch.

    RestrictedPython calls `_print_(_getattr_)` at the top of every function that prints and then
    `_print._call_print(...)`; returning this one shared buffer keeps all lines of a batch together.
    """

    def __init__(self, max_lines: int = MAX_PRINT_LINES, max_bytes: int = MAX_PRINT_BYTES) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.index: int | None = None
        self.lines: list[str] = []
        self.size = 0
        self.dropped = 0

    def __call__(self, *getattr_: Any) -> Any:
        # `_print_(_getattr_)` (one argument) fetches the collector; the name `printed` compiles
        # to `_print()` (no argument): it gets "" rather than a handle on the buffer.
        return self if getattr_ else ""

    def _call_print(self, *objects: Any, sep: str | None = " ", end: str | None = "\n") -> None:
        if len(self.lines) >= self.max_lines or self.size >= self.max_bytes:
            self.dropped += 1
            return
        text = (" " if sep is None else str(sep)).join(str(o) for o in objects)
        prefix = "" if self.index is None else f"event {self.index}: "
        line = prefix + text[: max(0, self.max_bytes - self.size)]
        self.lines.append(line)
        self.size += len(line)

    def drain(self) -> list[str]:
        """The lines since the last drain, with a note of what the caps dropped."""
        lines = self.lines
        if self.dropped:
            lines.append(f"... {self.dropped} more print() calls dropped (limit {self.max_lines} lines "
                         f"/ {self.max_bytes} bytes per batch)")
        self.lines, self.size, self.dropped, self.index = [], 0, 0, None
        return lines


def restricted_globals(prints: PrintBuffer) -> dict[str, Any]:
    """A fresh globals dict for one snippet: guards, and a private copy of the builtins."""
    builtins = safe_builtins()
    builtins["__import__"] = guarded_import
    return {
        "__builtins__": builtins,
        "__name__": "snippet",
        "_getattr_": guarded_getattr,
        "_getitem_": guarded_getitem,
        "_getiter_": iter,
        "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
        "_unpack_sequence_": guarded_unpack_sequence,
        "_write_": guarded_write,
        "_inplacevar_": guarded_inplacevar,
        "_apply_": guarded_apply,
        "_print_": prints,
    }
