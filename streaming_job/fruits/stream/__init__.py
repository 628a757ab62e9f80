"""Stage 3, the driver side of the featurizer stream: ``job`` (source -> transform -> sink) and
``written`` (the exactly-once check, kept by the tables). The workers' side is ``fruits.featurize``."""

from .job import (
    BatchWriter,
    RowsRead,
    dedupe,
    drop_written,
    feature_rows,
    featurize,
    label_from_key,
    labelled,
    quarantine_rows,
    read_uploads,
    start,
)

__all__ = [
    "BatchWriter",
    "dedupe",
    "drop_written",
    "feature_rows",
    "featurize",
    "label_from_key",
    "labelled",
    "quarantine_rows",
    "read_uploads",
    "RowsRead",
    "start",
]
