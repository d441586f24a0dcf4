"""`sample`: keep a deterministic fraction of the events.

    - sample: {rate: 0.1}                  # about 1 event in 10
    - sample: {rate: 0.01, by: [src_ip]}   # all events of about 1 source address in 100

Each event is kept when a hash of its key falls below `rate`: the key is the values of the `by`
fields, or the whole event when `by` is not given. No randomness is involved, so a replay of the
same events keeps exactly the same ones, and with `by` every event of a kept key is kept (whole
sessions, whole hosts). The hash is BLAKE2b over canonical JSON (sorted keys, no spaces), which
does not depend on the Python or library version: a missing field and a null one hash alike, and
`3.0` hashes as `3`, so how events were batched does not change the choice.
"""

from __future__ import annotations

import json
from hashlib import blake2b
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from primitives.batch import to_events
from primitives.registry import step
from primitives.runtime import BuildContext, StepResult

EXAMPLE = """name: web-sample
description: A stable 10% of clients, with all of their requests
source: web
steps:
  - sample:
      rate: 0.1
      by: [client_ip]
"""

SCALE = 1 << 64


def _build(options: SampleOptions, ctx: BuildContext) -> SampleRuntime:
    return SampleRuntime(options)


@step("sample", summary="Keep a deterministic fraction of events (a hash of the `by` fields or the event).",
      example=EXAMPLE, build=_build)
class SampleOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rate: float = Field(gt=0, le=1, description="Fraction of events (or of `by` keys) to keep, in (0, 1].")
    by: list[str] | None = Field(None, min_length=1, description="Fields whose values decide together; "
                                 "default: the whole event.")


class SampleRuntime:
    isolatable = True  # stateless; see primitives.runtime.StepRuntime

    def __init__(self, options: SampleOptions) -> None:
        self.by = options.by
        self.threshold = int(options.rate * SCALE)

    def process(self, batch: pa.Table) -> StepResult:
        if batch.num_rows == 0 or self.threshold >= SCALE:
            return StepResult(events=batch)
        if self.by is not None:
            present = [name for name in self.by if name in batch.column_names]
            events = to_events(batch.select(present))
            keys: list[Any] = [[event.get(name) for name in self.by] for event in events]
        else:
            keys = [{k: v for k, v in event.items() if v is not None} for event in to_events(batch)]
        mask = pa.array([position(key) < self.threshold for key in keys], pa.bool_())
        return StepResult(events=batch.filter(mask))

    def finish(self) -> StepResult:
        return StepResult()


def position(key: Any) -> int:
    """Where `key` falls in [0, 2**64): the first 8 bytes of its BLAKE2b hash."""
    text = json.dumps(_canonical(key), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return int.from_bytes(blake2b(text.encode(), digest_size=8, person=b"logbus.sample").digest(), "big")


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value
