"""derive: signals from rows by SQL predicate and {field} templates, or by derive(row) code."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from pydantic import ValidationError

from primitives.batch import from_events
from primitives.runtime import BuildContext
from primitives.steps.derive import DeriveOptions, DeriveRuntime, parse_template, template_fields
from tests.primitives.test_rule import inprocess_runner

CTX = BuildContext("error-bursts", 3, "alert", "ts", run_code=inprocess_runner)


def make(**options: Any) -> DeriveRuntime:
    return DeriveRuntime(DeriveOptions.model_validate(options), CTX)


def row(minute: int, host: str, errors: int, **extra: Any) -> dict[str, Any]:
    return {
        "window_start": f"2024-01-01T00:{minute:02d}:00Z",
        "window_end": f"2024-01-01T00:{minute + 1:02d}:00Z",
        "host": host,
        "errors": errors,
        **extra,
    }


DECLARED = {
    "when": "errors >= 10",
    "severity": "high",
    "title": "{errors} errors on {host}",
    "dedup": "{host}",
    "suppress": "5m",
    "context": ["host", "errors"],
}


def test_matching_rows_raise_signals_spanning_their_windows() -> None:
    result = make(**DECLARED).process(from_events([row(0, "a", 12), row(0, "b", 3)]))
    (signal,) = result.signals
    assert (signal["title"], signal["dedup"], signal["severity"], signal["count"]) == (
        "12 errors on a",
        "a",
        "high",
        1,
    )
    assert (signal["first_seen"], signal["last_seen"]) == ("2024-01-01T00:00:00Z", "2024-01-01T00:01:00Z")
    assert signal["context"] == {"host": "a", "errors": 12} and signal["samples"] == [row(0, "a", 12)]
    assert result.events is not None and result.events.num_rows == 2  # rows pass on


def test_rows_within_suppress_fold_and_a_new_signal_follows_expiry() -> None:
    runtime = make(**DECLARED)
    first = runtime.process(from_events([row(0, "a", 12), row(1, "a", 15)])).signals
    second = runtime.process(from_events([row(4, "a", 11), row(5, "a", 20)])).signals
    assert [(s["count"], s["title"], s["last_seen"][11:19]) for s in first] == [
        (2, "12 errors on a", "00:02:00")
    ]
    assert [(s["count"], s["first_seen"][11:19]) for s in second] == [(3, "00:00:00"), (1, "00:05:00")]
    assert second[0]["id"] == first[0]["id"] and second[1]["id"] != first[0]["id"]


def test_events_use_the_pipeline_time_field() -> None:
    runtime = make(when="status >= 500", title="server error on {path}")
    result = runtime.process(from_events([{"ts": "2024-01-01T00:00:07Z", "status": 503, "path": "/x"}]))
    assert [(s["title"], s["first_seen"], s["dedup"]) for s in result.signals] == [
        ("server error on /x", "2024-01-01T00:00:07Z", "server error on /x")
    ]


def test_missing_template_field_renders_empty_and_is_logged() -> None:
    result = make(when="errors > 0", title="errors on {host} in {region}").process(
        from_events([row(0, "a", 1)])
    )
    assert result.signals[0]["title"] == "errors on a in "
    assert any("region" in line for line in result.logs)


def test_templates_allow_field_names_only() -> None:
    assert parse_template("{{literal}} {a} x") == ["{", "literal", "}", " ", ("a",), " x"]
    assert template_fields("{host}: {errors} errors") == ["host", "errors"]
    for bad in ["{a.__class__}", "{a[0]}", "{0}", "{a!r}", "{a:>10}", "{}", "unclosed {a"]:
        with pytest.raises(ValidationError, match="only \\{field\\} placeholders"):
            DeriveOptions.model_validate({"when": "true", "title": bad})


def test_values_render_as_json_text_never_through_str_format() -> None:
    result = make(when="true", title="{flag} {ratio} {tags} {nothing}").process(
        from_events(
            [{"ts": "2024-01-01T00:00:00Z", "flag": True, "ratio": 0.5, "tags": ["x"], "nothing": None}]
        )
    )
    assert result.signals[0]["title"] == 'true 0.5 ["x"] '


def test_when_and_code_are_exclusive_and_code_form_takes_no_templates() -> None:
    with pytest.raises(ValidationError, match="exactly one of when"):
        DeriveOptions.model_validate({"title": "x"})
    with pytest.raises(ValidationError, match="exactly one of when"):
        DeriveOptions.model_validate({"when": "true", "code": "def derive(row):\n    return None\n"})
    with pytest.raises(ValidationError, match="return title, dedup and context from derive"):
        DeriveOptions.model_validate({"code": "def derive(row):\n    return None\n", "title": "x"})


CODE = """
def derive(row):
    if row["errors"] < 10:
        return None
    out = [{"title": "errors on " + row["host"], "dedup": row["host"], "context": {"n": row["errors"]}}]
    if row["errors"] > 100:
        out.append({"title": "flood", "severity": "critical"})
    return out
"""


def test_code_form_each_returned_dict_is_a_signal_with_documented_defaults() -> None:
    result = make(code=CODE, severity="low").process(from_events([row(0, "a", 5), row(0, "b", 500)]))
    got = sorted((s["title"], s["dedup"], s["severity"], s["context"]) for s in result.signals)
    assert got == [("errors on b", "b", "low", {"n": 500}), ("flood", "flood", "critical", {})]


def test_code_form_unknown_keys_and_bad_values_are_bad_output() -> None:
    code = "def derive(row):\n    return {'title': 'x', 'colour': 'red'}\n"
    result = make(code=code).process(from_events([row(0, "a", 1)]))
    assert result.signals == [] and result.errors == 1
    assert "allowed keys: title, dedup, severity, context" in result.dead_letters[0].message
    code = "def derive(row):\n    return {'severity': 'urgent'}\n"
    assert "not one of info" in make(code=code).process(from_events([row(0, "a", 1)])).dead_letters[0].message


def test_code_errors_become_dead_letters() -> None:
    result = make(code="def derive(row):\n    return row['nope']\n").process(from_events([row(0, "a", 1)]))
    assert [(d.reason, d.line) for d in result.dead_letters] == [("error", 2)]


def test_rows_without_time_are_no_time_and_empty_batches_pass() -> None:
    runtime = make(when="true")
    result = runtime.process(from_events([{"x": 1}]))
    assert [d.reason for d in result.dead_letters] == ["no_time"] and result.signals == []
    assert result.dead_letters[0].message.startswith(
        "derive matched a row, but event has no usable time: 'ts' is missing or null")
    assert runtime.process(pa.table({})).signals == []


def test_a_late_row_says_how_far_behind_the_newest_it_came() -> None:
    runtime = make(**DECLARED)
    result = runtime.process(from_events([row(20, "a", 50), row(14, "b", 50), row(16, "c", 50)]))
    assert [s["dedup"] for s in result.signals] == ["a", "c"]
    assert [(d.reason, (d.event or {}).get("host")) for d in result.dead_letters] == [("late", "b")]
    assert result.dead_letters[0].message == (
        "derive matched a row 6m older than the newest one before it (2024-01-01T00:20:00Z), past "
        "suppress (5m); it cannot change any signal")
