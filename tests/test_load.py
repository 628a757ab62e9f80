"""Load: 5,000 uploads (1 % of them broken) through the full local path. Afterwards every upload
is exactly once a row or a quarantine row, and nothing is in the dead-letter queue.

The 5,000-upload run is slow (about 4 minutes): `make test-reliability` runs it. `make test` runs
the same test at 400 uploads, so CI covers this kind too.
"""

from __future__ import annotations

import pytest

from conftest import SAMPLE
from fruits import stream
from fruits.io import aws
from fruits.local import ingest, upload
from fruits.query.sql import sql as spark_sql

pytestmark = pytest.mark.spark

CHUNK = 500


@pytest.mark.parametrize("uploads", [400, pytest.param(5000, marks=pytest.mark.slow)])
def test_every_upload_ends_exactly_once(spark, settings, weights_blob, uploads: int) -> None:
    settings = settings.with_(batch_size=64, max_files_per_trigger=128)
    s3 = aws.client("s3", settings)
    broken = [f"uploads/Broken/{i}.jpg" for i in range(uploads // 100)]
    for key in broken:
        s3.put_object(Bucket=settings.bucket, Key=key, Body=b"not a photo")
    # The Lambda consumes while the app uploads: in chunks, which also keeps the emulator's queue
    # short (moto's SQS slows down on a deep queue: a first run draining 5,000 events at once
    # timed out after 2,910).
    good: list[str] = []
    for chunk, start in enumerate(range(0, uploads - len(broken), CHUNK)):
        size = min(CHUNK, uploads - len(broken) - start)
        good += upload.upload_copies(settings, upload.sample_images(SAMPLE), size, f"load{chunk}_")
        assert ingest.drain(settings, visibility_timeout=30).failed == 0
    stream.start(spark, settings, model=weights_blob).awaitTermination()

    rows = spark_sql(spark, settings, "SELECT count(*), count(DISTINCT key) FROM features").rows[0]
    quarantined = dict(spark_sql(spark, settings, "SELECT reason, count(*) FROM quarantine GROUP BY reason").rows)
    assert rows == (len(good), len(good))
    assert quarantined == {"not_an_image": len(broken)}
    assert rows[0] + sum(quarantined.values()) == uploads
    assert ingest.dead_letter_depth(settings) == 0
