"""The step-kind registry: one plain dict, filled where each kind is defined.

A step module declares its options model and registers it with `@step("name", ...)`. The spec
models, the guide and the compliance tests are all built from `STEPS`, so a kind is documented in
exactly one place: its module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel

if TYPE_CHECKING:
    from primitives.runtime import BuildContext, StepRuntime

OptionsT = TypeVar("OptionsT", bound=type[BaseModel])


@dataclass(frozen=True)
class StepKind:
    """What the rest of LogBus knows about one step kind.

    `options` validates the value under the kind key (a shorthand string form, if the kind has one,
    is accepted by the model's `model_validator(mode="before")`). `build` turns validated options
    into a runtime for the engine. `example` is a complete, runnable pipeline in YAML that the
    guide shows and the tests execute; `emits` is "events" or "signals" or "rows".
    """

    name: str
    options: type[BaseModel]
    summary: str
    example: str
    emits: str
    build: Callable[[Any, BuildContext], StepRuntime]


STEPS: dict[str, StepKind] = {}


def step(
    name: str,
    *,
    summary: str,
    example: str,
    emits: str = "events",
    build: Callable[[Any, BuildContext], StepRuntime],
) -> Callable[[OptionsT], OptionsT]:
    """Register the decorated options model as step kind `name`."""

    def register(options: OptionsT) -> OptionsT:
        if name in STEPS:
            raise ValueError(f"step kind {name!r} registered twice")
        STEPS[name] = StepKind(name, options, summary, example, emits, build)
        return options

    return register
