"""Whatever text an agent submits, validation answers with diagnostics, never an exception: the
example specs, mangled at random (cut, spliced, sprinkled with YAML syntax, control characters,
code that only Python's compiler refuses), and SQL expressions made of random tokens."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from primitives.sqlcheck import check_expression
from stream.validation import validate_pipeline

ROOT = Path(__file__).resolve().parents[2]
SPECS = [p.read_text() for p in sorted((ROOT / "examples").glob("*.yaml"))]
INSERTS = ["\n", " ", ":", "- ", "{", "[", "'", '"', "&a ", "*a", "!!python/object:os.system ", "\t", "# ",
           "|", "0x", "1e9", "-1", "null", "~", "{gap: 5s}", "\x00", "\x1b", "\ufeff", "\ud800", "steps:",
           "code: |\n  def rule(event):\n    return *event\n", "window: 60x", "- filter: \"(\"\n"]
TOKENS = ["SELECT", "(", ")", "'", '"', "a", "b.c", "1", "1.5", "*", "+", "=", "<>", "AND", "NOT", "count(",
          "sum(", "CASE", "WHEN", "THEN", "END", "CAST(", "AS", "::", "[", "]", "{", "}", ",", ";", "getenv(",
          "read_csv(", "LIKE", "IN", "IS", "NULL", "$1", "?", "--", "/*", "\\", "\x00", "é", "`", "FILTER",
          "(WHERE", "OVER", "x", "->", "||", "COLUMNS(", "EXCLUDE", "lambda"]


def mangle(rng: random.Random, text: str) -> str:
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(text) + 1)
        kind = rng.random()
        if kind < 0.4:
            text = text[:i] + text[i + rng.randint(1, 20):]
        elif kind < 0.8:
            text = text[:i] + rng.choice(INSERTS) + text[i:]
        else:
            j = rng.randrange(len(text) + 1)
            text = text[:i] + text[j:j + rng.randint(1, 30)] + text[i:]
    return text


@pytest.mark.parametrize("seed", range(10))
def test_mangled_specs_get_diagnostics_never_an_exception(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(150):
        text = mangle(rng, rng.choice(SPECS))
        validation = validate_pipeline(text)  # must not raise
        assert validation.valid or (validation.diagnostics and all(d.message for d in validation.diagnostics))


@pytest.mark.parametrize("seed", range(5))
def test_random_sql_gets_diagnostics_never_an_exception(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(300):
        expression = " ".join(rng.choice(TOKENS) for _ in range(rng.randint(1, 12)))
        for problem in check_expression(expression, role=rng.choice(["predicate", "scalar", "aggregate"])):
            assert problem.message


def test_a_lone_surrogate_is_a_diagnostic_with_its_line() -> None:
    # JSON's "\\ud800" escape decodes to one: an agent can send it in a spec over MCP
    (problem,) = validate_pipeline("name: a\nsource: b\nsteps:\n  - filter: \"x\ud800 > 1\"\n").diagnostics
    assert problem.line == 4 and "U+D800" in problem.message


def test_a_control_character_in_the_yaml_is_a_diagnostic_with_its_line() -> None:
    validation = validate_pipeline("name: a\nsource: b\nsteps:\n  - filter: \"x\x00 > 1\"\n")
    (problem,) = validation.diagnostics
    assert problem.line == 4 and "unacceptable character" in problem.message
