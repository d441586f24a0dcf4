"""The size bound on values an expression builds (primitives.sqlgrowth), through check_expression.

Each refused expression below, run by a step over a modest event, would build gigabytes in the
server's process (DuckDB's memory_limit does not bound them). Each accepted one is an expression
agents write, and must stay accepted. The bound is also checked against what DuckDB really builds.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

from primitives.sqlcheck import check_expression, referenced_columns
from primitives.sqlexec import SqlBatch
from primitives.sqlgrowth import MAX_GROWTH, growth_problem

HOSTILE = [
    # quadratic: a replacement, a separator or a lambda's value read from a field
    ("length(replace(message, 'x', message)) > 0", "replace() with a replacement read from a field"),
    ("length(regexp_replace(message, '', message, 'g')) > 0", "regexp_replace() with a replacement read"),
    ("length(concat_ws(message, string_split(message, ''))) > 0", "concat_ws() with a separator read"),
    ("length(array_to_string(string_split(message, ''), message)) > 0", "array_to_string() with a separator"),
    ("len(list_transform(string_split(message, ''), lambda c: message)) > 0",
     "list_transform() builds a value, once per element of the list, from a field other than"),
    ("len(list_transform(tags, lambda t: t || host)) > 0",
     "the || operator builds a value, once per element"),
    ("len(list_filter(string_split(message, ''), lambda c: length(c || message) > 0)) > 0",
     "the || operator builds a value, once per element"),
    # large multipliers of a field
    ("length(repeat(message, 10000)) > 0", "repeat() could build a value that grows to 10,000 times"),
    ("length(replace(message, 'x', repeat('y', 5000))) > 0", "replace() could build a value that grows"),
    ("length(regexp_replace(message, '', repeat('y', 200), 'g')) > 0", "regexp_replace() could build"),
    ("len(list_transform(string_split(message, ''), lambda c: repeat(c, 100))) > 0", "repeat() could build"),
    ("length(repeat(repeat(repeat(message, 10), 10), 10)) > 0", "repeat() could build a value that grows"),
    # literals multiplied into many bytes per event
    ("length(repeat(repeat('abcdefghij', 10000), 100)) > 0", "repeat() could build 180,000 bytes"),
    ("len(list_transform(tags, lambda t: repeat('abcdefgh', 1000))) > 0", "list_transform() could build"),
]

ACCEPTED = [
    "status >= 500 AND path LIKE '/admin%'",
    "lower(trim(user)) = 'root'",
    "repeat('-', 40) || message <> ''",
    "lpad(code, 5, '0') = '00042'",
    "replace(path, '%20', ' ') LIKE '/a b%'",
    "regexp_replace(message, '[0-9]+', 'N', 'g') = 'x'",
    "concat_ws(' ', first, last) = 'a b'",
    "list_contains(list_transform(tags, lambda t: upper(t)), 'PROD')",
    "list_contains(list_transform(string_split(message, ','), lambda x: 'k=' || trim(x)), 'k=a')",
    "len(list_filter(tags, lambda t: t = user)) > 0",
    "length(to_json(struct_pack(a := a, b := b))) > 2",
    "printf('%5d %s', status, path) <> ''",
    "CAST(bytes AS VARCHAR) || ' bytes' <> ''",
    "length(message || message || message) > 1",
    "json_extract_string(payload, '$.user') = 'x'",
    "CASE WHEN status >= 500 THEN 'error' ELSE upper(path) END = 'x'",
]


@pytest.mark.parametrize(("expr", "why"), HOSTILE)
def test_an_expression_that_could_build_gigabytes_is_refused(expr: str, why: str) -> None:
    problems = check_expression(expr, role="predicate")
    assert [p.code for p in problems] == ["sql-size"], expr
    assert problems[0].message.startswith(why), problems[0].message


@pytest.mark.parametrize("expr", ACCEPTED)
def test_the_expressions_agents_write_stay_allowed(expr: str) -> None:
    assert check_expression(expr, role="predicate") == []


def test_measures_that_collect_values_stay_allowed() -> None:
    for expr in ("string_agg(user, ',')", "list(path)", "count(DISTINCT ip)", "max(length(message))"):
        assert check_expression(expr, role="aggregate") == [], expr


def test_the_refusal_points_at_the_call_that_builds_the_value() -> None:
    expr = "status > 1 AND length(repeat(message, 9999)) > 0"
    (problem,) = check_expression(expr, role="predicate")
    assert problem.message.startswith("repeat() could build a value that grows to 9,999 times")
    assert (problem.line, problem.col) == (1, expr.index("repeat(") + 1)


SCALARS = [
    "message || message || message",
    "replace(message, 'a', 'xyz')",
    "regexp_replace(message, '', '-', 'g')",
    "regexp_replace(message, '(.)', '\\1\\1\\1', 'g')",
    "string_split(message, '')",
    "list_transform(string_split(message, ''), lambda c: 'k=' || c)",
    "repeat(message, 7)",
    "to_json(message)",
    "printf('%20s|%s', message, message)",
    "concat_ws('::', message, message)",
]


@pytest.mark.parametrize("expr", SCALARS)
def test_the_bound_holds_for_what_duckdb_really_builds(expr: str) -> None:
    from primitives.sqlcheck import PREFIX, SUFFIX, _expression_of, _serialize
    from primitives.sqlgrowth import _size

    node = _expression_of(_serialize(PREFIX + expr + SUFFIX))
    assert node is not None and growth_problem(node) is None
    bound = _size(node, {}, inside_lambda=False)
    assert bound.growth <= MAX_GROWTH
    messages = ["", "a", "aaaa", "ab,cd", "\x01\x02\"\\", "é" * 50, "a" * 3000, "x,y," * 500]
    result = SqlBatch().query(pa.table({"message": messages}), f"SELECT ({expr}) AS v FROM batch")
    for message, value in zip(messages, result.column("v").to_pylist(), strict=True):
        built = len(str(value).encode())  # its text: at least as large as the value's own bytes
        if isinstance(value, list):
            built = sum(len(str(part).encode()) + 16 for part in value)  # 16: DuckDB's string_t
        assert built <= bound.growth * len(message.encode()) + bound.constant, (expr, message[:20], built)
    assert referenced_columns(expr) == {"message"}
