"""Specs load from YAML or JSON; every error names the path of the bad key and what to write."""

from __future__ import annotations

import json

import pytest
import yaml

from primitives.durations import parse_duration
from primitives.spec import SpecError, code_hash, code_snippets, load_spec

BASE = """\
name: web-errors
source: web
time: ts
steps:
  - filter: "status >= 500"
  - transform: |
      def transform(event):
          event["route"] = event["path"].split("?")[0]
          return event
  - aggregate: {window: 60s, by: [host], measures: {n: "count(*)"}}
"""


def _errors(text: str) -> list[str]:
    with pytest.raises(SpecError) as caught:
        load_spec(text)
    return [d.message for d in caught.value.diagnostics]


def test_valid_spec_loads_with_default_step_ids() -> None:
    spec = load_spec(BASE)
    assert [s.id for s in spec.steps] == ["filter", "transform", "aggregate"]
    assert [s.kind for s in spec.steps] == ["filter", "transform", "aggregate"]
    assert spec.start == "latest"


def test_repeated_kinds_get_numbered_ids() -> None:
    spec = load_spec("name: x\nsource: s\nsteps:\n  - filter: 'a > 1'\n  - filter: 'b > 1'\n")
    assert [s.id for s in spec.steps] == ["filter", "filter_2"]


def test_bad_duration_is_reported_with_its_path() -> None:
    text = BASE.replace("window: 60s", "window: 60x")
    messages = _errors(text)
    assert any(m.startswith("steps[2].aggregate.window") and "'60x' is not a duration; use 60s, 5m, 1h" in m
               for m in messages), messages


def test_unknown_kind_suggests_the_closest() -> None:
    messages = _errors("name: x\nsource: s\nsteps:\n  - filtr: 'a > 1'\n")
    assert messages == [messages[0]]
    assert "steps[0]: unknown step kind 'filtr'; did you mean 'filter'?" in messages[0]


def test_every_problem_is_reported_in_one_round() -> None:
    text = "name: Bad Name\nsource: s\nbogus: 1\nsteps:\n  - filter: 'a >'\n  - {}\n"
    messages = _errors(text)
    assert any(m.startswith("name:") for m in messages)
    assert any(m.startswith("bogus: unknown key") for m in messages)
    assert any(m.startswith("steps[0].filter") for m in messages)
    assert any(m.startswith("steps[1]: a step needs exactly one kind key") for m in messages)


def test_step_needs_exactly_one_kind_and_a_unique_id() -> None:
    text = "name: x\nsource: s\nsteps:\n  - {id: a, filter: 'x > 1'}\n  - {id: a, filter: 'y > 1'}\n"
    assert any("steps[1].id: 'a' is used by an earlier step" in m for m in _errors(text))
    text = "name: x\nsource: s\nsteps:\n  - {filter: 'x > 1', sample: {rate: 0.5}}\n"
    assert any("exactly one kind key" in m for m in _errors(text))


def test_missing_steps_and_empty_or_malformed_documents() -> None:
    assert any(m.startswith("steps: missing") for m in _errors("name: x\nsource: s\n"))
    assert _errors("") == ["the spec is empty; give name, source and steps"]
    with pytest.raises(SpecError) as caught:
        load_spec("name: [unclosed\n")
    assert caught.value.diagnostics[0].code == "spec-syntax" and caught.value.diagnostics[0].line


def test_yaml_aliases_and_huge_documents_are_refused() -> None:
    bomb = 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: [*b,*b]\nname: x\nsource: s\nsteps: [{filter: "1=1"}]\n'
    assert any("aliases" in m for m in _errors(bomb))
    assert any("limit is" in m for m in _errors("#" * (300 * 1024)))


def test_code_hash_is_the_same_for_yaml_and_json_and_changes_with_code() -> None:
    spec = load_spec(BASE)
    as_json = json.dumps(yaml.safe_load(BASE))
    assert code_hash(load_spec(as_json)) == code_hash(spec)
    assert code_hash(load_spec(BASE.replace("\n", "\r\n"))) == code_hash(spec)
    assert code_hash(load_spec(BASE.replace('split("?")', 'split("#")'))) != code_hash(spec)
    assert code_hash(load_spec(BASE.replace("60s", "61s"))) != code_hash(spec)


def test_code_snippets_name_the_step_and_sandbox_kind() -> None:
    snippets = code_snippets(load_spec(BASE))
    assert [(step, kind) for step, kind, _ in snippets] == [("transform", "transform")]
    assert "def transform(event)" in snippets[0][2]


def test_durations() -> None:
    assert parse_duration("1h30m").total_seconds() == 5400
    assert parse_duration("250ms").total_seconds() == 0.25
    with pytest.raises(ValueError, match="'60x' is not a duration; use 60s, 5m, 1h"):
        parse_duration("60x")
