"""`parse`: extract fields from one text field, by a regex or a known log format.

Every event whose field matches gets the extracted fields (overwriting fields of the same name:
`format: syslog` over `message` replaces the raw line with the message part; set `prefix` to keep
both). An event that does not match — or whose field is missing, null or nested — never fails
the step; `on_error` decides: `keep` (default) passes it on unchanged (the step logs how many),
`drop` removes it, `dead_letter` sends it to the dead-letter output with reason `parse`. Trailing
CR/LF in the field (remnants of CRLF or bare-CR line endings) are ignored.

Formats (fields and edge cases are documented in primitives/parsers/):
- `regex`: Python-syntax named groups, run on RE2 (linear time, so no pattern can stall the
  pipeline): no lookarounds or backreferences; `\\d`/`\\w` are ASCII; an empty capture is null.
- `json`: the field holds a JSON object; its keys become fields.
- `kv`: `key=value` pairs, quoted values allowed; values stay strings.
- `syslog`: RFC 5424 and RFC 3164 -> timestamp (ISO UTC), host, app, pid, msgid,
  structured_data, facility, severity, message (+ repeat); `year`, `timezone`, `repeated`.
- `clf`: Apache/NCSA common and combined access logs -> client_ip, ident, user, timestamp,
  request, method, path, protocol, status, bytes, referer, user_agent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from primitives.batch import take_rows, to_events
from primitives.parsers import FORMATS, Parsed
from primitives.parsers.clf import parse_clf
from primitives.parsers.common import merge_parsed, text_column
from primitives.parsers.json_ import parse_json
from primitives.parsers.kv import parse_kv
from primitives.parsers.regex import RegexPatternError, compile_pattern, parse_regex
from primitives.parsers.syslog import parse_syslog
from primitives.registry import step
from primitives.runtime import BuildContext, DeadLetter, StepResult

EXAMPLE = r"""name: ssh-failed-logins
description: Failed SSH logins with the user and source address
source: auth
steps:
  - parse:
      field: message
      format: syslog
      year: 2024
  - filter: "message LIKE 'Failed password%'"
  - parse:
      field: message
      regex: 'Failed password for (invalid user )?(?P<user>.+?) from (?P<src_ip>\S+) port (?P<port>\d+)'
      on_error: dead_letter
"""

SYSLOG_ONLY = ("year", "timezone", "repeated")


def _build(options: ParseOptions, ctx: BuildContext) -> ParseRuntime:
    return ParseRuntime(options, ctx)


@step("parse", summary="Extract fields from a text field with a regex (named groups) or a log format "
       "(json, kv, syslog, clf).", example=EXAMPLE, build=_build)
class ParseOptions(BaseModel):
    """Give `field` and exactly one of `regex` or `format`."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(description="The event field that holds the text to parse, e.g. message.")
    regex: str | None = Field(None, description="Python-syntax pattern; each named group (?P<name>...) "
                              "becomes a field. Runs on RE2: no lookarounds/backreferences.")
    format: Literal["json", "kv", "syslog", "clf"] | None = Field(
        None, description="A known format instead of a regex: json, kv, syslog or clf.")
    prefix: str = Field("", description="Prepended to every extracted field name, e.g. 'http_'.")
    on_error: Literal["keep", "drop", "dead_letter"] = Field(
        "keep", description="What happens to an event that does not match: keep it unchanged "
        "(counted in the step log), drop it, or send it to dead letters (reason 'parse').")
    year: int | None = Field(None, ge=1970, le=9999, description="syslog only: the year of RFC 3164 "
                             "timestamps (they have none). Default: the latest year that does not put "
                             "the timestamp more than a day in the future.")
    timezone: str = Field("UTC", description="syslog only: the zone RFC 3164 wall-clock times are in, "
                          "e.g. Europe/Berlin.")
    repeated: Literal["unwrap", "expand", "keep"] = Field(
        "unwrap", description="syslog only: 'message repeated N times: [ text ]' -> unwrap: message=text, "
        "repeat=N; expand: N copies of the event; keep: as written.")

    @model_validator(mode="after")
    def _check(self) -> ParseOptions:
        if (self.regex is None) == (self.format is None):
            raise ValueError("give exactly one of 'regex' (named groups) or 'format' "
                             f"({', '.join(FORMATS)})")
        if self.format != "syslog":
            wrong = [name for name in SYSLOG_ONLY if name in self.model_fields_set]
            if wrong:
                verb = "applies" if len(wrong) == 1 else "apply"
                names = ", ".join(wrong)
                raise ValueError(f"{names} {verb} only to format: syslog; remove {names}")
        if self.regex is not None:
            try:
                compile_pattern(self.regex)
            except RegexPatternError as exc:
                raise ValueError(str(exc)) from None
        if self.timezone != "UTC":
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown timezone {self.timezone!r}; use an IANA name such as "
                                 "'Europe/Berlin' or 'UTC'") from None
        return self


class ParseRuntime:
    """Stateless: each batch is parsed on its own."""

    isolatable = True  # see primitives.runtime.StepRuntime

    def __init__(self, options: ParseOptions, ctx: BuildContext) -> None:
        self.options = options
        self.step_id = ctx.step_id
        self._pattern = compile_pattern(options.regex) if options.regex is not None else None
        self._what = "regex" if options.regex is not None else f"{options.format} format"

    def process(self, batch: pa.Table) -> StepResult:
        if batch.num_rows == 0:
            return StepResult(events=batch)
        field = self.options.field
        column = _json_input(batch, field) if self.options.format == "json" else text_column(batch, field)
        parsed = self._parse(column)
        result = StepResult()
        misses = batch.num_rows - pc.sum(parsed.matched).as_py()
        keep_all = self.options.on_error == "keep" or misses == 0
        out = merge_parsed(batch, parsed, self.options.prefix, keep_unmatched=keep_all)
        repeat = parsed.repeat
        if not keep_all:
            out = out.filter(parsed.matched)
            repeat = repeat.filter(parsed.matched) if repeat is not None else None
            if self.options.on_error == "dead_letter":
                self._dead_letters(batch.filter(pc.invert(parsed.matched)), result)
        if misses and self.options.on_error != "dead_letter":
            verb = "kept unchanged" if self.options.on_error == "keep" else "dropped"
            result.logs.append(f"step '{self.step_id}': {misses} of {batch.num_rows} events did not match "
                               f"the {self._what} on field '{field}'; {verb}")
        result.events = _expand(out, repeat) if repeat is not None else out
        return result

    def finish(self) -> StepResult:
        return StepResult()

    def _parse(self, column: pa.ChunkedArray | pa.Array) -> Parsed:
        options = self.options
        if self._pattern is not None:
            return parse_regex(column, *self._pattern)
        if options.format == "syslog":
            return parse_syslog(column, year=options.year, timezone=options.timezone,
                                repeated=options.repeated, now=datetime.now().astimezone())
        if options.format == "clf":
            return parse_clf(column)
        if options.format == "kv":
            return parse_kv(column)
        return parse_json(column)

    def _dead_letters(self, failed: pa.Table, result: StepResult) -> None:
        field = self.options.field
        for event in to_events(failed):
            value = event.get(field)
            shown = "missing" if value is None else repr(str(value)[:120])
            result.dead_letters.append(DeadLetter(
                step=self.step_id, reason="parse",
                message=f"field '{field}' did not match the {self._what} (value: {shown})", event=event))
        result.errors += failed.num_rows


def _json_input(batch: pa.Table, field: str) -> pa.Array | pa.ChunkedArray:
    """A struct column (nested object in NDJSON input) is merged as is; anything else as text."""
    if field in batch.column_names and pa.types.is_struct(batch.schema.field(field).type):
        return batch.column(field)
    return text_column(batch, field, nested_as_json=True)


def _expand(table: pa.Table, repeat: pa.Array) -> pa.Table:
    """Row i repeated repeat[i] times, in order (syslog `repeated: expand`)."""
    counts: list[Any] = repeat.to_pylist()
    if all(count == 1 for count in counts):
        return table
    return take_rows(table, [i for i, count in enumerate(counts) for _ in range(count or 1)])
