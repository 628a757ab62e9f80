"""Reference rows written into ``features`` as the stream writes them, without the emulator or the
stream: what a benchmark or a test of the readers (the HTTP API) needs before a refit fits a
classifier. ``make demo`` runs the whole pipeline instead.

Example::

    keys = write_reference_rows(spark, settings, sample_images(SAMPLE_IMAGES), compiled)
    refit(spark, settings)          # PCA, the similarity index, the classifier
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from ..config import Settings
from ..featurize.images import decode
from ..featurize.model import CompiledModel, Featurizer
from ..spark import tables
from ..spark.schema import FEATURES


def write_reference_rows(
    spark: SparkSession, settings: Settings, images: list[tuple[str, Path]], model: CompiledModel
) -> list[str]:
    """Append one row per ``(label, photo)`` under the first reference prefix, featurized with
    ``model``; the tables are made if missing. Returns the rows' keys."""
    tables.ensure_tables(spark, settings)
    featurizer = Featurizer(model)
    features = np.concatenate([featurizer(decode(path.read_bytes())[None]) for _, path in images])
    keys = [f"{settings.reference_prefixes[0]}{label}/{path.name}" for label, path in images]
    now = dt.datetime.now(dt.UTC)
    rows = pd.DataFrame(
        {
            "image_id": [uuid.uuid5(uuid.NAMESPACE_URL, key).hex for key in keys],
            "bucket": settings.bucket,
            "key": keys,
            "label": [label for label, _ in images],
            "event_date": now.date(),
            "ingested_at": now,
            "features": list(features),
            "model_id": model.model_id,
        }
    )
    tables.frame(spark, rows, FEATURES).write.format("delta").mode("append").save(settings.features_table)
    return keys
