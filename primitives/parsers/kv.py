"""`parse: {field, format: kv}`: `key=value` pairs (logfmt, pam/audit style) become fields.

Pairs are separated by whitespace, `,` or `;`. A value runs to the next separator, or is quoted
with `"` or `'` (backslash escapes `\\"`, `\\'` and `\\\\` inside quotes) and may then hold spaces.
`key=` with nothing after it gives the empty string (pam writes `ruser= rhost=...`). Keys start
with a letter or `_` and may hold letters, digits, `_`, `.`, `-`; words that are not pairs are
ignored. A key that appears twice in one line keeps its last value. Values stay strings: cast with
`transform: {set: {uid: "CAST(uid AS INTEGER)"}}` where a number is wanted. A row matches when it
holds at least one pair. At most 256 distinct keys per batch become fields; later new keys are
ignored, so one hostile line cannot turn into thousands of columns.
"""

from __future__ import annotations

import re

import pyarrow as pa

from primitives.parsers.common import Parsed, as_strings

MAX_KEYS = 256  # distinct keys per batch; more are ignored (a hostile line could make 100k columns)
PAIR = re.compile(r"""(?:^|(?<=[\s,;]))([A-Za-z_][\w.\-]*)=("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|[^\s,;]*)""")
_UNESCAPE = re.compile(r"\\(.)")


def parse_kv(column: pa.Array | pa.ChunkedArray) -> Parsed:
    """Collect the `key=value` pairs of every row into columns (string typed)."""
    rows: list[dict[str, str]] = []
    names: dict[str, None] = {}
    for text in as_strings(column).to_pylist():
        pairs = {key: _unquote(value) for key, value in PAIR.findall(text)} if text else {}
        for key in pairs:
            if key not in names and len(names) < MAX_KEYS:
                names[key] = None
        rows.append(pairs)
    fields = {name: pa.array([row.get(name) for row in rows], pa.string()) for name in names}
    return Parsed(fields, pa.array([bool(row) for row in rows], pa.bool_()))


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return _UNESCAPE.sub(r"\1", value[1:-1])
    return value
