"""Stage 3, the driver side of the featurizer stream: ``job`` (source -> transform -> sink) and
``known`` (the exactly-once check). The workers' side is ``fruits.featurize``."""

from .job import (
    BatchWriter, dedupe, drop_known, feature_rows, featurize, label_from_key, labelled, quarantine_rows,
    read_uploads, start,
)

__all__ = ["BatchWriter", "dedupe", "drop_known", "feature_rows", "featurize", "label_from_key", "labelled",
           "quarantine_rows", "read_uploads", "start"]
