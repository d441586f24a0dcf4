"""Signals: the alerts that `rule` and `derive` raise, and their stable identity.

A signal is emitted when it fires and emitted again, with the same `id`, each time later matches
fold into it (higher `count`, later `last_seen`, more samples). Consumers upsert by `id`; a step
emits at most one version of a signal per batch (its latest state).

The id is a hash of (pipeline, step id, dedup key, first_seen) and deliberately NOT of the
pipeline version: replaying the log after a crash, or hot-swapping a new version of the same
pipeline over the same events, recomputes the same alert and must update it, not raise a second
one. A genuinely new occurrence (a later first_seen) gets a new id.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[str, ...] = get_args(Severity)
MAX_SAMPLES = 10

__all__ = ["MAX_SAMPLES", "SEVERITIES", "Severity", "Signal", "check_severity", "signal_id"]


class Signal(BaseModel):
    """One alert, in the shape stored in the `signals` table and returned by `list_signals`."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Stable id: hash of pipeline, step, dedup key and first_seen.")
    pipeline: str = Field(description="Name of the pipeline that raised the signal.")
    version: int = Field(description="Version of the pipeline that last updated the signal.")
    step: str = Field(description="Id of the rule or derive step that raised it.")
    severity: Severity = Field(description="info, low, medium, high or critical.")
    title: str = Field(description="One line for a person: what happened.")
    dedup: str = Field(description="Key that folds repeated matches into this one signal.")
    count: int = Field(description="Matching events (rule) or rows (derive) folded into the signal.")
    first_seen: str = Field(description="Event time of the earliest match, RFC 3339 UTC.")
    last_seen: str = Field(description="Event time of the latest match, RFC 3339 UTC.")
    context: dict[str, Any] = Field(default_factory=dict, description="Fields chosen by the rule.")
    samples: list[dict[str, Any]] = Field(
        default_factory=list, description=f"Up to {MAX_SAMPLES} of the matching events, earliest first."
    )


def signal_id(pipeline: str, step: str, dedup: str, first_seen: str) -> str:
    """32 hex digits, the same for the same (pipeline, step, dedup, first_seen); no version."""
    digest = hashlib.sha256()
    for part in (pipeline, step, dedup, first_seen):
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(len(encoded).to_bytes(8, "big"))  # length-prefixed: no ambiguous joins
        digest.update(encoded)
    return digest.hexdigest()[:32]


def latest_signals(signals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Signals are upserts by id: each id's latest state, in order of first appearance."""
    latest: dict[str, dict[str, Any]] = {}
    for signal in signals:
        latest[signal["id"]] = signal
    return list(latest.values())


def check_severity(value: Any, *, where: str) -> str:
    """`value` if it is a severity name, else a ValueError that lists the valid names."""
    if isinstance(value, str) and value in SEVERITIES:
        return value
    raise ValueError(f"{where} must be one of {', '.join(SEVERITIES)}; got {value!r}")
