"""The similarity index: approximate nearest neighbours (usearch HNSW) over the rows' PCA vectors,
kept up to date by the refit, read by the store (``similar``, ``classify``)."""

from .builder import IndexUpdate, update
from .index import Hit, IndexView, Manifest, SimilarityIndex, UnknownKeyError, read_manifest

__all__ = [
    "Hit",
    "IndexUpdate",
    "IndexView",
    "Manifest",
    "SimilarityIndex",
    "UnknownKeyError",
    "read_manifest",
    "update",
]
