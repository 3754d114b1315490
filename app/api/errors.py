"""One JSON error shape for every failure, and the map from lower layers' exceptions to statuses.

Body: ``{"detail": "<human message>", "code": "<machine code>"}`` (FastAPI's
``detail`` key, so generic clients still find the message). Nothing a client
sends can produce a 500: every expected failure has a class here, and the
catch-all handler logs the unexpected ones and still answers in this shape.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.engine.errors import (
    DeadlineExceeded,
    EngineClosed,
    EngineError,
    ModelError,
    QueueFull,
    TooManyTiles,
    UnknownScale,
    WorkerRestarted,
)
from app.imaging.errors import ImageError, ImageTooComplex, ImageTooLarge, InvalidImage, UnsupportedImageType
from app.pipeline.options import InvalidOptions

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """What every 4xx/5xx answer carries."""

    detail: str | list[dict[str, object]]
    code: str


class ApiError(Exception):
    """An error raised by the HTTP layer itself (bad parameters, body too large, ...)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def error_response(status: int, code: str, detail: object, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": jsonable_encoder(detail), "code": code}, status_code=status, headers=headers)


def classify(exc: Exception, overload_status: int) -> ApiError:
    """The status, code and message for an exception from the imaging or engine layers."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ImageTooLarge):
        return ApiError(413, "image_too_large", str(exc))
    if isinstance(exc, UnsupportedImageType):
        return ApiError(415, "unsupported_media_type", str(exc))
    if isinstance(exc, ImageTooComplex):
        return ApiError(422, "image_too_complex", str(exc))
    if isinstance(exc, InvalidImage | ImageError):
        return ApiError(400, "invalid_image", str(exc))
    if isinstance(exc, TooManyTiles):
        return ApiError(413, "image_too_large", str(exc))
    if isinstance(exc, QueueFull):
        return ApiError(overload_status, "queue_full", str(exc), {"Retry-After": str(round(exc.retry_after_s))})
    if isinstance(exc, DeadlineExceeded):
        return ApiError(504, "timeout", str(exc))
    if isinstance(exc, EngineClosed):
        return ApiError(503, "shutting_down", str(exc), {"Retry-After": "1"})
    if isinstance(exc, UnknownScale):
        return ApiError(422, "unknown_scale", str(exc))
    if isinstance(exc, InvalidOptions):
        return ApiError(422, "invalid_parameters", str(exc))
    if isinstance(exc, ModelError):  # our fault, not the client's: the one deliberate 500
        return ApiError(500, "model_error", str(exc))
    if isinstance(exc, WorkerRestarted):
        return ApiError(503, "worker_restarted", str(exc), {"Retry-After": "1"})
    if isinstance(exc, EngineError):
        return ApiError(503, "engine_error", str(exc))
    raise TypeError(f"unclassified exception {type(exc).__name__}") from exc


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type", "input")} for e in exc.errors()]
        return error_response(422, "invalid_parameters", errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers = exc.headers
        if exc.status_code == 405:  # Starlette's Allow names only the first route on the path
            headers = {**(exc.headers or {}), "Allow": allowed_methods(request)}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the service keeps running")


def allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (``GET`` and ``POST`` on ``/debug/channels``), for ``Allow``."""
    return ", ".join(
        method for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in request.app.router.routes)
    )


# OpenAPI: the error answers each route may give, for `responses=` in route decorators.
def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    text = {
        400: "Not an image, empty, truncated or corrupt data",
        404: "Not found (or debug routes switched off)",
        413: "Body over the byte limit, or image over the pixel limit (input or output)",
        415: "Unsupported media type",
        422: "Bad or missing parameters, or an image too costly to decode (code image_too_complex)",
        500: "The model call of this request's batch failed (code model_error); other requests are unaffected",
        429: "Queue full (when SR_OVERLOAD_STATUS=429); see Retry-After",
        503: "Queue full or not ready; see Retry-After",
        504: "Request deadline exceeded",
    }
    return {s: {"model": ErrorBody, "description": text[s]} for s in statuses}
