"""Fruits! image-feature pipeline: the Spark jobs and the local tooling around them.

The public Python API (JVM-free reads, similar images, label suggestions, upload status)::

    from fruits import FeatureStore, Settings

    store = FeatureStore(Settings.from_env())
    store.classify("uploads/Banana/r_1.jpg")
"""

from __future__ import annotations

from typing import Any

__all__ = ["FeatureStore", "Neighbour", "Settings", "Status", "Suggestion"]


def __getattr__(name: str) -> Any:
    # Lazy: Spark's Python workers import this package too, and need none of it.
    if name == "Settings":
        from .config import Settings

        return Settings
    if name in ("FeatureStore", "Neighbour", "Status", "Suggestion"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module 'fruits' has no attribute {name!r}")
