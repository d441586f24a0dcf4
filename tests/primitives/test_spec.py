"""Specs load from YAML or JSON; every error names the path of the bad key and what to write."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from primitives.durations import format_duration, parse_duration
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


def test_an_unknown_key_names_the_keys_allowed_where_it_stands() -> None:
    # an agent that invents `key:` on derive, or misspells a top-level or a nested sink key,
    # learns in one round what it may write there, and the nearest key where one is close
    messages = _errors("name: x\nsource: s\nsinkz: []\nsteps:\n  - derive: {when: 'n > 1', key: [host]}\n"
                       "sinks: [{parquet: {partiton_by: hour}}]\n")
    assert messages == [
        "sinkz: unknown key; did you mean 'sinks'? allowed here: name, description, source, time, start, "
        "steps, sinks, alerts",
        "steps[0].derive.key: unknown key; allowed here: when, code, title, dedup, severity, suppress, "
        "context",
        "sinks[0].parquet.partiton_by: unknown key; did you mean 'partition_by'? allowed here: partition_by",
    ]


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


def _diagnostics(text: str) -> list[Any]:
    with pytest.raises(SpecError) as caught:
        load_spec(text)
    return list(caught.value.diagnostics)


def test_yaml_diagnostics_carry_the_line_of_the_bad_key() -> None:
    text = BASE.replace("window: 60s", "window: 60x") + "start: now\n"
    by_path = {d.message.split(":", 1)[0]: d.line for d in _diagnostics(text)}
    assert [line for path, line in by_path.items() if path.startswith("steps[2].aggregate.window")] == [10]
    assert by_path["start"] == 11


def test_sql_errors_have_their_own_code_path_and_hint() -> None:
    text = ("name: x\nsource: s\nsteps:\n  - filter: \"status >= 500 --\"\n"
            "  - aggregate: {window: 1m, measures: {n: \"cnt(*)\"}}\n"
            "  - transform: {set: {home: \"getenv('HOME')\"}}\n"
            "  - derive:\n      title: t\n      when: |\n        n > 5\n        AND now() > ts\n")
    found = {d.message.split(":", 1)[0]: d for d in _diagnostics(text)}
    assert {path: d.code for path, d in found.items()} == {
        "steps[0].filter": "sql-invalid", "steps[1].aggregate.measures.n": "sql-invalid",
        "steps[2].transform.set.home": "sql-invalid", "steps[3].derive.when": "sql-invalid"}
    assert "comments are not allowed" in found["steps[0].filter"].message
    assert found["steps[1].aggregate.measures.n"].hint.startswith("did you mean count()?")
    assert "getenv() is not allowed" in found["steps[2].transform.set.home"].message
    # the second line of the block scalar, i.e. line 11 of the file
    assert "now() is not allowed" in found["steps[3].derive.when"].message
    assert found["steps[3].derive.when"].line == 11


def test_a_sql_error_is_reported_once() -> None:
    messages = _errors("name: x\nsource: s\nsteps:\n  - filter: 'read_csv(1)'\n")
    assert len(messages) == 1 and messages[0].startswith("steps[0].filter: function read_csv()")


def test_alert_and_sink_destinations_need_exactly_one_valid_kind() -> None:
    base = "name: x\nsource: s\nsteps: [{filter: 'a > 1'}]\n"
    spec = load_spec(base + "alerts:\n  - webhook: {url: 'https://h.example/x', format: slack}\n"
                     "  - file: alerts.jsonl\n  - stdout:\nsinks: [{parquet: {}}]\n")
    assert spec.alerts[0].webhook is not None and spec.alerts[0].webhook.format == "slack"
    assert spec.alerts[1].file == "alerts.jsonl" and spec.alerts[2].stdout is not None
    assert spec.sinks[0].parquet is not None and spec.sinks[0].parquet.partition_by == "date"
    messages = _errors(base + "alerts:\n  - {}\n  - {file: a, stdout: {}}\n  - webhook: {url: 'file:///etc/x'}\n"
                       "  - email: a@b\n")
    assert messages[0].startswith("alerts[0]: an alert destination has exactly one of webhook, file, stdout")
    assert messages[1].startswith("alerts[1]: an alert destination has exactly one of")
    assert messages[2].startswith("alerts[2].webhook.url: 'file:///etc/x' is not an http(s) URL")
    assert messages[3].startswith("alerts[3].email: unknown key")


def test_names_ids_and_start_are_validated() -> None:
    messages = _errors("name: -bad\nsource: 'a b'\nstart: now\nsteps:\n  - {id: Bad!, filter: 'a > 1'}\n")
    assert [m.split(":", 1)[0] for m in messages] == ["name", "source", "start", "steps[0].id"]
    assert "is not a valid id" in messages[3]


def test_json_spec_and_yaml_flow_mapping_both_load() -> None:
    flow = "{name: x, source: s, steps: [{filter: 'a > 1'}]}"
    assert load_spec(flow).name == "x"
    with pytest.raises(SpecError) as caught:
        load_spec('{"name": "x",', filename="p.json")
    first = caught.value.diagnostics[0]
    assert first.code == "spec-syntax" and "invalid JSON" in first.message


def test_code_hash_is_about_meaning_not_spelling() -> None:
    """60s and 1m, shorthand and long forms, key order: one pipeline, one hash; any real change shows."""
    spec = load_spec(BASE)
    respelled = BASE.replace("window: 60s", "window: 1m").replace('- filter: "status >= 500"',
                                                                  '- filter: {expr: "status >= 500"}')
    assert code_hash(load_spec(respelled)) == code_hash(spec)
    assert code_hash(load_spec(BASE.replace("by: [host]", "by: [host, path]"))) != code_hash(spec)
    assert code_hash(load_spec(BASE.replace("status >= 500", "status >= 501"))) != code_hash(spec)
    assert code_hash(load_spec(BASE.replace("source: web", "source: web2"))) != code_hash(spec)
    assert code_hash(load_spec(BASE + "start: earliest\n")) != code_hash(spec)


def test_duration_spellings_and_refusals() -> None:
    assert parse_duration(90).total_seconds() == 90 and parse_duration("1.5s").total_seconds() == 1.5
    assert format_duration(parse_duration("90s")) == "1m30s" and format_duration(parse_duration("0s")) == "0s"
    for bad in ("", "-5s", "1y", "5 m", True, None, float("nan"), "10000d", [1]):
        with pytest.raises(ValueError, match="is not a duration; use 60s, 5m, 1h"):
            parse_duration(bad)
