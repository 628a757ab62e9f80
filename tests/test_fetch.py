"""Every per-object failure of the fetch is classified: transient ones raise (Spark retries the
task; never a quarantine), permanent ones are the upload's (``ImageError`` with a reason and S3's
code and message). S3's answers come from botocore's own Stubber, as S3 gives them."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from fruits.featurize.fetch import S3Unavailable, fetch
from fruits.featurize.images import ImageError, Reason


def s3_answering(code: str, status: int, message: str = "") -> tuple[object, Stubber]:
    client = boto3.client("s3", region_name="eu-west-3", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_client_error(
        "get_object", service_error_code=code, service_message=message or code, http_status_code=status
    )
    stub.activate()
    return client, stub


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [
        ("NoSuchKey", 404, Reason.MISSING),
        ("PreconditionFailed", 412, Reason.CHANGED),
        ("NoSuchBucket", 404, Reason.FETCH_FAILED),
        ("AccessDenied", 403, Reason.FETCH_FAILED),
        ("InvalidObjectState", 403, Reason.FETCH_FAILED),  # archived (Glacier) and not restored
        ("KMS.DisabledException", 400, Reason.FETCH_FAILED),
        ("InvalidRequest", 400, Reason.FETCH_FAILED),
    ],
)
def test_permanent_failures_are_the_uploads(code: str, status: int, reason: Reason) -> None:
    client, stub = s3_answering(code, status, message=f"S3 says {code}")
    with pytest.raises(ImageError) as raised:
        fetch(client, "bkt", "uploads/a.jpg", '"etag"', None, patience=0)
    assert raised.value.reason == reason
    if reason == Reason.FETCH_FAILED:  # what S3 said, for the quarantine's error column
        assert f"{code}: S3 says {code}" in str(raised.value) and "s3://bkt/uploads/a.jpg" in str(raised.value)
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("SlowDown", 503),
        ("InternalError", 500),
        ("ServiceUnavailable", 503),
        ("BadGateway", 502),
        ("GatewayTimeout", 504),
        ("RequestTimeout", 400),
        ("TooManyRequestsException", 429),
    ],
)
def test_transient_failures_raise_for_spark_to_retry(code: str, status: int) -> None:
    client, _ = s3_answering(code, status)
    with pytest.raises(S3Unavailable) as raised:
        fetch(client, "bkt", "uploads/a.jpg", '"etag"', None, patience=0)
    assert isinstance(raised.value.__cause__, ClientError)


class Body:
    """A response body that counts what is read from it (a multi-gigabyte object never is)."""

    def __init__(self, size: int) -> None:
        self.size, self.read_bytes, self.closed = size, 0, False

    def read(self, n: int = -1) -> bytes:
        n = self.size - self.read_bytes if n < 0 else min(n, self.size - self.read_bytes)
        self.read_bytes += n
        return b"\xff" * n

    def close(self) -> None:
        self.closed = True


class Answering:
    """An S3 client whose GetObject answers with ``Body`` (its headers say ``announced`` bytes)."""

    def __init__(self, size: int, announced: int | None, version: str | None = None) -> None:
        self.body, self.announced, self.version = Body(size), announced, version
        self.asked: dict = {}

    def get_object(self, **args: object) -> dict:
        self.asked = args
        return {"Body": self.body, "ContentLength": self.announced, "VersionId": self.version}


def test_an_object_over_the_limit_is_refused_from_its_headers_unread() -> None:
    client = Answering(size=5 * 2**30, announced=5 * 2**30)  # 5 GiB
    with pytest.raises(ImageError) as raised:
        fetch(client, "bkt", "uploads/huge.jpg", "etag", None, max_bytes=1000)
    assert raised.value.reason == Reason.TOO_LARGE and "5368709120 bytes" in str(raised.value)
    assert client.body.read_bytes == 0 and client.body.closed


def test_a_body_longer_than_announced_is_read_no_further_than_the_limit() -> None:
    client = Answering(size=10_000, announced=None)
    with pytest.raises(ImageError) as raised:
        fetch(client, "bkt", "uploads/huge.jpg", "etag", None, max_bytes=1000)
    assert raised.value.reason == Reason.TOO_LARGE and client.body.read_bytes == 1001
    assert fetch(Answering(size=1000, announced=1000), "bkt", "k.jpg", "etag", None, max_bytes=1000) == b"\xff" * 1000


@pytest.mark.parametrize(
    ("bucket", "etag", "version_id"),
    [
        ("bkt", "d41d8cd98f00b204\r\nX-Injected: 1", None),
        ("bkt", "caf\u00e9", None),
        ("bkt", None, "v1\n"),
        ("not a bucket name!", "etag", None),
    ],
    ids=["etag-crlf", "etag-non-ascii", "version-newline", "bucket-name"],
)
def test_a_line_no_request_can_be_made_from_is_quarantined_not_an_outage(bucket, etag, version_id) -> None:
    # Nothing listens there: a request sent would fail as an outage, not as this line's fault.
    client = boto3.client(
        "s3",
        region_name="eu-west-3",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        endpoint_url="http://127.0.0.1:9",
    )
    with pytest.raises(ImageError) as raised:
        fetch(client, bucket, "uploads/a.jpg", etag, version_id, patience=0)
    assert raised.value.reason == Reason.INVALID_EVENT


def test_the_current_object_is_read_never_an_old_version() -> None:
    # With an etag, S3 checks it against the key's current object (If-Match); no version is asked for.
    client = Answering(size=10, announced=10, version="v2")
    fetch(client, "bkt", "uploads/a.jpg", "etag", "v1")
    assert client.asked == {"Bucket": "bkt", "Key": "uploads/a.jpg", "IfMatch": "etag"}
    # Without one, the current object's version must be the event's.
    assert fetch(Answering(size=10, announced=10, version="v1"), "bkt", "uploads/a.jpg", None, "v1") == b"\xff" * 10
    client = Answering(size=10, announced=10, version="v2")
    with pytest.raises(ImageError) as raised:
        fetch(client, "bkt", "uploads/a.jpg", None, "v1")
    assert raised.value.reason == Reason.CHANGED and client.body.read_bytes == 0 and client.body.closed
