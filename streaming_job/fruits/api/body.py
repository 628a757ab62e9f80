"""A photo from a request: its bytes, or the ``file`` field of a multipart form, refused past the
size limit before the rest of the body is read.

Example::

    photo = await read_photo(request, limit=20 * 1024 * 1024)   # bytes, or ApiError 400/413/415

Limitations: the declared type must be one the API takes, but the bytes decide what the photo
is (a PNG sent as ``image/jpeg`` is decoded as the PNG it is, as the pipeline decodes an upload
whatever its name).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .errors import ApiError

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp")
FORM = "multipart/form-data"
FILE_FIELD = "file"


async def read_photo(request: Request, limit: int) -> bytes:
    """The photo's bytes, at most ``limit`` of them (``ApiError``: 413 past it, 415 for another
    type, 400 for an empty body or a form without its ``file``)."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in (*IMAGE_TYPES, FORM):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"got {media or 'no Content-Type'}: send the photo's bytes with Content-Type "
            f"{', '.join(IMAGE_TYPES)}, or a {FORM} form with the photo in the field '{FILE_FIELD}'",
        )
    declared = request.headers.get("content-length")
    if declared is not None and not (declared.isascii() and declared.isdigit()):
        raise ApiError(400, "bad_request", f"Content-Length {declared!r} is not a number of bytes")
    if declared is not None and int(declared) > limit:  # refused before a byte of the body is read
        raise ApiError(413, "too_large", _too_large(limit))
    if media != FORM:
        photo = b"".join([chunk async for chunk in _limited(request, limit)])
    else:
        photo = await _form_file(request, limit)
    if not photo:
        raise ApiError(400, "empty_object", "the body is empty: send the photo's bytes")
    return photo


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body's chunks, stopped once more than ``limit`` bytes came (a body without a
    Content-Length, or one that lied about it)."""
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, "too_large", _too_large(limit))
        yield chunk


async def _form_file(request: Request, limit: int) -> bytes:
    parser = MultiPartParser(request.headers, _limited(request, limit), max_files=1, max_fields=8)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError(400, "bad_form", f"{exc.message} Send one photo in the form field '{FILE_FIELD}'") from None
    try:
        found = form.get(FILE_FIELD)
        if not isinstance(found, UploadFile):
            raise ApiError(400, "missing_file", f"the form has no file field '{FILE_FIELD}': send the photo in it")
        return await found.read()
    finally:
        await form.close()


def _too_large(limit: int) -> str:
    return (
        f"the photo is over the limit of {limit} bytes ({limit / 2**20:g} MiB; FRUITS_API_MAX_BODY_BYTES): "
        "scale it down first (the model sees 224x224 pixels: about 1000 pixels a side loses nothing it uses)"
    )
