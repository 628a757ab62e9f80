"""Columns a model computes from a row's ``features`` and ``model_id``: the stream's projection and
answer, the ``features_pca`` view. The model is broadcast once; an Arrow UDF applies it a batch at
a time on the workers.

Example::

    df.withColumn("pca_features", features_column(spark, pca.project_arrow, ArrayType(FloatType())))
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa  # module-level: Spark resolves the Arrow UDF's type hints in this module
from pyspark.sql import Column, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.functions import arrow_udf
from pyspark.sql.types import DataType


def features_column(spark: SparkSession, apply: Callable[[pa.Array, pa.Array], pa.Array], returns: DataType) -> Column:
    """``apply(features, model_ids)`` as a column of type ``returns``; ``apply`` (a model's bound
    method: the model goes with it) is broadcast once."""
    broadcast = spark.sparkContext.broadcast(apply)

    @arrow_udf(returns)  # type: ignore[call-overload]
    def column(features: pa.Array, model_ids: pa.Array) -> pa.Array:
        return broadcast.value(features, model_ids)

    return column(F.col("features"), F.col("model_id"))
