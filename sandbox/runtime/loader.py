"""Turn checked snippet source into callable entrypoints, inside the worker.

`load` compiles with RestrictedPython, executes the module body once in a fresh globals dict wired
with the guards, freezes the UPPERCASE constants (list -> tuple, set -> frozenset, dict -> read-only
mapping, recursively) so that no state survives from one event to the next, and returns the
entrypoint callables. The static policy (sandbox/policy.py) runs on the control plane before this;
the loader does not trust that it did, which is why the guards stand on their own.
"""

from __future__ import annotations

import ast
import re
import types
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from RestrictedPython.compile import compile_restricted_exec

from sandbox.runtime.allowlist import ENTRY_ARG, ENTRYPOINTS
from sandbox.runtime.guards import PrintBuffer, restricted_globals

SNIPPET_FILENAME = "<snippet>"
CONSTANT_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_RP_LINE = re.compile(r"Line (\d+): (.*)", re.S)


class LoadError(Exception):
    """The snippet could not be loaded; `line` is the snippet line when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


@dataclass(frozen=True, slots=True)
class Entrypoints:
    """A loaded snippet: the entry callable for its kind, the rule extras it defines, its print log."""

    kind: str
    name: str
    entry: Callable[[Any], Any]
    extras: Mapping[str, Callable[[Any], Any]]
    prints: PrintBuffer


def strip_annotations(tree: ast.Module) -> ast.Module:
    """Drop annotations: they are documentation here, neither evaluated nor checked.

    One pass over the tree, editing in place (this runs on every check, so no NodeTransformer).
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            node.returns = None
            a = node.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                if arg is not None:
                    arg.annotation = None
        for field in ("body", "orelse", "finalbody"):
            stmts = getattr(node, field, None)
            if type(stmts) is list and any(isinstance(s, ast.AnnAssign) for s in stmts):
                setattr(node, field, [_unannotated(s) if isinstance(s, ast.AnnAssign) else s for s in stmts])
    return tree


def _unannotated(node: ast.AnnAssign) -> ast.stmt:
    if node.value is None:
        return ast.copy_location(ast.Pass(), node)
    return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)


def compile_snippet(source: str, tree: ast.Module | None = None,
                    ) -> tuple[types.CodeType | None, list[tuple[int | None, str]]]:
    """RestrictedPython-compile a snippet: (code, []) or (None, [(line, message), ...]).

    `tree` may be passed when the caller already parsed `source`; it is consumed (rewritten).
    """
    if tree is None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "\\d" in a non-raw string: Python still accepts it
                tree = ast.parse(source, SNIPPET_FILENAME)
        except SyntaxError as exc:
            return None, [(exc.lineno, f"syntax error: {exc.msg}")]
        except (RecursionError, MemoryError):
            return None, [(None, "the code is too deeply nested to compile")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = compile_restricted_exec(strip_annotations(tree), filename=SNIPPET_FILENAME)
    except SyntaxError as exc:  # what the parser accepts but the compiler does not: `return *x`
        return None, [(exc.lineno, f"syntax error: {exc.msg}")]
    except (RecursionError, MemoryError):
        return None, [(None, "the code is too deeply nested to compile")]
    if result.code is not None and not result.errors:
        return result.code, []
    errors: list[tuple[int | None, str]] = []
    for text in result.errors:
        m = _RP_LINE.match(text)
        line = int(m.group(1)) if m and m.group(1).isdigit() else None
        errors.append((line, m.group(2) if m else text))
    return None, errors or [(None, "RestrictedPython refused the code")]


def snippet_frame(exc: BaseException) -> tuple[int | None, str | None]:
    """(line, function) of the innermost traceback frame inside the snippet; never host frames."""
    line = function = None
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename == SNIPPET_FILENAME:
            line, function = tb.tb_lineno, code.co_name
        tb = tb.tb_next
    return line, function


def freeze(value: Any) -> Any:
    """Deep-freeze constant data: list/tuple -> tuple, set -> frozenset, dict -> read-only mapping."""
    if isinstance(value, list | tuple | deque):
        return tuple(freeze(v) for v in value)
    if isinstance(value, set):
        return frozenset(value)
    if isinstance(value, dict):  # Counter, defaultdict, OrderedDict too
        return types.MappingProxyType({k: freeze(v) for k, v in value.items()})
    return value


def _function(glb: dict[str, Any], name: str) -> Callable[[Any], Any] | None:
    fn = glb.get(name)
    return fn if isinstance(fn, types.FunctionType) else None


def load(source: str, kind: str) -> Entrypoints:
    """Compile and initialise a snippet of the given step kind; raises LoadError naming the line."""
    if kind not in ENTRYPOINTS:
        raise LoadError(f"unknown code step kind '{kind}'; expected one of {', '.join(ENTRYPOINTS)}")
    entry_name, extra_names = ENTRYPOINTS[kind]
    code, errors = compile_snippet(source)
    if code is None:
        line, message = errors[0]
        raise LoadError(message, line)
    prints = PrintBuffer()
    glb = restricted_globals(prints)
    try:
        exec(code, glb)
    except Exception as exc:  # the module body of hostile code: any failure is a load error
        line, _ = snippet_frame(exc)
        raise LoadError(f"{type(exc).__name__} while loading the snippet: {exc}", line) from None
    # The policy allows only UPPERCASE constants at module level; freezing every public global
    # (not just those) keeps module-level data immutable even if that check was bypassed.
    for name in list(glb):
        if not name.startswith("_"):
            glb[name] = freeze(glb[name])
    entry = _function(glb, entry_name)
    if entry is None:
        raise LoadError(f"the snippet must define {entry_name}({ENTRY_ARG[entry_name]}) for a {kind} step")
    extras = {name: fn for name in extra_names if (fn := _function(glb, name)) is not None}
    return Entrypoints(kind, entry_name, entry, types.MappingProxyType(extras), prints)
