"""aggregate: one row per window and key, computed by DuckDB when the window closes.

Windows, watermark, lateness and the dead-letter reasons `late` and `no_time` are defined in
primitives.windows. Each output row has `window_start` and `window_end` (RFC 3339 UTC text, like
`2024-12-10T06:55:00Z`: it survives JSON, Parquet and code steps unchanged, renders as is in derive
templates, sorts in time order, and DuckDB reads it with `window_start::TIMESTAMPTZ`), then the `by`
fields, then one column per measure. Rows come out when their window closes, ordered by window_end,
window_start, then the key (for tumbling and sliding windows that is window_start then key);
`finish()` closes every open window. Events missing a `by` field are grouped under null, as in SQL.
Keys compare by JSON value, as in dedupe and session windows: 1 and 1.0 are one key (written 1), 1
and "1" are two; so a key whose type changes between events groups the same however the events were
batched. DuckDB's HUGEINT/DECIMAL results (sum of integers) are returned as int64, else float64.

Only the columns the step needs (the `by` fields and those the measures reference) are buffered
while a window is open, and each close runs one GROUP BY over everything that closed.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from functools import cached_property
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from primitives.batch import (
    JSON_TAG,
    canonical,
    concat,
    from_events,
    is_json_field,
    retyped,
    take_rows,
    to_events,
    with_columns,
)
from primitives.durations import Duration
from primitives.eventtime import event_micros, format_time, no_time_message
from primitives.isolation import MAX_SEARCH_QUERIES, QueryBudget, failing_inputs, input_error, kind_classes
from primitives.registry import step
from primitives.runtime import BuildContext, DeadLetter, StepResult
from primitives.sqlcheck import aggregate_inputs, check_expression, referenced_columns
from primitives.sqlexec import SqlBatch, SqlError, quote, sql_view
from primitives.windows import (
    FixedWindows,
    SessionWindow,
    SessionWindows,
    SlidingWindow,
    WindowSpec,
    group_key,
    late_message,
    micros,
)

DEFAULT_TIME_FIELD = "timestamp"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_RESERVED = {"window_start", "window_end"}
_FLUSH = 2**62

EXAMPLE = """\
name: requests-per-host
source: web
time: timestamp
steps:
  - filter: "status >= 500"
  - aggregate:
      window: 60s
      by: [host]
      measures:
        errors: "count(*)"
        bytes: "sum(bytes)"
        worst_ms: "max(duration_ms)"
      lateness: 10s
"""


@step(
    "aggregate",
    summary="Windowed GROUP BY on event time: one row per window and key when it closes.",
    example=EXAMPLE,
    emits="rows",
    build=lambda options, ctx: AggregateRuntime(options, ctx),
)
class AggregateOptions(BaseModel):
    """Group events into event-time windows and compute SQL aggregates per window and key."""

    model_config = ConfigDict(extra="forbid")

    window: WindowSpec = Field(
        description=(
            "Tumbling `60s`; sliding `{size: 60s, every: 10s}` (size a multiple of every); "
            "session `{gap: 5m}` (per key, closes after gap without events)."
        )
    )
    by: list[str] = Field(default_factory=list, description="Fields to group by (besides the window).")
    measures: dict[str, str] = Field(
        min_length=1,
        description=(
            "Output column -> DuckDB aggregate expression over event fields, e.g. "
            "{requests: 'count(*)', p95_ms: 'quantile_cont(duration_ms, 0.95)'}. An event a measure fails "
            "on (text in sum(), a CAST that fails on its value) goes to the dead letters as `error`; the "
            "rest of its window and key still gives the row. Use TRY_CAST to count such values as NULL."
        ),
    )
    lateness: Duration = Field(
        default=timedelta(seconds=10),
        description=(
            "Default 10s. How long after a window's end to wait for out-of-order events before closing it; "
            "events arriving later go to the dead letters as `late`."
        ),
    )

    @field_validator("by")
    @classmethod
    def _check_by(cls, by: list[str]) -> list[str]:
        for name in by:
            if not name or name in _RESERVED:
                raise ValueError(f"by field {name!r} is not allowed; window_start/window_end are outputs")
        if len(set(by)) != len(by):
            raise ValueError(f"by lists a field twice: {by}")
        return by

    @field_validator("measures")
    @classmethod
    def _check_measures(cls, measures: dict[str, str]) -> dict[str, str]:
        for name, expr in measures.items():
            if not _NAME.match(name) or name in _RESERVED:
                raise ValueError(
                    f"measure name {name!r} must be an identifier like error_count "
                    "(letters, digits, _), not window_start/window_end"
                )
            problems = check_expression(expr, role="aggregate")
            if problems:
                raise ValueError(f"measure {name!r}: " + "; ".join(d.render() for d in problems))
        return measures

    @model_validator(mode="after")
    def _check_names(self) -> AggregateOptions:
        clash = set(self.by) & set(self.measures)
        if clash:
            raise ValueError(f"{sorted(clash)} is both a by field and a measure name; rename the measure")
        if micros(self.lateness) < 0:
            raise ValueError("lateness must not be negative")
        return self


class AggregateRuntime:
    def __init__(self, options: AggregateOptions, ctx: BuildContext) -> None:
        self.options, self.ctx = options, ctx
        self.time_field = ctx.time_field or DEFAULT_TIME_FIELD
        needed = [*options.by]
        for expr in options.measures.values():
            needed += sorted(referenced_columns(expr) - set(needed))
        self.columns = list(dict.fromkeys(needed))
        lateness = micros(options.lateness)
        window = options.window
        self.sessions: SessionWindows | None = None
        self.fixed: FixedWindows | None = None
        if isinstance(window, SessionWindow):
            self.sessions = SessionWindows(micros(window.gap), lateness)
        elif isinstance(window, SlidingWindow):
            self.fixed = FixedWindows(micros(window.size), micros(window.every), lateness)
        else:
            self.fixed = FixedWindows(micros(window), micros(window), lateness)
        self.sql = SqlBatch()
        self.buffer: list[pa.Table] = []
        self.next_close = _FLUSH  # smallest window end still buffered (fixed windows)
        self.late = 0  # late events so far, for the pipeline's counters

    def process(self, batch: pa.Table) -> StepResult:
        times = event_micros(batch, self.time_field)
        part = with_columns(batch, self.columns).select(self.columns)
        if self.fixed is not None:
            fixed = self.fixed.assign(times)
            late, no_time, newest = fixed.late, fixed.no_time, fixed.newest
            part = _attach(part, fixed.rows, "__lb_start", fixed.starts)
            if part.num_rows:
                self.next_close = min(self.next_close, pc.min(fixed.starts).as_py() + self.fixed.size)
        else:
            assert self.sessions is not None
            assigned = self.sessions.assign(times, self._keys(batch))
            late, no_time, newest = assigned.late, assigned.no_time, assigned.newest
            placed = [i for i, sid in enumerate(assigned.sids) if sid is not None]
            sids = pa.array([assigned.sids[i] for i in placed], pa.int64())
            part = _attach(part, pa.array(placed, pa.int64()), "__lb_sid", sids)
        if part.num_rows:
            self.buffer.append(part)
        result = self._close(None)
        self.late += len(late)
        result.dead_letters += self._dead(batch, times, dict(zip(late, newest, strict=True)), no_time)
        result.errors += len(no_time)
        return result

    def finish(self) -> StepResult:
        return self._close(_FLUSH)

    def _keys(self, batch: pa.Table) -> list[tuple[Any, ...]]:
        if not self.options.by:
            return [()] * batch.num_rows
        rows = to_events(with_columns(batch, self.options.by).select(self.options.by))
        return [group_key([row.get(f) for f in self.options.by]) for row in rows]

    def _dead(self, batch: pa.Table, times: pa.Array, late: dict[int, int],
              no_time: list[int]) -> list[DeadLetter]:
        """Dead letters in row order: `late` rows (row -> the newest event time before it) and
        `no_time` rows of this batch."""
        rows = sorted([*late, *no_time])
        if not rows:
            return []
        lateness = micros(self.options.lateness)
        events = to_events(take_rows(batch, rows))
        return [
            DeadLetter(step=self.ctx.step_id, reason="late", event=event,
                       message=late_message(times[row].as_py(), late[row], lateness))
            if row in late else
            DeadLetter(step=self.ctx.step_id, reason="no_time", event=event,
                       message=no_time_message(event, self.time_field))
            for row, event in zip(rows, events, strict=True)
        ]

    def _close(self, until: int | None) -> StepResult:
        if self.fixed is not None:
            limit = self.fixed.watermark.value if until is None else until
            if not self.buffer or limit < self.next_close:
                return StepResult()
            table = _concat(self.buffer)
            ends = pc.add(table.column("__lb_start"), self.fixed.size)
            done = pc.less_equal(ends, limit)
            rest = table.filter(pc.invert(done))
            self.buffer = [rest] if rest.num_rows else []
            self.next_close = (
                pc.min(rest.column("__lb_start")).as_py() + self.fixed.size if rest.num_rows else _FLUSH
            )
            closed = table.filter(done)
            closed = closed.append_column("__lb_end", pc.add(closed.column("__lb_start"), self.fixed.size))
            return self._aggregate(closed, [])
        assert self.sessions is not None
        sessions = self.sessions.close(until)
        if not sessions or not self.buffer:
            return StepResult()
        table = _concat(self.buffer)
        member_of = {m: s for s in sessions for m in s.members}
        sid_list = table.column("__lb_sid").to_pylist()
        done = pa.array([sid in member_of for sid in sid_list])
        rest = table.filter(pc.invert(done))
        self.buffer = [rest] if rest.num_rows else []
        closed_sids = [member_of[sid] for sid in sid_list if sid in member_of]
        closed = table.filter(done).drop_columns(["__lb_sid"])
        closed = closed.append_column("__lb_sid", pa.array([s.sid for s in closed_sids], pa.int64()))
        closed = closed.append_column("__lb_start", pa.array([s.start for s in closed_sids], pa.int64()))
        closed = closed.append_column("__lb_end", pa.array([s.end for s in closed_sids], pa.int64()))
        return self._aggregate(closed, ["__lb_sid"])

    def _aggregate(self, closed: pa.Table, extra: list[str]) -> StepResult:
        if closed.num_rows == 0:
            return StepResult()
        try:
            return StepResult(events=self._run(closed, extra))
        except SqlError:  # a measure that fails on some values (sum over text, say)
            return self._isolate(closed, extra)

    def _run(self, table: pa.Table, extra: list[str]) -> pa.Table:
        """One GROUP BY over `table`: the output rows. Raises SqlError."""
        table = self._view(table)
        groups = [quote(name) for name in ["__lb_start", "__lb_end", *self.options.by, *extra]]
        measures = [f"{expr} AS {quote(name)}" for name, expr in self.options.measures.items()]
        order = [groups[1], groups[0], *groups[2:]]
        sql = (
            f"SELECT {', '.join(groups + measures)} FROM batch "
            f"GROUP BY {', '.join(groups)} ORDER BY {', '.join(order)}"
        )
        return self._shape(self.sql.query(table, sql), table.schema)

    def _view(self, table: pa.Table) -> pa.Table:
        return sql_view(_canonical_keys(table, self.options.by), keep=self.options.by)

    def _isolate(self, closed: pa.Table, extra: list[str]) -> StepResult:
        """A measure failed on the closing windows. One hostile event (`"bytes": "x"`) must not
        cost every window and key its row, or the alerts derived from them: the events the
        measures fail on are found in a few queries (primitives.isolation), go to the dead
        letters, and the rows are computed over the rest. Should the rest still fail together,
        each window and key is searched on its own, within a query budget."""
        failing: dict[int, str] = {}
        for members in kind_classes(closed, self.columns):
            failing.update(self._failing_in(closed, members, extra))
        rest = [i for i in range(closed.num_rows) if i not in failing]
        events = None
        if rest:
            try:
                events = self._run(retyped(take_rows(closed, rest)), extra)
            except SqlError:
                events = self._by_group(closed, rest, extra, failing, QueryBudget())
        dead = self._letters(closed, failing)
        return StepResult(events=events, dead_letters=dead, errors=len(dead))

    def _failing_in(self, closed: pa.Table, members: list[int], extra: list[str]) -> dict[int, str]:
        """The events among `members` (rows of `closed` whose values are of the same kinds) that
        the measures fail on, with why: all of them when their types fail, else those whose
        values fail an aggregate call's inputs."""
        part = retyped(take_rows(closed, members))
        try:
            self._run(part, extra)
            return {}
        except SqlError as error:
            if error.binding:  # the types fail, and each of these events alone has the same types
                return {row: str(error) for row in members}
        view = self._view(part)
        failing: dict[int, str] = {}
        first: dict[str, str] = {}  # input -> DuckDB's message for the first event it fails on
        for local, text in sorted(failing_inputs(self.sql, view, self._inputs).items()):
            if text not in first:
                first[text] = input_error(self.sql, view, text, local)
                failing[members[local]] = first[text]
            else:
                failing[members[local]] = (f"{text} fails on its value, as it does for an earlier event "
                                           f"of these windows: {first[text]}")
        return failing

    @cached_property
    def _inputs(self) -> tuple[str, ...]:
        """The measures' per-event inputs, each once (parsed when isolation first needs them)."""
        found = [text for expr in self.options.measures.values() for text in aggregate_inputs(expr)]
        return tuple(dict.fromkeys(found))

    def _by_group(self, closed: pa.Table, rest: list[int], extra: list[str], failing: dict[int, str],
                  budget: QueryBudget) -> pa.Table | None:
        """The rest fails together, on no event alone: some windows and keys fail as a whole (a
        cast of a sum that overflows, say). The ones that pass are found by halving the list of
        windows and keys (one query computes many), and in each one that fails, the events it
        fails on by halving its events; within `budget`, past which what is left fails."""
        names = ["__lb_start", "__lb_end", *self.options.by, *extra]
        members: dict[tuple[Any, ...], list[int]] = {}
        window: dict[tuple[Any, ...], tuple[int, int]] = {}  # (end, start): groups in window order
        for index, row in zip(rest, to_events(take_rows(closed, rest).select(names)), strict=True):
            key = group_key([row.get(name) for name in names])
            members.setdefault(key, []).append(index)
            window.setdefault(key, (row["__lb_end"], row["__lb_start"]))
        ordered = [members[key] for key in sorted(members, key=window.__getitem__)]
        outputs: list[pa.Table] = []
        failed: list[list[int]] = []

        def split(groups: list[list[int]]) -> None:
            if not budget.spend():
                failed.extend(groups)
                return
            try:
                outputs.append(self._run(retyped(take_rows(closed, [i for g in groups for i in g])), extra))
            except SqlError:
                if len(groups) == 1:
                    failed.append(groups[0])
                else:
                    split(groups[: len(groups) // 2])
                    split(groups[len(groups) // 2 :])

        split(ordered)
        for group in failed:
            rows, found = self._without_failing(closed, group, extra, budget)
            failing.update(found)
            if rows is not None:
                outputs.append(rows)
        if not outputs:
            return None
        table = concat(outputs)
        return table.sort_by([("window_end", "ascending"), ("window_start", "ascending")])  # stable

    def _without_failing(self, closed: pa.Table, members: list[int], extra: list[str],
                         budget: QueryBudget) -> tuple[pa.Table | None, dict[int, str]]:
        """The row of one window and key over its events (`members`) that the measures do not
        fail on, and why each of the others fails."""
        failing: dict[int, str] = {}
        unsearched: list[int] = []

        def search(indices: list[int]) -> None:
            if not budget.spend():
                unsearched.extend(indices)
                return
            try:
                self._run(retyped(take_rows(closed, indices)), extra)
            except SqlError as error:
                if len(indices) == 1:
                    failing[indices[0]] = str(error)
                else:
                    search(indices[: len(indices) // 2])
                    search(indices[len(indices) // 2 :])

        search(members)
        left = set(unsearched)  # a set: a group past the budget may hold every event of the window
        rest = [i for i in members if i not in failing and i not in left]
        if rest and budget.spend():
            try:
                rows = self._run(retyped(take_rows(closed, rest)), extra)
                return rows, self._with_unsearched(failing, unsearched)
            except SqlError as error:  # only the combination fails: the whole window and key
                failing.update({i: str(error) for i in rest})
        else:
            unsearched += rest
        return None, self._with_unsearched(failing, unsearched)

    @staticmethod
    def _with_unsearched(failing: dict[int, str], unsearched: list[int]) -> dict[int, str]:
        why = (f"the measures fail on this event's window and key, and the search for the events they "
               f"fail on stopped after {MAX_SEARCH_QUERIES} queries")
        return {**failing, **dict.fromkeys(unsearched, why)}

    def _letters(self, part: pa.Table, failing: dict[int, str]) -> list[DeadLetter]:
        events = to_events(take_rows(part, sorted(failing)))
        return [DeadLetter(step=self.ctx.step_id, reason="error",
                           message=f"an aggregate measure fails on this event: {failing[index]}",
                           event={k: v for k, v in event.items() if not k.startswith("__lb_")})
                for index, event in zip(sorted(failing), events, strict=True)]

    def _shape(self, out: pa.Table, schema: pa.Schema) -> pa.Table:
        columns: dict[str, pa.Array] = {
            "window_start": _times_text(out.column("__lb_start")),
            "window_end": _times_text(out.column("__lb_end")),
        }
        fields = [pa.field("window_start", pa.string()), pa.field("window_end", pa.string())]
        for name in [*self.options.by, *self.options.measures]:
            column = _plain_numbers(out.column(name).combine_chunks())
            columns[name] = column
            tagged = name in self.options.by and is_json_field(schema.field(name))
            fields.append(pa.field(name, column.type, metadata=JSON_TAG if tagged else None))
        return pa.table(list(columns.values()), schema=pa.schema(fields))


def _canonical_keys(table: pa.Table, by: list[str]) -> pa.Table:
    """`by` columns in which one key could be spelled two ways rewritten to one spelling per key.

    A float column (ints and floats of one field unify to float64) and JSON-tagged text (a field
    of mixed types) can hold 1 as 1.0, or as "1" in one batch and "1.0" in another; which one
    depends on what else was in the batch. Each value becomes its canonical form (an integral
    number an int), decided per value, never by the rest of the column: all ints then stay an
    int64 column, anything mixed becomes JSON-tagged text. Plain text, int and bool columns are
    already canonical and are left as they are."""
    for name in by:
        index = table.schema.get_field_index(name)
        if index < 0:
            continue
        field = table.schema.field(index)
        if is_json_field(field):
            texts = table.column(index).to_pylist()
            values = [None if v is None else canonical(json.loads(v)) for v in texts]
        elif pa.types.is_floating(field.type):
            values = [canonical(v) for v in table.column(index).to_pylist()]
        else:
            continue
        kinds = {type(v) for v in values if v is not None}
        if kinds <= {int} and all(v is None or -(2**63) <= v < 2**63 for v in values):
            array, tagged = pa.array(values, pa.int64()), False
        else:
            spelled = [None if v is None else json.dumps(v, sort_keys=True, ensure_ascii=False)
                       for v in values]
            array, tagged = pa.array(spelled, pa.string()), True
        field = pa.field(name, array.type, metadata=JSON_TAG if tagged else None)
        table = table.set_column(index, field, array)
    return table


def _attach(part: pa.Table, rows: pa.Array, name: str, values: pa.Array) -> pa.Table:
    """`part`'s rows at `rows` plus column `name` (a table without columns has no rows to take)."""
    if part.num_columns == 0:
        return pa.table({name: values})
    return part.take(rows).append_column(name, values)


def _concat(tables: list[pa.Table]) -> pa.Table:
    """Buffered parts as one table; a field whose type changed between batches is unified.

    Arrow promotes null and int/float columns itself; anything else (int in one batch, text in
    the next, or JSON-tagged text next to plain text) is re-unified from the decoded values.
    """
    if len(tables) == 1:
        return tables[0]
    tags = {(f.name, is_json_field(f)) for t in tables for f in t.schema}
    if len(tags) == len({name for name, _ in tags}):
        try:
            return pa.concat_tables(tables, promote_options="permissive")
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            pass
    return from_events([row for table in tables for row in to_events(table)])


def _times_text(column: pa.ChunkedArray) -> pa.Array:
    encoded = column.combine_chunks().dictionary_encode()
    texts = pa.array([format_time(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(texts, encoded.indices)


def _plain_numbers(column: pa.Array) -> pa.Array:
    if not pa.types.is_decimal(column.type):
        return column
    if column.type.scale == 0:
        try:
            return column.cast(pa.int64())
        except pa.ArrowInvalid:
            pass
    return column.cast(pa.float64())
