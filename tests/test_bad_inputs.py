"""The bad-input corpus, each as a real upload through the whole local path (S3 event, the Lambda,
the uploads ledger, the stream): odd formats and odd keys end as correct rows. The broken files (text named
.jpg, truncated, bomb, zero bytes, deleted, overwritten) are in test_stream.py."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conftest import SAMPLE
from fruits import stream
from fruits.io import aws
from fruits.local import ingest
from fruits.query.sql import sql as spark_sql

pytestmark = pytest.mark.spark


def encoded(img: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def corpus() -> dict[str, bytes]:
    """Upload key -> bytes. Each must become one row, labelled by its folder."""
    photo = Image.open(sorted(SAMPLE.glob("Kiwi/*.jpg"))[0]).convert("RGB")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(photo.size))
    sixteen = Image.fromarray((np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16))
    frames = [photo, photo.rotate(90), photo.rotate(180)]  # an animated GIF: its first frame counts
    rotated_exif = photo.rotate(90, expand=True)  # stored sideways; EXIF says "turn 90° clockwise"
    exif = Image.Exif()
    exif[0x0112] = 6
    big = photo.resize((4000, 3000), Image.Resampling.BICUBIC)
    return {
        "uploads/Kiwi/upright.jpg": encoded(photo, "JPEG", quality=95),
        "uploads/Kiwi/alpha.png": encoded(rgba, "PNG"),
        "uploads/Kiwi/gray.jpg": encoded(photo.convert("L"), "JPEG"),
        "uploads/Kiwi/cmyk.jpg": encoded(photo.convert("CMYK"), "JPEG"),
        "uploads/Kiwi/sixteen-bit.png": encoded(sixteen, "PNG"),
        "uploads/Kiwi/exif-rotated.jpg": encoded(rotated_exif, "JPEG", quality=95, exif=exif.tobytes()),
        "uploads/Kiwi/sideways.jpg": encoded(rotated_exif, "JPEG", quality=95),  # the same, without EXIF
        "uploads/Kiwi/animated.gif": encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100),
        "uploads/Kiwi/photo.webp": encoded(photo, "WEBP"),
        "uploads/Kiwi/twelve-megapixel.jpg": encoded(big, "JPEG", quality=90),
        "uploads/Kiwi/with space.jpg": encoded(photo, "JPEG"),
        "uploads/Kiwi/plus+sign.jpg": encoded(photo, "JPEG"),
        "uploads/Kiwi/100%.jpg": encoded(photo, "JPEG"),
        "uploads/Pêche été/pomme-🍎.jpg": encoded(photo, "JPEG"),
        "uploads/Kiwi/" + "a" * (1000 - len("uploads/Kiwi/") - 4) + ".jpg": encoded(photo, "JPEG"),
    }


def test_every_odd_upload_becomes_a_correct_row(spark, settings, weights_blob) -> None:
    uploads = corpus()
    assert len(max(uploads, key=len)) == 1000
    s3 = aws.client("s3", settings)
    for key, body in uploads.items():
        s3.put_object(Bucket=settings.bucket, Key=key, Body=body)
    assert ingest.drain(settings, visibility_timeout=5).failed == 0
    stream.start(spark, settings, model=weights_blob).awaitTermination()

    rows = {r[0]: r for r in spark_sql(spark, settings, "SELECT key, label, features FROM features").rows}
    quarantined = spark_sql(spark, settings, "SELECT key, reason, error FROM quarantine").rows
    assert quarantined == []
    assert sorted(rows) == sorted(uploads)
    for key, (_, label, features) in rows.items():
        assert label == key.split("/")[1]
        assert len(features) == 1280 and np.isfinite(features).all()
    assert ingest.dead_letter_depth(settings) == 0

    # EXIF orientation is applied: the photo stored sideways with its EXIF tag has the upright
    # photo's features; stored sideways without the tag, it does not.
    def cosine(a: str, b: str) -> float:
        x, y = np.asarray(rows[a][2]), np.asarray(rows[b][2])
        return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))

    with_exif = cosine("uploads/Kiwi/upright.jpg", "uploads/Kiwi/exif-rotated.jpg")
    without = cosine("uploads/Kiwi/upright.jpg", "uploads/Kiwi/sideways.jpg")
    assert with_exif > 0.98 and without < with_exif - 0.02, (with_exif, without)
