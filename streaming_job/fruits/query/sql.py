"""Stage 5: query the tables with Spark SQL, reads only.

The tables are registered as the views ``features``, ``quarantine`` and ``pca_models``, and
``features_pca`` is ``features`` with every row's ``pca_features`` projected onto one PCA version. A
statement runs only if it is a query over those views: it is parsed first (``read_only``) and
refused, before anything runs, if any part of it is not a read (``DELETE``, ``INSERT``, ``ADD JAR``,
``SET``, ``CREATE``, ``CACHE``...), reads anything but these views (a path such as
``parquet.`/etc` `` or ``delta.`s3a://...` ``, a table function such as ``read_files``), or calls a
JVM method (``reflect``, ``java_method``, also behind ``IDENTIFIER(...)``). Variable substitution
(``${env:...}``, ``${spark.hadoop...}``) is off, so a query cannot read the process's secrets.

Example::

    result = sql(spark, settings, "SELECT label, count(*) AS n FROM features GROUP BY label")
    print(result.versions, result.rows)

Limitations: the check is an allow-list of the parser's query operators, so a read that uses
syntax outside it (Spark's pipe syntax, for one) is refused too; say which, and it can be added.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from ..config import Settings
from ..io import lake
from ..pca import registry
from ..spark import tables as table
from ..spark.schema import FEATURES, PCA_MODELS, QUARANTINE
from .result import QueryResult, ReadOnlyError

VIEWS = ("features", "quarantine", "pca_models", "features_pca")

# The parser's nodes of a query (Spark 4.1's unresolved logical plans). Anything else is refused.
QUERY_NODES = frozenset(
    {
        "Aggregate",
        "Deduplicate",
        "Distinct",
        "Except",
        "Expand",
        "Filter",
        "Generate",
        "GlobalLimit",
        "Intersect",
        "Join",
        "LateralJoin",
        "LocalLimit",
        "LocalRelation",
        "Offset",
        "OneRowRelation",
        "Pivot",
        "Project",
        "RebalancePartitions",
        "Repartition",
        "RepartitionByExpression",
        "Sample",
        "Sort",
        "SubqueryAlias",
        "Tail",
        "Union",
        "UnresolvedHaving",
        "UnresolvedHint",
        "UnresolvedInlineTable",
        "UnresolvedRelation",
        "UnresolvedSubqueryColumnAliases",
        "UnresolvedWith",
        "Unpivot",
        "Window",
    }
)  # not WithWindowDefinition (``WINDOW w AS (...)``): its definitions are not among its expressions
# Functions that call into the JVM: a query could stop the process or read what it likes.
JVM_FUNCTIONS = frozenset({"reflect", "java_method", "try_reflect"})


def read_only(spark: SparkSession, statement: str) -> set[str]:
    """Raise ``ReadOnlyError`` unless ``statement`` only reads the views; runs nothing. Returns the
    names it reads (lower case)."""
    from pyspark.errors import ParseException

    spark.conf.set("spark.sql.variable.substitute", "false")
    try:
        plan = spark._jsparkSession.sessionState().sqlParser().parsePlan(statement)
    except Exception as exc:  # py4j hands the JVM's ParseException over as a Py4JJavaError
        if isinstance(exc, ParseException) or "ParseException" in str(exc):
            raise ReadOnlyError(f"not valid SQL: {str(exc).strip().splitlines()[0]}") from None
        raise
    pending, readable, read = [plan], set(VIEWS), set()
    while pending:  # a node is always seen before its descendants
        node = pending.pop()
        kind = node.getClass().getSimpleName()
        if kind not in QUERY_NODES:
            raise ReadOnlyError(
                f"fruits query runs reads only: {_what(kind)} is not allowed. Query the views "
                f"{', '.join(VIEWS)} with SELECT (WITH, JOIN, GROUP BY, ORDER BY... are fine)."
            )
        if kind == "UnresolvedWith":  # its names are readable below it (a one-part name is the CTE's first)
            readable |= {str(pair._1()).lower() for pair in _items(node.cteRelations())}
        if kind == "UnresolvedRelation":
            name = [str(part) for part in _items(node.multipartIdentifier())]
            if len(name) != 1 or name[0].lower() not in readable:
                raise ReadOnlyError(f"fruits query reads the views {', '.join(VIEWS)} only, not {'.'.join(name)}")
            read.add(name[0].lower())
        for expression in _items(node.expressions()):
            _check_functions(expression)
        # innerChildren: the subqueries in its expressions, and a WITH's definitions.
        pending += _items(node.children()) + _items(node.innerChildren())
    return read


def _check_functions(expression: Any) -> None:
    pending = [expression]
    while pending:
        node = pending.pop()
        kind = node.getClass().getSimpleName()
        if kind == "ExpressionWithUnresolvedIdentifier":  # IDENTIFIER('refl' || 'ect')(...): unknowable here
            raise ReadOnlyError("fruits query does not run IDENTIFIER(...): name functions and columns directly")
        if kind == "UnresolvedFunction":
            name = str(_items(node.nameParts())[-1]).lower()
            if name in JVM_FUNCTIONS:
                raise ReadOnlyError(f"fruits query does not run {name}(): it calls JVM methods")
        pending += _items(node.children())


def _items(seq: Any) -> list[Any]:
    """A Scala ``Seq`` (through py4j) as a list."""
    return [seq.apply(i) for i in range(seq.size())]


def _what(kind: str) -> str:
    """A parser node's name as the SQL a user wrote (``DeleteFromTable`` -> DELETE)."""
    known = {
        "DeleteFromTable": "DELETE",
        "InsertIntoStatement": "INSERT",
        "UpdateTable": "UPDATE",
        "MergeIntoTable": "MERGE",
        "AddJarsCommand": "ADD JAR",
        "AddFilesCommand": "ADD FILE",
        "SetCommand": "SET",
        "UnresolvedTableValuedFunction": "a table function (read_files, range...)",
        "CreateTableAsSelect": "CREATE TABLE",
        "DropView": "DROP VIEW",
        "CacheTable": "CACHE TABLE",
    }
    return known.get(kind, kind)


def register_views(
    spark: SparkSession,
    settings: Settings,
    as_of_version: int | None = None,
    pca_version: int | None = None,
    with_pca: bool = True,
) -> dict[str, int]:
    """The views: the tables at their newest versions (``features`` at ``as_of_version``), and, if
    ``with_pca``, ``features_pca``: ``features`` with each row of the model's feature model
    projected onto PCA version ``pca_version`` (the newest when None; null vectors before the first
    refit, and for rows of another feature model). It creates nothing: ``FileNotFoundError`` when
    there is no ``features`` table. Returns the versions read (``pca``: the PCA
    version of ``features_pca``)."""
    versions = {}
    for name, location, schema in (
        ("features", settings.features_table, FEATURES),
        ("quarantine", settings.quarantine_table, QUARANTINE),
        ("pca_models", settings.pca_models_table, PCA_MODELS),
    ):
        # A read creates nothing: no features table is a mistake to say (a mistyped --table-root);
        # no quarantine or PCA table yet is an empty one (nothing quarantined, no refit yet).
        if not lake.exists(settings, location):
            if name == "features":
                raise FileNotFoundError(f"no Delta table at {location}: run the stream first (or check --table-root)")
            spark.createDataFrame([], schema).createOrReplaceTempView(name)
            continue
        version = table.current_version(spark, location)
        if name == "features" and as_of_version is not None:
            version = as_of_version
        table.read(spark, location, version=version).createOrReplaceTempView(name)
        versions[name] = version
    if not with_pca:
        return versions
    model = registry.model(settings, pca_version)
    vectors = F.lit(None) if model is None else registry.project_column(spark, model)
    spark.table("features").withColumns(
        {
            "pca_features": vectors.cast("array<float>"),
            "pca_version": F.lit(None if model is None else model.version).cast("long"),
        }
    ).createOrReplaceTempView("features_pca")
    if model is not None:
        versions["pca"] = model.version
    return versions


def sql(
    spark: SparkSession,
    settings: Settings,
    statement: str,
    as_of_version: int | None = None,
    pca_version: int | None = None,
) -> QueryResult:
    """Run one read-only SQL statement; ``as_of_version`` time-travels the ``features`` table,
    ``pca_version`` chooses the PCA space of ``features_pca``. Raises ``ReadOnlyError`` (nothing
    run) for anything else."""
    read = read_only(spark, statement)
    versions = register_views(spark, settings, as_of_version, pca_version, with_pca="features_pca" in read)
    df = spark.sql(statement)
    return QueryResult(columns=df.columns, rows=[tuple(r) for r in df.collect()], versions=versions)
