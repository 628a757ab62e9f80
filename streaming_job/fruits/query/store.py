"""Stage 5 without a JVM: the tables through delta-rs, SQL through DuckDB, similar images, a
label suggestion and the status of an upload. This is the Python API a service calls.

Example::

    from fruits import FeatureStore, Settings

    store = FeatureStore(Settings.from_env())
    store.sql("SELECT label, count(*) AS n FROM features GROUP BY label").rows
    store.similar("uploads/Banana/r_1.jpg", k=5)      # [Neighbour(key=..., label='Banana', distance=0.04), ...]
    store.classify(Path("photo.jpg"))                  # Suggestion(label='Banana', unknown=False, confidence=0.9, ...)
    store.classify(photo_bytes)                        # the same for a photo's bytes (the HTTP API's case)
    store.status("uploads/Banana/r_1.jpg").state       # 'processed'

``classify`` answers with the newest classifier (``fruits.classifier``: "unknown" is an answer),
the row's own stored features or a photo (a local file or its bytes) featurized. ``similar`` and ``classify``'s
evidence search the similarity index (``fruits.similarity``: HNSW segments the
refit keeps up to date, and the rows newer than them searched exactly), in the index's PCA version
with cosine distance; a photo is featurized with the pipeline's own decoding and weights
(``settings.weights``, which must be the weights the table was featurized with). ``sql`` offers
the view ``features_pca``: every row in one chosen PCA space.

A store may be shared by threads (the HTTP API's): it follows new classifier versions and the
index every ``FRUITS_REFRESH_SECONDS`` and runs as many photos through the model at once as there
are cores.

Limitations: the neighbours are approximate (recall@10 0.95 or more against exact search,
measured by bench-scale). ``status`` looks a key up in ``features``, ``quarantine`` and the uploads
ledger, reading only the files whose key statistics (delta-rs's min/max per file) can hold it.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable
from deltalake.exceptions import DeltaError

from fruits_ingest import ledger
from fruits_ingest.config import IMAGE_SUFFIXES, is_image_key

from ..classifier import registry as classifier_registry
from ..classifier.model import Candidate, Classifier
from ..config import Settings
from ..io import aws, lake
from ..pca import registry
from ..pca.model import PcaModel
from ..similarity import IndexView, SimilarityIndex
from .result import ModelMismatchError, NoDirectionError, QueryError, QueryLimitError, QueryResult, ReadOnlyError

if TYPE_CHECKING:
    from ..featurize.model import FeaturizerPool

TABLES = ("features", "quarantine", "pca_models")  # what SQL sees, and the view ``features_pca``
LEDGER = "uploads"  # the uploads ledger (the Lambda's), for status
# What is asked about: an upload key (``uploads/Banana/1.jpg`` or ``s3://bucket/key``), a local photo,
# or a photo's bytes.
Target = str | Path | bytes


@dataclass
class Neighbour:
    key: str
    label: str | None
    distance: float  # cosine distance, 0 = same direction
    image_id: str


@dataclass
class Suggestion:
    """What fruit ``target`` is: the classifier's answer (``fruits.classifier``), ``label`` None and
    ``unknown`` True when it resembles no reference photo enough; the best ``candidates`` either
    way; the nearest labelled rows as evidence; the versions that answered."""

    label: str | None
    unknown: bool
    confidence: float  # the label's share of the nearest prototypes' weighted vote
    similarity: float  # cosine similarity to the nearest reference prototype (threshold: the classifier's)
    threshold: float
    candidates: list[Candidate]
    neighbours: list[Neighbour]
    classifier_version: int
    pca_version: int | None  # the neighbours' space (None before the similarity index exists)


@dataclass
class Status:
    key: str
    state: str  # processed | quarantined | pending | unknown
    detail: str
    rows: list[dict[str, Any]] = field(default_factory=list)


class FeatureStore:
    """Read-only access to the pipeline's Delta tables, with no JVM."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._similar = SimilarityIndex(settings)
        self._model: PcaModel | None = None  # the PCA version last read
        self._featurizer: FeaturizerPool | None = None
        self._classifier_kept: Classifier | None = None  # the classifier version last read
        self._newest_classifier: int | None = None
        self._classifier_looked_at = -math.inf  # when the newest version's number was (monotonic)
        self._loading = threading.Lock()  # one thread loads the model, or the first classifier number

    # --- tables -----------------------------------------------------------------------------

    def table(self, name: str, version: int | None = None) -> DeltaTable:
        try:
            return lake.delta_table(self.settings, self._location(name), version)
        except Exception as exc:
            if type(exc).__name__ == "TableNotFoundError":
                raise FileNotFoundError(
                    f"no Delta table at {self._location(name)}: run the stream first (or check --table-root)"
                ) from exc
            raise

    def dataset(self, name: str, version: int | None = None) -> lake.Snapshot:
        """The table as a pyarrow dataset, and the Delta version it is."""
        dt = self.table(name, version)
        return lake.Snapshot(lake.as_dataset(self.settings, self._location(name), dt), dt.version())

    def _location(self, name: str) -> str:
        if name not in (*TABLES, LEDGER):
            raise ValueError(f"no table {name!r}; the tables are {', '.join(TABLES)}")
        return getattr(self.settings, "pca_models_table" if name == "pca_models" else f"{name}_table")

    def sql(self, statement: str, as_of_version: int | None = None, pca_version: int | None = None) -> QueryResult:
        """Run one DuckDB SQL statement over ``features``, ``quarantine``, ``pca_models`` and
        ``features_pca``; ``as_of_version`` time-travels the ``features`` table. ``features_pca`` is
        ``features`` with every row's ``pca_features`` in one PCA space, ``pca_version`` (the newest
        when None), projected as the statement reads it. The statement sees those tables and
        nothing else: DuckDB's file and network access is off and its configuration locked, so a
        service may pass a user's SQL through. One SELECT at a time (``ReadOnlyError`` otherwise);
        it is stopped past ``FRUITS_QUERY_TIMEOUT_SECONDS`` and refused more working memory than
        ``FRUITS_QUERY_MEMORY_LIMIT`` (``QueryLimitError``); any other DuckDB error is a
        ``QueryError``. The limit bounds DuckDB's own memory, not the result's rows in Python: a
        service should add a LIMIT to what it passes through."""
        # Imported here: a process that imports duckdb but never opens a connection can abort at
        # exit ("terminate called without an active exception") once delta-rs has run.
        import duckdb

        versions = {}
        limits = {"memory_limit": self.settings.query_memory_limit}
        with duckdb.connect(config=limits) as con:
            try:  # refused before any table is opened
                kinds = [s.type for s in con.extract_statements(statement)]
            except duckdb.Error as exc:  # not SQL
                raise QueryError(f"DuckDB: {str(exc).strip().splitlines()[0]}") from None
            if kinds != [duckdb.StatementType.SELECT]:
                raise ReadOnlyError(
                    f"fruits query runs one read (SELECT, WITH ... SELECT, FROM ...) at a time, "
                    f"not {', '.join(k.name for k in kinds) or 'nothing'}"
                )
            tables = {name: self.table(name, as_of_version if name == "features" else None) for name in TABLES}
            for name, delta in tables.items():
                con.register(name, lake.as_dataset(self.settings, self._location(name), delta))
                versions[name] = delta.version()
            pca = self._register_features_pca(con, registry.resolve(self.settings, pca_version, tables["pca_models"]))
            if pca is not None:
                versions["pca"] = pca
            # Read-only over the tables: no file or network access of its own (read_text, COPY ... TO,
            # ATTACH, extensions), and the statement may not turn it back on.
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            timer = threading.Timer(self.settings.query_timeout_seconds, con.interrupt)
            timer.start()
            try:
                result = con.sql(statement)
                return QueryResult(columns=list(result.columns), rows=result.fetchall(), versions=versions)
            except duckdb.InterruptException:
                raise QueryLimitError(
                    f"the query ran past {self.settings.query_timeout_seconds:g} s and was stopped; narrow it "
                    "(a filter, a LIMIT) or raise FRUITS_QUERY_TIMEOUT_SECONDS"
                ) from None
            except duckdb.OutOfMemoryException as exc:
                raise QueryLimitError(
                    f"the query needs more than {self.settings.query_memory_limit} of memory "
                    f"({str(exc).splitlines()[0]}); narrow it or raise FRUITS_QUERY_MEMORY_LIMIT"
                ) from None
            except duckdb.Error as exc:  # refused (external access is off) or invalid: one line that says why
                raise QueryError(f"DuckDB: {str(exc).strip().splitlines()[0]}") from None
            finally:
                timer.cancel()

    def _register_features_pca(self, con: Any, version: int | None) -> int | None:
        """The view ``features_pca`` on ``con``: ``features`` in PCA space ``version`` (None before
        the first refit: null vectors), and that version. Rows of another feature model get null
        vectors. The model itself is read only if a statement projects a row."""
        from duckdb.sqltypes import FLOAT, VARCHAR

        if version is None:
            con.execute(
                "CREATE TEMP VIEW features_pca AS SELECT * REPLACE (CAST(NULL AS FLOAT[]) AS pca_features, "
                "CAST(NULL AS BIGINT) AS pca_version) FROM features"
            )
            return None
        floats = con.list_type(FLOAT)
        # null_handling "special": the function returns nulls itself (rows of another feature model).
        con.create_function(
            "fruits_pca_project",
            lambda features, ids: self._pca(version).project_arrow(features, ids),
            [floats, VARCHAR],
            floats,
            type="arrow",
            null_handling="special",
        )
        con.execute(
            "CREATE TEMP VIEW features_pca AS SELECT * REPLACE (fruits_pca_project(features, model_id) "
            f"AS pca_features, CAST({int(version)} AS BIGINT) AS pca_version) FROM features"
        )
        return version

    def _pca(self, version: int) -> PcaModel:
        """PCA ``version``, read once and kept until another version is asked for."""
        if self._model is None or self._model.version != version:
            found = registry.model(self.settings, version)
            if found is None:
                raise LookupError("no PCA model yet: run `fruits pca refit` once the table has rows")
            self._model = found
        return self._model

    def pca_model(self, version: int | None = None) -> PcaModel | None:
        """PCA ``version`` (the newest when None; ``LookupError`` for one never fitted), or None
        before the first refit. Reads that one version, not the table."""
        return registry.model(self.settings, version)

    # --- similar images and labels ----------------------------------------------------------

    def _vector(
        self, view: IndexView, target: Target, features: tuple[np.ndarray, str] | None = None
    ) -> tuple[np.ndarray, str | None]:
        """``target``'s vector in the index's PCA space and its image id if it is in the table
        (``features``: a photo already featurized, and by which feature model)."""
        if isinstance(target, Path | bytes):
            found = (
                features[0]
                if features is not None and features[1] == view.model.feature_model_id
                else self.featurize(target, view.model.feature_model_id)
            )
            return view.model.project(found)[0], None
        return view.vector_of(_bucket_and_key(target)[1])

    def featurize(self, photo: Path | bytes, model_id: str | None = None) -> np.ndarray:
        """A photo's MobileNetV2 features, (1, d), decoded as the pipeline decodes uploads
        (``ImageError`` with the pipeline's reason for one it would quarantine). ``model_id``: the
        feature model the answer must be comparable with (``ModelMismatchError`` if
        ``settings.weights`` are another)."""
        from ..featurize.images import decode

        featurizer = self.featurizer()
        if model_id is not None and featurizer.model_id != model_id:
            raise ModelMismatchError(
                f"the table was featurized with {model_id}, but the weights {self.settings.weights!r} are "
                f"{featurizer.model_id}; set FRUITS_WEIGHTS (or --weights) to the same weights or compiled model"
            )
        pixels = decode(photo.read_bytes() if isinstance(photo, Path) else photo, self.settings.max_image_bytes)
        return featurizer(pixels[None])

    def featurizer(self) -> FeaturizerPool:
        """The model of ``settings.weights``, loaded on first use (compiling weights needs TensorFlow;
        a compiled ``.tflite`` does not): one interpreter per core, so concurrent photos (a
        server's) run at once, each on ``FRUITS_MODEL_THREADS`` threads."""
        from ..featurize.build import load_model
        from ..featurize.model import FeaturizerPool

        if self._featurizer is not None:  # loaded: no lock on a request's path
            return self._featurizer
        with self._loading:
            if self._featurizer is None:
                self._featurizer = FeaturizerPool(
                    load_model(self.settings.weights), threads=self.settings.model_threads or os.cpu_count() or 1
                )
            return self._featurizer

    def similar(self, target: Target, k: int = 10, *, labelled_only: bool = False) -> list[Neighbour]:
        """The ``k`` rows nearest to ``target`` (cosine), the target itself left out."""
        return self._nearest(target, k, labelled_only)[0]

    def _nearest(
        self, target: Target, k: int, labelled_only: bool, features: tuple[np.ndarray, str] | None = None
    ) -> tuple[list[Neighbour], int]:
        """The neighbours and the PCA version they were found in."""
        view = self._similar.refresh()
        query, own_id = self._vector(view, target, features)
        if float(np.linalg.norm(query)) == 0.0:
            raise NoDirectionError("the target's PCA vector is all zeros; no direction to compare")
        hits = view.nearest(query, k, exclude=own_id, labelled_only=labelled_only)
        return (
            [Neighbour(key=h.key, label=h.label, distance=h.distance, image_id=h.image_id) for h in hits],
            view.manifest.pca_version,
        )

    def classify(self, target: Target, k: int = 10, classifier_version: int | None = None) -> Suggestion:
        """What fruit ``target`` is, by the newest classifier (or ``classifier_version``), with its
        ``k`` nearest labelled rows as evidence. ``LookupError`` before the first classifier."""
        found = self.classifier(classifier_version)
        features, image_id = self._features(target, found.feature_model_id)
        # A reference row asked about is not its own prototype (as its neighbours leave it out).
        answer = found.answer(features, leave_out=None if image_id is None else ledger.key_hash(image_id))[0]
        try:
            neighbours, pca_version = self._nearest(
                target, k, labelled_only=True, features=(features, found.feature_model_id)
            )
        except (LookupError, NoDirectionError):  # no PCA version or index yet: the answer stands without evidence
            neighbours, pca_version = [], None
        return Suggestion(
            label=answer.label,
            unknown=answer.unknown,
            confidence=answer.confidence,
            similarity=answer.similarity,
            threshold=found.threshold,
            candidates=answer.candidates,
            neighbours=neighbours,
            classifier_version=found.version,
            pca_version=pca_version,
        )

    def classifier(self, version: int | None = None) -> Classifier:
        """Classifier ``version`` or the newest (whose number is looked up every
        ``settings.refresh_seconds``), kept until another version is asked for. ``LookupError``
        before the first one. Threads asking meanwhile use the version they had: one thread looks
        the newest up, outside the lock (S3 reads), unless none is known yet."""
        if version is None:
            with self._loading:
                due = time.monotonic() - self._classifier_looked_at >= self.settings.refresh_seconds
                if due:
                    self._classifier_looked_at = time.monotonic()
                if due and self._newest_classifier is None:  # nothing to answer with meanwhile: the others wait
                    self._newest_classifier = classifier_registry.newest_version(self.settings)
                    due = False
            if due:
                self._newest_classifier = classifier_registry.newest_version(self.settings)
        wanted = self._newest_classifier if version is None else version
        if wanted is None:
            raise LookupError(
                "no classifier yet: the refit (`fruits pca refit`) fits one once the table has "
                f"reference rows (uploads under {', '.join(self.settings.reference_prefixes)})"
            )
        kept = self._classifier_kept
        if kept is None or kept.version != wanted:
            kept = classifier_registry.classifier(self.settings, wanted)  # a new version: read once, then kept
            assert kept is not None
            self._classifier_kept = kept
        return kept

    def index_version(self) -> int | None:
        """The similarity index's PCA version, its segments opened and the table followed (a
        reader's warm-up), or None when there is no index yet."""
        try:
            return self._similar.refresh().manifest.pca_version
        except LookupError:
            return None

    def _features(self, target: Target, model_id: str) -> tuple[np.ndarray, str | None]:
        """``target``'s MobileNetV2 features, (1, d), and its image id if it is a row: a photo
        featurized, or the newest row of a key. (A key is looked up as ``status`` does.)"""
        if isinstance(target, Path | bytes):
            return self.featurize(target, model_id), None
        bucket, key = _bucket_and_key(target)
        rows = _rows_with_key(
            self.dataset("features").dataset, key, ["image_id", "features", "model_id", "ingested_at"], bucket
        )
        if not rows:
            raise LookupError(
                f"{key} is not in the features table (`fruits status {key}` says where an upload is; "
                "a local photo is given as a Path, on the command line as an existing file)"
            )
        row = max(rows, key=lambda r: r["ingested_at"])
        if row["model_id"] != model_id:
            raise LookupError(
                f"{key} was featurized with {row['model_id']}, not the classifier's feature model {model_id}"
            )
        return np.asarray(row["features"], dtype=np.float32)[None], row["image_id"]

    # --- where is an upload -----------------------------------------------------------------

    def status(self, key: str) -> Status:
        """processed (with its rows), quarantined (with the reason), pending (in the uploads ledger,
        not yet in a table), skipped (an upload the Lambda does not featurize: not an image suffix)
        or unknown."""
        bucket, key = _bucket_and_key(key)
        cols = [
            "image_id",
            "bucket",
            "key",
            "label",
            "suggested_label",
            "confidence",
            "unknown",
            "classifier_version",
            "etag",
            "size",
            "event_time",
            "ingested_at",
            "pca_version",
        ]
        rows = _rows_with_key(self.dataset("features").dataset, key, cols, bucket)
        if rows:
            return Status(key, "processed", f"{len(rows)} row(s) in the features table", rows)
        rows = _rows_with_key(
            self.dataset("quarantine").dataset,
            key,
            ["image_id", "bucket", "key", "etag", "reason", "error", "quarantined_at", "message_id"],
            bucket,
        )
        if rows:
            return Status(key, "quarantined", "; ".join(f"{r['reason']}: {r['error']}" for r in rows), rows)
        if key.startswith(self.settings.upload_prefixes) and not is_image_key(key):
            return Status(
                key,
                "skipped",
                f"not an image suffix ({', '.join(IMAGE_SUFFIXES)}, in any case): the "
                "ingest Lambda skips it (metric RecordsSkipped, reason not_an_image)",
            )
        try:
            # key_hash prunes the ledger's files: each maintained day is sorted by it.
            rows = _rows_with_key(
                self.dataset(LEDGER).dataset,
                key,
                ["image_id", "bucket", "key", "etag", "event_time", "received_at", "message_id"],
                bucket,
                pc.field("key_hash") == ledger.key_hash(key),
            )
        except FileNotFoundError:
            return Status(
                key,
                "unknown",
                f"in no table, and there is no uploads ledger at {self.settings.uploads_table} "
                "yet (no upload has reached the ingest Lambda)",
            )
        except (DeltaError, OSError) as exc:
            return Status(key, "unknown", f"in no table; the uploads ledger could not be read ({exc})")
        if rows:
            return Status(
                key, "pending", f"in the uploads ledger since {rows[0]['received_at']}, not yet featurized", rows
            )
        return Status(
            key,
            "unknown",
            "in no table and not in the uploads ledger: not uploaded, or its event has not "
            "reached the ingest Lambda yet",
        )


def _bucket_and_key(target: str) -> tuple[str | None, str]:
    """An upload named by its key (``uploads/Banana/1.jpg``: any bucket) or its URI (``s3://b/k``)."""
    return aws.split_s3_uri(target) if "://" in target else (None, target)


def _rows_with_key(
    dataset: ds.Dataset, key: str, columns: list[str], bucket: str | None = None, also: pc.Expression | None = None
) -> list[dict[str, Any]]:
    """The rows of ``key`` (in ``bucket`` only, when the caller named one; matching ``also``, a
    filter that prunes files by their statistics), with those of ``columns`` the table has (a
    table from before a column was added has none)."""
    wanted = pc.field("key") == key
    if bucket is not None:
        wanted &= pc.field("bucket") == bucket
    if also is not None:
        wanted &= also
    found = dataset.to_table(columns=[c for c in columns if c in dataset.schema.names], filter=wanted)
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()} for row in found.to_pylist()]
