"""`transform`: reshape events, declaratively (SQL, vectorised) or in Python (sandboxed).

Declarative form, applied in this order — `set`, then `rename`, then `drop`, then `keep`:

    - transform:
        set: {status_class: "status // 100", user: "lower(trim(user))"}
        rename: {client_ip: src_ip}
        drop: [ident]
        keep: [timestamp, src_ip, user, status, status_class]   # optional: only these remain

- `set`: each field gets the value of a DuckDB scalar expression. All expressions read the event
  as it came in (they do not see each other's results); a field that no event has reads as NULL.
- `rename`: `{old: new}`, per event: where the event has `old`, `new` gets its value (an existing
  `new` is replaced) and `old` is gone; where it has no `old` (or null), `new` keeps what it had.
  All renames happen at once, so `{a: b, b: a}` swaps.
- `drop`: fields to remove; missing ones are skipped.
- `keep`: if given, only these fields remain (missing ones are not created).

Code form — the value is the Python module source with `transform(event)`:

    - transform: |
        def transform(event):
            event["user"] = event["user"].strip()
            return event

`transform` returns a dict (one event), a list of dicts (0..n events: fan-out) or None (drop).
Outputs keep input order; an event whose call fails goes to dead letters and counts as an error.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from primitives.batch import JSON_TAG, column_array, from_events, to_events, with_columns
from primitives.registry import step
from primitives.runtime import BuildContext, CodeRunner, StepResult
from primitives.sqlcheck import check_expression, referenced_columns
from primitives.sqlexec import SqlBatch
from primitives.steps.filter import code_dead_letters

EXAMPLE = """name: web-tidy
description: Classify responses and keep the fields dashboards use
source: web
steps:
  - transform:
      set:
        status_class: "CAST(status // 100 AS VARCHAR) || 'xx'"
        path: "lower(path)"
      rename: {client_ip: src_ip}
      keep: [timestamp, src_ip, path, status, status_class]
"""


def _build(options: TransformOptions, ctx: BuildContext) -> SqlTransform | CodeTransform:
    if options.code is not None:
        if ctx.run_code is None:
            raise ValueError(f"step '{ctx.step_id}': transform code needs the sandbox (no code runner given)")
        return CodeTransform(options.code, ctx.step_id, ctx.run_code)
    return SqlTransform(options)


@step("transform", summary="Set fields with SQL expressions, rename, drop or keep fields; or run "
      "transform(event) in Python (returns a dict, a list to fan out, or None to drop).",
      example=EXAMPLE, build=_build)
class TransformOptions(BaseModel):
    """A string value is the code form: `transform: "def transform(event): ..."`."""

    model_config = ConfigDict(extra="forbid")

    set: dict[str, str] = Field(default_factory=dict, description="field -> DuckDB scalar expression over "
                                "the input event, e.g. {bytes_kb: \"bytes / 1024\"}.")
    rename: dict[str, str] = Field(default_factory=dict, description="old field name -> new name.")
    drop: list[str] = Field(default_factory=list, description="Fields to remove.")
    keep: list[str] | None = Field(None, description="If given, only these fields remain.")
    code: str | None = Field(None, description="Python module defining transform(event) -> dict | "
                             "list[dict] | None; runs in the sandbox. Give it as the step's string value.")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        return {"code": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _check(self) -> TransformOptions:
        declarative = bool(self.set or self.rename or self.drop or self.keep is not None)
        if self.code is not None and declarative:
            raise ValueError("use either Python code (the step's string value) or set/rename/drop/keep, "
                             "not both; split them into two transform steps")
        if self.code is None and not declarative:
            raise ValueError("transform needs set, rename, drop or keep (or Python code as a string)")
        problems = []
        for name, expr in self.set.items():
            if not name:
                raise ValueError("set: field names must not be empty")
            problems += [f"set.{name}: {p.render()}" for p in check_expression(expr, role="scalar")]
        if problems:
            raise ValueError("; ".join(problems))
        targets = list(self.rename.values())
        if len(set(targets)) != len(targets):
            raise ValueError("rename: two fields are renamed to the same name; give each a distinct name")
        return self


class SqlTransform:
    isolatable = True  # stateless; see primitives.runtime.StepRuntime

    def __init__(self, options: TransformOptions) -> None:
        self.options = options
        self.inputs = sorted(set().union(*(referenced_columns(e) for e in options.set.values())))
        self.sql = SqlBatch()

    def process(self, batch: pa.Table) -> StepResult:
        options = self.options
        out = batch
        if options.set and batch.num_rows:
            missing = [name for name in self.inputs if name not in batch.column_names]
            out = self.sql.select(with_columns(batch, self.inputs), options.set, keep_rest=True)
            # fields added only so expressions could bind go away again, unless they were set
            out = out.drop_columns([name for name in missing if name not in options.set])
        elif options.set:  # empty batch: the set fields still exist, as nulls
            out = with_columns(batch, list(options.set))
        out = _rename(out, options.rename)
        out = out.drop_columns([name for name in options.drop if name in out.column_names])
        if options.keep is not None:
            out = out.select([name for name in out.column_names if name in set(options.keep)])
        return StepResult(events=out)

    def finish(self) -> StepResult:
        return StepResult()


def _rename(table: pa.Table, mapping: dict[str, str]) -> pa.Table:
    """Rename per event (see the module docstring). Decided per row, not per column: whether an
    event keeps its own `new` must not depend on whether another event of its batch had `old`."""
    present = {old: new for old, new in mapping.items() if old in table.column_names}
    if not present:
        return table
    moved: dict[str, tuple[pa.Field, pa.ChunkedArray]] = {}
    for old, new in present.items():
        source = table.column(old)
        if new in table.column_names and new not in present:  # an event without `old` keeps its `new`
            moved[new] = _fill(table, old, new)
        else:
            moved[new] = (table.schema.field(old).with_name(new), source)
    fields, columns = [], []
    for name in table.column_names:  # each renamed field where `old` was; a filled `new` moves there
        if name in present:
            field, column = moved[present[name]]
        elif name in moved:
            continue
        else:
            field, column = table.schema.field(name), table.column(name)
        fields.append(field)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _fill(table: pa.Table, old: str, new: str) -> tuple[pa.Field, pa.ChunkedArray]:
    """Field `new`: `old`'s value where the event has one, else `new`'s own."""
    source, target = table.schema.field(old), table.schema.field(new)
    if source.type == target.type and source.metadata == target.metadata:
        merged = pc.if_else(pc.is_valid(table.column(old)), table.column(old), table.column(new))
        return source.with_name(new), pa.chunked_array([merged]) if isinstance(merged, pa.Array) else merged
    if pa.types.is_null(source.type):
        return target, table.column(new)
    rows = to_events(table.select([old, new]))
    array, tagged = column_array([row[new] if row[old] is None else row[old] for row in rows])
    return pa.field(new, array.type, metadata=JSON_TAG if tagged else None), pa.chunked_array([array])


class CodeTransform:
    def __init__(self, code: str, step_id: str, run_code: CodeRunner) -> None:
        self.code = code
        self.step_id = step_id
        self.run_code = run_code

    def process(self, batch: pa.Table) -> StepResult:
        if batch.num_rows == 0:
            return StepResult(events=batch)
        outcome = self.run_code("transform", self.code, batch)
        if outcome.table is not None:
            produced_table = outcome.table
        else:  # a runner that answers per event (row form)
            produced: list[dict[str, Any]] = []
            for value in outcome.values:
                if value:  # None (failed or dropped) and [] emit nothing
                    produced.extend(value if isinstance(value, list) else [value])
            produced_table = from_events(produced)
        result = StepResult(events=produced_table, logs=list(outcome.logs))
        code_dead_letters(self.step_id, "transform", outcome.errors, batch, result)
        return result

    def finish(self) -> StepResult:
        return StepResult()
