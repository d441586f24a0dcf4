"""`parse: {field, regex}`: named groups of a regular expression become fields.

Agents write patterns in Python syntax (`(?P<user>\\S+)`), but the pattern runs on the host over
every event, so a backtracking engine would hand anyone who writes `(a+)+$` a way to stall the
pipeline (ReDoS). Patterns therefore run on RE2 through Arrow's `extract_regex`: linear time in
the input, no backtracking, and vectorised over the whole batch. A heuristic that rejects nested
quantifiers would miss cases and refuse good patterns; an engine that cannot blow up needs none.

What that costs, and is checked when the pipeline is validated, with an error naming the part:
- no lookaround (`(?=`, `(?!`, `(?<=`, `(?<!`), no backreferences (`\\1`, `(?P=name)`), no
  conditionals, no `(?x)` verbose mode, no `\\Z` (write `$` or `\\z`);
- `\\d`, `\\w`, `\\s` and `\\b` are ASCII-only (in Python they also match non-ASCII digits and
  letters); write explicit classes such as `[0-9]` if that difference matters;
- unnamed groups `( )` do not capture (they are rewritten to `(?: )`), only named ones do;
- a group that captured nothing — it did not take part in the match, or matched "" — gives null.

The match is a search (not anchored): add `^`/`$` to anchor it. A row matches when the pattern
matches anywhere in the field.
"""

from __future__ import annotations

import re
import warnings

import pyarrow as pa
import pyarrow.compute as pc

from primitives.parsers.common import Parsed, as_strings, empty_to_null

_UNSUPPORTED = [
    (re.compile(r"\(\?<?[=!]"), "lookaround assertions ((?=, (?!, (?<=, (?<!)"),
    (re.compile(r"\(\?P="), "named backreferences ((?P=name))"),
    (re.compile(r"\\[1-9]"), "numbered backreferences (\\1)"),
    (re.compile(r"\(\?\("), "conditional groups ((?(name)...))"),
    (re.compile(r"\(\?[aiLmsux]*x"), "verbose mode ((?x))"),
    (re.compile(r"\\Z"), "\\Z (write $ or \\z)"),
]


class RegexPatternError(ValueError):
    """The pattern cannot be used; the message says why and what to write instead."""


def compile_pattern(pattern: str) -> tuple[str, list[str]]:
    """Check `pattern` and return its RE2 form and the names of its groups, in order."""
    try:
        with warnings.catch_warnings():  # "possible nested set": about Python's future syntax, and
            warnings.simplefilter("ignore", FutureWarning)  # RE2 runs the pattern, not Python
            compiled = re.compile(pattern)
    except re.error as exc:
        raise RegexPatternError(f"regex does not compile: {exc.msg} at position {exc.pos}") from exc
    names = sorted(compiled.groupindex, key=lambda name: compiled.groupindex[name])
    if not names:
        raise RegexPatternError("regex has no named groups; name each part to extract, "
                                "e.g. (?P<user>\\S+) from (?P<src_ip>\\S+)")
    for finder, what in _UNSUPPORTED:
        if finder.search(_mask_escapes(pattern)):
            raise RegexPatternError(f"regex uses {what}, which the linear-time engine (RE2) does not "
                                    "support; rewrite the pattern without it")
    translated = uncapture_unnamed_groups(pattern)
    try:
        pc.extract_regex(pa.array([""], pa.string()), pattern=translated)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        detail = str(exc).removeprefix("Invalid regular expression: ")
        raise RegexPatternError(f"regex is not supported by the linear-time engine (RE2): {detail}; "
                                "lookarounds, backreferences and possessive quantifiers are not "
                                "available") from exc
    return translated, names


def _mask_escapes(pattern: str) -> str:
    """Mask escapes (so that `\\(?=` is not taken for a lookahead) but keep `\\1` and `\\Z`."""
    return re.sub(r"\\(.)", lambda m: m.group(0) if m.group(1) in "123456789Z" else "__", pattern)


def uncapture_unnamed_groups(pattern: str) -> str:
    """Rewrite `(` that opens an unnamed capturing group to `(?:`; everything else is kept.

    Arrow's extract_regex refuses unnamed groups, and only named ones become fields anyway.
    Escapes and character classes are skipped so that `\\(` and `[(]` stay literal.
    """
    out: list[str] = []
    i, in_class = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            if char == "]" and not _class_start(pattern, i):
                in_class = False
        elif char == "[":
            in_class = True
        elif char == "(" and not pattern.startswith("?", i + 1):
            out.append("(?:")
            i += 1
            continue
        out.append(char)
        i += 1
    return "".join(out)


def _class_start(pattern: str, i: int) -> bool:
    """A `]` right after `[` or `[^` is a literal member of the class, not its end."""
    return pattern[i - 1] == "[" or (pattern[i - 1] == "^" and i >= 2 and pattern[i - 2] == "[")


def parse_regex(column: pa.Array | pa.ChunkedArray, translated: str, names: list[str]) -> Parsed:
    """Extract the named groups of an already-checked pattern from every row of `column`."""
    values = as_strings(column)
    if len(values) == 0:
        return Parsed({name: pa.array([], pa.string()) for name in names}, pa.array([], pa.bool_()))
    found = pc.extract_regex(values, pattern=translated)
    matched = pc.fill_null(found.is_valid(), False)
    fields = {name: empty_to_null(pc.struct_field(found, name)) for name in names}
    return Parsed(fields, matched)
