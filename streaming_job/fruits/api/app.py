"""The HTTP API the app's backend calls: what fruit a photo shows, where an upload is, similar
images. Read-only over the tables, as ``FeatureStore`` reads them (delta-rs, no JVM).

Example::

    uvicorn.run(create_app(FeatureStore(Settings.from_env())), port=8080)    # what `fruits serve` does

    curl -X POST --data-binary @banana.jpg -H 'Content-Type: image/jpeg' localhost:8080/v1/classify
    curl localhost:8080/v1/uploads/app%2Fuser-1%2F42.jpg
    curl 'localhost:8080/v1/similar/uploads%2FBanana%2Fr_1.jpg?k=5'

The model is loaded and the newest classifier read when the server starts; a newer classifier
version (the refit's) is picked up within ``FRUITS_REFRESH_SECONDS``, without a restart. Blocking
work (decoding, the model, table reads) runs in worker threads, one photo per core at once; at most
``PHOTOS_AT_ONCE`` per core are read and answered together (the others wait unread), which bounds
the memory the bodies take.

Limitations: one process; several share nothing but the tables (each loads the model, ~14 MB per
core). ``GET /v1/uploads`` opens the three tables' Delta logs at each request (as
``FeatureStore.status`` does): its cost grows with the logs' checkpoints, unlike the others'.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import version
from ..featurize.images import ImageError, Reason
from ..io import lake
from ..query.result import ModelMismatchError, NoDirectionError
from ..query.store import FeatureStore, Status, Suggestion
from ..similarity import UnknownKeyError
from . import errors
from .body import FILE_FIELD, FORM, IMAGE_TYPES, read_photo
from .errors import ApiError
from .schemas import Candidate, Classification, Error, Health, Neighbour, Readiness, Similar, Upload

log = logging.getLogger(__name__)

MAX_K = 100  # neighbours one request may ask for
PHOTOS_AT_ONCE = 4  # per core: photos read and answered at once (a body may be 20 MiB)

# The request body of POST /v1/classify as the OpenAPI page shows it (the handler reads it itself,
# to refuse a body past the limit before reading it).
_PHOTO_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            **{media: {"schema": {"type": "string", "format": "binary"}} for media in IMAGE_TYPES},
            FORM: {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {FILE_FIELD: {"type": "string", "format": "binary"}},
                }
            },
        },
    }
}
_ERRORS = {
    400: "an empty body, or bytes that are no image the pipeline can decode (code: the pipeline's reason)",
    404: "a key the pipeline never saw",
    413: "a photo over FRUITS_API_MAX_BODY_BYTES",
    415: "a Content-Type other than image/jpeg, image/png, image/webp or multipart/form-data",
    422: "a parameter out of range",
    503: "not ready: no classifier, table or similarity index yet, or the model's weights are not the table's",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers a route documents (all in the one shape)."""
    return {status: {"model": Error, "description": _ERRORS[status]} for status in statuses}


def create_app(store: FeatureStore) -> FastAPI:
    """The API over the tables ``store`` reads (``FeatureStore(settings)``)."""
    settings = store.settings
    photos = asyncio.Semaphore(PHOTOS_AT_ONCE * (os.cpu_count() or 1))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ready = await run_in_threadpool(readiness, store)  # loads the model and the classifier once
        if ready.ready:
            log.warning("fruits serve: ready (model %s, classifier v%s)", ready.model_id, ready.classifier_version)
        else:
            log.warning("fruits serve: not ready yet: %s", "; ".join(ready.problems))
        yield

    app = FastAPI(
        title="Fruits API",
        version=version(),
        lifespan=lifespan,
        description="What fruit a photo shows (or that it is none the classifier knows), where an "
        "upload is in the pipeline, and similar images. Errors are "
        '`{"error": {"code": ..., "message": ...}}`.',
    )
    errors.install(app)

    @app.post(
        "/v1/classify",
        response_model=Classification,
        openapi_extra=_PHOTO_BODY,
        tags=["photos"],
        responses=_errors(400, 413, 415, 422, 503),
    )
    async def classify(
        request: Request, k: int = Query(5, ge=1, le=MAX_K, description="neighbours to return")
    ) -> Classification:
        """What fruit the photo shows: the body is the photo's bytes (`Content-Type: image/jpeg`,
        `image/png` or `image/webp`) or a multipart form with the photo in the field `file`."""
        async with photos:
            photo = await read_photo(request, settings.api_max_body_bytes)
            return await run_in_threadpool(_classify, store, photo, k)

    @app.get("/v1/uploads/{key:path}", response_model=Upload, tags=["uploads"], responses=_errors(404, 503))
    def upload(key: str = Path(description="the upload's key, URL-encoded (slashes as %2F or as they are)")) -> Upload:
        """Where an upload is: processed (its row's label and the classifier's answer), quarantined
        (the reason), pending (recorded, not yet featurized) or skipped (not an image)."""
        try:
            return _upload(store.status(key))
        except FileNotFoundError as exc:  # no table yet: the pipeline has not run
            raise ApiError(503, "not_ready", _first_line(exc)) from None

    @app.get("/v1/similar/{key:path}", response_model=Similar, tags=["uploads"], responses=_errors(404, 422, 503))
    def similar(
        key: str = Path(description="the upload's key, URL-encoded"),
        k: int = Query(10, ge=1, le=MAX_K, description="neighbours to return"),
    ) -> Similar:
        """The `k` rows nearest the upload's (cosine, in the similarity index's PCA space)."""
        try:
            found = store.similar(key, k)
        except UnknownKeyError:
            raise ApiError(
                404, "unknown_key", f"{key} is not in the features table: GET /v1/uploads/{key} says where it is"
            ) from None
        except (LookupError, FileNotFoundError) as exc:
            raise ApiError(503, "index_unavailable", _first_line(exc)) from None
        except NoDirectionError as exc:
            raise ApiError(422, "no_direction", _first_line(exc)) from None
        return Similar(key=key, neighbours=[Neighbour(key=n.key, label=n.label, distance=n.distance) for n in found])

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Health:
        """The process answers (a liveness probe)."""
        return Health()

    @app.get(
        "/readyz",
        response_model=Readiness,
        tags=["operations"],
        responses={503: {"model": Readiness, "description": "not ready: see problems"}},
    )
    def readyz() -> Any:
        """Whether the model, a classifier and the features table are loaded or found (a
        readiness probe: 503 with the problems until they are)."""
        ready = readiness(store)
        if ready.ready:
            return ready
        return JSONResponse(ready.model_dump(), status_code=503)

    return app


def readiness(store: FeatureStore) -> Readiness:
    """Load what answering needs (the model, the newest classifier, the similarity index), look for
    the features table, and say what is missing. A probe: it never raises."""
    problems, model_id, version, pca_version = [], None, None, None
    try:
        model_id = store.featurizer().model_id
    except Exception as exc:  # noqa: BLE001 - whatever stops the model loading is reported, not raised
        problems.append(f"model {store.settings.weights!r} not loaded: {_first_line(exc)}")
    try:
        found = store.classifier()
        version = found.version
        if model_id is not None and found.feature_model_id != model_id:
            problems.append(
                f"the classifier answers features of {found.feature_model_id}, but FRUITS_WEIGHTS are "
                f"{model_id}: set FRUITS_WEIGHTS to the weights the pipeline runs"
            )
    except Exception as exc:  # noqa: BLE001 - none yet, or the table unreadable (S3 denied, throttled)
        problems.append(_first_line(exc))
    try:
        if not lake.exists(store.settings, store.settings.features_table):
            problems.append(f"no features table at {store.settings.features_table}: run the stream first")
        pca_version = store.index_version()  # not needed to answer: the neighbours are left out without it
    except Exception as exc:  # noqa: BLE001
        problems.append(f"the tables at {store.settings.table_root} cannot be read: {_first_line(exc)}")
    return Readiness(
        ready=not problems, model_id=model_id, classifier_version=version, pca_version=pca_version, problems=problems
    )


def _classify(store: FeatureStore, photo: bytes, k: int) -> Classification:
    try:
        found: Suggestion = store.classify(photo, k=k)
    except ImageError as exc:
        too_large = exc.reason == Reason.TOO_LARGE  # FRUITS_MAX_IMAGE_BYTES below the API's own limit
        raise ApiError(
            413 if too_large else 400,
            "too_large" if too_large else exc.reason.value,
            f"{exc}: send a JPEG, PNG or WebP photo (the pipeline would quarantine this one as {exc.reason.value})",
        ) from None
    except ModelMismatchError as exc:
        raise ApiError(503, "model_mismatch", _first_line(exc)) from None
    except (LookupError, FileNotFoundError) as exc:  # no classifier yet
        raise ApiError(503, "not_ready", _first_line(exc)) from None
    return Classification(
        label=found.label,
        unknown=found.unknown,
        confidence=found.confidence,
        similarity=found.similarity,
        threshold=found.threshold,
        candidates=[Candidate(label=c.label, score=c.similarity) for c in found.candidates],
        neighbours=[Neighbour(key=n.key, label=n.label, distance=n.distance) for n in found.neighbours],
        model_id=store.featurizer().model_id,
        classifier_version=found.classifier_version,
        pca_version=found.pca_version,
    )


def _upload(status: Status) -> Upload:
    if status.state == "unknown":
        raise ApiError(404, "unknown_key", f"the pipeline never saw {status.key}: {status.detail}")
    newest = max(status.rows, key=lambda r: r.get("ingested_at") or r.get("quarantined_at") or "", default={})
    reason = newest.get("reason") or (Reason.NOT_AN_IMAGE.value if status.state == "skipped" else None)
    return Upload(
        key=status.key,
        state=status.state,
        label=newest.get("label"),
        suggested_label=newest.get("suggested_label"),
        confidence=newest.get("confidence"),
        unknown=newest.get("unknown"),
        reason=reason,
        ingested_at=newest.get("ingested_at"),
        detail=status.detail,
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
