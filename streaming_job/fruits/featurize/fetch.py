"""Fetching an upload's bytes on a worker: as announced, patient with an unreachable S3.

Example::

    client = make_client("s3", endpoint_url, region, pool=FETCH_THREADS)
    data = fetch(client, "fruits-images", "uploads/Kiwi/1.jpg", etag, version_id)

Every failure is classified (the README's table of quarantine reasons):

- transient (S3 unreachable, 5xx, throttling such as 503 SlowDown, 429): never the upload's fault.
  botocore retries it; an unreachable S3 is waited out up to ``FETCH_PATIENCE`` more per outage;
  then ``fetch`` raises ``S3Unavailable`` so that Spark's task retries, then the stream's restart,
  take over (the stream's poison-pill rule never blames an image for it);
- permanent for this object: ``ImageError``, quarantined with a reason, and the batch goes on. A
  deleted (``object_missing``) or overwritten (``object_changed``) object, and any other client
  error a retry cannot fix (``fetch_failed`` with S3's code and message: NoSuchBucket, AccessDenied,
  InvalidObjectState for an archived object, KMS errors, ...); an object over the byte limit
  (``too_many_bytes``: its size is read from the response's headers, and the body read stops at
  the limit, so a multi-gigabyte upload never reaches memory); a ledger row no request can be
  made from (``invalid_event``: an etag or version id with control characters, a bucket name S3
  would refuse), which botocore would otherwise raise as an S3 outage or a parameter error.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from botocore.exceptions import ClientError, ConnectionError, HTTPClientError, ParamValidationError

from ..io.aws import error_code
from .images import ImageError, Reason

log = logging.getLogger(__name__)

# How long the fetches of a Python worker wait out an unreachable S3 (refused or dropped
# connections), beyond botocore's own retries (about 6 s in standard mode), before they fail and
# Spark's task retries, then the stream's restart from its checkpoint, take over. Never a
# quarantine: the image is not at fault. The wait is per outage, not per object: once S3 has been
# unreachable this long, every fetch fails at once instead of waiting again.
FETCH_PATIENCE = 60.0
FETCH_THREADS = 8  # concurrent GETs + decodes per Python worker, overlapping the model's work


class Outage:
    """When S3 became unreachable for this process (None while it is reachable), shared by the
    fetching threads under a lock."""

    # Failures further apart than this belong to separate outages.
    GAP = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_failure = 0.0

    def failed(self) -> float:
        """Record a failure now; returns how long the outage has lasted."""
        with self._lock:
            now = time.monotonic()
            if self._since is None or now - self._last_failure > self.GAP:
                self._since = now
            self._last_failure = now
            return now - self._since

    def ended(self) -> None:
        with self._lock:
            self._since = None


OUTAGE = Outage()


class S3Unavailable(Exception):
    """S3 could not answer (unreachable, 5xx, throttled) past botocore's retries and our patience:
    the job's problem, never the object's."""


# Client errors that a later attempt can fix (S3's throttling and timeouts); any 5xx is too.
# Expired or refreshing credentials are the job's, not the object's: retried, never quarantined.
TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "TooManyRequestsException",
        "InternalError",
        "ServiceUnavailable",
        "429",
        "ExpiredToken",
        "ExpiredTokenException",
        "TokenRefreshRequired",
        "RequestExpired",
    }
)


def transient(exc: ClientError) -> bool:
    """Whether S3's error is the service's (retry) rather than this object's (quarantine)."""
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or status == 429 or error_code(exc) in TRANSIENT_CODES


def _header_safe(name: str, value: str | None) -> None:
    """A value sent as an HTTP header must be printable ASCII: anything else would be refused by
    the HTTP client (as if S3 were unreachable) or split the request."""
    if value is not None and not (value.isascii() and value.isprintable()):
        raise ImageError(Reason.INVALID_EVENT, f"the event's {name} {value!r:.80} cannot be sent to S3")


def read_bounded(response: dict[str, Any], max_bytes: int | None, where: str) -> bytes:
    """A GetObject response's body, refused (``too_many_bytes``) past ``max_bytes`` without reading
    more than ``max_bytes + 1`` bytes of it."""
    body = response["Body"]
    if max_bytes is None:
        return body.read()
    size = response.get("ContentLength")
    if size is None or size <= max_bytes:
        data = body.read(max_bytes + 1)
        if len(data) <= max_bytes:
            return data
        size = f"over {max_bytes}"
    body.close()
    raise ImageError(Reason.TOO_LARGE, f"{where} has {size} bytes, over the limit of {max_bytes}: not read")


def fetch(
    client: Any,
    bucket: str,
    key: str,
    etag: str | None,
    version_id: str | None,
    patience: float | None = None,
    outage: Outage = OUTAGE,
    max_bytes: int | None = None,
) -> bytes:
    """The bytes of the key's current object, if it is still the one the event announced;
    ``ImageError`` if it is gone, was replaced since, is over ``max_bytes``, or cannot be asked for.

    The key's current object is the truth, on a versioned bucket too: an event whose object was
    overwritten (another etag) or deleted (a delete marker) since is ``object_changed`` or
    ``object_missing``, never featurized from its old version; the newer upload has its own event.
    The event's etag is checked by S3 (``If-Match``); an event without one is checked by version id.
    """
    patience = FETCH_PATIENCE if patience is None else patience
    where = f"s3://{bucket}/{key}"
    args: dict[str, Any] = {"Bucket": bucket, "Key": key}
    if etag:
        _header_safe("etag", etag)
        args["IfMatch"] = etag
    elif version_id:
        _header_safe("version id", version_id)
    pause = 0.5
    while True:
        try:
            response = client.get_object(**args)
            if not etag and version_id and response.get("VersionId") not in (None, version_id):
                response["Body"].close()
                raise ImageError(
                    Reason.CHANGED,
                    f"{where} was overwritten since the event (version {version_id}); "
                    "the newer upload has its own event",
                )
            data = read_bounded(response, max_bytes, where)
            outage.ended()
            return data
        except ParamValidationError as exc:  # raised before any request: this line's, not S3's
            raise ImageError(Reason.INVALID_EVENT, f"{where}: {exc}") from exc
        except ClientError as exc:
            code = error_code(exc)
            if code in ("NoSuchKey", "NoSuchVersion", "404"):
                raise ImageError(Reason.MISSING, f"{where} was deleted before it was read") from exc
            if code in ("PreconditionFailed", "412"):
                raise ImageError(
                    Reason.CHANGED,
                    f"{where} was overwritten since the event (etag {etag}); the newer upload has its own event",
                ) from exc
            if transient(exc):
                raise S3Unavailable(f"{where}: S3 answered {code or 'an error'}, a failure of the service") from exc
            message = exc.response.get("Error", {}).get("Message", "")
            raise ImageError(Reason.FETCH_FAILED, f"{where}: {code or 'error'}: {message}") from exc
        except (ConnectionError, HTTPClientError) as exc:
            if outage.failed() + pause > patience:
                raise S3Unavailable(f"{where}: S3 unreachable for over {patience:.0f}s: {exc}") from exc
            log.warning("S3 unreachable for %s (%s); retrying in %.1fs", where, exc, pause)
            time.sleep(pause)
            pause = min(2 * pause, 8.0)


def prefetched(load: Callable[[int], Any], n: int, pool: ThreadPoolExecutor, ahead: int) -> Iterator[Any]:
    """``load(0) .. load(n - 1)`` in order, computed by ``pool`` at most ``ahead`` items in advance
    (so memory holds a bounded number of decoded images, whatever the Arrow batch size)."""
    pending: deque[Future[Any]] = deque()
    for i in range(n):
        pending.append(pool.submit(load, i))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
