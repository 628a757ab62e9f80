"""Every per-object failure of the fetch is classified: transient ones raise (Spark retries the
task; never a quarantine), permanent ones are the upload's (``ImageError`` with a reason and S3's
code and message). S3's answers come from botocore's own Stubber, as S3 gives them."""

from __future__ import annotations

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from fruits.featurize.fetch import fetch
from fruits.featurize.images import ImageError, Reason


def s3_answering(code: str, status: int, message: str = "") -> tuple[object, Stubber]:
    client = boto3.client("s3", region_name="eu-west-3", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    stub.add_client_error("get_object", service_error_code=code, service_message=message or code,
                          http_status_code=status)
    stub.activate()
    return client, stub


@pytest.mark.parametrize(("code", "status", "reason"), [
    ("NoSuchKey", 404, Reason.MISSING),
    ("PreconditionFailed", 412, Reason.CHANGED),
    ("NoSuchBucket", 404, Reason.FETCH_FAILED),
    ("AccessDenied", 403, Reason.FETCH_FAILED),
    ("InvalidObjectState", 403, Reason.FETCH_FAILED),  # archived (Glacier) and not restored
    ("KMS.DisabledException", 400, Reason.FETCH_FAILED),
    ("InvalidRequest", 400, Reason.FETCH_FAILED),
])
def test_permanent_failures_are_the_uploads(code: str, status: int, reason: Reason) -> None:
    client, stub = s3_answering(code, status, message=f"S3 says {code}")
    with pytest.raises(ImageError) as raised:
        fetch(client, "bkt", "uploads/a.jpg", '"etag"', None, patience=0)
    assert raised.value.reason == reason
    if reason == Reason.FETCH_FAILED:  # what S3 said, for the quarantine's error column
        assert f"{code}: S3 says {code}" in str(raised.value) and "s3://bkt/uploads/a.jpg" in str(raised.value)
    stub.assert_no_pending_responses()


@pytest.mark.parametrize(("code", "status"), [
    ("SlowDown", 503), ("InternalError", 500), ("ServiceUnavailable", 503), ("BadGateway", 502),
    ("GatewayTimeout", 504), ("RequestTimeout", 400), ("TooManyRequestsException", 429),
])
def test_transient_failures_raise_for_spark_to_retry(code: str, status: int) -> None:
    client, _ = s3_answering(code, status)
    with pytest.raises(ClientError) as raised:
        fetch(client, "bkt", "uploads/a.jpg", '"etag"', None, patience=0)
    assert not isinstance(raised.value, ImageError)
