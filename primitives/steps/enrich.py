"""`enrich`: add fields from a lookup table (CSV or Parquet), joined on a key.

    - enrich:
        table: lookups/assets.csv        # relative to the pipeline's data directory
        on: {src_ip: ip}                 # event field -> table column (or one name for both)
        fields: [owner, criticality]     # default: every table column except the key

A left join: an event whose key matches gets the table row's fields; an event without a match (or
without the key field) keeps going with those fields null — unless it already had them, in which
case its own values stay. A matched value overwrites an event field of the same name. Keys are
compared by their text form, so an event's `port: 22` matches a CSV cell `22`; a key made of
several fields matches only when all parts match, and a null part never matches. When the table
holds a key more than once, the first row wins.

The table is read once, when the step is built. Its path must stay inside the data directory:
absolute paths and `..` that lead out of it are refused, so a pipeline cannot read host files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from primitives.parsers.common import Parsed, merge_parsed, text_column
from primitives.registry import step
from primitives.runtime import BuildContext, StepResult

SEPARATOR = "\x1f"  # joins the parts of a composite key (ASCII unit separator: not in real keys)
MAX_TABLE_BYTES = 256 << 20

EXAMPLE = """name: web-with-owners
description: Tag each request with the team that owns the client address
source: web
steps:
  - enrich:
      table: lookups/hosts.csv
      on: {client_ip: ip}
      fields: [owner, zone]
"""


def _build(options: EnrichOptions, ctx: BuildContext) -> EnrichRuntime:
    return EnrichRuntime(options, load_table(options, ctx.base_dir, ctx.step_id))


@step("enrich", summary="Left-join a CSV/Parquet lookup table on a key; unmatched events get null fields.",
      example=EXAMPLE, build=_build)
class EnrichOptions(BaseModel):
    """`on` is one field name (same in events and table) or a mapping event_field -> table column."""

    model_config = ConfigDict(extra="forbid")

    table: str = Field(description="Path of a .csv or .parquet file, relative to the data directory.")
    on: str | dict[str, str] = Field(description="Join key: a field name present in both, or "
                                     "{event_field: table_column, ...} (all parts must match).")
    fields: list[str] | None = Field(None, description="Table columns to add; default all but the key.")
    prefix: str = Field("", description="Prepended to the added field names, e.g. 'asset_'.")

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True; take it back
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @model_validator(mode="after")
    def _check(self) -> EnrichOptions:
        if not self.table.endswith((".csv", ".parquet")):
            raise ValueError(f"table {self.table!r} must be a .csv or .parquet file")
        if not self.keys:
            raise ValueError("'on' names no key; give a field name or {event_field: table_column}")
        return self

    @property
    def keys(self) -> dict[str, str]:
        return {self.on: self.on} if isinstance(self.on, str) else dict(self.on)


def load_table(options: EnrichOptions, base_dir: str, step_id: str) -> pa.Table:
    """Read the lookup table, refusing paths outside `base_dir` and naming what is missing."""
    base = Path(base_dir).resolve()
    path = (base / options.table).resolve()
    if Path(options.table).is_absolute() or not path.is_relative_to(base):
        raise ValueError(f"step '{step_id}': table {options.table!r} is outside the data directory; "
                         "give a path relative to it, without '..'")
    if not path.is_file():
        raise ValueError(f"step '{step_id}': lookup table {options.table!r} not found in {base}; "
                         "register the file with the server or fix the path")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise ValueError(f"step '{step_id}': lookup table {options.table!r} is over "
                         f"{MAX_TABLE_BYTES >> 20} MiB; enrich holds the table in memory")
    # imported here: only enrich reads these formats, and pyarrow.parquet alone costs every
    # `logbus test` run ~10 ms of start-up
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pa_csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValueError(f"step '{step_id}': cannot read lookup table {options.table!r}: {exc}") from None
    wanted = list(options.keys.values()) + list(options.fields or [])
    missing = [name for name in wanted if name not in table.column_names]
    if missing:
        raise ValueError(f"step '{step_id}': lookup table {options.table!r} has no column "
                         f"{', '.join(map(repr, missing))}; its columns are {', '.join(table.column_names)}")
    return table


class EnrichRuntime:
    """Holds the table and a key index; stateless across batches."""

    isolatable = True  # see primitives.runtime.StepRuntime

    def __init__(self, options: EnrichOptions, table: pa.Table) -> None:
        self.options = options
        self.event_keys = list(options.keys)
        key_columns = list(options.keys.values())
        self.key_index = _key_text([table.column(name) for name in key_columns])
        names = options.fields if options.fields is not None else \
            [name for name in table.column_names if name not in key_columns]
        self.columns = {name: table.column(name).combine_chunks() for name in names}

    def process(self, batch: pa.Table) -> StepResult:
        if batch.num_rows == 0:
            return StepResult(events=batch)
        parts = [text_column(batch, name) for name in self.event_keys]
        # index_in gives the position of the first occurrence: duplicate table keys -> first wins
        rows = pc.index_in(_key_text(parts), value_set=self.key_index)
        matched = pc.is_valid(rows)
        parsed = Parsed({name: column.take(rows) for name, column in self.columns.items()}, matched)
        return StepResult(events=merge_parsed(batch, parsed, self.options.prefix, keep_unmatched=True))

    def finish(self) -> StepResult:
        return StepResult()


def _key_text(parts: list[Any]) -> pa.Array:
    """One text key per row; null when any part is null or cannot be shown as text."""
    texts = [_as_text(part) for part in parts]
    if len(texts) == 1:
        return texts[0]
    return pc.binary_join_element_wise(*texts, SEPARATOR)


def _as_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_string(array.type):
        return array
    if pa.types.is_nested(array.type) or pa.types.is_null(array.type):
        return pa.nulls(len(array), pa.string())
    return array.cast(pa.string())
