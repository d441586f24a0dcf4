"""Submission gate: the cheap checks that run before any real analysis of a snippet.

Size (64 KiB), characters (no NUL, no bidirectional-override controls, no lone surrogates), a
parse that reports syntax errors with their line and turns parser recursion or memory exhaustion
into a `too-complex` diagnostic instead of a crash, ASCII-only identifiers (Python folds look-alike
letters with NFKC, so `ｅｖａｌ` would silently become `eval`; the tokens are checked before that),
and a nesting-depth cap so that every later recursive pass over the tree is safe.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import unicodedata
import warnings

from primitives.diagnostics import Diagnostic
from sandbox.runtime.allowlist import MAX_AST_DEPTH, MAX_SOURCE_BYTES
from sandbox.runtime.loader import SNIPPET_FILENAME

# Trojan Source (CVE-2021-42574): these reorder how code is displayed to a reviewer.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")
_BAD_CHAR = re.compile("[\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c\ud800-\udfff]")
_TOO_COMPLEX_HINT = "split deeply nested expressions into several statements or helper functions"


def _line_col(source: str, index: int) -> tuple[int, int]:
    line = source.count("\n", 0, index) + 1
    return line, index - (source.rfind("\n", 0, index) + 1) + 1


def _characters(source: str) -> list[Diagnostic]:
    found: list[Diagnostic] = []
    nul = source.find("\0")
    if nul >= 0:
        line, col = _line_col(source, nul)
        found.append(Diagnostic("bad-character", "the snippet contains a NUL byte", line, col,
                                "remove it; snippets are plain UTF-8 text"))
    if not source.isascii():
        m = _BAD_CHAR.search(source)
        if m:
            ch = m.group()
            line, col = _line_col(source, m.start())
            what = "a bidirectional text control" if ch in _BIDI else "a lone surrogate"
            found.append(Diagnostic("bad-character", f"the snippet contains {what} (U+{ord(ch):04X})",
                                    line, col, "remove it; it can make code read differently than it runs"))
    return found


def _describe_char(ch: str) -> str:
    return f"'{ch}' U+{ord(ch):04X} {unicodedata.name(ch, 'UNKNOWN')}"


def _identifiers(source: str) -> list[Diagnostic]:
    """NAME tokens with non-ASCII characters (strings and comments may contain any text)."""
    found: list[Diagnostic] = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and not tok.string.isascii():
                bad = next(ch for ch in tok.string if not ch.isascii())
                found.append(Diagnostic(
                    "non-ascii-identifier",
                    f"identifier '{tok.string}' contains the non-ASCII character {_describe_char(bad)}",
                    tok.start[0], tok.start[1] + 1,
                    "use only ASCII letters, digits and _ in names (look-alike letters are rejected)"))
    except (tokenize.TokenError, SyntaxError):
        pass  # the parser has already accepted the source; tokenizer quirks are not findings
    return found


def _depth_exceeded(tree: ast.AST, limit: int) -> ast.AST | None:
    """The first node nested deeper than `limit`, found without recursion."""
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    pop, push, node_type = stack.pop, stack.append, ast.AST
    while stack:
        node, depth = pop()
        if depth > limit:
            return node
        depth += 1
        for name in node._fields:
            value = getattr(node, name, None)
            if type(value) is list:
                for item in value:
                    if isinstance(item, node_type):
                        push((item, depth))
            elif isinstance(value, node_type):
                push((value, depth))
    return None


def parse(source: str) -> tuple[ast.Module | None, list[Diagnostic]]:
    """Run the gate: (tree, []) when the snippet may go on to the policy, else (None, diagnostics)."""
    size = len(source.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        return None, [Diagnostic(
            "too-large", f"the snippet is {size:,} bytes; the limit is {MAX_SOURCE_BYTES:,} bytes", None,
            None, "keep code steps small: move data into a lookup table (enrich step) or split the logic "
                  "across steps")]
    bad = _characters(source)
    if bad:
        return None, bad
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. invalid escape sequences: not our findings
            tree = ast.parse(source, SNIPPET_FILENAME)
    except SyntaxError as exc:
        if "too many nested" in (exc.msg or "") or "too complex" in (exc.msg or ""):
            return None, [Diagnostic("too-complex", f"the code is too deeply nested to check: {exc.msg}",
                                     exc.lineno, exc.offset, _TOO_COMPLEX_HINT)]
        return None, [Diagnostic("syntax-error", f"syntax error: {exc.msg}", exc.lineno, exc.offset,
                                 "fix the Python syntax at this line")]
    except (RecursionError, MemoryError):
        return None, [Diagnostic("too-complex", "the code is too deeply nested to parse", None, None,
                                 _TOO_COMPLEX_HINT)]
    if not source.isascii():
        bad = _identifiers(source)
        if bad:
            return None, bad
    deep = _depth_exceeded(tree, MAX_AST_DEPTH)
    if deep is not None:
        return None, [Diagnostic("too-complex", f"the code nests more than {MAX_AST_DEPTH} levels deep",
                                 getattr(deep, "lineno", None), None, _TOO_COMPLEX_HINT)]
    return tree, []
