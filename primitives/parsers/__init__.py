"""Parsers for the `parse` step: each turns one string column into new, row-aligned columns.

`regex` (named groups, run on RE2: linear time), `json`, `kv`, `syslog` (RFC 3164/5424) and `clf`
(Apache/NCSA access logs). They are vectorised on Arrow compute where a kernel exists (regex,
syslog, clf) and never raise for a line they cannot read: that row is just not matched.
"""

from primitives.parsers.common import Parsed

FORMATS = ("json", "kv", "syslog", "clf")

__all__ = ["FORMATS", "Parsed"]
