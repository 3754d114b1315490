"""One JSON error shape for every failure, and the map from lower layers' exceptions to statuses.

Body: ``{"detail": "<a sentence>", "code": "<a stable word>"}``, plus ``"errors":
[{"loc", "msg", "type"}, ...]`` when single fields were at fault (FastAPI's
``detail`` key, so generic clients still find the message; ``detail`` is always
a string, never pydantic's list). Every problem a request has is reported in one
answer: a bad query and a misnamed upload field come back together. Nothing a
client sends can produce a 500: every expected failure has a class here, and
the catch-all handler logs the unexpected ones and still answers in this shape.
The codes are listed, with their statuses, in :data:`CODES` (and in the README).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.engine import errors as engine
from app.imaging.errors import ImageError, ImageTooComplex, ImageTooLarge, InvalidImage, UnsupportedImageType
from app.pipeline.options import InvalidOptions

DEVICE_RESTART_S = 5  # Retry-After of ``device_lost``: a new device process loads and warms up its models first

log = logging.getLogger(__name__)


class FieldError(BaseModel):
    """One field's problem: where (``["query", "scale"]``, ``["body", "file"]``), what, and its kind."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """What every 4xx/5xx answer carries."""

    detail: str
    code: str
    errors: list[FieldError] | None = None


class ApiError(Exception):
    """An error raised by the HTTP layer itself (bad parameters, body too large, ...)."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None,
                 errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}
        self.errors = errors or []


def error_response(status: int, code: str, detail: object, headers: dict[str, str] | None = None,
                   errors: list[dict[str, object]] | None = None) -> JSONResponse:
    """The JSON answer; ``detail`` is made a sentence whatever it was given as."""
    body: dict[str, object] = {"detail": sentence(detail if isinstance(detail, str) else str(jsonable_encoder(detail))),
                               "code": code}
    if errors:
        body["errors"] = jsonable_encoder(errors)
    return JSONResponse(body, status_code=status, headers=headers)


def sentence(text: str) -> str:
    """``request body is larger than …`` → ``Request body is larger than ….``: what a person reads first."""
    text = text.strip() or "The request failed"
    if text[0].islower():
        text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


# Every code an answer may carry: status(es) and meaning. One table, rendered into the README's.
CODES: dict[str, tuple[str, str]] = {
    "invalid_parameters": ("422", "a query parameter is missing, malformed, repeated, unknown or incoherent with another"),
    "unknown_scale": ("422", "no served model has this scale (the answer lists the served ones)"),
    "missing_image": ("422", "no image: no multipart field `file`, or an empty body"),
    "missing_file": ("422", "`/jobs`: no multipart field `file`, or an empty body"),
    "invalid_image": ("400", "not an image, empty, truncated or corrupt"),
    "invalid_multipart": ("400", "malformed multipart framing"),
    "invalid_video": ("400", "`/jobs`: not a video FFmpeg can read, or corrupt"),
    "video_too_large": ("413", "`/jobs`: a video over the duration, frame-count or frame-size limits"),
    "image_too_complex": ("422", "an image out of proportion with its size (scans, chunks, frames, metadata)"),
    "unsupported_media_type": ("415", "a Content-Type or image format the service does not read"),
    "body_too_large": ("413", "the body is over `SR_MAX_BODY_BYTES` (`SR_JOBS_MAX_UPLOAD_BYTES` for jobs)"),
    "image_too_large": ("413", "the image (input or output) is over a pixel limit"),
    "unauthorized": ("401", "`SR_API_KEYS` is set and the request has no valid key"),
    "not_found": ("404", "no such route or job (or debug routes are off)"),
    "method_not_allowed": ("405", "the path exists, not with this method (`Allow` lists them)"),
    "expired": ("410", "the job finished and its result expired"),
    "not_done": ("409", "the job is not done (queued, running, failed or cancelled)"),
    "client_gone": ("499", "the client left before the answer was ready (logged and counted, never sent)"),
    "queue_full": ("503 or 429", "the queue has no room; see `Retry-After`"),
    "jobs_queue_full": ("503", "too many jobs are waiting; see `Retry-After`"),
    "storage_full": ("507", "the jobs storage quota is full"),
    "shutting_down": ("503", "the service is shutting down"),
    "worker_restarted": ("503", "the batching worker died holding the request's tiles; it was restarted"),
    "device_lost": ("503", "the GPU failed with an error every later call would repeat; the process holding it "
                           "restarts (see `Retry-After`)"),
    "debug_busy": ("503", "another debug figure is being drawn"),
    "engine_error": ("503", "the engine could not take the request"),
    "timeout": ("504", "the request passed `SR_REQUEST_TIMEOUT_S`"),
    "body_timeout": ("408", "the body did not arrive within `SR_BODY_TIMEOUT_S`"),
    "url_too_long": ("414", "the request target is over `SR_MAX_URL_BYTES`"),
    "headers_too_large": ("431", "the request headers are over `SR_MAX_HEADER_BYTES`"),
    "http_error": ("4xx", "any other refusal by the HTTP layer"),
    "model_error": ("500", "the model call of the request's batch failed (other requests are served)"),
    "internal_error": ("500", "an unexpected error; logged, and the service keeps running"),
}


def field_error(loc: list[str | int] | tuple[str | int, ...], msg: str, kind: str) -> dict[str, object]:
    """One entry of ``errors``."""
    return {"loc": list(loc), "msg": msg, "type": kind}


def describe(error: dict[str, object]) -> str:
    """``{"loc": ["query", "scale"], "msg": "Field required"}`` → ``query parameter 'scale': field required``."""
    loc = [str(x) for x in error.get("loc", ()) or ()]  # type: ignore[union-attr]
    where = {"query": "query parameter", "body": "multipart field", "path": "path parameter",
             "header": "header"}.get(loc[0], loc[0]) if loc else "request"
    name = ".".join(loc[1:])
    msg = str(error.get("msg", "")).rstrip(".")
    msg = msg[:1].lower() + msg[1:]
    text = f"{where} {name!r}: {msg}" if name else f"{where}: {msg}"
    given = error.get("input")
    if error.get("type") != "missing" and isinstance(given, str | int | float):
        text += f" (got {given!r})"
    return text


def summary(errors: list[dict[str, object]]) -> str:
    """The sentence that stands for a list of field errors, every one of them named."""
    parts = [describe(e) for e in errors]
    if len(parts) == 1:
        return parts[0][:1].upper() + parts[0][1:] + "."
    return f"{len(parts)} problems with the request: " + "; ".join(parts) + "."


def invalid(errors: list[dict[str, object]], code: str = "invalid_parameters") -> ApiError:
    """A 422 reporting every field error at once."""
    return ApiError(422, code, summary(errors), errors=errors)


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
    if isinstance(exc, engine.TooManyTiles):
        return ApiError(413, "image_too_large", str(exc))
    if isinstance(exc, engine.QueueFull):
        return ApiError(overload_status, "queue_full", str(exc), {"Retry-After": str(round(exc.retry_after_s))})
    if isinstance(exc, engine.DeadlineExceeded):
        return ApiError(504, "timeout", str(exc))
    if isinstance(exc, engine.EngineClosed):
        return ApiError(503, "shutting_down", str(exc), {"Retry-After": "1"})
    if isinstance(exc, engine.UnknownScale):
        return ApiError(422, "unknown_scale", str(exc))
    if isinstance(exc, InvalidOptions):
        return ApiError(422, "invalid_parameters", str(exc))
    if isinstance(exc, engine.ModelError):  # our fault, not the client's: the one deliberate 500
        return ApiError(500, "model_error", str(exc))
    if isinstance(exc, engine.DeviceLost):
        return ApiError(503, "device_lost", str(exc), {"Retry-After": str(DEVICE_RESTART_S)})
    if isinstance(exc, engine.WorkerRestarted):
        return ApiError(503, "worker_restarted", str(exc), {"Retry-After": "1"})
    if isinstance(exc, engine.EngineError):
        return ApiError(503, "engine_error", str(exc))
    raise TypeError(f"unclassified exception {type(exc).__name__}") from exc


def install_error_handlers(
    app: FastAPI, problems: Callable[[Request], Awaitable[list[dict[str, object]]]] | None = None
) -> None:
    """The one error shape for every answer; ``problems`` adds the body's problems to a refused query's
    (:func:`app.api.upload.upload_problems`), so one answer names them all."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.detail, exc.headers, exc.errors)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type", "input")} for e in exc.errors()]
        if problems is not None:
            errors += await problems(request)  # a misnamed upload field is told now, not after the fix
        described = summary(errors)
        for e in errors:
            e.pop("input", None)
        return error_response(422, "invalid_parameters", described, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        headers, detail = exc.headers, exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"Nothing is served at {request.url.path} (the routes are listed at /docs)"
        if exc.status_code == 405:  # Starlette's Allow names only the first route on the path
            headers = {**(exc.headers or {}), "Allow": allowed_methods(request)}
            if detail == "Method Not Allowed":
                detail = f"{request.method} is not allowed on {request.url.path}; it allows {headers['Allow']}"
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), detail, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal error; the service keeps running")


def allowed_methods(request: Request) -> str:
    """Every method some route serves on this path (``GET`` and ``POST`` on ``/debug/channels``), for ``Allow``."""
    served = {method for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
              if any(route.matches({**request.scope, "method": method})[0] is Match.FULL
                     for route in request.app.router.routes)}
    if "GET" in served:
        served.add("HEAD")  # app.main.HeadWhereGet serves HEAD wherever GET is
    return ", ".join(sorted(served))


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
