"""Stage 3: the featurizer stream. Uploads ledger in, one Delta row per image out.

    source:    readStream over the uploads ledger (a Delta table the Lambda appends to)
    transform: label -> dedupe -> drop already written -> featurize (fetch, decode, MobileNetV2)
    sink:      append into `features`; failures into `quarantine` with a reason; the stream alone
               writes both, and compacts and vacuums them itself

Each transform is a plain function on DataFrames, usable without a stream. Images are fetched on
the executors (boto3 inside the pandas UDF); the driver only sees ledger rows.

Example::

    query = start(spark, settings, trigger={"availableNow": True})
    query.awaitTermination()
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, NamedTuple

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import pandas_udf
from pyspark.sql.streaming import StreamingQuery

from fruits_ingest.ledger import ensure_ledger

from ..classifier import registry as classifier_registry
from ..classifier.model import Classifier
from ..config import Settings
from ..featurize.batch import Columns, WorkerOptions, featurize_batches
from ..featurize.build import WeightsBlob, as_compiled, load_model
from ..featurize.images import Reason
from ..featurize.model import COMPILED_SUFFIX, CompiledModel
from ..io import aws, lake, versions
from ..pca import registry
from ..pca.model import PcaModel
from ..spark import maintenance
from ..spark import tables as table
from ..spark.schema import ANSWER, FEATURES, FEATURIZE_RESULT, QUARANTINE
from ..spark.session import submitted
from . import metrics, poison
from .written import WrittenImages

log = logging.getLogger(__name__)


# --- source ---------------------------------------------------------------------------------


def read_uploads(spark: SparkSession, settings: Settings) -> DataFrame:
    """The uploads ledger as a Delta streaming source: each trigger reads only the commits since the
    last one (at most ``max_files_per_trigger`` files: one per Lambda invocation until compacted),
    and a restart resumes from the ledger version in the checkpoint. The ledger is created empty
    if it does not exist yet: a new deployment's stream starts before the first upload."""
    ensure_ledger(lake.delta_uri(settings.uploads_table), lake.storage_options(settings))
    return (
        spark.readStream.format("delta")
        .option("maxFilesPerTrigger", settings.max_files_per_trigger)
        .load(settings.uploads_table)
    )


# --- transforms -----------------------------------------------------------------------------


def label_from_key(reference_prefixes: tuple[str, ...], rule: str = "folder") -> F.Column:
    """The label of a reference upload, from its key; null for any other key (an app upload) and for
    a key with no folder under its prefix.

    ``folder``: the folder right under the reference prefix (``uploads/Apple Braeburn/a/1.jpg`` ->
    ``Apple Braeburn``); ``parent``: the file's own folder (-> ``a``).
    """
    key = F.col("key")
    rest = F.coalesce(*[F.when(key.startswith(p), F.expr(f"substring(key, {len(p) + 1})")) for p in reference_prefixes])
    parts = F.split(rest, "/")
    return F.when(F.size(parts) > 1, F.element_at(parts, 1 if rule == "folder" else -2))


def labelled(uploads: DataFrame, reference_prefixes: tuple[str, ...], label_rule: str = "folder") -> DataFrame:
    """Add the label: reference uploads only. (The image's identity, ``image_id``, is the ledger's:
    ``fruits_ingest.ledger``.)"""
    return uploads.withColumn("label", label_from_key(reference_prefixes, label_rule))


def dedupe(images: DataFrame) -> DataFrame:
    """The same image announced twice (an event SQS delivered twice, a batch the Lambda appended twice) is one image."""
    return images.dropDuplicates(["image_id"])


def drop_written(images: DataFrame, written: WrittenImages) -> DataFrame | None:
    """The images that neither table holds yet, or None if there are none.

    The micro-batch's ledger rows come to the driver (they are small) and are looked up in the
    tables' partitions of their dates (``WrittenImages``); the rest goes back to Spark as a local
    DataFrame.
    """
    rows = images.toArrow()
    new = rows.filter(pc.invert(written.among(rows)))
    return images.sparkSession.createDataFrame(new, images.schema) if new.num_rows else None


def featurize_udf(model: Any, settings: Settings) -> Any:
    """A pandas UDF ``(bucket, key, etag, version_id) -> FEATURIZE_RESULT``: ``featurize_batches``
    on the workers. ``model`` is a broadcast ``CompiledModel``, loaded once per Python worker."""
    options = WorkerOptions(
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        batch_size=settings.batch_size,
        max_image_bytes=settings.max_image_bytes,
        model_threads=settings.model_threads,
    )

    @pandas_udf(FEATURIZE_RESULT)  # type: ignore[call-overload]
    def featurize(batches: Iterator[Columns]) -> Iterator[pd.DataFrame]:
        return featurize_batches(model.value, options, batches)

    return featurize


def featurize(images: DataFrame, model: Any, settings: Settings, model_id: str) -> DataFrame:
    """Add ``result`` (features, or a quarantine reason) and ``model_id``; ``model`` is a broadcast
    ``CompiledModel``."""
    udf = featurize_udf(model, settings)
    # Spread the batch over the cluster: the dedupe shuffle otherwise coalesces small batches
    # into one partition, so one executor would featurize everything.
    partitions = settings.featurize_partitions or images.sparkSession.sparkContext.defaultParallelism
    return (
        images.repartition(partitions)
        .withColumn("result", udf("bucket", "key", "etag", "version_id"))
        .withColumn("model_id", F.lit(model_id))
    )


# What the stream adds after featurizing: the projection and the classifier's answer.
DERIVED = ("pca_features", "pca_version", *ANSWER.fieldNames(), "classifier_version")


def feature_rows(
    scored: DataFrame, pca: CurrentPca | None = None, answer: CurrentClassifier | None = None
) -> DataFrame:
    """The features-table rows of the images that were featurized; projected if a PCA model is
    given, answered if a classifier is."""
    rows = scored.where(F.col("result.reason").isNull()).select(
        *[
            F.col("result.features").alias("features")
            if f.name == "features"
            else F.current_timestamp().alias("ingested_at")
            if f.name == "ingested_at"
            else F.lit(None).cast(f.dataType).alias(f.name)
            if f.name in DERIVED
            else F.col(f.name)
            for f in FEATURES.fields
        ]
    )
    if pca is not None and pca.model is not None and pca.projection is not None:
        rows = rows.withColumn("pca_features", pca.projection).withColumn(
            "pca_version", F.lit(pca.model.version).cast("long")
        )
    if answer is not None and answer.classifier is not None and answer.column is not None:
        rows = (
            rows.withColumn("answer", answer.column)
            .withColumns(
                {
                    **{name: F.col(f"answer.{name}") for name in ANSWER.fieldNames()},
                    "classifier_version": F.lit(answer.classifier.version).cast("long"),
                }
            )
            .drop("answer")
        )
    return rows


def quarantine_rows(scored: DataFrame) -> DataFrame:
    return scored.where(F.col("result.reason").isNotNull()).select(
        *[
            F.col(f"result.{f.name}").alias(f.name)
            if f.name in ("reason", "error")
            else F.current_timestamp().alias("quarantined_at")
            if f.name == "quarantined_at"
            else F.col(f.name)
            for f in QUARANTINE.fields
        ]
    )


# --- sink -----------------------------------------------------------------------------------


@contextmanager
def materialized(df: DataFrame, reliable_dir: str | None = None) -> Iterator[DataFrame]:
    """``df`` computed once, lineage cut, so that the model runs once per image however many writes
    read the result (``persist`` alone let the writes recompute it); its blocks are freed on exit
    instead of waiting for the JVM's periodic GC.

    ``reliable_dir``: staged there as Parquet (under the stream's checkpoint location, on S3 on a
    cluster) instead of in the executors' block managers, so that losing an executor (dynamic
    allocation removes idle ones, nodes fail) loses nothing; the folder is deleted on exit. Spark's
    file writer, not ``RDD.checkpoint``: the checkpoint's rename of a part file is not atomic on S3,
    and a task retried after an executor died mid-rename failed every attempt (seen in ``make
    test-cluster``); the writer's commit protocol gives each attempt its own files."""
    spark = df.sparkSession
    sc = spark.sparkContext
    before = set(sc._jsc.getPersistentRDDs().keys())
    try:
        if reliable_dir:
            df.write.mode("overwrite").parquet(reliable_dir)
            done = spark.read.schema(df.schema).parquet(reliable_dir)
        else:
            done = df.localCheckpoint(eager=True)
        yield done
    finally:
        if reliable_dir:
            folder = sc._jvm.org.apache.hadoop.fs.Path(reliable_dir)
            folder.getFileSystem(sc._jsc.hadoopConfiguration()).delete(folder, True)
        persistent = sc._jsc.getPersistentRDDs()
        for rdd_id in set(persistent.keys()) - before:
            persistent[rdd_id].unpersist(False)


class CurrentPca(NamedTuple):
    """The PCA model new rows are projected with, and its projection column (None, None before a
    fit on this feature model)."""

    model: PcaModel | None
    projection: F.Column | None


class CurrentClassifier(NamedTuple):
    """The classifier new rows are answered with, and its answer column (None, None before a fit
    on this feature model)."""

    classifier: Classifier | None
    column: F.Column | None


class BatchWriter:
    """``foreachBatch`` sink: featurize the new images of a micro-batch and write both tables.

    Exactly once: images already in either table are dropped before featurizing (``WrittenImages``).
    That covers a redelivered event or ledger row, and a micro-batch replayed after a crash whose
    rows had committed (the tables hold its images by then). This stream is the only writer of new rows.

    Never stuck on one upload: a micro-batch whose featurizing fails is scored again part by part,
    and an image that fails alone is quarantined as ``poison`` (``stream.poison``).

    Maintains its own tables, their only writer: OPTIMIZE of the days with many small files after
    every ``compact_every`` micro-batches, VACUUM LITE after every ``vacuum_every`` (``maintain``).
    """

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        model: WeightsBlob | CompiledModel,
        reliable: bool | None = None,
        guard: Callable[[], None] | None = None,
    ) -> None:
        self.spark = spark
        # Called right before each table write: raises if this stream may no longer write (its lease
        # ran out or was taken over), which fails the stream instead of letting two writers append.
        self.guard = guard if guard is not None else (lambda: None)
        self.settings = settings
        compiled = as_compiled(model)
        self.model_id = compiled.model_id
        self.model = spark.sparkContext.broadcast(compiled)
        self._pca = CurrentPca(None, None)
        self._classifier = CurrentClassifier(None, None)
        self._pca_versions = versions.Followed(settings, settings.pca_models_table)
        self._classifier_versions = versions.Followed(settings, settings.classifiers_table)
        table.ensure_tables(spark, settings)
        table.add_missing_columns(spark, settings.features_table, FEATURES)  # the stream is its one writer
        self.written = WrittenImages(settings, spark)
        # On a cluster (spark-submit) a micro-batch's scored rows must survive losing an executor.
        self.reliable = submitted() if reliable is None else reliable
        self._cloudwatch = aws.client("cloudwatch", settings) if settings.metrics_namespace else None

    def current_pca(self) -> CurrentPca:
        """The newest PCA model fitted on this feature model, and its projection column. Read again
        only when the ``pca_models`` table has a new version (delta-rs reads just the commits since
        the last look, without a Spark job; reading the model through Spark every micro-batch cost
        latency)."""
        if self._pca_versions.changed():
            model = registry.model(self.settings)
            usable = model is not None and model.feature_model_id == self.model_id
            self._pca = (
                CurrentPca(model, registry.project_column(self.spark, model)) if usable else CurrentPca(None, None)
            )
        return self._pca

    def current_classifier(self) -> CurrentClassifier:
        """The newest classifier, if it was fitted on this feature model (else none: rows get null
        answers), and its answer column; read again only when the ``classifiers`` table has a new
        version (as ``current_pca``)."""
        if self._classifier_versions.changed():
            found = classifier_registry.classifier(self.settings)
            usable = found is not None and found.feature_model_id == self.model_id
            self._classifier = (
                CurrentClassifier(found, classifier_registry.answer_column(self.spark, found))
                if usable
                else CurrentClassifier(None, None)
            )
        return self._classifier

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        self.write(batch, batch_id)
        self.maintain(batch_id)

    def maintain(self, batch_id: int) -> None:
        """Compact and vacuum the stream's tables, by their only writer, every ``compact_every`` and
        ``vacuum_every`` micro-batches (``spark.maintenance``; counted by batch id, which the
        checkpoint keeps across restarts). A failure is logged and left for the next time: upkeep
        never stops the stream."""
        s, tables = self.settings, (self.settings.features_table, self.settings.quarantine_table)
        jobs: list[tuple[str, Callable[[], object]]] = []
        if (batch_id + 1) % s.compact_every == 0:
            jobs += [(f"OPTIMIZE {t}", functools.partial(maintenance.compact, self.spark, s, t)) for t in tables]
        if (batch_id + 1) % s.vacuum_every == 0:
            jobs += [(f"VACUUM {t}", functools.partial(maintenance.vacuum, self.spark, t)) for t in tables]
        for what, job in jobs:
            self.guard()
            try:
                job()
            except Exception as exc:  # noqa: BLE001 - the next run tries again
                log.warning(
                    "%s failed after micro-batch %d (left for the next run): %s",
                    what,
                    batch_id,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )

    def write(self, batch: DataFrame, batch_id: int) -> None:
        """Featurize the micro-batch's new images and append them to ``features`` or ``quarantine``."""
        s = self.settings
        images = drop_written(dedupe(labelled(batch, s.reference_prefixes, s.label_rule)), self.written)
        if images is None:  # every image already written: nothing to write
            metrics.publish(s, metrics.BatchMetrics(batch_id, 0, 0), self._cloudwatch)
            return
        started = time.perf_counter()
        reliable_dir = f"{s.checkpoint}/batches/{batch_id}-{uuid.uuid4().hex[:8]}" if self.reliable else None
        with ExitStack() as stack:
            try:
                scored = stack.enter_context(
                    materialized(featurize(images, self.model, s, self.model_id), reliable_dir)
                )
            except Exception as exc:
                if poison.systemic(exc):
                    raise
                scored = self.isolated(images, batch_id, exc)
            total, quarantined = scored.agg(F.count("*"), F.count("result.reason")).first()
            featurized = time.perf_counter()
            if total > quarantined:
                rows = feature_rows(scored, self.current_pca(), self.current_classifier())
                self.guard()
                table.append(rows, s.features_table)
            if quarantined:
                self.guard()
                table.append(quarantine_rows(scored), s.quarantine_table)
        written = time.perf_counter()
        metrics.publish(
            s,
            metrics.BatchMetrics(batch_id, total, quarantined, featurized - started, written - featurized),
            self._cloudwatch,
        )

    def isolated(self, images: DataFrame, batch_id: int, failure: Exception) -> DataFrame:
        """The scores of a micro-batch whose featurizing failed, found part by part
        (``poison.isolate``), the images that failed alone quarantined as ``poison``; raises if
        every image failed alone, until that happened ``poison_attempts`` times."""
        s = self.settings
        log.warning(
            "micro-batch %d failed (%s): featurizing its images in parts to find the cause",
            batch_id,
            poison.summary(failure),
        )
        spark, rows = images.sparkSession, images.toArrow()
        scored_schema = featurize(images, self.model, s, self.model_id).schema

        def score(part: list[int]) -> pa.Table:
            return featurize(
                spark.createDataFrame(rows.take(part), images.schema), self.model, s, self.model_id
            ).toArrow()

        results, poisoned = poison.isolate(rows.num_rows, score)
        attempts = poison.Attempts(s, batch_id)
        if not results and (failed := attempts.add()) < s.poison_attempts:
            raise RuntimeError(
                f"micro-batch {batch_id} failed on each of its {rows.num_rows} image(s) alone (failure {failed} of "
                f"{s.poison_attempts} before they are quarantined as poison): {poison.summary(failure)}"
            ) from failure
        attempts.clear()
        for row, error in poisoned.items():
            log.error("s3://%s/%s quarantined as poison: %s", rows["bucket"][row], rows["key"][row], error)
        bad = [
            {
                **line,
                "result": {"features": None, "reason": str(Reason.POISON), "error": error},
                "model_id": self.model_id,
            }
            for line, error in zip(rows.take(list(poisoned)).to_pylist(), poisoned.values())
        ]
        parts = ([spark.createDataFrame(pa.concat_tables(results), scored_schema)] if results else []) + (
            [spark.createDataFrame(bad, scored_schema)] if bad else []
        )
        return functools.reduce(DataFrame.unionByName, parts)


def _shipped(spec: str) -> str:
    """A model file named by a relative path that is not in the working directory: where Spark put
    the files shipped with ``spark.files`` (the jobs on EMR ship the compiled model that way)."""
    from pathlib import Path

    from pyspark import SparkFiles

    if not spec.endswith(COMPILED_SUFFIX) or Path(spec).is_absolute() or Path(spec).exists():
        return spec
    return SparkFiles.get(spec)


def start(
    spark: SparkSession,
    settings: Settings,
    trigger: dict[str, Any] | None = None,
    model: WeightsBlob | CompiledModel | None = None,
    guard: Callable[[], None] | None = None,
) -> StreamingQuery:
    """Start the stream; ``trigger`` as in ``DataStreamWriter.trigger`` (default: availableNow);
    ``model`` (default: ``settings.weights``, loaded by ``load_model``) as weights or compiled;
    ``guard`` runs right before each table write (``fruits stream`` passes its lease's check)."""
    writer = BatchWriter(spark, settings, model or load_model(_shipped(settings.weights)), guard=guard)
    return (
        read_uploads(spark, settings)
        .writeStream.foreachBatch(writer)
        .option("checkpointLocation", settings.checkpoint)
        .trigger(**(trigger or {"availableNow": True}))
        .queryName("fruits-featurizer")
        .start()
    )


class RowsRead:
    """Ledger rows a running stream has read so far, summed from its progress reports (Spark
    keeps the last 100): the count of a progress bar. Call it at least every 100 micro-batches.

    Example::

        read = RowsRead()
        while not query.awaitTermination(1):
            bar.advance_to(read(query))
    """

    def __init__(self) -> None:
        self.rows = 0
        self._last_batch = -1  # a batch that read no rows reports the id its next batch gets: not counted

    def __call__(self, query: StreamingQuery) -> int:
        for update in query.recentProgress:
            if update.batchId > self._last_batch and update.numInputRows > 0:
                self.rows += update.numInputRows
                self._last_batch = update.batchId
        return self.rows
