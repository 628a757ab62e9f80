"""Load: 5,000 uploads (1 % of them broken) through the full local path. Afterwards every upload
is exactly once a row or a quarantine row, and nothing is in the dead-letter queue.

Slow (several minutes): run by `make test-reliability`, not by `make test`.
"""

from __future__ import annotations

import pytest
from fruits import aws, ingest, query, stream, upload

from conftest import SAMPLE

pytestmark = [pytest.mark.spark, pytest.mark.slow]

UPLOADS = 5000


def test_five_thousand_uploads_end_exactly_once(spark, settings, weights_blob) -> None:
    settings = settings.with_(batch_size=64, max_files_per_trigger=128)
    good = upload.upload_copies(settings, upload.sample_images(SAMPLE), UPLOADS - UPLOADS // 100, "load")
    s3 = aws.client("s3", settings)
    broken = [f"uploads/Broken/{i}.jpg" for i in range(UPLOADS // 100)]
    for key in broken:
        s3.put_object(Bucket=settings.bucket, Key=key, Body=b"not a photo")
    stats = ingest.drain(settings, visibility_timeout=30)
    assert stats.failed == 0
    stream.start(spark, settings, blob=weights_blob).awaitTermination()

    rows = query.sql(spark, settings, "SELECT count(*), count(DISTINCT key) FROM features").rows[0]
    quarantined = dict(query.sql(spark, settings, "SELECT reason, count(*) FROM quarantine GROUP BY reason").rows)
    assert rows == (len(good), len(good))
    assert quarantined == {"not_an_image": len(broken)}
    assert rows[0] + sum(quarantined.values()) == UPLOADS
    assert ingest.dead_letter_depth(settings) == 0
