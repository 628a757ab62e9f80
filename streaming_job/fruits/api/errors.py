"""Every error the API answers, as ``{"error": {"code": str, "message": str}}``.

A ``code`` is stable and short (a client branches on it); a ``message`` says what to do. Image
codes are the pipeline's own quarantine reasons (``featurize.images.Reason``), so a photo the API
refuses is refused for the reason the pipeline would quarantine it.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class ApiError(Exception):
    """An answer other than 200: ``status``, a stable ``code`` and a message that says what to do."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return response(exc.status, exc.code, exc.message)


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    # Starlette's own answers: a path no route has (404), a method it does not take (405).
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    hint = {404: "see /docs for the API's paths", 405: "see /docs for the methods each path takes"}
    return response(
        exc.status_code,
        codes.get(exc.status_code, "http_error"),
        f"{exc.detail}: {hint[exc.status_code]}" if exc.status_code in hint else str(exc.detail),
    )


def _invalid(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return response(422, "invalid_parameter", f"{problems} (see /docs for each parameter's range)")


def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    # The server logs the traceback (Starlette raises it on after this answer).
    return response(
        500,
        "internal_error",
        f"the server failed on this request ({type(exc).__name__}); it is logged, and retrying later may succeed",
    )


def install(app: FastAPI) -> None:
    """Answer every error of ``app`` in the one shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
