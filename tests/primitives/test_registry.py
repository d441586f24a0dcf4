"""Compliance of every registered step kind: documented, exemplified, strict about its options."""

from __future__ import annotations

from pathlib import Path

import pytest

from primitives.guide import render_guide
from primitives.registry import STEPS
from primitives.runtime import CodeRunner
from primitives.spec import SpecError, load_spec
from tests.primitives.conftest import run_pipeline

KINDS = sorted(STEPS)


def test_all_nine_kinds_of_the_design_are_registered() -> None:
    assert set(STEPS) == {"filter", "parse", "transform", "enrich", "dedupe", "sample", "aggregate",
                          "derive", "rule"}


@pytest.mark.parametrize("kind", KINDS)
def test_kind_is_documented(kind: str) -> None:
    entry = STEPS[kind]
    assert len(entry.summary) > 20
    assert entry.emits in {"events", "signals", "rows"}
    undocumented = [name for name, f in entry.options.model_fields.items() if not f.description]
    assert not undocumented, f"{kind}: options without a description: {undocumented}"


@pytest.mark.parametrize("kind", KINDS)
def test_example_is_a_valid_pipeline_using_the_kind(kind: str) -> None:
    spec = load_spec(STEPS[kind].example)
    assert kind in {s.kind for s in spec.steps}


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_option_is_rejected_with_its_path(kind: str) -> None:
    text = f"name: x\nsource: s\nsteps:\n  - {kind}: {{no_such_option: 1}}\n"
    with pytest.raises(SpecError) as caught:
        load_spec(text)
    messages = [d.message for d in caught.value.diagnostics]
    assert any(m.startswith(f"steps[0].{kind}") for m in messages), messages


@pytest.mark.parametrize("kind", KINDS)
def test_guide_has_a_section_for_the_kind(kind: str) -> None:
    section = render_guide(kind)
    assert section.startswith(f"## `{kind}`")
    assert STEPS[kind].example.strip().splitlines()[0] in section
    for name in STEPS[kind].options.model_fields:
        assert f"`{STEPS[kind].options.model_fields[name].alias or name}`" in section


def test_unknown_guide_topic_lists_the_topics() -> None:
    with pytest.raises(KeyError, match="topics: spec, steps, sql, python, examples"):
        render_guide("nope")


@pytest.mark.parametrize("kind", KINDS)
def test_example_builds_and_runs_on_an_empty_batch(kind: str, sandbox_runner: CodeRunner) -> None:
    """Every example in the guide is a runnable pipeline: it builds, and an empty batch flows through."""
    spec = load_spec(STEPS[kind].example)
    golden = Path(__file__).resolve().parents[1] / "golden"  # where the enrich example's lookup table lives
    run = run_pipeline(spec, [[]], sandbox_runner, base_dir=str(golden))
    assert run.outputs == [] and run.signals == {} and run.errors == 0


def test_guide_topics() -> None:
    whole = render_guide(language="LANGUAGE-REFERENCE-MARKER")
    assert "LANGUAGE-REFERENCE-MARKER" in whole and "LANGUAGE-REFERENCE-MARKER" in render_guide(
        "python", language="LANGUAGE-REFERENCE-MARKER")
    spec = render_guide("spec")
    assert "## Windows" in spec and "watermark" in spec and "## Signals" in spec and "## Limits" in spec
    assert "`approx_count_distinct`" in render_guide("sql")
    every = render_guide("examples")
    assert all(STEPS[kind].example.strip() in every for kind in KINDS)
    index = render_guide("steps").split("\n## ", 1)[0]  # the list before the first kind's section
    assert [line.split("`")[1] for line in index.splitlines() if line.startswith("- `")] == list(STEPS)
