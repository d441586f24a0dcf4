"""The declarative transform against a per-event reference of its documented semantics (set, then
rename all at once, then drop, then keep), on random events whose fields come and go and change
type, in random batches: every event must come out as the reference says, whatever its
batch-mates had."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from primitives.spec import load_spec
from tests.primitives.conftest import run_pipeline
from tests.stream.test_inputs_differential import _without_nulls

FIELDS = ["a", "b", "c", "d"]
VALUES: list[Any] = ["x", "", 1, 2.5, True, {"n": 1}, [1, "y"], None]


def reference(event: dict[str, Any], constants: dict[str, str], rename: dict[str, str], drop: list[str],
              keep: list[str] | None) -> dict[str, Any]:
    current = {k: v for k, v in event.items() if v is not None}  # null and missing are one here
    current.update(constants)
    renamed = {k: v for k, v in current.items() if k not in rename}
    for old, new in rename.items():
        if old in current:
            renamed[new] = current[old]
    for name in drop:
        renamed.pop(name, None)
    if keep is not None:
        renamed = {k: v for k, v in renamed.items() if k in keep}
    return renamed


@pytest.mark.parametrize("seed", range(60))
def test_declarative_transform_matches_the_reference_per_event(seed: int) -> None:
    rng = random.Random(seed)
    events = [{f: rng.choice(VALUES) for f in rng.sample(FIELDS, rng.randint(0, 4))}
              for _ in range(rng.randint(1, 12))]
    targets = rng.sample([*FIELDS, "e"], rng.randint(0, 3))
    rename = dict(zip(rng.sample(FIELDS, len(targets)), targets, strict=True))
    rename = {old: new for old, new in rename.items() if old != new}
    constants = {name: rng.choice(["k", "z"]) for name in rng.sample([*FIELDS, "s"], rng.randint(0, 2))}
    drop = rng.sample([*FIELDS, "e"], rng.randint(0, 2))
    keep = rng.sample([*FIELDS, "e", "s"], rng.randint(1, 4)) if rng.random() < 0.4 else None
    if not (rename or constants or drop or keep is not None):
        constants = {"s": "k"}
    options = {"set": {k: f"'{v}'" for k, v in constants.items()}, "rename": rename, "drop": drop}
    if keep is not None:
        options["keep"] = keep
    spec = load_spec(json.dumps({"name": "t", "source": "s", "steps": [{"transform": options}]}))
    expected = [reference(e, constants, rename, drop, keep) for e in events]
    cuts = sorted(rng.sample(range(1, len(events)), rng.randint(0, len(events) - 1)))
    for batches in ([events], [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]):
        got = [_without_nulls(row) for row in run_pipeline(spec, batches, None).outputs]
        assert got == [_without_nulls(e) for e in expected], (options, events)
