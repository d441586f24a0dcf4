"""Signals: the shape consumers store, and ids that stay the same across replays and versions."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from primitives.signals import SEVERITIES, Signal, check_severity, signal_id


def test_signal_id_is_stable_for_the_same_input() -> None:
    first = signal_id("ssh", "detect", "10.0.0.1", "2024-12-10T06:55:46Z")
    assert first == signal_id("ssh", "detect", "10.0.0.1", "2024-12-10T06:55:46Z")
    assert len(first) == 32 and int(first, 16) >= 0


def test_signal_id_changes_with_each_part() -> None:
    base = ("ssh", "detect", "10.0.0.1", "2024-12-10T06:55:46Z")
    ids = {signal_id(*base)}
    for position, other in enumerate(["ssh2", "detect2", "10.0.0.2", "2024-12-10T06:55:47Z"]):
        parts = list(base)
        parts[position] = other
        ids.add(signal_id(*parts))
    assert len(ids) == 5


def test_signal_id_parts_cannot_bleed_into_each_other() -> None:
    assert signal_id("a", "bc", "d", "t") != signal_id("ab", "c", "d", "t")


def test_signal_model_accepts_the_documented_shape_and_rejects_bad_severity() -> None:
    fields = dict(
        id="x",
        pipeline="p",
        version=1,
        step="s",
        severity="high",
        title="t",
        dedup="d",
        count=5,
        first_seen="2024-12-10T06:55:46Z",
        last_seen="2024-12-10T06:55:50Z",
    )
    signal = Signal.model_validate(fields)
    assert signal.model_dump()["context"] == {} and signal.samples == []
    with pytest.raises(ValidationError):
        Signal.model_validate({**fields, "severity": "urgent"})
    with pytest.raises(ValidationError):
        Signal.model_validate({**fields, "extra_field": 1})


def test_check_severity_lists_the_valid_names() -> None:
    assert check_severity("low", where="severity") == "low"
    with pytest.raises(
        ValueError, match="severity must be one of info, low, medium, high, critical; got 'bad'"
    ):
        check_severity("bad", where="severity")
    assert SEVERITIES == ("info", "low", "medium", "high", "critical")
