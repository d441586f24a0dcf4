"""Frozen, read-only stand-ins for the allowed modules.

A snippet never sees a real module object: `datetime.sys.modules["os"]` and `json.codecs.open` are
escapes otherwise. Each allowed module is replaced by a `Namespace` holding only its allowlisted
members (sandbox/runtime/allowlist.py); everything else simply does not exist. Namespaces refuse
attribute writes and deletes, have no `__name__` (so `from m import x` cannot fall back to
`sys.modules`), and are built once per process and shared by every snippet loaded there, which is
safe because nothing in them can be mutated.
"""

from __future__ import annotations

import importlib
from typing import Any

from sandbox.runtime.allowlist import MODULES, PACKAGES


class Namespace:
    """A read-only bag of attributes; members live in the instance dict for fast lookup."""

    def __init__(self, name: str, members: dict[str, Any]) -> None:
        # Written through the instance dict on purpose: __setattr__ below refuses everything.
        self.__dict__.update(members)
        object.__setattr__(self, "_Namespace__label", name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"module '{self.__label}' is read-only in the sandbox")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"module '{self.__label}' is read-only in the sandbox")

    def __repr__(self) -> str:
        return f"<sandbox module '{self.__label}'>"

    __label: str


def _build() -> dict[str, Namespace]:
    spaces: dict[str, Namespace] = {}
    for name, members in MODULES.items():
        module = importlib.import_module(name)
        spaces[name] = Namespace(name, {member: getattr(module, member) for member in members})
    for package, children in PACKAGES.items():
        spaces[package] = Namespace(package, {child: spaces[f"{package}.{child}"] for child in children})
    return spaces


_SPACES: dict[str, Namespace] | None = None


def namespaces() -> dict[str, Namespace]:
    """Import name -> namespace ('urllib' holds 'parse'); the stdlib modules are imported on first use."""
    global _SPACES
    if _SPACES is None:
        _SPACES = _build()
    return _SPACES
