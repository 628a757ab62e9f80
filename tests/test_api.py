"""`fruits serve`: the HTTP API over tables the pipeline's writers wrote, called over real HTTP in a
process of its own. A known fruit, a non-fruit, every error status, a new classifier version
picked up without a restart, and nothing written."""

from __future__ import annotations

import datetime as dt
import http.client
import io
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from conftest import SAMPLE
from fruits.config import Settings
from fruits.featurize.build import compile_model
from fruits.io import lake
from fruits.local.not_fruit import not_fruit_images
from fruits.local.reference import write_reference_rows
from fruits.local.server import serving
from fruits.local.upload import sample_images
from fruits.pca.refit import refit
from fruits.spark.schema import QUARANTINE

pytestmark = pytest.mark.spark

HELD_OUT_EVERY = 6  # every 6th photo of a class is not a reference row: the API is asked about it
LIMIT = 8 * 1024 * 1024  # the server's body limit here (a 12-megapixel JPEG fits)


@pytest.fixture(scope="module")
def tables(spark, weights_blob, tmp_path_factory) -> tuple[Settings, list[tuple[str, Path]], list[tuple[str, Path]]]:
    """Reference rows written as the stream writes them, a quarantined upload, and the refit's PCA,
    index and classifier v1; the held-out photos and the reference ones. The model is compiled once
    (the server loads it without TensorFlow)."""
    root = tmp_path_factory.mktemp("api")
    compiled = compile_model(weights_blob)
    settings = Settings(table_root=str(root / "tables"), weights=str(compiled.save(root / "model.tflite")))
    images = sample_images(SAMPLE)
    reference = [im for i, im in enumerate(images) if i % HELD_OUT_EVERY]
    held_out = [im for i, im in enumerate(images) if not i % HELD_OUT_EVERY]
    write_reference_rows(spark, settings, reference, compiled)
    now = dt.datetime.now(dt.UTC)
    bad = pd.DataFrame(
        [
            {
                "image_id": "q1",
                "bucket": settings.bucket,
                "key": "app/user-1/broken.jpg",
                "etag": "e",
                "version_id": None,
                "event_date": now.date(),
                "reason": "truncated_or_corrupt",
                "error": "cannot decode",
                "quarantined_at": now,
                "message_id": "m",
            }
        ]
    )
    spark.createDataFrame(bad, QUARANTINE).write.format("delta").mode("append").save(settings.quarantine_table)
    fit = refit(spark, settings, write_plots=False)
    assert fit.classifier.classifier is not None and fit.classifier.classifier.version == 1
    return settings, held_out, reference


def env_of(settings: Settings) -> dict[str, str]:
    import os

    return {
        **os.environ,
        "FRUITS_TABLE_ROOT": settings.table_root,
        "FRUITS_WEIGHTS": settings.weights,
        "FRUITS_REFRESH_SECONDS": "1",
        "FRUITS_API_MAX_BODY_BYTES": str(LIMIT),
    }


def call(
    url: str, body: bytes | None = None, content_type: str | None = None, method: str | None = None
) -> tuple[int, Any]:
    """One request; the status and the JSON answer (whatever the status)."""
    request = urllib.request.Request(
        url, data=body, method=method, headers={"Content-Type": content_type} if content_type else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def bare(url: str, method: str, path: str, body: bytes) -> tuple[int, Any]:
    """A request with no headers but Content-Length (urllib would add a Content-Type)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def multipart(field: str, data: bytes, filename: str = "photo.jpg") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def jpeg(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def versions(settings: Settings) -> dict[str, int]:
    return {
        name: lake.delta_table(settings, f"{settings.table_root}/{name}").version()
        for name in ("features", "quarantine", "pca_models", "classifiers")
    }


def quoted(key: str) -> str:
    return urllib.parse.quote(key, safe="")


def test_answers_over_http_refuses_bad_input_clearly_and_follows_new_classifiers(spark, tables) -> None:
    settings, held_out, reference = tables
    before = versions(settings)
    with serving(env_of(settings)) as url:
        # Known fruits, photos the reference rows do not hold: raw bytes and a multipart form.
        for label, path in held_out[::10]:
            status, answer = call(f"{url}/v1/classify", path.read_bytes(), "image/jpeg")
            assert status == 200 and answer["label"] == label and not answer["unknown"], (label, answer)
            assert answer["candidates"][0]["label"] == label and 0 < answer["candidates"][0]["score"] <= 1
            assert answer["neighbours"] and answer["neighbours"][0]["label"] == label
            assert answer["classifier_version"] == 1 and answer["pca_version"] == 1
            assert answer["model_id"].startswith("mobilenet_v2_1.0_224_avgpool:")
        label, path = held_out[1]
        status, answer = call(f"{url}/v1/classify?k=2", *multipart("file", path.read_bytes()))
        assert status == 200 and answer["label"] == label and len(answer["neighbours"]) == 2
        # A 12-megapixel photo of the same fruit: decoded as the pipeline does, the same answer.
        big = jpeg(Image.open(path).convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC))
        status, answer = call(f"{url}/v1/classify", big, "image/jpeg")
        assert status == 200 and answer["label"] == label, answer
        # WebP too.
        webp = io.BytesIO()
        Image.open(path).save(webp, "WEBP", quality=90)
        status, answer = call(f"{url}/v1/classify", webp.getvalue(), "image/webp")
        assert status == 200 and answer["label"] == label, answer
        # No fruit: "unknown", with the best candidates all the same.
        for kind, data in not_fruit_images(4, seed=5):
            status, answer = call(f"{url}/v1/classify", data, "image/png")
            assert status == 200 and answer["unknown"] and answer["label"] is None, (kind, answer)
            assert answer["similarity"] < answer["threshold"] and len(answer["candidates"]) == 3

        # Bad input: a status and a code, never a 500.
        good = held_out[0][1].read_bytes()
        bomb = io.BytesIO()
        Image.new("1", (12000, 12000)).save(bomb, "PNG")  # 144 megapixels in a few kB
        refused = {
            "empty": (call(f"{url}/v1/classify", b"", "image/jpeg"), 400, "empty_object"),
            "text": (call(f"{url}/v1/classify", b"hello, not a photo", "image/jpeg"), 400, "not_an_image"),
            "truncated": (call(f"{url}/v1/classify", good[:400], "image/jpeg"), 400, "truncated_or_corrupt"),
            "bomb": (call(f"{url}/v1/classify", bomb.getvalue(), "image/png"), 400, "decompression_bomb"),
            "type": (call(f"{url}/v1/classify", good, "text/plain"), 415, "unsupported_media_type"),
            "no type": (bare(url, "POST", "/v1/classify", good), 415, "unsupported_media_type"),
            "bad form": (
                call(f"{url}/v1/classify", b"--x\r\nnot a form", "multipart/form-data; boundary=y"),
                400,
                "bad_form",
            ),
            "no file": (call(f"{url}/v1/classify", *multipart("photo", good)), 400, "missing_file"),
            "k": (call(f"{url}/v1/classify?k=0", good, "image/jpeg"), 422, "invalid_parameter"),
            "similar k": (
                call(f"{url}/v1/similar/{quoted('uploads/' + held_out[1][0])}?k=1000"),
                422,
                "invalid_parameter",
            ),
            "unknown key": (call(f"{url}/v1/uploads/{quoted('app/user-9/never.jpg')}"), 404, "unknown_key"),
            "unknown similar": (call(f"{url}/v1/similar/{quoted('app/user-9/never.jpg')}"), 404, "unknown_key"),
            "no route": (call(f"{url}/v2/classify"), 404, "not_found"),
            "method": (call(f"{url}/v1/classify"), 405, "method_not_allowed"),
        }
        for name, ((status, answer), want_status, want_code) in refused.items():
            assert (status, answer["error"]["code"]) == (want_status, want_code), (name, answer)
            assert len(answer["error"]["message"]) > 20, (name, answer)
        # Past the limit is refused on the headers alone: the server does not wait for the body.
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.putrequest("POST", "/v1/classify")
        connection.putheader("Content-Type", "image/jpeg")
        connection.putheader("Content-Length", str(100 * LIMIT))
        connection.endheaders(b"\xff\xd8")
        answer = connection.getresponse()
        assert answer.status == 413 and json.loads(answer.read())["error"]["code"] == "too_large"
        connection.close()
        # Without a Content-Length (chunked), the reading stops at the limit.
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        connection.request(
            "POST",
            "/v1/classify",
            body=iter([b"\xff" * (LIMIT + 1)]),
            headers={"Content-Type": "image/jpeg"},
            encode_chunked=True,
        )
        answer = connection.getresponse()
        assert answer.status == 413 and json.loads(answer.read())["error"]["code"] == "too_large"
        connection.close()

        # Where an upload is, the key URL-encoded or with its slashes.
        label, path = reference[7]
        for key in (quoted(f"uploads/{label}/{path.name}"), urllib.parse.quote(f"uploads/{label}/{path.name}")):
            status, answer = call(f"{url}/v1/uploads/{key}")
            assert status == 200 and answer["state"] == "processed" and answer["label"] == label, answer
            assert answer["ingested_at"] and answer["reason"] is None
        status, answer = call(f"{url}/v1/uploads/{quoted('app/user-1/broken.jpg')}")
        assert status == 200 and answer["state"] == "quarantined" and answer["reason"] == "truncated_or_corrupt"
        status, answer = call(f"{url}/v1/uploads/{quoted('uploads/Kiwi/notes.TXT')}")
        assert status == 200 and answer["state"] == "skipped" and answer["reason"] == "not_an_image"
        status, answer = call(f"{url}/v1/similar/{quoted(f'uploads/{label}/{path.name}')}?k=4")
        assert status == 200 and len(answer["neighbours"]) == 4
        assert all(n["key"] != f"uploads/{label}/{path.name}" for n in answer["neighbours"])
        assert answer["neighbours"][0]["label"] == label

        # The API's page, and its readiness.
        with urllib.request.urlopen(f"{url}/docs") as page:
            assert page.status == 200 and b"swagger" in page.read().lower()
        status, schema = call(f"{url}/openapi.json")
        assert {"/v1/classify", "/v1/uploads/{key}", "/v1/similar/{key}", "/healthz", "/readyz"} <= set(schema["paths"])
        assert "image/jpeg" in schema["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
        assert call(f"{url}/healthz") == (200, {"status": "ok"})
        status, ready = call(f"{url}/readyz")
        assert status == 200 and ready["ready"] and ready["classifier_version"] == 1

        # Read-only: nothing the server did wrote a table.
        assert versions(settings) == before
        # A new classifier version (another reject quantile) is answered with, without a restart.
        assert refit(spark, settings, write_plots=False, reject_quantile=0.05).classifier.classifier.version == 2
        for _ in range(100):
            status, answer = call(f"{url}/v1/classify", good, "image/jpeg")
            assert status == 200, answer
            if answer["classifier_version"] == 2:
                break
            time.sleep(0.1)
        assert answer["classifier_version"] == 2


@pytest.mark.parametrize("content_type", ["image/jpeg", "multipart/form-data; boundary=b"])
def test_a_body_is_read_only_up_to_the_limit(content_type: str) -> None:
    """However the body comes (no Content-Length, raw or a form), the reading stops at the limit."""
    import asyncio

    from starlette.requests import Request

    from fruits.api.body import read_photo
    from fruits.api.errors import ApiError

    chunks = 0
    first = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'

    async def receive() -> dict:  # an endless body, as a client that never stops sending
        nonlocal chunks
        chunks += 1
        return {"type": "http.request", "body": first if chunks == 1 else b"\xff" * 65536, "more_body": True}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/classify",
        "query_string": b"",
        "headers": [(b"content-type", content_type.encode())],
    }
    with pytest.raises(ApiError) as refused:
        asyncio.run(read_photo(Request(scope, receive), limit=1 << 20))
    assert refused.value.status == 413 and chunks <= 18  # 16 chunks of 64 KiB are the limit


def test_not_ready_until_the_pipeline_has_a_classifier(tmp_path, weights_blob) -> None:
    """Over tables that are not there yet the server starts, says why it is not ready, and answers
    503 with what to do rather than failing."""
    settings = Settings(
        table_root=str(tmp_path / "tables"), weights=str(compile_model(weights_blob).save(tmp_path / "model.tflite"))
    )
    photo = sample_images(SAMPLE, per_class=1)[0][1].read_bytes()
    with serving(env_of(settings), ready=False) as url:
        status, ready = call(f"{url}/readyz")
        assert status == 503 and not ready["ready"] and ready["model_id"], ready
        assert any("no classifier yet" in p for p in ready["problems"]), ready
        assert any("no features table" in p for p in ready["problems"]), ready
        for answer in (
            call(f"{url}/v1/classify", photo, "image/jpeg"),
            call(f"{url}/v1/uploads/uploads/a/b.jpg"),
            call(f"{url}/v1/similar/uploads/a/b.jpg"),
        ):
            assert answer[0] == 503 and answer[1]["error"]["code"] in ("not_ready", "index_unavailable"), answer


def test_the_lambda_handler_answers_function_url_events(tables, monkeypatch) -> None:
    """On AWS the same app runs as a container-image Lambda behind a function URL (Mangum)."""
    import base64
    import importlib
    import sys
    from types import SimpleNamespace

    settings, held_out, reference = tables
    monkeypatch.setenv("FRUITS_TABLE_ROOT", settings.table_root)
    monkeypatch.setenv("FRUITS_WEIGHTS", settings.weights)
    sys.modules.pop("fruits.api.function", None)
    function = importlib.import_module("fruits.api.function")  # the cold start: the app, its model and classifier
    sys.modules.pop("fruits.api.function")  # another test's import is a cold start of its own

    def event(method: str, path: str, body: bytes = b"", **headers: str) -> dict:
        return {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "",
            "headers": {"host": "abc.lambda-url.eu-west-3.on.aws", **headers},
            "requestContext": {
                "http": {
                    "method": method,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "203.0.113.1",
                    "userAgent": "test",
                },
                "domainName": "abc.lambda-url.eu-west-3.on.aws",
                "stage": "$default",
            },
            "body": base64.b64encode(body).decode(),
            "isBase64Encoded": True,
        }

    context = SimpleNamespace(aws_request_id="r", function_name="fruits-qa-api")
    label, path = held_out[2]
    photo = path.read_bytes()
    answer = function.handler(
        event("POST", "/v1/classify", photo, **{"content-type": "image/jpeg", "content-length": str(len(photo))}),
        context,
    )
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["label"] == label, answer
    answer = function.handler(event("POST", "/v1/classify", b"not a photo", **{"content-type": "image/jpeg"}), context)
    assert answer["statusCode"] == 400 and json.loads(answer["body"])["error"]["code"] == "not_an_image"
    # The path as the function URL sends it, percent-encoded: a key with spaces and slashes.
    label, path = reference[3]
    answer = function.handler(event("GET", f"/v1/uploads/{quoted(f'uploads/{label}/{path.name}')}"), context)
    assert answer["statusCode"] == 200 and json.loads(answer["body"])["label"] == label, answer
