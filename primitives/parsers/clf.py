"""`parse: {field, format: clf}`: Apache/NCSA access logs, common and combined.

`127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "http://ref/" "Mozilla/4.08"`
gives `client_ip`, `ident`, `user`, `timestamp` (ISO 8601 UTC string), `request` (the quoted text
as written), `method`, `path`, `protocol`, `status` (int), `bytes` (int), `referer`, `user_agent`.
`-` is null everywhere (so `bytes` is null for `-`, and `referer`/`user_agent` are null on common
format lines). A request that is not `METHOD PATH [PROTOCOL]` — `"-"`, or the raw TLS bytes a
scanner sends to a plain-HTTP port — still matches: its `method`/`path`/`protocol` are null and
`request` holds the text. Quotes inside the request (`?q="><script>`) are kept: the request ends
at the last `"` that is followed by a status and a size.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from primitives.parsers.common import (
    Parsed,
    as_strings,
    dash_to_null,
    empty_to_null,
    iso_utc,
    per_unique,
    to_int,
)

LINE = (r'^(?P<client_ip>\S+) (?P<ident>\S+) (?P<user>\S+) \[(?P<ts>[^\]]*)\] "(?P<request>.*)"'
        r' (?P<status>\d{3}|-) (?P<bytes>\d+|-)(?: "(?P<referer>(?:[^"\\]|\\.)*)" "(?P<user_agent>.*)")?$')
REQUEST = r"^(?P<method>[A-Za-z]+) (?P<path>\S+)(?: (?P<protocol>HTTP/\d(?:\.\d)?))?$"
# paths with spaces are rare and invalid HTTP, but logged; a slower pattern reads them
SPACED_REQUEST = r"^(?P<method>[A-Za-z]+) (?P<path>.*?)(?: (?P<protocol>HTTP/\d(?:\.\d)?))?$"
STAMP = "%d/%b/%Y:%H:%M:%S %z"

FIELDS = ("client_ip", "ident", "user", "timestamp", "request", "method", "path", "protocol", "status",
          "bytes", "referer", "user_agent")


def parse_clf(column: pa.Array | pa.ChunkedArray) -> Parsed:
    """Parse each row as a common or combined access-log line."""
    values = as_strings(column)
    if len(values) == 0:
        return Parsed({name: pa.array([], _type(name)) for name in FIELDS}, pa.array([], pa.bool_()))
    found = pc.extract_regex(values, pattern=LINE)
    matched = pc.fill_null(found.is_valid(), False)
    request = pc.struct_field(found, "request")
    parts = _request_parts(request)
    stamps = per_unique(pc.struct_field(found, "ts"), _timestamps)
    fields = {
        "client_ip": empty_to_null(pc.struct_field(found, "client_ip")),
        "ident": dash_to_null(pc.struct_field(found, "ident")),
        "user": dash_to_null(pc.struct_field(found, "user")),
        "timestamp": stamps,
        "request": pc.if_else(matched, request, pa.scalar(None, pa.string())),
        "method": empty_to_null(parts["method"]),
        "path": empty_to_null(parts["path"]),
        "protocol": empty_to_null(parts["protocol"]),
        "status": to_int(pc.struct_field(found, "status")),
        "bytes": to_int(pc.struct_field(found, "bytes")),
        "referer": dash_to_null(pc.struct_field(found, "referer")),
        "user_agent": dash_to_null(pc.struct_field(found, "user_agent")),
    }
    return Parsed(fields, matched)


def _timestamps(text: pa.Array) -> pa.Array:
    return iso_utc(pc.strptime(text, format=STAMP, unit="s", error_is_null=True))


def _request_parts(request: pa.Array) -> dict[str, pa.Array]:
    """METHOD PATH PROTOCOL, by a fast pattern, and by the slower one only for the rows that need it."""
    parts = pc.extract_regex(request, pattern=REQUEST)
    columns = {name: pc.struct_field(parts, name) for name in ("method", "path", "protocol")}
    retry = pc.and_(parts.is_null(), pc.fill_null(pc.match_substring(request, " "), False))
    if pc.any(retry).as_py():
        slow = pc.extract_regex(request.filter(retry), pattern=SPACED_REQUEST)
        for name, column in columns.items():
            columns[name] = pc.replace_with_mask(column, retry, pc.fill_null(pc.struct_field(slow, name), ""))
    return columns


def _type(name: str) -> pa.DataType:
    return pa.int64() if name in ("status", "bytes") else pa.string()
