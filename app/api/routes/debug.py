"""Look inside the served models: equivalent deconvolution kernels and the shuffled channels.

``GET /kernels/deconv`` returns each served model's sub-pixel layer and the
transposed convolution it equals (``torch.nn.ConvTranspose2d`` layout, plus the
periodic bias map), with a float64 check of the equivalence computed per
request; ``GET /kernels/deconv.png`` draws them like the note's figure;
``/debug/channels`` shows the r² LR maps before shuffling. All of it answers
404 when ``SR_DEBUG_ROUTES=false``, and obeys the same input limits as
``/upscale``.

A debug figure runs the model's pre-shuffle maps, which the engine does not
return, so it cannot ride the engine's batches; it is bounded instead: the
upload is decoded like any other (header checks, the decode sandbox), then
only its centre ``SR_DEBUG_MAX_PIXELS`` (512² by default) are analysed, with
the model's receptive field of context around them so the maps equal the
whole image's there, and one figure is computed at a time per process. So a
4096² upload costs one 512² model call, not a 16 Mpx one (40 s and 10.8 GB
before, issue 15). The answer says what was analysed: ``analysed`` and
``source_size`` in the JSON, ``X-Debug-Analysed: WxH+left+top of WxH`` (widths first, as everywhere).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import math
import time
import weakref
from enum import StrEnum
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from safetensors.torch import save as save_safetensors

from app.api.errors import ApiError, classify, error_responses
from app.api.params import UPLOAD_BODY, ScaleQuery
from app.api.state import ServiceState, StateDep
from app.api.upload import read_image_upload
from app.assets import SAMPLE_IMAGE
from app.core.espcn import ESPCN
from app.engine.errors import EngineError, UnknownScale
from app.imaging.compose import luma_tensor
from app.imaging.decode import DecodedImage
from app.imaging.errors import ImageError
from app.pipeline import Pipeline
from app.viz import render_channels, render_kernels
from app.viz.deconv import kernel_tensors, kernels_document


async def debug_enabled(state: StateDep) -> None:
    if not state.settings.debug_routes:
        raise ApiError(404, "not_found", "debug routes are switched off (SR_DEBUG_ROUTES=false)")


router = APIRouter(tags=["debug"], dependencies=[Depends(debug_enabled)])


class KernelFormat(StrEnum):
    json = "json"
    npz = "npz"
    safetensors = "safetensors"


class ChannelsFormat(StrEnum):
    png = "png"
    json = "json"


def _model(state: ServiceState, scale: int) -> ESPCN:
    try:
        state.pipeline.check_scale(scale)
    except UnknownScale as exc:
        raise classify(exc, state.settings.overload_status) from exc
    return state.pipeline.models[scale].model


@router.get(
    "/kernels/deconv",
    summary="The served sub-pixel layer and its equivalent deconvolution",
    responses={200: {"content": {"application/json": {}, "application/octet-stream": {}}}, **error_responses(404, 422)},
)
async def kernels_deconv(
    state: StateDep,
    scale: ScaleQuery,
    format: Annotated[KernelFormat, Query(description="json, or a download: npz / safetensors")] = KernelFormat.json,
) -> Response:
    model = _model(state, scale)
    name = state.pipeline.models[scale].manifest.name
    if format is KernelFormat.json:
        return JSONResponse(kernels_document(model, name))
    layer, deconv = model.subpixel_layer(), model.last_layer_deconv()
    tensors = kernel_tensors(layer, deconv)
    meta = {"model": name, "scale": str(model.scale), "conv.padding": str(layer.padding),
            "deconv.stride": str(deconv.stride), "deconv.padding": str(deconv.padding),
            "deconv.output_padding": str(deconv.output_padding)}
    if format is KernelFormat.safetensors:
        body, media = save_safetensors(tensors, metadata=meta), "application/octet-stream"
    else:
        buf = io.BytesIO()
        arrays = {k.replace(".", "_"): v.numpy() for k, v in tensors.items()}
        np.savez(buf, **arrays, **{k.replace(".", "_"): np.array(int(v)) for k, v in meta.items() if v.isdigit()})
        body, media = buf.getvalue(), "application/octet-stream"
    filename = f"{name}-deconv.{format.value}"
    return Response(body, media_type=media, headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get(
    "/kernels/deconv.png",
    summary="Figure: the r² conv kernels above their equivalent deconvolution kernels",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **error_responses(404, 422)},
)
async def kernels_png(state: StateDep, scale: ScaleQuery) -> Response:
    model = _model(state, scale)

    def draw() -> bytes:
        image = render_kernels(model.subpixel_layer(), model.last_layer_deconv())
        buf = io.BytesIO()
        image.save(buf, "PNG", optimize=False, compress_level=3)
        return buf.getvalue()

    return Response(await state.pipeline.in_pool(draw), media_type="image/png")


def debug_window(height: int, width: int, max_pixels: int) -> tuple[int, int, int, int]:
    """The centred (top, left, h, w) window of at most ``max_pixels`` that a debug view analyses.

    As square as the image allows: a 4096² image gives its centre 512² at the
    default 512² limit, a 30 × 10,000 strip its centre 30 × 8,738.
    """
    if height * width <= max_pixels:
        return 0, 0, height, width
    side = max(1, math.isqrt(max_pixels))
    w = min(width, side)
    h = min(height, max_pixels // w)
    w = min(width, max_pixels // h)
    return (height - h) // 2, (width - w) // 2, h, w


def _crop_with_context(
    image: DecodedImage, window: tuple[int, int, int, int], radius: int
) -> tuple[DecodedImage, tuple[int, int, int, int]]:
    """The window plus up to ``radius`` pixels of its surroundings (so its maps equal the whole image's)."""
    top, left, h, w = window
    t, lft = max(0, top - radius), max(0, left - radius)
    b, rgt = min(image.height, top + h + radius), min(image.width, left + w + radius)
    box = (lft, t, rgt, b)
    cropped = dataclasses.replace(image, color=image.color.crop(box),
                                  alpha=image.alpha.crop(box) if image.alpha is not None else None)
    return cropped, (top - t, left - lft, b - top - h, rgt - left - w)


_DEBUG_SLOTS: weakref.WeakKeyDictionary[Pipeline, asyncio.Semaphore] = weakref.WeakKeyDictionary()
DEBUG_CONCURRENCY = 1
DEBUG_WAIT_S = 10.0


async def _debug_slot(state: ServiceState) -> asyncio.Semaphore:
    """Wait (at most ``DEBUG_WAIT_S``) for this process's debug slot, or 503: debug figures run one at a time."""
    slot = _DEBUG_SLOTS.setdefault(state.pipeline, asyncio.Semaphore(DEBUG_CONCURRENCY))
    try:
        await asyncio.wait_for(slot.acquire(), DEBUG_WAIT_S)
    except TimeoutError:
        raise ApiError(503, "debug_busy", "another debug figure is being computed; retry later",
                       {"Retry-After": "1"}) from None
    return slot


async def _channels(state: ServiceState, scale: int, data: bytes, fmt: ChannelsFormat) -> Response:
    """Decode within the upload limits, centre-crop to ``SR_DEBUG_MAX_PIXELS``, draw: bounded time and memory."""
    model = _model(state, scale)
    pipeline = state.pipeline
    max_pixels = state.settings.debug_max_pixels
    deadline = time.monotonic() + state.settings.request_timeout_s

    def draw(image: DecodedImage) -> tuple[bytes, dict[str, Any]]:
        window = debug_window(image.height, image.width, max_pixels)
        cropped, context = _crop_with_context(image, window, model.radius)
        figure, stats = render_channels(model, luma_tensor(cropped), context=context)
        top, left, h, w = window
        stats["source_size"] = [image.width, image.height]
        stats["analysed"] = {"top": top, "left": left, "height": h, "width": w,
                             "cropped": (h, w) != (image.height, image.width), "max_pixels": max_pixels}
        buf = io.BytesIO()
        figure.save(buf, "PNG", compress_level=3)
        return buf.getvalue(), stats

    slot = await _debug_slot(state)
    try:
        image = await pipeline.decode(data, scale, deadline=deadline)
        png, stats = await pipeline.in_pool(draw, image)
    except (ImageError, EngineError) as exc:
        raise classify(exc, state.settings.overload_status) from exc
    finally:
        slot.release()
    a = stats["analysed"]
    headers = {"X-Debug-Analysed": f"{a['width']}x{a['height']}+{a['left']}+{a['top']} of "
                                   f"{stats['source_size'][0]}x{stats['source_size'][1]}"}
    if fmt is ChannelsFormat.json:
        return JSONResponse(stats, headers=headers)
    return Response(png, media_type="image/png", headers=headers)


CHANNEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}, "application/json": {}}},
    **error_responses(400, 404, 413, 415, 422),
}


@router.post(
    "/debug/channels",
    summary="The r² LR maps before shuffling, the sub-pixel map, and the HR luma, for an uploaded image",
    response_class=Response,
    responses=CHANNEL_RESPONSES,
    openapi_extra=UPLOAD_BODY,
)
async def channels_upload(
    request: Request,
    state: StateDep,
    scale: ScaleQuery,
    format: Annotated[ChannelsFormat, Query(description="png figure or json per-channel statistics")] = (
        ChannelsFormat.png
    ),
) -> Response:
    _model(state, scale)  # an unknown scale is refused before the body is read
    data = await read_image_upload(request, state.settings.max_body_bytes)
    return await _channels(state, scale, data, format)


@router.get(
    "/debug/channels",
    summary="The same figure for the built-in sample image",
    response_class=Response,
    responses=CHANNEL_RESPONSES,
)
async def channels_sample(
    state: StateDep,
    scale: ScaleQuery,
    format: Annotated[ChannelsFormat, Query()] = ChannelsFormat.png,
) -> Response:
    return await _channels(state, scale, SAMPLE_IMAGE.read_bytes(), format)
