"""Static check of one agent code snippet: gate -> policy -> RestrictedPython, cheapest first.

The first phase that finds problems ends the check and reports all of its findings (up to
`MAX_DIAGNOSTICS`, sorted by line), so an agent fixes one layer of mistakes at a time and never
sees RestrictedPython's messages for code our own policy already explained better.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from primitives.diagnostics import Diagnostic
from sandbox.gate import parse
from sandbox.policy import check_policy
from sandbox.runtime.allowlist import ENTRYPOINTS
from sandbox.runtime.loader import compile_snippet

MAX_DIAGNOSTICS = 20


@dataclass(frozen=True, slots=True)
class CheckReport:
    """The outcome of `check`: `code_hash` identifies exactly what was checked (kind + source)."""

    ok: bool
    diagnostics: tuple[Diagnostic, ...]
    code_hash: str
    entrypoints: tuple[str, ...]


def code_hash(source: str, kind: str) -> str:
    """sha256 of the kind and the source with line endings normalised (CRLF/CR -> LF)."""
    text = source.replace("\r\n", "\n").replace("\r", "\n")
    return hashlib.sha256(f"{kind}\n{text}".encode("utf-8", "surrogatepass")).hexdigest()


def _cap(found: list[Diagnostic]) -> tuple[Diagnostic, ...]:
    found = sorted(found, key=lambda d: (d.line or 0, d.col or 0))
    if len(found) <= MAX_DIAGNOSTICS:
        return tuple(found)
    more = len(found) - MAX_DIAGNOSTICS + 1
    return (*found[: MAX_DIAGNOSTICS - 1],
            Diagnostic("too-many-diagnostics", f"{more} more problems are not shown",
                       hint="fix the problems above and check again"))


def check(source: str, kind: str) -> CheckReport:
    """Check a snippet for a code step of `kind` (transform, filter/keep, rule, derive)."""
    digest = code_hash(source, kind)
    if kind not in ENTRYPOINTS:
        return CheckReport(False, (Diagnostic("unknown-kind", f"'{kind}' is not a code step kind",
                                              hint=f"use one of: {', '.join(ENTRYPOINTS)}"),), digest, ())
    tree, found = parse(source)
    if tree is None:
        return CheckReport(False, _cap(found), digest, ())
    found, entrypoints = check_policy(tree, kind)
    if found:
        return CheckReport(False, _cap(found), digest, entrypoints)
    code, errors = compile_snippet(source, tree)  # the policy only reads the tree
    if code is None:
        found = [Diagnostic("syntax-error", message, line, None, "fix the Python syntax at this line")
                 if message.startswith("syntax error: ")  # the compiler's: `return *x`, a stray `break`
                 else Diagnostic("restricted-python", message, line, None,
                                 "rewrite this line with plain functions, dicts and allowed modules")
                 for line, message in errors]
        return CheckReport(False, _cap(found), digest, entrypoints)
    return CheckReport(True, (), digest, entrypoints)
