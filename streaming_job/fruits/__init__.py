"""Fruits! image-feature pipeline: the Spark jobs and the local tooling around them.

One subpackage per stage: ``featurize`` (the workers' side of stage 3), ``stream`` (its driver
side), ``pca`` (stage 4), ``query`` (stage 5), on ``io`` (AWS, delta-rs) and ``spark`` (session,
tables); ``local`` runs stages 1-2 on one machine (the emulator and the Lambda's event source).

The public Python API (JVM-free reads, similar images, label suggestions, upload status)::

    from fruits import FeatureStore, Settings

    store = FeatureStore(Settings.from_env())
    store.classify("uploads/Banana/r_1.jpg")
"""

from __future__ import annotations

from typing import Any

__all__ = ["FeatureStore", "Neighbour", "Settings", "Status", "Suggestion", "version"]


def version() -> str:
    """The installed distribution's version (``fruits --version``, the HTTP API's OpenAPI page)."""
    from importlib import metadata

    try:
        return metadata.version("fruits-pipeline")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def __getattr__(name: str) -> Any:
    # Lazy: Spark's Python workers import this package too, and need none of it.
    if name == "Settings":
        from .config import Settings

        return Settings
    if name in ("FeatureStore", "Neighbour", "Status", "Suggestion"):
        from .query import store

        return getattr(store, name)
    raise AttributeError(f"module 'fruits' has no attribute {name!r}")
