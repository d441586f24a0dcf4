"""Claims about the stateless steps that golden files cannot state: option errors, file safety,
counters, determinism across batching. Behaviour over events lives in tests/golden/."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import ValidationError

from primitives.registry import STEPS
from primitives.runtime import BuildContext, StepRuntime
from primitives.steps.enrich import EnrichOptions
from primitives.steps.filter import FilterOptions
from primitives.steps.parse import ParseOptions
from primitives.steps.sample import SampleOptions, position
from primitives.steps.transform import TransformOptions


def build(kind: str, options: object, base_dir: str = ".") -> StepRuntime:
    validated = STEPS[kind].options.model_validate(options)
    return STEPS[kind].build(validated, BuildContext("p", 1, "s1", None, None, base_dir))


def error_of(model: type, value: object) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(value)  # type: ignore[attr-defined]
    return str(caught.value)


def test_parse_options_explain_what_to_write_instead() -> None:
    assert "exactly one of 'regex'" in error_of(ParseOptions, {"field": "m"})
    assert "lookaround" in error_of(ParseOptions, {"field": "m", "regex": r"(?P<a>x)(?!y)"})
    assert "year applies only to format: syslog" in error_of(ParseOptions, {"field": "m", "format": "clf",
                                                                            "year": 2024})
    assert "unknown timezone 'Mars/Base'" in error_of(ParseOptions, {"field": "m", "format": "syslog",
                                                                     "timezone": "Mars/Base"})
    assert "Extra inputs" in error_of(ParseOptions, {"field": "m", "format": "kv", "sep": ","})


def test_filter_and_transform_shorthands_and_conflicts() -> None:
    assert FilterOptions.model_validate("status >= 500").expr == "status >= 500"
    assert "not both" in error_of(FilterOptions, {"expr": "a = 1", "code": "def keep(e): return True"})
    code = "def transform(event):\n    return event\n"
    assert TransformOptions.model_validate(code).code == code
    assert "either Python code" in error_of(TransformOptions, {"code": code, "drop": ["a"]})
    assert "distinct name" in error_of(TransformOptions, {"rename": {"a": "c", "b": "c"}})


def test_code_forms_refuse_to_build_without_the_sandbox() -> None:
    with pytest.raises(ValueError, match="needs the sandbox"):
        build("filter", {"code": "def keep(event):\n    return True\n"})


def test_parse_counts_unmatched_events_in_the_log_and_keeps_them() -> None:
    runtime = build("parse", {"field": "message", "regex": r"^(?P<n>\d+)$"})
    result = runtime.process(pa.table({"message": ["12", "x", None]}))
    assert result.events is not None and result.events.column("n").to_pylist() == ["12", None, None]
    assert result.errors == 0
    assert result.logs == [
        "step 's1': 2 of 3 events did not match the regex on field 'message'; kept unchanged"]


def test_parse_dead_letter_names_the_field_and_value() -> None:
    runtime = build("parse", {"field": "message", "format": "clf", "on_error": "dead_letter"})
    result = runtime.process(pa.table({"message": ["garbage line"]}))
    assert result.errors == 1 and result.events is not None and result.events.num_rows == 0
    (dead,) = result.dead_letters
    assert dead.reason == "parse" and dead.step == "s1"
    assert dead.message == "field 'message' did not match the clf format (value: 'garbage line')"


def test_enrich_refuses_paths_outside_the_data_directory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "secret.csv").write_text("ip,owner\n1,x\n")
    for table in ["../secret.csv", str(tmp_path / "secret.csv")]:
        with pytest.raises(ValueError, match="outside the data directory"):
            build("enrich", {"table": table, "on": "ip"}, base_dir=str(tmp_path / "data"))


def test_enrich_names_missing_files_and_columns(tmp_path: Path) -> None:
    (tmp_path / "hosts.csv").write_text("ip,owner\n10.0.0.1,payments\n")
    with pytest.raises(ValueError, match=r"'nope\.csv' not found"):
        build("enrich", {"table": "nope.csv", "on": "ip"}, base_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no column 'team'; its columns are ip, owner"):
        build("enrich", {"table": "hosts.csv", "on": "ip", "fields": ["team"]}, base_dir=str(tmp_path))
    assert "must be a .csv or .parquet" in error_of(EnrichOptions, {"table": "hosts.txt", "on": "ip"})


def test_enrich_reads_parquet_tables(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"ip": ["10.0.0.1"], "owner": ["payments"]}), tmp_path / "hosts.parquet")
    runtime = build("enrich", {"table": "hosts.parquet", "on": "ip"}, base_dir=str(tmp_path))
    result = runtime.process(pa.table({"ip": ["10.0.0.1", "10.0.0.2"]}))
    assert result.events is not None and result.events.to_pylist() == [
        {"ip": "10.0.0.1", "owner": "payments"}, {"ip": "10.0.0.2", "owner": None}]


def test_sample_choice_does_not_depend_on_batching_or_missing_vs_null() -> None:
    runtime = build("sample", {"rate": 0.5})
    events = [{"n": i, "tag": None} for i in range(200)]
    whole = runtime.process(pa.Table.from_pylist(events))
    without_tag = runtime.process(pa.Table.from_pylist([{"n": i} for i in range(200)]))
    assert whole.events is not None and without_tag.events is not None
    assert whole.events.column("n").to_pylist() == without_tag.events.column("n").to_pylist()
    assert 70 < whole.events.num_rows < 130  # about half
    assert position({"n": 1}) == position({"n": 1.0})


def test_sample_rate_must_be_a_fraction() -> None:
    assert "greater than 0" in error_of(SampleOptions, {"rate": 0})
    assert "less than or equal to 1" in error_of(SampleOptions, {"rate": 10})


def test_every_stateless_kind_has_a_runnable_example_in_its_own_module() -> None:
    import yaml

    for kind in ["filter", "parse", "transform", "enrich", "sample"]:
        spec = yaml.safe_load(STEPS[kind].example)
        assert {"name", "source", "steps"} <= set(spec)
        assert any(kind in step for step in spec["steps"]), kind
