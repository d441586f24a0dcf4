"""`run_query` and the tenant connection: one read-only SELECT over the tenant's own views, nothing else."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from stream.sinks import OutputSink, QueryError, run_query, tenant_connection


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """Tenants `acme` (pipeline web-errors) and `other` (pipeline secret-stuff) with outputs."""
    acme = OutputSink(tmp_path, "acme", grace_s=0, compact_after=None)
    errors = pa.table({"timestamp": ["2024-12-10T00:00:00Z", "2024-12-10T00:00:01Z"], "status": [500, 503],
                       "ctx": [{"ip": "1.2.3.4"}] * 2})
    acme.write_outputs("web-errors", 1, errors, 0, 1)
    acme.write_signals("web-errors", 1, [{"id": "s1", "count": 2, "context": {"ip": "1.2.3.4"}}], 0, 1)
    other = OutputSink(tmp_path, "other", grace_s=0, compact_after=None)
    other.write_outputs("secret-stuff", 1, pa.table({"timestamp": ["2024-12-10T00:00:00Z"],
                                                     "password": ["hunter2"]}), 0, 0)
    return tmp_path


def other_file(data: Path) -> str:
    return str(next((data / "tenants/other/outputs/secret_stuff").rglob("*.parquet")))


def own_file(data: Path) -> str:
    return str(next((data / "tenants/acme/outputs/web_errors").rglob("*.parquet")))


HOSTILE: list[tuple[str, str, str]] = [
    ("SELECT * FROM read_csv('/etc/passwd')", "forbidden_function", "read_csv() is not allowed"),
    ("SELECT * FROM read_text('/etc/passwd')", "forbidden_function", "read_text() is not allowed"),
    ("SELECT * FROM read_blob('/etc/passwd')", "forbidden_function", "read_blob() is not allowed"),
    ("SELECT * FROM read_parquet('{other}')", "forbidden_function", "read_parquet() is not allowed"),
    ("SELECT * FROM read_parquet('{own}')", "forbidden_function", "read_parquet() is not allowed"),
    ("SELECT * FROM glob('/etc/*')", "forbidden_function", "glob() is not allowed"),
    ("SELECT * FROM glob('{data}/tenants/other/**')", "forbidden_function", "glob() is not allowed"),
    ("SELECT * FROM parquet_metadata('{other}')", "forbidden_function", "parquet_metadata() is not allowed"),
    ("SELECT * FROM '/etc/passwd'", "forbidden_table", "no view '/etc/passwd'"),
    ("SELECT * FROM '{other}'", "forbidden_table", "no view"),
    ("SELECT * FROM secret_stuff", "forbidden_table", "no view 'secret_stuff' for this tenant"),
    ("SELECT * FROM other.secret_stuff", "forbidden_table", "no view 'other.secret_stuff'"),
    ("SELECT * FROM query_table('signals')", "forbidden_function", "query_table() is not allowed"),
    ("SELECT * FROM query('SELECT 1')", "forbidden_function", "query() is not allowed"),
    ("SELECT * FROM duckdb_settings()", "forbidden_function", "duckdb_settings() is not allowed"),
    ("SELECT * FROM json_execute_serialized_sql('x')", "forbidden_function", "is not allowed"),
    ("SELECT getenv('HOME')", "forbidden_function", "getenv() is not allowed"),
    ("SELECT current_setting('allowed_directories')", "forbidden_function", "current_setting() is not"),
    ("SELECT * FROM signals WHERE id IN (SELECT column0 FROM read_csv('/etc/passwd'))", "forbidden_function",
     "read_csv()"),
    ("WITH x AS (SELECT * FROM read_text('/etc/shadow')) SELECT * FROM x", "forbidden_function", "read_text"),
    ("COPY (SELECT 1) TO '{data}/copied.csv'", "not_read_only", "this is a COPY statement"),
    ("COPY signals TO '{data}/tenants/acme/copied.csv'", "not_read_only", "COPY"),
    ("ATTACH '{data}/attached.duckdb' AS x", "not_read_only", "ATTACH"),
    ("DETACH memory", "not_read_only", "DETACH"),
    ("INSTALL httpfs", "not_read_only", "LOAD"),
    ("LOAD json", "not_read_only", "LOAD"),
    ("SET enable_external_access = true", "not_read_only", "SET"),
    ("RESET allowed_directories", "not_read_only", "SET"),
    ("SET lock_configuration = false", "not_read_only", "SET"),
    ("PRAGMA version", "not_read_only", "PRAGMA"),
    ("CALL pragma_version()", "not_read_only", "CALL"),
    ("CREATE TABLE t AS SELECT 1", "not_read_only", "CREATE"),
    ("CREATE VIEW signals2 AS SELECT 1", "not_read_only", "CREATE"),
    ("INSERT INTO signals SELECT * FROM signals", "not_read_only", "INSERT"),
    ("UPDATE signals SET count = 0", "not_read_only", "UPDATE"),
    ("DELETE FROM signals", "not_read_only", "DELETE"),
    ("DROP VIEW signals", "not_read_only", "DROP"),
    ("ALTER VIEW signals RENAME TO s", "not_read_only", "ALTER"),
    ("EXPORT DATABASE '{data}/exported'", "not_read_only", "EXPORT"),
    ("IMPORT DATABASE '{data}/exported'", "not_read_only", "PRAGMA"),
    ("VACUUM", "not_read_only", "VACUUM"),
    ("CHECKPOINT", "not_read_only", "CALL"),
    ("USE memory", "not_read_only", "SET"),
    ("PREPARE p AS SELECT 1", "not_read_only", "PREPARE"),
    ("EXECUTE p", "not_read_only", "EXECUTE"),
    ("EXPLAIN SELECT 1", "not_read_only", "EXPLAIN"),
    ("BEGIN TRANSACTION", "not_read_only", "TRANSACTION"),
    ("SELECT 1; DROP VIEW signals", "multiple_statements", "2 statements"),
    ("SELECT 1; SELECT 2", "multiple_statements", "send exactly one SELECT"),
    ("", "empty", "the query is empty"),
    ("-- only a comment", "empty", "no statement"),
    ("SELEC 1", "syntax", "syntax error"),
]


@pytest.mark.parametrize(("sql", "code", "message"), HOSTILE, ids=[h[0][:40] for h in HOSTILE])
def test_hostile_query_is_refused_without_effect(data: Path, sql: str, code: str, message: str) -> None:
    before = sorted(str(p) for p in data.rglob("*"))
    query = sql.format(data=data, other=other_file(data), own=own_file(data))
    with pytest.raises(QueryError) as caught:
        run_query(data, "acme", query)
    assert caught.value.code == code
    assert message in caught.value.message
    assert str(data) not in caught.value.message  # no host paths in what the agent sees
    assert sorted(str(p) for p in data.rglob("*")) == before  # nothing created, nothing removed
    assert run_query(data, "acme", "SELECT count(*) FROM signals").rows == [[1]]


def test_tenant_b_cannot_read_tenant_a_files_even_past_the_statement_gate(data: Path) -> None:
    """The second lock: the connection itself refuses other paths, whatever SQL reaches it."""
    con = tenant_connection(data, "other")
    try:
        sneaky = f"{data}/tenants/other/../acme/outputs/web_errors/*/*.parquet"
        for sql in (f"SELECT * FROM read_parquet('{own_file(data)}')",
                    "SELECT * FROM read_csv('/etc/passwd')", f"SELECT * FROM read_parquet('{sneaky}')",
                    f"SELECT * FROM glob('{data}/tenants/*')", f"COPY (SELECT 1) TO '{data}/x.csv'"):
            with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
                con.execute(sql).fetchall()
        for sql in ("SET enable_external_access = true", "SET allowed_directories = ['/']",
                    "RESET allowed_directories", "SET lock_configuration = false"):
            with pytest.raises(duckdb.InvalidInputException, match="the configuration has been locked"):
                con.execute(sql)
        assert con.execute("SELECT current_setting('enable_external_access')").fetchall() == [(False,)]
        assert con.execute("SELECT password FROM secret_stuff").fetchall() == [("hunter2",)]  # its own view
        with pytest.raises(duckdb.CatalogException):
            con.execute("SELECT * FROM web_errors")
    finally:
        con.close()
    assert not (data / "x.csv").exists()


def test_long_query_is_interrupted_at_the_time_cap(data: Path) -> None:
    started = time.monotonic()
    with pytest.raises(QueryError) as caught:
        run_query(data, "acme", "SELECT count(*) FROM range(1000000) a, range(1000000) b "
                  "WHERE (a.range + b.range) % 1000003 = 7", timeout_s=1.0)
    assert caught.value.code == "timeout"
    assert "ran longer than 1 s and was stopped" in caught.value.message
    assert time.monotonic() - started < 5


def test_row_cap_sets_truncated(data: Path) -> None:
    result = run_query(data, "acme", "SELECT * FROM range(10)", limit=3)
    assert result.rows == [[0], [1], [2]]
    assert result.truncated is True
    exact = run_query(data, "acme", "SELECT * FROM range(3)", limit=3)
    assert exact.truncated is False and len(exact.rows) == 3


def test_select_forms_that_read_only_pass(data: Path) -> None:
    cte = run_query(data, "acme", "WITH e AS (SELECT status, ctx.ip AS ip FROM web_errors) "
                    "SELECT ip, max(status) FROM e GROUP BY ip")
    assert cte.rows == [["1.2.3.4", 503]]
    described = run_query(data, "acme", "DESCRIBE web_errors")
    assert [row[0] for row in described.rows] == ["timestamp", "status", "ctx"]
    assert run_query(data, "acme", "FROM signals SELECT id, context->>'ip'").rows == [["s1", "1.2.3.4"]]
    listed = run_query(data, "acme", "SELECT table_name FROM information_schema.tables ORDER BY 1")
    assert listed.rows == [["dead_letters"], ["signals"], ["web_errors"]]
    unnested = run_query(data, "acme", "SELECT unnest([1, 2]) AS x, * FROM generate_series(1, 1)")
    assert unnested.rows == [[1, 1], [2, 1]]


def test_result_is_json_ready(data: Path) -> None:
    result = run_query(data, "acme", "SELECT TIMESTAMP '2024-12-10 01:02:03' AS t, 1.5::DECIMAL(4,2) AS d, "
                       "'abc'::BLOB AS b, {'k': [1, 2]} AS s, 'nan'::DOUBLE AS n, INTERVAL 90 SECOND AS i")
    assert json.loads(json.dumps(result.to_dict()))["rows"] == [
        ["2024-12-10T01:02:03", "1.50", "YWJj", {"k": [1, 2]}, "nan", 90.0]]


def test_sql_errors_name_the_problem_without_internals(data: Path) -> None:
    with pytest.raises(QueryError) as caught:
        run_query(data, "acme", "SELECT nope FROM web_errors")
    assert caught.value.code == "sql_error"
    assert 'Referenced column "nope" not found' in caught.value.message
    assert str(data) not in caught.value.message


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"limit": 0}, "limit must be an integer from 1"),
    ({"timeout_s": 0}, "timeout_s must be a number in (0, 600]")])
def test_bad_limits_are_refused(data: Path, kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(QueryError, match=re.escape(message)):
        run_query(data, "acme", "SELECT 1", **kwargs)  # type: ignore[arg-type]


def test_tenant_name_cannot_spell_a_path(data: Path) -> None:
    with pytest.raises(ValueError, match=re.escape("tenant name '../other' is invalid")):
        run_query(data, "../other", "SELECT 1")
