"""Look inside the served models: equivalent deconvolution kernels and the shuffled channels.

``GET /kernels/deconv`` returns each served model's sub-pixel layer and the
transposed convolution it equals (``torch.nn.ConvTranspose2d`` layout, plus the
periodic bias map), with a float64 check of the equivalence computed per
request; ``GET /kernels/deconv.png`` draws them like the note's figure;
``/debug/channels`` shows the r² LR maps before shuffling. All of it answers
404 when ``SR_DEBUG_ROUTES=false``, and obeys the same input limits as
``/upscale``.
"""

from __future__ import annotations

import io
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import JSONResponse
from safetensors.torch import save as save_safetensors

from app.api.common import UPLOAD_BODY, ScaleQuery
from app.api.errors import ApiError, classify, error_responses
from app.api.state import ServiceState, StateDep
from app.api.upload import read_image_upload
from app.core.espcn import ESPCN
from app.core.subpixel import Deconv, SubPixelConv
from app.engine.errors import UnknownScale
from app.imaging.compose import luma_tensor
from app.imaging.decode import DecodedImage
from app.imaging.errors import ImageError
from app.viz import render_channels, render_kernels

SAMPLE_IMAGE = Path(__file__).resolve().parents[2] / "assets" / "sample.png"


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


def verify(layer: SubPixelConv, deconv: Deconv, seed: int = 0) -> float:
    """Max |conv + shuffle − deconv (+ periodic bias)| on a random input, in float64."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, layer.in_channels, 11, 13, generator=g, dtype=torch.float64)
    as_f64 = SubPixelConv(layer.weight.double(), layer.bias.double() if layer.bias is not None else None,
                          layer.padding, layer.scale)
    d64 = Deconv(deconv.weight.double(),
                 deconv.periodic_bias.double() if deconv.periodic_bias is not None else None,
                 deconv.stride, deconv.padding, deconv.output_padding)
    return float((as_f64(x) - d64(x)).abs().max())


def _tensors(layer: SubPixelConv, deconv: Deconv) -> dict[str, torch.Tensor]:
    out = {"conv.weight": layer.weight, "deconv.weight": deconv.weight}
    if layer.bias is not None and deconv.periodic_bias is not None:
        out["conv.bias"] = layer.bias
        out["deconv.periodic_bias"] = deconv.periodic_bias
    # clone: the periodic bias is a view of the conv bias, and safetensors refuses shared storage
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def kernels_document(model: ESPCN, name: str) -> dict[str, Any]:
    layer, deconv = model.subpixel_layer(), model.last_layer_deconv()
    uniform = deconv.bias_is_uniform
    return {
        "model": name,
        "scale": model.scale,
        "conv": {
            "shape": list(layer.weight.shape),
            "padding": layer.padding,
            "weight": layer.weight.tolist(),
            "bias": None if layer.bias is None else layer.bias.tolist(),
            "note": "applied to the 32 LR feature maps, followed by torch.nn.functional.pixel_shuffle(·, scale)",
        },
        "deconv": {
            "layout": "torch.nn.ConvTranspose2d (in_channels, out_channels, kH, kW)",
            "shape": list(deconv.weight.shape),
            "stride": deconv.stride,
            "padding": deconv.padding,
            "output_padding": deconv.output_padding,
            "weight": deconv.weight.tolist(),
            "periodic_bias": None if deconv.periodic_bias is None else deconv.periodic_bias.tolist(),
            "periodic_bias_shape": None if deconv.periodic_bias is None else list(deconv.periodic_bias.shape),
            "bias_is_uniform": uniform,
            "bias": deconv.bias.tolist() if uniform and deconv.periodic_bias is not None else None,
            "note": "y = conv_transpose2d(x, weight, stride, padding, output_padding) + periodic_bias tiled "
            "over the HR grid (position (h, w) gets periodic_bias[:, h % r, w % r])",
        },
        "verification": {
            "max_abs_diff": verify(layer, deconv),
            "dtype": "float64",
            "input": "standard normal (2, 32, 11, 13), seed 0",
        },
    }


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
    tensors = _tensors(layer, deconv)
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


async def _channels(state: ServiceState, scale: int, data: bytes, fmt: ChannelsFormat) -> Response:
    model = _model(state, scale)

    def draw(image: DecodedImage) -> tuple[bytes, dict[str, Any]]:
        figure, stats = render_channels(model, luma_tensor(image))
        buf = io.BytesIO()
        figure.save(buf, "PNG", compress_level=3)
        return buf.getvalue(), stats

    try:
        png, stats = await state.pipeline.in_pool(draw, await state.pipeline.decode(data, scale))
    except ImageError as exc:
        raise classify(exc, state.settings.overload_status) from exc
    if fmt is ChannelsFormat.json:
        return JSONResponse(stats)
    return Response(png, media_type="image/png")


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
