"""The colour work around the model as tensor operations: 8-bit planes in, luma out; model Y in, 8-bit planes out.

One implementation for every device. On a GPU the decoded frame crosses the
bus once as 8-bit planes, and luma, alpha bleeding, bicubic chroma and the
luma swap all run beside the model; on the CPU the same functions are the
reference the Pillow/NumPy path (:mod:`app.imaging.compose`) is tested against.

Colour follows the paper: the network sees BT.601 studio-swing Y, Cb/Cr travel
bicubically. Keeping Cb/Cr while replacing Y moves R, G and B by the same
``255/219 · (255·y − Y(rgb))`` (the Y column of YCbCr → RGB is 255/219 for all
three), so the swap is one plane of float work rounded once, added to the
three channels and clipped. The float32 operations are the ones
:mod:`app.imaging.compose` makes, in the same order, so both paths give the
same bytes.

Alpha, never seen by the model, is upscaled with Pillow's premultiplied RGBA
bicubic (:func:`app.core.resample.bicubic_upscale_rgba`), and the luma under
fully transparent pixels is replaced by the mean of its visible neighbours,
:data:`BLEED_REACH` pixels deep, before the network, so no visible output pixel
sees the colour hidden there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from app.core.color import Y_OFFSET, Y_WEIGHTS, rgb_to_y
from app.core.resample import bicubic_upscale, bicubic_upscale_rgba

BLEED_REACH = 8  # LR pixels: ESPCN's radius 4 + bicubic support 2, with margin
Y_TO_RGB = 255.0 / 219.0  # the Y column of BT.601 studio-swing YCbCr → RGB, equal for R, G, B
_F32 = torch.float32
_GREY_TO_Y = torch.tensor(219.0 / 255.0, dtype=_F32)  # float32 constants: the NumPy path's exact roundings
_Y_TO_RGB32 = torch.tensor(Y_TO_RGB, dtype=_F32)
_WR, _WG, _WB = (torch.tensor(w, dtype=_F32) for w in Y_WEIGHTS)


def _over_255(x: Tensor) -> Tensor:
    """``x / 255`` correctly rounded on every device.

    CUDA divides by a host scalar as a multiply by its reciprocal, which can land one
    float32 step away from the CPU's quotient; the luma then differs before the model
    ever runs. Dividing by a tensor on ``x``'s own device keeps the true division.
    """
    return x / torch.full((), 255.0, dtype=x.dtype, device=x.device)


def luma(color: Tensor, alpha: Tensor | None = None) -> Tensor:
    """(1 or 3, H, W) 8-bit values (any dtype) → the model input (1, H, W) float32, studio-swing Y / 255.

    Grey is fed as R = G = B = g would be (Y = 16 + 219·g/255), so it meets the
    statistics the models were trained on. With ``alpha`` (H, W), Y under fully
    transparent pixels is bled from visible neighbours.
    """
    values = color.to(torch.float32)
    if values.shape[0] == 1:
        y = _over_255(16.0 + values * _GREY_TO_Y)
    elif values.shape[0] == 3:
        y = _over_255(rgb_to_y(values))
    else:
        raise ValueError(f"expected 1 or 3 colour planes, got shape {tuple(color.shape)}")
    if alpha is not None:
        y = bleed(y, alpha)
    return y.contiguous()


def bleed(y: Tensor, alpha: Tensor) -> Tensor:
    """Fill Y (1, H, W) under fully transparent pixels of ``alpha`` (H, W) from visible ones, reach-limited."""
    visible = alpha > 0
    if bool(visible.all()) or not bool(visible.any()):
        return y
    known = visible[None, None].to(y.dtype)
    values = y[None] * known
    for _ in range(BLEED_REACH):
        count = F.avg_pool2d(known, 3, stride=1, padding=1)
        fresh = (count > 0) & (known == 0)
        if not bool(fresh.any()):
            break
        mean = F.avg_pool2d(values, 3, stride=1, padding=1) / count.clamp_min(1e-12)
        values = torch.where(fresh, mean, values)
        known = known + fresh.to(known.dtype)
    return torch.where(known > 0, values, y[None])[0]


def grey_from_luma(y: Tensor) -> Tensor:
    """Studio-swing Y in [0, 1] (any shape) → full-range grey, uint8."""
    g = y.to(torch.float32) * 255.0
    g -= 16.0
    g *= _Y_TO_RGB32
    return torch.round(g).clamp_(0, 255).to(torch.uint8)


def swap_luma(rgb: Tensor, y: Tensor) -> Tensor:
    """Give (…, 3, h, w) uint8 RGB the luma ``y`` ((…, 1, h, w) or (…, h, w) in [0, 1]), keeping its Cb/Cr; uint8 out."""
    r, g, b = rgb.to(torch.float32).unbind(-3)
    shift = r * _WR
    shift += g * _WG
    shift += b * _WB
    shift += Y_OFFSET
    shift = y.reshape(shift.shape).to(torch.float32) * 255.0 - shift
    shift *= _Y_TO_RGB32
    moved = rgb.to(torch.int16) + torch.round(shift).to(torch.int16).unsqueeze(-3)
    return moved.clamp_(0, 255).to(torch.uint8)


def _output_luma(color: Tensor, sr_luma: Tensor, scale: int) -> Tensor:
    """``sr_luma`` as the (r·H, r·W) plane of ``color`` (C, H, W) at ×``scale``; ValueError when it is not that."""
    h, w = color.shape[-2:]
    if tuple(sr_luma.shape[-2:]) != (h * scale, w * scale) or sr_luma.numel() != h * w * scale * scale:
        raise ValueError(f"sr_luma must be (1, {h * scale}, {w * scale}), got {tuple(sr_luma.shape)}")
    return sr_luma.reshape(h * scale, w * scale)


def compose(color: Tensor, alpha: Tensor | None, sr_luma: Tensor, scale: int) -> Tensor:
    """8-bit source planes (1 or 3, H, W) (+ alpha (H, W)) and the model's Y (1, r·H, r·W) → uint8 output planes.

    Returns (C, r·H, r·W): 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA) planes, the
    bytes :func:`app.imaging.compose.compose` gives for the same input.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    c = color.shape[0]
    y = _output_luma(color, sr_luma, scale)
    if c == 1:
        planes = [grey_from_luma(y)[None]]
        if alpha is not None:
            planes.append(bicubic_upscale(alpha[None], scale))
        return torch.cat(planes)
    if alpha is None:
        return swap_luma(bicubic_upscale(color, scale), y)
    rgb, a = bicubic_upscale_rgba(color, alpha, scale)
    return torch.cat([swap_luma(rgb, y), a[None]])


STACK_PIXELS = 1 << 25  # output pixels per stacked call of compose_many: bounds its scratch (about 40 bytes a pixel)


def _stacks(keys: Sequence[tuple], pixels: Sequence[int], stack_pixels: int) -> list[list[int]]:
    """Indices grouped by equal key, in order, each group cut into stacks of at most ``stack_pixels`` pixels."""
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    stacks = []
    for members in groups.values():
        step = max(1, stack_pixels // max(1, pixels[members[0]]))
        stacks += [members[start : start + step] for start in range(0, len(members), step)]
    return stacks


def luma_many(colors: Sequence[Tensor], *, stack_pixels: int = STACK_PIXELS) -> list[Tensor]:
    """:func:`luma` of several opaque pictures, in order, the same values each; RGB ones of one size as one stack
    (uploads decoded together, :mod:`app.engine.pixels`), for the reason :func:`compose_many` gives."""
    out: list[Tensor | None] = [None] * len(colors)
    keys = [(tuple(c.shape), c.dtype, c.device) for c in colors]
    for stack in _stacks(keys, [c.shape[-2] * c.shape[-1] for c in colors], stack_pixels):
        if colors[stack[0]].shape[0] != 3 or len(stack) == 1:
            for i in stack:
                out[i] = luma(colors[i])
            continue
        values = torch.stack([colors[i] for i in stack]).to(torch.float32)
        for i, y in zip(stack, _over_255(rgb_to_y(values)), strict=True):
            out[i] = y
    return out  # type: ignore[return-value]  # every index was filled


def compose_many(items: Sequence[tuple[Tensor, Tensor, int]], *, stack_pixels: int = STACK_PIXELS) -> list[Tensor]:
    """:func:`compose` of several opaque pictures ``(color, sr_luma, scale)``, in order, the same bytes each.

    Why: on a GPU one compose is about 25 small kernels whatever the picture's size, so
    launching them is most of its host time. Pictures of one size and scale (frames of one
    video, one camera) go through them as one stack, up to ``stack_pixels`` output pixels a call.
    """
    out: list[Tensor | None] = [None] * len(items)
    keys = [(tuple(color.shape), scale, color.device) for color, _, scale in items]
    for color, sr_luma, scale in items:
        _output_luma(color, sr_luma, scale)
    pixels = [color.shape[-2] * color.shape[-1] * scale * scale for color, _, scale in items]
    for stack in _stacks(keys, pixels, stack_pixels):
        if items[stack[0]][0].shape[0] != 3 or len(stack) == 1:
            for i in stack:
                out[i] = compose(items[i][0], None, items[i][1], items[i][2])
            continue
        scale = items[stack[0]][2]
        colors = torch.stack([items[i][0] for i in stack])
        lumas = torch.stack([_output_luma(*items[i]) for i in stack])
        for i, planes in zip(stack, swap_luma(bicubic_upscale(colors, scale), lumas), strict=True):
            out[i] = planes
    return out  # type: ignore[return-value]  # every index was filled
