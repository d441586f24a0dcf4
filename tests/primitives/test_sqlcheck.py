"""SQL expressions: allowed forms pass; every way out of "one expression over the event" is refused."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from primitives.sqlcheck import (
    AGGREGATE_NAMES,
    OPERATORS,
    PARSER_FORMS,
    SCALAR_NAMES,
    check_expression,
    describe_sql,
    referenced_columns,
)
from primitives.sqlexec import SqlBatch

# (expression, role, diagnostic code, words the message or hint must contain)
HOSTILE: list[tuple[str, str, str, str]] = [
    ("1) AS x FROM batch; DROP TABLE batch; SELECT (1", "predicate", "sql-shape", "';' is not allowed"),
    ("true --", "predicate", "sql-comment", "comments are not allowed"),
    ("true /* cut */", "predicate", "sql-comment", "comments are not allowed"),
    ("1) AS __lb_expr FROM batch UNION ALL SELECT (secret", "scalar", "sql-shape", "not a single expression"),
    ("1) AS __lb_expr FROM read_csv('/etc/passwd') UNION SELECT (1", "scalar", "sql-shape",
     "not a single expression"),
    ("1) AS __lb_expr, (2", "scalar", "sql-shape", "not a single expression"),
    ("(SELECT secret FROM other)", "scalar", "sql-subquery", "subqueries"),
    ("EXISTS (SELECT 1)", "predicate", "sql-subquery", "subqueries"),
    ("status IN (SELECT 500)", "predicate", "sql-subquery", "subqueries"),
    ("status = ANY([500])", "predicate", "sql-subquery", "subqueries"),
    ("read_csv('/etc/passwd') IS NOT NULL", "predicate", "sql-function",
     "read_csv() is not allowed: it reads files"),
    ("length(read_text('/etc/shadow')) > 0", "predicate", "sql-function", "read_text() is not allowed"),
    ("glob('/root/*')", "scalar", "sql-function", "glob() is not allowed"),
    ("getenv('AWS_SECRET_ACCESS_KEY')", "scalar", "sql-function", "getenv() is not allowed"),
    ("current_setting('enable_external_access')", "scalar", "sql-function",
     "current_setting() is not allowed"),
    ("getvariable('x')", "scalar", "sql-function", "reads the environment or settings"),
    ("row_number() OVER (ORDER BY ts)", "scalar", "sql-window", "window functions"),
    ("sum(bytes) OVER ()", "aggregate", "sql-window", "window functions"),
    ("status = $1", "predicate", "sql-parameter", "parameters"),
    ("status = ?", "predicate", "sql-parameter", "parameters"),
    ("now() > ts", "predicate", "sql-function", "not deterministic"),
    ("random() < 0.1", "predicate", "sql-function", "not deterministic"),
    ("query('SELECT 1')", "scalar", "sql-function", "runs SQL"),
    ("main.lower(user)", "scalar", "sql-function", "qualified function names"),
    ("pragma_version()", "scalar", "sql-function", "not allowed in LogBus SQL"),
    ("duckdb_settings()", "scalar", "sql-function", "not allowed in LogBus SQL"),
    ("count(*) > 5", "predicate", "sql-aggregate", "only allowed in aggregate.measures"),
    ("sum(count(*))", "aggregate", "sql-aggregate", "inside another aggregate"),
    ("status", "aggregate", "sql-not-aggregate", "outside an aggregate function"),
    ("1 + 1", "aggregate", "sql-not-aggregate", "must aggregate"),
    ("*", "scalar", "sql-star", "name the fields"),
    ("COLUMNS('pass.*')", "scalar", "sql-star", "name the fields"),
    ("#1", "scalar", "sql-column", "positional"),
    ('"__lb_start"', "scalar", "sql-column", "internal"),
    ("list_filter(tags, t -> t = 'a')", "scalar", "sql-lambda", "lambda x:"),
    ("lower(user", "scalar", "sql-syntax", "left open"),
    ("status >", "predicate", "sql-syntax", "SQL syntax error"),
    ("", "predicate", "sql-empty", "empty"),
    ("a = 1 OR " * 600 + "true", "predicate", "sql-too-long", "limit"),
]


@pytest.mark.parametrize(("expr", "role", "code", "words"), HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_expression_is_refused_with_a_clear_diagnostic(expr: str, role: str, code: str,
                                                                 words: str) -> None:
    problems = check_expression(expr, role=role)
    assert problems, f"accepted: {expr}"
    assert problems[0].code == code, problems
    assert words in problems[0].render(), problems[0].render()


POSITIVE: list[tuple[str, str, set[str]]] = [
    ("status >= 500 AND path LIKE '/admin%'", "predicate", {"status", "path"}),
    ("status BETWEEN 400 AND 499 OR method NOT IN ('GET', 'HEAD')", "predicate", {"status", "method"}),
    ("user IS NULL OR user ILIKE 'adm%'", "predicate", {"user"}),
    ("regexp_matches(message, 'Failed password for (invalid user )?\\S+')", "predicate", {"message"}),
    ("message NOT GLOB '*healthz*' AND message NOT SIMILAR TO 'x.*'", "predicate", {"message"}),
    ("CASE WHEN status >= 500 THEN 'error' WHEN status >= 400 THEN 'client' ELSE 'ok' END", "scalar",
     {"status"}),
    ("TRY_CAST(bytes AS BIGINT) / 1024", "scalar", {"bytes"}),
    ("bytes::DOUBLE * 8", "scalar", {"bytes"}),
    ("date_trunc('minute', CAST(ts AS TIMESTAMP))", "scalar", {"ts"}),
    ("json_extract_string(payload, '$.user.name')", "scalar", {"payload"}),
    ("payload ->> '$.user'", "scalar", {"payload"}),
    ("req.path || '?' || coalesce(req.query, '')", "scalar", {"req"}),
    ('"user-agent" LIKE \'%curl%\'', "predicate", {"user-agent"}),
    ("list_filter(tags, lambda t: t LIKE 'x%')", "scalar", {"tags"}),
    ("x = '--not a comment; nor a statement'", "predicate", {"x"}),
    ("count(*)", "aggregate", set()),
    ("count(DISTINCT src_ip)", "aggregate", {"src_ip"}),
    ("sum(bytes) FILTER (WHERE status >= 500)", "aggregate", {"bytes", "status"}),
    ("quantile_cont(duration_ms, 0.95)", "aggregate", {"duration_ms"}),
    ("string_agg(user, ',' ORDER BY ts)", "aggregate", {"user", "ts"}),
    ("max(bytes) - min(bytes)", "aggregate", {"bytes"}),
    ("arg_max(path, bytes)", "aggregate", {"path", "bytes"}),
    ("approx_count_distinct(src_ip) > 10", "aggregate", {"src_ip"}),
]


@pytest.mark.parametrize(("expr", "role", "columns"), POSITIVE, ids=[p[0][:40] for p in POSITIVE])
def test_allowed_expression_passes_and_names_its_columns(expr: str, role: str, columns: set[str]) -> None:
    assert check_expression(expr, role=role) == []
    assert referenced_columns(expr) == columns


def test_diagnostic_points_at_the_offending_line_and_column() -> None:
    problems = check_expression("status >= 500\n  AND getenv('HOME') = 'x'", role="predicate")
    assert (problems[0].line, problems[0].col) == (2, 7)


def test_unknown_function_suggests_the_closest_allowed_one() -> None:
    problems = check_expression("lowr(user) = 'x'", role="predicate")
    assert problems[0].hint is not None and "did you mean lower()?" in problems[0].hint


def test_unknown_role_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="roles: predicate, scalar, aggregate"):
        check_expression("true", role="where")


def test_every_allowlisted_function_exists_in_duckdb_with_the_right_type() -> None:
    con = duckdb.connect()
    kinds: dict[str, set[str]] = {}
    for name, kind in con.sql("SELECT function_name, function_type FROM duckdb_functions()").fetchall():
        kinds.setdefault(name, set()).add(kind)
    scalar = {"scalar", "macro"}
    assert sorted(n for n in SCALAR_NAMES - PARSER_FORMS if not kinds.get(n, set()) & scalar) == []
    assert sorted(n for n in AGGREGATE_NAMES if "aggregate" not in kinds.get(n, set())) == []
    assert sorted(n for n in OPERATORS if n not in kinds) == []


def test_allowed_expressions_run_on_the_locked_connection() -> None:
    """What the check allows, the locked-down executor can run (JSON, lambdas, regexes are built in)."""
    table = pa.table({"payload": ['{"user": {"name": "ann"}}', None], "tags": [["xa", "b"], None],
                      "message": ["Failed password for root", "ok"]})
    sql = SqlBatch()
    out = sql.select(table, {"name": "payload ->> '$.user.name'",
                             "x": "list_filter(tags, lambda t: t LIKE 'x%')",
                             "failed": "regexp_matches(message, 'Failed password')"}, keep_rest=False)
    assert out.to_pylist() == [{"name": "ann", "x": ["xa"], "failed": True},
                               {"name": None, "x": None, "failed": False}]


def test_sql_guide_lists_the_functions_and_the_rules() -> None:
    text = describe_sql()
    assert "`regexp_matches`" in text and "`approx_count_distinct`" in text
    assert "window functions" in text and "subqueries" in text


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT getenv('HOME')",
    "SET enable_external_access = true",
    "INSTALL httpfs",
])
def test_the_step_connection_is_locked_even_for_unchecked_sql(sql: str) -> None:
    """Second layer: if an expression slipped past the check, the connection itself refuses."""
    from primitives.sqlexec import SqlError

    with pytest.raises(SqlError):
        SqlBatch().query(pa.table({"a": [1]}), sql)


def test_odd_field_names_are_quoted_and_missing_fields_read_as_null() -> None:
    expr = '"we""ird name" > 1 OR missing IS NOT NULL'
    assert check_expression(expr, role="predicate") == []
    assert referenced_columns(expr) == {'we"ird name', "missing"}
    table = pa.table({'we"ird name': [0, 2, None]})
    assert SqlBatch().filter(table, expr).column(0).to_pylist() == [2]
