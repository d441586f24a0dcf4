"""`parse: {field, format: syslog}`: RFC 5424 and RFC 3164 (BSD) syslog lines.

Fields: `timestamp` (ISO 8601 UTC string), `host`, `app` (RFC 5424 APP-NAME, or the RFC 3164 tag
such as `sshd` or `sshd(pam_unix)`), `pid` (int, null when absent or not a number), `msgid` and
`structured_data` (RFC 5424 only, raw text), `facility` and `severity` (keyword names such as
`auth` and `err`, from the `<PRI>` prefix when there is one), and `message`. A value written as `-`
is null. Both formats may appear in one batch; each line is read by the one it matches.

RFC 3164 timestamps carry no year and no zone. They are read as wall-clock time in `timezone`
(default UTC) and placed in `year` when it is given; otherwise in the latest year that does not
put them more than one day after now (the day absorbs clock skew between hosts), so a December
line read in January lands in last year. Feb 29 takes the latest leap year that fits. An ISO
timestamp in the same position (rsyslog's high-precision format) is read as it is.

`message repeated N times: [ text ]` (written by syslogd/sshd for N more copies of `text`) is
handled by `repeated`: `unwrap` (default) sets `message` to `text` and `repeat` to N (1 on every
other line); `expand` emits N copies of the event with `message` = `text`, so counts and rule
thresholds see every attempt (N is capped at 1,000 per line); `keep` leaves the line as written.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from primitives.parsers.common import (
    Parsed,
    as_strings,
    assume_zone,
    dash_to_null,
    iso_utc,
    parse_iso,
    per_unique,
    to_int,
)

RFC5424 = (r"^<(?P<pri>\d{1,3})>\d{1,2} (?P<ts>\S+) (?P<host>\S+) (?P<app>\S+) (?P<pid>\S+) (?P<msgid>\S+)"
           r" (?P<sd>-|(?:\[(?:[^\]\\]|\\.)*\])+)(?: \x{FEFF}?(?P<msg>.*))?$")
RFC3164 = (r"^(?:<(?P<pri>\d{1,3})>)?"
           r"(?P<ts>[A-Z][a-z]{2} {1,2}\d{1,2} \d{2}:\d{2}:\d{2}|\d{4}-\d{2}-\d{2}T\S+)"
           r" (?P<host>\S+) (?:(?P<app>[^\s\[\]:]+)(?:\[(?P<pid>[^\]]*)\])?: ?)?(?P<msg>.*)$")
REPEATED = r"^message repeated (?P<n>\d{1,9}) times: \[ ?(?P<text>.*?) ?\]$"
MAX_REPEAT = 1000
NO_TEXT = pa.scalar(None, pa.string())
SLACK = timedelta(days=1)

FIELDS = ("timestamp", "host", "app", "pid", "msgid", "structured_data", "facility", "severity", "message")
FACILITIES = ["kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
              "ftp", "ntp", "security", "console", "solaris-cron", "local0", "local1", "local2", "local3",
              "local4", "local5", "local6", "local7"]
SEVERITIES = ["emerg", "alert", "crit", "err", "warning", "notice", "info", "debug"]


def parse_syslog(column: pa.Array | pa.ChunkedArray, *, year: int | None = None, timezone: str = "UTC",
                 repeated: str = "unwrap", now: datetime | None = None) -> Parsed:
    """Parse each row as RFC 5424 when it is one, else as RFC 3164."""
    values = as_strings(column)
    new = pc.extract_regex(values, pattern=RFC5424)
    old = pc.extract_regex(values, pattern=RFC3164)
    is_new = pc.fill_null(new.is_valid(), False)
    matched = pc.or_(is_new, pc.fill_null(old.is_valid(), False))

    def pick(name: str) -> pa.Array:
        return dash_to_null(pc.if_else(is_new, pc.struct_field(new, name), pc.struct_field(old, name)))

    now = now or datetime.now().astimezone()
    stamps = pc.if_else(
        is_new,
        per_unique(pc.struct_field(new, "ts"), lambda text: iso_utc(parse_iso(text))),
        per_unique(pc.struct_field(old, "ts"), lambda text: iso_utc(_bsd_times(text, year, timezone, now))))
    pri = to_int(pick("pri"))
    pri = pc.if_else(pc.less_equal(pri, 191), pri, pa.scalar(None, pa.int64()))
    fields = {
        "timestamp": stamps,
        "host": pick("host"),
        "app": pick("app"),
        "pid": to_int(pick("pid")),
        "msgid": dash_to_null(pc.if_else(is_new, pc.struct_field(new, "msgid"), NO_TEXT)),
        "structured_data": dash_to_null(pc.if_else(is_new, pc.struct_field(new, "sd"), NO_TEXT)),
        "facility": pc.take(pa.array(FACILITIES), pc.divide(pri, 8)),
        "severity": pc.take(pa.array(SEVERITIES), pc.bit_wise_and(pri, 7)),
        "message": pc.if_else(is_new, pc.struct_field(new, "msg"), pc.struct_field(old, "msg")),
    }
    fields = {name: pc.if_else(matched, array, pa.scalar(None, array.type)) for name, array in fields.items()}
    parsed = Parsed(fields, matched)
    if repeated != "keep":
        _unwrap_repeats(parsed, expand=repeated == "expand")
    return parsed


def _bsd_times(text: pa.Array, year: int | None, timezone: str, now: datetime) -> pa.Array:
    """`Dec 10 06:55:46` (or an ISO stamp) to UTC timestamps, choosing the year as documented."""
    iso = parse_iso(text)
    clock = pc.replace_substring(text, "  ", " ")
    day = to_int(pc.extract_regex(clock, pattern=r"^\S+ (?P<d>\d+)").field("d")) if len(clock) else clock
    limit = pa.scalar(now + SLACK, pa.timestamp("us", tz="UTC"))
    result = pa.nulls(len(text), pa.timestamp("us", tz="UTC"))
    candidates = [year] if year is not None else [now.year + 1 - k for k in range(9)]
    for candidate in candidates:
        todo = pc.and_(pc.is_null(result), pc.is_valid(clock))
        if not pc.any(todo).as_py():
            break
        local = pc.strptime(pc.binary_join_element_wise(str(candidate), clock, " "),
                            format="%Y %b %d %H:%M:%S", unit="s", error_is_null=True)
        # Arrow rolls Feb 29 of a common year over to Mar 1; a changed day means "not in this year"
        real = pc.fill_null(pc.equal(pc.day(local), day), False)
        stamp = assume_zone(local, timezone)
        fits = real if year is not None else pc.and_(real, pc.fill_null(pc.less_equal(stamp, limit), False))
        result = pc.if_else(pc.and_(todo, fits), stamp, result)
    return pc.coalesce(iso, result)


def _unwrap_repeats(parsed: Parsed, *, expand: bool) -> None:
    message = parsed.fields["message"]
    found = pc.extract_regex(message, pattern=REPEATED)
    hit = pc.fill_null(found.is_valid(), False)
    count = pc.min_element_wise(to_int(found.field("n")), MAX_REPEAT)
    parsed.fields["message"] = pc.if_else(hit, found.field("text"), message)
    repeat = pc.if_else(hit, count, pa.scalar(1, pa.int64()))
    if expand:
        parsed.repeat = pc.max_element_wise(repeat, 1)
    else:
        parsed.fields["repeat"] = pc.if_else(parsed.matched, repeat, pa.scalar(None, pa.int64()))
