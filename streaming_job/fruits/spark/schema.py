"""The explicit schemas of the stream's Delta tables (the uploads ledger's is ``fruits_ingest.ledger.SCHEMA``).

``features`` and ``quarantine`` are partitioned by ``event_date``, the S3 event's UTC date as the
ledger records it (``fruits_ingest.ledger.PARTITION``): a redelivered event repeats it, so the
stream's exactly-once check reads only the partitions of a micro-batch's dates (``stream.written``).
"""

from __future__ import annotations

from pyspark.sql.pandas.types import from_arrow_type
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from fruits_ingest.ledger import PARTITION  # FEATURES and QUARANTINE are partitioned as the ledger is

from ..classifier.model import ANSWER_TYPE

FEATURES = StructType(
    [
        StructField("image_id", StringType(), False),
        StructField("bucket", StringType(), False),
        StructField("key", StringType(), False),
        StructField("label", StringType()),
        StructField("size", LongType()),
        StructField("etag", StringType()),
        StructField("version_id", StringType()),
        StructField("event_time", TimestampType()),
        StructField(PARTITION, DateType(), False),
        StructField("ingested_at", TimestampType(), False),
        StructField("features", ArrayType(FloatType(), False), False),
        StructField("model_id", StringType(), False),
        StructField("pca_features", ArrayType(FloatType(), False)),
        StructField("pca_version", LongType()),
        # The classifier's answer at ingest (``fruits.classifier``); null before the first classifier.
        StructField("suggested_label", StringType()),
        StructField("confidence", FloatType()),
        StructField("unknown", BooleanType()),
        StructField("classifier_version", LongType()),
    ]
)

# The classifier's answer for one row (``Classifier.answer_arrow``).
ANSWER: StructType = from_arrow_type(ANSWER_TYPE)  # type: ignore[assignment]

QUARANTINE = StructType(
    [
        StructField("image_id", StringType(), False),
        StructField("bucket", StringType(), False),
        StructField("key", StringType(), False),
        StructField("etag", StringType()),
        StructField("version_id", StringType()),
        StructField(PARTITION, DateType(), False),
        StructField("reason", StringType(), False),
        StructField("error", StringType()),
        StructField("quarantined_at", TimestampType(), False),
        StructField("message_id", StringType()),  # the SQS message of the upload's event
    ]
)

PCA_MODELS = StructType(
    [
        StructField("version", LongType(), False),
        StructField("k", IntegerType(), False),
        StructField("mean", ArrayType(DoubleType(), False), False),
        # Row-major k x 1280.
        StructField("components", ArrayType(DoubleType(), False), False),
        StructField("explained_variance_ratio", ArrayType(DoubleType(), False), False),
        StructField("row_count", LongType(), False),
        StructField("source_table_version", LongType(), False),
        StructField("fitted_at", TimestampType(), False),
        StructField("feature_model_id", StringType(), False),
    ]
)

# One row per classifier version (``fruits.classifier``). The prototypes are unit vectors as
# little-endian float16 (n x dim, grouped by label); their labels int32, their image-id hashes int64.
CLASSIFIERS = StructType(
    [
        StructField("version", LongType(), False),
        StructField("feature_model_id", StringType(), False),
        StructField("labels", ArrayType(StringType(), False), False),
        StructField("dim", IntegerType(), False),
        StructField("prototypes", BinaryType(), False),
        StructField("prototype_labels", BinaryType(), False),
        StructField("prototype_hashes", BinaryType(), False),
        StructField("threshold", DoubleType(), False),
        StructField("k", IntegerType(), False),
        StructField("reject_quantile", DoubleType(), False),
        StructField("reference_rows", LongType(), False),
        StructField("held_out_rows", LongType(), False),
        StructField("held_out_top1", DoubleType(), False),
        StructField("held_out_rejected", DoubleType(), False),
        StructField("source_table_version", LongType(), False),
        StructField("table_id", StringType(), False),  # the features table's Delta id
        StructField("fitted_at", TimestampType(), False),
    ]
)

# The mergeable sufficient statistics behind the newest PCA fit (one row, replaced at each refit).
# ``total`` (d) and ``outer`` (d x d, row-major) are little-endian float64 bytes: 13 MB as one
# value rather than 1.6 million array elements to box and unbox.
PCA_STATS = StructType(
    [
        StructField("source_table_version", LongType(), False),
        StructField("row_count", LongType(), False),
        StructField("dim", IntegerType(), False),
        StructField("total", BinaryType(), False),
        StructField("outer", BinaryType(), False),
        StructField("feature_model_id", StringType(), False),
        StructField("computed_at", TimestampType(), False),
        StructField("basis", BinaryType(), True),  # the fit's leading vectors, float64 (K x dim)
    ]
)

# What the featurizing UDF returns per image: features, or why there are none.
FEATURIZE_RESULT = StructType(
    [
        StructField("features", ArrayType(FloatType(), False)),
        StructField("reason", StringType()),
        StructField("error", StringType()),
    ]
)
