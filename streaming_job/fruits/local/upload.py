"""Uploads as they come: labelled reference photos to ``<reference prefix><Class Name>/<file>``, and
the app's users' photos to ``<app prefix><user>/<n>.<suffix>``."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fruits_ingest.config import is_image_key

from ..config import Settings
from ..io import aws


def sample_images(folder: Path, per_class: int | None = None) -> list[tuple[str, Path]]:
    """``(label, path)`` for the images of a ``<folder>/<Class Name>/<file>`` tree, sorted."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    found: list[tuple[str, Path]] = []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and is_image_key(f.name))
        found.extend((class_dir.name, f) for f in files[:per_class])
    if not found:
        raise FileNotFoundError(f"no images under {folder}/<Class Name>/; expected image files (.jpg, .png, ...)")
    return found


def upload_images(
    settings: Settings,
    images: list[tuple[str, Path]],
    on_progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Upload each image as the app would; returns the keys written."""
    s3 = aws.client("s3", settings)
    keys = []
    for done, (label, path) in enumerate(images, start=1):
        key = f"{settings.reference_prefixes[0]}{label}/{path.name}"
        s3.upload_file(str(path), settings.bucket, key)
        keys.append(key)
        if on_progress is not None:
            on_progress(done, len(images))
    return keys


def upload_app_photos(settings: Settings, photos: list[tuple[str, bytes]], user: str = "demo-user") -> list[str]:
    """Upload ``(suffix, bytes)`` photos as the app does for ``user``: no label in the key; returns the keys."""
    s3 = aws.client("s3", settings)
    keys = [f"{settings.app_prefix}{user}/{n}{suffix}" for n, (suffix, _) in enumerate(photos, start=1)]
    for key, (_, data) in zip(keys, photos):
        s3.put_object(Bucket=settings.bucket, Key=key, Body=data)
    return keys


def upload_copies(settings: Settings, images: list[tuple[str, Path]], total: int, tag: str) -> list[str]:
    """Load generation: ``total`` copies of ``images``, each under its own key
    ``<reference prefix><label>/<tag><n>_<file>``, uploaded by 8 threads; returns the keys."""
    s3 = aws.client("s3", settings)
    blobs = [(label, path.name, path.read_bytes()) for label, path in images]
    jobs = [
        (f"{settings.reference_prefixes[0]}{label}/{tag}{i // len(blobs)}_{name}", data)
        for i, (label, name, data) in ((i, blobs[i % len(blobs)]) for i in range(total))
    ]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda job: s3.put_object(Bucket=settings.bucket, Key=job[0], Body=job[1]), jobs))
    return [key for key, _ in jobs]
