"""``POST /upscale``: decode → luma through the batching engine → compose → encode.

The request flows down once and back up once: bytes are read within the
byte limit here, decoded (and checked against the pixel limits) in the codec
pool, the luma goes to the engine, and the result is composed with bicubic
chroma and encoded in the codec pool again — the event loop never runs
PyTorch or a codec.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response

from app.api.common import UPLOAD_BODY, Scale, in_pool
from app.api.errors import ApiError, classify, error_responses
from app.api.state import ServiceState, StateDep
from app.api.upload import read_image_upload
from app.engine.errors import EngineError
from app.imaging.compose import compose, luma_tensor
from app.imaging.decode import DecodedImage, decode
from app.imaging.encode import OUTPUT_FORMATS, WEBP_MAX_SIDE, encode, format_like
from app.imaging.errors import ImageError
from app.observability import metrics

router = APIRouter(tags=["super-resolution"])
T = TypeVar("T")


class OutputFormat(StrEnum):
    png = "png"
    jpeg = "jpeg"
    webp = "webp"
    same = "same"  # the input's: JPEG → JPEG, WebP → WebP, anything else → PNG


IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The super-resolved image; headers `X-Model`, `X-Scale`, `X-Process-Time-Ms`, `Server-Timing`.",
        "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in OUTPUT_FORMATS.values()},
    }
}


async def until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (its tiles are dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ApiError(499, "client_gone", "client disconnected before the answer was ready")


def _check_lossless(fmt: str, lossless: bool) -> None:
    if lossless and fmt == "jpeg":
        raise ApiError(422, "invalid_parameters", "JPEG cannot be lossless: ask for format=webp or png")


def _decode_for_model(data: bytes, scale: int, state: ServiceState) -> tuple[DecodedImage, Any, float]:
    start = time.perf_counter()
    try:
        image = decode(data, scale, state.limits)
        return image, luma_tensor(image), time.perf_counter() - start
    finally:
        metrics.observe_stage(metrics.STAGE_DECODE, time.perf_counter() - start)


def _compose_and_encode(
    image: DecodedImage, sr: Any, scale: int, fmt: str, quality: int | None, lossless: bool, state: ServiceState
) -> tuple[bytes, float]:
    start = time.perf_counter()
    try:
        result = compose(image, sr, scale)
        body = encode(result, fmt, quality=quality, lossless=lossless, icc_profile=image.icc_profile,
                      png_compress_level=state.settings.png_compress_level)
        return body, time.perf_counter() - start
    finally:
        metrics.observe_stage(metrics.STAGE_ENCODE, time.perf_counter() - start)


@router.post(
    "/upscale",
    summary="Super-resolve one image ×2, ×3 or ×4",
    response_class=Response,
    responses={**IMAGE_RESPONSE, **error_responses(400, 413, 415, 422, 429, 503, 504)},
    openapi_extra=UPLOAD_BODY,
)
async def upscale(
    request: Request,
    state: StateDep,
    scale: Annotated[Scale, Query(description="upscale factor")],
    format: Annotated[
        OutputFormat, Query(description="output format; `same`: the input's (JPEG, WebP), PNG for any other input")
    ] = OutputFormat.png,
    quality: Annotated[int | None, Query(ge=1, le=100, description="JPEG/WebP quality (default 90)")] = None,
    lossless: Annotated[bool, Query(description="lossless WebP (PNG is always lossless)")] = False,
) -> Response:
    started, deadline = time.perf_counter(), time.monotonic() + state.settings.request_timeout_s
    r = scale.value
    try:
        _check_lossless(format.value, lossless)
        data = await read_image_upload(request, state.settings.max_body_bytes)
        image, luma, t_decode = await in_pool(state, _decode_for_model, data, r, state)
        fmt = format_like(image.source_format) if format is OutputFormat.same else format.value
        _check_lossless(fmt, lossless)
        if fmt == "webp" and max(image.width, image.height) * r > WEBP_MAX_SIDE:
            raise ApiError(413, "image_too_large",
                           f"WebP holds at most {WEBP_MAX_SIDE} px per side; ask for png or jpeg")
        t0 = time.perf_counter()
        sr = await unless_disconnected(request, state.engine.upscale(luma, r, deadline=deadline))
        t_model = time.perf_counter() - t0
        body, t_encode = await in_pool(state, _compose_and_encode, image, sr, r, fmt, quality, lossless, state)
    except (ImageError, EngineError, ApiError) as exc:
        raise classify(exc, state.settings.overload_status) from exc
    metrics.count_pixels(r, image.width * image.height, image.width * image.height * r * r)
    total_ms = (time.perf_counter() - started) * 1000
    model = state.models[r].manifest
    return Response(
        body,
        media_type=OUTPUT_FORMATS[fmt],
        headers={
            "X-Model": model.name,
            "X-Scale": str(r),
            "X-Process-Time-Ms": f"{total_ms:.1f}",
            "Server-Timing": f"decode;dur={t_decode * 1000:.1f}, model;dur={t_model * 1000:.1f}, "
            f"encode;dur={t_encode * 1000:.1f}",
        },
    )
