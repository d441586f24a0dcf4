"""The shared locked-down DuckDB database (primitives.duck) and what runs on it (sqlexec).

Every SQL step of every pipeline in a process has a connection of its own to one database. What
must hold: connections do not see each other's batches, queries on different threads run side by
side with their own results, the configuration is locked for every connection, and only single
SELECT queries reach the database, so nothing one pipeline runs changes what another sees."""

from __future__ import annotations

import threading

import pyarrow as pa
import pytest

from primitives.duck import locked_connection
from primitives.sqlexec import SqlBatch, SqlError


def test_a_connection_does_not_see_another_ones_batch() -> None:
    first, second = locked_connection(), locked_connection()
    first.register("batch", pa.table({"secret": ["tenant-a"]}))
    with pytest.raises(Exception, match="batch"):
        second.sql("SELECT * FROM batch").fetchall()


def test_steps_on_many_threads_each_get_their_own_rows() -> None:
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def run(worker: int) -> None:
        try:
            sql = SqlBatch()
            got = []
            for round_ in range(30):
                table = pa.table({"n": list(range(worker * 1000 + round_, worker * 1000 + round_ + 50))})
                got.append(sql.query(table, "SELECT sum(n) AS s FROM batch").column("s")[0].as_py())
            results[worker] = got
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for worker, sums in results.items():
        assert sums == [sum(range(worker * 1000 + r, worker * 1000 + r + 50)) for r in range(30)]


@pytest.mark.parametrize("sql", [
    "SET enable_external_access = true",
    "SET lock_configuration = false",
    "SELECT * FROM read_csv('/etc/passwd')",
    "INSTALL httpfs",
    "LOAD httpfs",
])
def test_the_configuration_is_locked_for_every_connection(sql: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - DuckDB raises a different class per refusal
        locked_connection().execute(sql)


@pytest.mark.parametrize("sql", [
    "CREATE MACRO lower(x) AS 'pwned'",
    "CREATE TABLE shared AS SELECT 1 AS a",
    "SELECT 1; CREATE MACRO upper(x) AS 'pwned'",
    "CREATE SEQUENCE s",
    "PRAGMA version",
    "CALL pragma_version()",
    "ATTACH ':memory:' AS other",
    "SELECT 1 FROM batch; DROP VIEW batch",
])
def test_only_a_single_select_runs_so_no_pipeline_changes_what_others_see(sql: str) -> None:
    step = SqlBatch()
    for _ in range(2):  # refused again: a step remembers only the texts it found to be one SELECT
        with pytest.raises(SqlError):
            step.query(pa.table({"a": [1]}), sql)
    assert step.query(pa.table({"a": [1]}), "SELECT a + 1 AS b FROM batch").to_pylist() == [{"b": 2}]
    # the builtins and the catalog are as they were, for every connection
    probe = SqlBatch().query(pa.table({"t": ["AbC"]}), "SELECT lower(t) AS l, upper(t) AS u FROM batch")
    assert probe.to_pylist() == [{"l": "abc", "u": "ABC"}]
    assert locked_connection().sql(
        "SELECT count(*) FROM duckdb_tables() WHERE NOT temporary").fetchall() == [(0,)]
    macros = "SELECT count(*) FROM duckdb_functions() WHERE function_type = 'macro' AND NOT internal"
    assert locked_connection().sql(macros).fetchall() == [(0,)]
