"""What a Python worker does with its share of a micro-batch: fetch, decode, featurize.

``featurize_batches`` is the body of the stream's pandas UDF, as a plain function of pandas
Series, so it can run (and be tested) without Spark: the driver wraps it in ``pandas_udf``.

Example::

    options = WorkerOptions(endpoint_url=None, region="eu-west-3", batch_size=64)
    for frame in featurize_batches(compiled, options, [(buckets, keys, etags, versions)]):
        frame["features"], frame["reason"], frame["error"]
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..io.aws import make_client
from .fetch import FETCH_THREADS, fetch, prefetched
from .images import ImageError, decode
from .model import CompiledModel, get_featurizer


@dataclass(frozen=True)
class WorkerOptions:
    """The few settings a worker needs (not the whole ``Settings``: workers stay light)."""

    endpoint_url: str | None
    region: str
    batch_size: int = 64
    max_image_bytes: int | None = None
    model_threads: int = 1


class BrokenModel(FloatingPointError):
    """The model put out NaN or infinite features for valid images: its weights are broken."""


Columns = tuple[pd.Series, pd.Series, pd.Series, pd.Series]  # bucket, key, etag, version_id


@functools.cache
def _client(endpoint_url: str | None, region: str) -> Any:
    """One S3 client per Python worker and endpoint, kept across tasks (Spark reuses the workers):
    a client costs milliseconds to make and its connection pool is worth keeping warm."""
    return make_client("s3", endpoint_url, region, pool=2 * FETCH_THREADS)


def _load(client: Any, options: WorkerOptions, columns: Columns, i: int) -> np.ndarray | ImageError:
    """The pixels of row ``i`` of ``columns`` (bucket, key, etag, version), or why there are none."""
    buckets, keys, etags, versions = columns
    try:
        data = fetch(
            client, buckets.iat[i], keys.iat[i], etags.iat[i], versions.iat[i], max_bytes=options.max_image_bytes
        )
        return decode(data, max_bytes=options.max_image_bytes)
    except ImageError as exc:
        return exc


def featurize_batches(
    model: CompiledModel, options: WorkerOptions, batches: Iterable[Columns]
) -> Iterator[pd.DataFrame]:
    """One ``features | reason | error`` frame per input batch, rows in input order.

    Threads fetch and decode the next images while the model runs on the current chunk of
    ``batch_size``; an image that cannot become a row gets its quarantine reason instead.
    """
    featurizer = get_featurizer(model, options.model_threads)
    client = _client(options.endpoint_url, options.region)
    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        for columns in batches:
            n = len(columns[1])
            features: list[Any] = [None] * n
            reasons: list[str | None] = [None] * n
            errors: list[str | None] = [None] * n
            load = functools.partial(_load, client, options, columns)
            rows: list[int] = []
            pixels: list[np.ndarray] = []
            for i, result in enumerate(prefetched(load, n, pool, ahead=2 * options.batch_size)):
                if isinstance(result, ImageError):
                    reasons[i], errors[i] = str(result.reason), str(result)
                else:
                    rows.append(i)
                    pixels.append(result)
                if len(rows) == options.batch_size or (i == n - 1 and rows):
                    vectors = featurizer(np.stack(pixels))
                    if not np.isfinite(vectors).all():
                        # A bad model, not bad images: fail the task (then the batch) before any write.
                        raise BrokenModel(
                            "the model put out NaN or infinite features for valid images: "
                            "check its weights (fruits model compile refuses broken ones)"
                        )
                    for row, vector in zip(rows, vectors):
                        features[row] = vector
                    rows, pixels = [], []
            yield pd.DataFrame({"features": features, "reason": reasons, "error": errors})
