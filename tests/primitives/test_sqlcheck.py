"""SQL expressions: allowed forms pass; every way out of "one expression over the event" is refused."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from primitives.sqlcheck import (
    AGGREGATE_NAMES,
    ALLOWED_AGGREGATE_FUNCTIONS,
    ALLOWED_SCALAR_FUNCTIONS,
    DENIED,
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
    ("1) AS x FROM batch; DROP TABLE batch; SELECT (1", "predicate", "sql-statement", "';' is not allowed"),
    ("true --", "predicate", "sql-comment", "comments are not allowed"),
    ("true /* cut */", "predicate", "sql-comment", "comments are not allowed"),
    ("1) AS __lb_expr FROM batch UNION ALL SELECT (secret", "scalar", "sql-statement",
     "not a single expression"),
    ("1) AS __lb_expr FROM read_csv('/etc/passwd') UNION SELECT (1", "scalar", "sql-statement",
     "not a single expression"),
    ("1) AS __lb_expr, (2", "scalar", "sql-statement", "not a single expression"),
    ("(SELECT secret FROM other)", "scalar", "sql-subquery", "subqueries"),
    ("EXISTS (SELECT 1)", "predicate", "sql-subquery", "subqueries"),
    ("status IN (SELECT 500)", "predicate", "sql-subquery", "subqueries"),
    ("status = ANY([500])", "predicate", "sql-subquery", "subqueries"),
    ("read_csv('/etc/passwd') IS NOT NULL", "predicate", "sql-function-not-allowed",
     "read_csv() is not allowed: it reads files"),
    ("length(read_text('/etc/shadow')) > 0", "predicate", "sql-function-not-allowed",
     "read_text() is not allowed"),
    ("glob('/root/*')", "scalar", "sql-function-not-allowed", "glob() is not allowed"),
    ("getenv('AWS_SECRET_ACCESS_KEY')", "scalar", "sql-function-not-allowed", "getenv() is not allowed"),
    ("current_setting('enable_external_access')", "scalar", "sql-function-not-allowed",
     "current_setting() is not allowed"),
    ("getvariable('x')", "scalar", "sql-function-not-allowed", "reads the environment or settings"),
    ("row_number() OVER (ORDER BY ts)", "scalar", "sql-window", "window functions"),
    ("sum(bytes) OVER ()", "aggregate", "sql-window", "window functions"),
    ("status = $1", "predicate", "sql-parameter", "parameters"),
    ("status = ?", "predicate", "sql-parameter", "parameters"),
    ("now() > ts", "predicate", "sql-function-not-allowed", "not deterministic"),
    ("random() < 0.1", "predicate", "sql-function-not-allowed", "not deterministic"),
    ("query('SELECT 1')", "scalar", "sql-function-not-allowed", "runs SQL"),
    ("main.lower(user)", "scalar", "sql-function-not-allowed", "qualified function names"),
    ("pragma_version()", "scalar", "sql-function-not-allowed", "not allowed in LogBus SQL"),
    ("duckdb_settings()", "scalar", "sql-function-not-allowed", "not allowed in LogBus SQL"),
    ("count(*) > 5", "predicate", "sql-aggregate-not-allowed", "only allowed in aggregate.measures"),
    ("sum(count(*))", "aggregate", "sql-aggregate-not-allowed", "inside another aggregate"),
    ("status", "aggregate", "sql-aggregate-required", "outside an aggregate function"),
    ("1 + 1", "aggregate", "sql-aggregate-required", "must aggregate"),
    ("*", "scalar", "sql-star", "name the fields"),
    ("COLUMNS('pass.*')", "scalar", "sql-star", "name the fields"),
    ("#1", "scalar", "sql-column", "positional"),
    ('"__lb_start"', "scalar", "sql-column", "internal"),
    ("list_filter(tags, t -> t = 'a')", "scalar", "sql-lambda", "lambda x:"),
    ("lower(user", "scalar", "sql-syntax", "left open"),
    ("status >", "predicate", "sql-syntax", "SQL syntax error"),
    ("", "predicate", "sql-empty", "empty"),
    ("a = 1 OR " * 600 + "true", "predicate", "sql-too-long", "limit"),
    # the brief's list, as an agent (or an injected log line) would write them
    ("(SELECT 1) = 1", "predicate", "sql-subquery", "subqueries"),
    ("getenv('HOME') = 'x'", "predicate", "sql-function-not-allowed", "getenv() is not allowed"),
    ("current_setting('threads') = 1", "predicate", "sql-function-not-allowed", "reads the environment"),
    ("1); DROP TABLE x; SELECT (1", "predicate", "sql-statement", "';' is not allowed"),
    ("1) FROM batch; INSTALL httpfs; SELECT (1", "predicate", "sql-statement", "';' is not allowed"),
    ("1 /* */) FROM read_csv('x') --", "scalar", "sql-comment", "comments are not allowed"),
    ("x IN (SELECT a FROM t)", "predicate", "sql-subquery", "subqueries"),
    ("row_number() OVER () > 1", "predicate", "sql-window", "window functions"),
    ("glob('*') IS NULL", "predicate", "sql-function-not-allowed", "glob() is not allowed: it reads files"),
    ("read_text('x')", "scalar", "sql-function-not-allowed", "read_text() is not allowed: it reads files"),
    ("COLUMNS('.*') = 1", "predicate", "sql-star", "name the fields"),
    ("* = 1", "predicate", "sql-star", "name the fields"),
    ("count(COLUMNS('pass.*'))", "aggregate", "sql-star", "name the fields"),
    ("load_extension('httpfs') IS NULL", "predicate", "sql-function-not-allowed", "load_extension()"),
    ("query_table('secrets') IS NULL", "predicate", "sql-function-not-allowed", "runs SQL"),
    ("sql_auto_complete('SEL') IS NULL", "predicate", "sql-function-not-allowed", "sql_auto_complete()"),
    ("unnest(tags)", "scalar", "sql-function-not-allowed", "makes rows"),
    ("current_date", "scalar", "sql-function-not-allowed", "reads the clock"),
    ("ts > CURRENT_TIMESTAMP - INTERVAL 1 HOUR", "predicate", "sql-function-not-allowed", "reads the clock"),
    ("current_user = 'root'", "predicate", "sql-function-not-allowed", "reads the session"),
    ("batch.secret = 1", "predicate", "sql-column", "names the table"),
    ("main.batch.secret = 1", "predicate", "sql-column", "names the table"),
    ("x::evil.t", "scalar", "sql-cast", "cast to evil.t"),
    ("sum(x) FILTER (WHERE sum(y) > 1)", "aggregate", "sql-aggregate-not-allowed", "inside another"),
    ("lower(x ORDER BY y)", "scalar", "sql-function-not-allowed", "only apply to aggregate"),
    ("x <=> y", "predicate", "sql-operator", "'<=>' is not allowed"),
    # unicode tricks: homoglyphs and width variants are other names, so the allowlist refuses them;
    # invisible characters are refused outright, so what a reviewer reads is what runs
    ("r\u0435ad_csv('/etc/passwd')", "scalar", "sql-function-not-allowed", "not allowed"),
    ("\uff52\uff45\uff41\uff44_csv('/etc/passwd')", "scalar", "sql-function-not-allowed", "not allowed"),
    ("\u212aurtosis(x)", "aggregate", "sql-function-not-allowed", "plain ASCII"),
    ("x = 1\u037e DROP TABLE x", "predicate", "sql-syntax", "SQL syntax error"),
    ("status = 1 \u202e-- hidden", "predicate", "sql-syntax", "RIGHT-TO-LEFT OVERRIDE"),
    ("user\u200b = 'root'", "predicate", "sql-syntax", "ZERO WIDTH SPACE"),
    ("a\x00b = 1", "predicate", "sql-syntax", "U+0000"),
    ("x" * 100_000, "scalar", "sql-too-long", "the limit is 4,096"),
    # a short expression over a one-byte field that asks DuckDB for gigabytes (memory_limit does
    # not bound the strings an expression builds), or lets the event choose the size
    ("length(repeat(host, 2000000000)) > 0", "predicate", "sql-size", "from 0 to 10,000"),
    ("repeat(x, n)", "scalar", "sql-size", "written in the expression"),
    ("lpad(code, 1000000000, '0')", "scalar", "sql-size", "argument 2"),
    ("rpad(code, CAST('9' || '99999999' AS INT), ' ')", "scalar", "sql-size", "from 0 to 10,000"),
    ("printf('%999999999d', 1)", "scalar", "sql-size", "too large"),
    ("printf('%*d', width, 1)", "scalar", "sql-size", "takes one from an argument"),
    ("format('{:>{}}', x, width)", "scalar", "sql-size", "takes one from an argument"),
    ("printf(message, 1)", "scalar", "sql-size", "literal string"),
]


@pytest.mark.parametrize(("expr", "role", "code", "words"), HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_expression_is_refused_with_a_clear_diagnostic(expr: str, role: str, code: str,
                                                                 words: str) -> None:
    problems = check_expression(expr, role=role)
    assert problems, f"accepted: {expr}"
    assert problems[0].code == code, problems
    assert words in problems[0].render(), problems[0].render()


def test_sized_functions_with_small_literal_sizes_are_allowed_and_run() -> None:
    exprs = {"p": "lpad(code, 5, '0')", "r": "repeat('-', 3)", "f": "printf('%05d|%-4s|', n, code)",
             "g": "format('{:>6}', code)", "l": "repeat([1, 2], 2)"}
    for expr in exprs.values():
        assert check_expression(expr, role="scalar") == [], expr
    out = SqlBatch().select(pa.table({"code": ["7"], "n": [42]}), exprs, keep_rest=False)
    assert out.to_pylist() == [{"p": "00007", "r": "---", "f": "00042|7   |", "g": "     7",
                                "l": [1, 2, 1, 2]}]


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
    ("status >= 400 AND path LIKE '/admin%'", "predicate", {"status", "path"}),
    ("regexp_matches(ua, '(?i)bot')", "predicate", {"ua"}),
    ("CAST(bytes AS BIGINT) > 1000", "predicate", {"bytes"}),
    ("json_extract_string(payload, '$.user') = 'x'", "predicate", {"payload"}),
    ("path LIKE '/a!%%' ESCAPE '!' OR path NOT ILIKE '%x' ESCAPE '!'", "predicate", {"path"}),
    ("amount::DECIMAL(10, 2) + CAST(tags[1] AS DOUBLE) + len(ids::INT[])", "scalar",
     {"amount", "tags", "ids"}),
    ('"current_date" = user', "predicate", {"current_date", "user"}),
    ("{'ip': src_ip, 'n': [1, 2]}", "scalar", {"src_ip"}),
    ("count(*) FILTER (WHERE status >= 500)", "aggregate", {"status"}),
    ("count(DISTINCT ip)", "aggregate", {"ip"}),
    ("quantile_cont(latency, 0.99)", "aggregate", {"latency"}),
    ("CASE WHEN count(*) > 0 THEN sum(bytes) / count(*) END", "aggregate", {"bytes"}),
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


@pytest.mark.parametrize(("expr", "columns"), [
    ('"my field" = 1 AND "we said ""hi""" IS NULL', {"my field", 'we said "hi"'}),
    ("lower = 'x' OR length(lower) > 2 OR \"count\" > 1", {"lower", "count"}),
    ("msg = 'status AND path OR lower(user)'", {"msg"}),
    ("coalesce(a.b.c, d['e'], CASE WHEN f THEN g ELSE h[1] END) IN (i, 2)", {"a", "d", "f", "g", "h", "i"}),
    ("list_filter(tags, lambda t: t = owner)", {"tags", "owner"}),
    ("sum(bytes) FILTER (WHERE status >= 500) / count(DISTINCT host)", {"bytes", "status", "host"}),
    ("lower(user", set()),  # does not parse: nothing to project
])
def test_referenced_columns_are_the_fields_read_not_functions_literals_or_lambda_parameters(
        expr: str, columns: set[str]) -> None:
    assert referenced_columns(expr) == columns


def test_public_allowlists_are_frozen_disjoint_from_the_denylist_and_split_by_role() -> None:
    assert isinstance(ALLOWED_SCALAR_FUNCTIONS, frozenset)
    assert isinstance(ALLOWED_AGGREGATE_FUNCTIONS, frozenset)
    assert {"lower", "regexp_matches", "json_extract_string", "date_trunc"} <= ALLOWED_SCALAR_FUNCTIONS
    assert {"count", "sum", "quantile_cont", "approx_count_distinct"} <= ALLOWED_AGGREGATE_FUNCTIONS
    assert not (ALLOWED_SCALAR_FUNCTIONS | ALLOWED_AGGREGATE_FUNCTIONS) & set(DENIED)
    assert not ALLOWED_SCALAR_FUNCTIONS & ALLOWED_AGGREGATE_FUNCTIONS


def test_results_are_cached_and_callers_cannot_corrupt_the_cache() -> None:
    first = check_expression("now() > ts", role="predicate")
    first.clear()
    again = check_expression("now() > ts", role="predicate")
    assert [p.code for p in again] == ["sql-function-not-allowed"]
    columns = referenced_columns("a + b")
    columns.add("c")
    assert referenced_columns("a + b") == {"a", "b"}


def test_aggregate_in_a_predicate_says_where_aggregates_belong() -> None:
    problem = check_expression("count(*) > 5", role="predicate")[0]
    assert problem.code == "sql-aggregate-not-allowed"
    assert "count(*)" in problem.message and "aggregate.measures" in problem.message


def test_measure_without_an_aggregate_asks_to_wrap_the_field() -> None:
    problem = check_expression("bytes", role="aggregate")[0]
    assert problem.code == "sql-aggregate-required"
    assert problem.hint is not None and 'max("bytes")' in problem.hint and "`by`" in problem.hint


def test_syntax_error_position_is_inside_the_agents_expression() -> None:
    problem = check_expression("status >= 500 AND AND path = 'x'", role="predicate")[0]
    assert problem.code == "sql-syntax"
    assert (problem.line, problem.col) == (1, 19)
    assert "__lb_expr" not in problem.render() and "FROM batch" not in problem.render()


def test_the_guides_examples_pass_the_check() -> None:
    import yaml

    text = describe_sql()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    steps = yaml.safe_load(block)
    (flt,), (tfm,), (agg,) = (step.values() for step in steps)
    assert check_expression(flt, role="predicate") == []
    assert all(check_expression(e, role="scalar") == [] for e in tfm["set"].values())
    assert all(check_expression(e, role="aggregate") == [] for e in agg["measures"].values())
