"""``fruits query`` over Spark SQL runs reads of the three views and nothing else: a write, a
command, a path or a JVM call is refused before anything runs."""

from __future__ import annotations

import pytest

from fruits.config import Settings
from fruits.query.result import ReadOnlyError
from fruits.query.sql import sql
from fruits.spark import tables as table
from helpers import append_rows, synthetic_features

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def tables(spark, tmp_path_factory) -> Settings:
    settings = Settings(table_root=str(tmp_path_factory.mktemp("read-only") / "tables"))
    table.ensure_tables(spark, settings)
    append_rows(spark, settings.features_table, synthetic_features(20, seed=1))
    return settings


READS = [
    "SELECT label, count(*) AS n FROM features GROUP BY label HAVING count(*) > 1 ORDER BY n DESC LIMIT 3",
    "WITH recent AS (SELECT key, label FROM features) SELECT r.label FROM recent r JOIN features f ON r.key = f.key",
    "SELECT key, row_number() OVER (PARTITION BY label ORDER BY key) AS i FROM features",
    "SELECT key FROM features WHERE key IN (SELECT key FROM quarantine) UNION ALL SELECT key FROM features",
    "SELECT DISTINCT label FROM features f LATERAL VIEW explode(slice(features, 1, 2)) t AS x",
    "SELECT * FROM VALUES (1, 'a') AS t(n, s)",
    "SELECT count(*) FROM pca_models",
    "SELECT key, pca_version FROM features_pca",
    "select KEY from FEATURES",
]


@pytest.mark.parametrize("statement", READS)
def test_reads_run(spark, tables: Settings, statement: str) -> None:
    assert sql(spark, tables, statement).columns


REFUSED = [
    ("DELETE FROM delta.`{features}`", "DELETE"),
    ("DELETE FROM features", "DELETE"),
    ("INSERT INTO features SELECT * FROM features", "INSERT"),
    ("UPDATE features SET label = 'x'", "UPDATE"),
    ("MERGE INTO features t USING features s ON t.key = s.key WHEN MATCHED THEN DELETE", "MERGE"),
    ("WITH x AS (SELECT 1) INSERT INTO features SELECT * FROM x", "INSERT"),
    ("ADD JAR /tmp/evil.jar", "ADD JAR"),
    ("SET spark.sql.ansi.enabled = false", "SET"),
    ("CREATE TABLE t AS SELECT * FROM features", "CREATE TABLE"),
    ("DROP VIEW features", "DROP VIEW"),
    ("CACHE TABLE features", "CACHE TABLE"),
    ("SELECT * FROM delta.`{features}`", "delta."),
    ("SELECT * FROM text.`/etc/hostname`", "text."),
    ("SELECT * FROM features WHERE key IN (SELECT value FROM text.`/etc/hostname`)", "text."),
    ("SELECT * FROM read_files('/etc/hostname')", "table function"),
    ("SELECT reflect('java.lang.System', 'getenv', 'HOME')", "reflect"),
    ("SELECT key FROM features WHERE key = java_method('java.lang.System', 'getenv', 'HOME')", "java_method"),
    ("SELECT IDENTIFIER('refl' || 'ect')('java.lang.System', 'getenv', 'HOME')", "IDENTIFIER"),
    (
        "SELECT count(*) OVER w FROM features WINDOW w AS (PARTITION BY reflect('java.lang.System', 'getenv', 'HOME'))",
        "WithWindowDefinition",
    ),
    ("SELECT * FROM features; DELETE FROM features", "not valid SQL"),
]


@pytest.mark.parametrize(("statement", "named"), REFUSED)
def test_anything_but_a_read_is_refused_and_nothing_runs(spark, tables: Settings, statement: str, named: str) -> None:
    with pytest.raises(ReadOnlyError, match=named.replace(".", r"\.")):
        sql(spark, tables, statement.format(features=tables.features_table))
    assert sql(spark, tables, "SELECT count(*) FROM features").rows == [(20,)]
    assert not spark.catalog.tableExists("t")


def test_variables_are_not_substituted(spark, tables: Settings) -> None:
    """``${env:...}`` and ``${spark...}`` would hand a query the process's environment and settings
    (the S3 secret among them)."""
    statement = "SELECT '${env:HOME}' AS a, '${spark.app.name}' AS b"
    assert sql(spark, tables, statement).rows == [("${env:HOME}", "${spark.app.name}")]


def test_deeply_nested_subqueries_are_checked_in_linear_time(spark, tables: Settings) -> None:
    statement = "SELECT key FROM features"
    for _ in range(30):
        statement = f"SELECT key FROM features WHERE key IN ({statement})"
    assert sql(spark, tables, statement).columns == ["key"]
    head, _, tail = statement.rpartition("SELECT key FROM features")  # the innermost
    with pytest.raises(ReadOnlyError, match="text"):
        sql(spark, tables, f"{head}SELECT value AS key FROM text.`/etc/hostname`{tail}")


def test_the_cli_says_why_and_exits_2(tables: Settings, capsys) -> None:
    from fruits.cli import main

    with pytest.raises(SystemExit) as done:
        main(["query", "--table-root", tables.table_root, f"DELETE FROM delta.`{tables.features_table}`"])
    assert done.value.code == 2
    assert "reads only: DELETE is not allowed" in capsys.readouterr().err
