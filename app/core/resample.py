"""Pillow's bicubic upscale of 8-bit images, as tensor operations on any device — bit for bit.

The service's chroma is Pillow's ``Image.resize(..., BICUBIC)``; on a GPU the
same pixels must come out of tensor code, so this module reproduces Pillow's
``libImaging/Resample.c`` for 8-bit data exactly, not approximately:

- the filter is Keys' cubic with a = −0.5, support 2 (upscaling never widens it);
- output pixel ``i`` is centred on source position ``(i + 0.5)·in/out``; its taps
  span ``[int(c − 2 + 0.5), int(c + 2 + 0.5))`` clipped to the image, and the
  weights of the taps that remain are renormalised to sum to one (borders);
- weights are rounded to 22-bit fixed point, each pass accumulates in integers
  from ``2²¹`` (round half up) and clips to [0, 255] after ``>> 22``;
- two passes, horizontal first, with an 8-bit intermediate image.

Integers make it exact on every device: the largest partial sum,
255 · Σ|k| · 2²² + 2²¹, stays below 2³¹, so int32 holds it.
"""

from __future__ import annotations

import torch
from torch import Tensor

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
_SUPPORT = 2.0  # bicubic


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


def _fixed(w: float) -> int:
    """C's ``(int)(±0.5 + w · 2²²)``: round half away from zero."""
    scaled = w * (1 << PRECISION_BITS)
    return int(scaled - 0.5) if w < 0 else int(scaled + 0.5)


def axis_coefficients(size_in: int, size_out: int) -> tuple[list[int], list[list[int]]]:
    """Per output index: the first source index and the fixed-point weights of its taps (Pillow's order)."""
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    starts, weights = [], []
    for i in range(size_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        raw = [_bicubic((x + lo - center + 0.5) / filterscale) for x in range(hi - lo)]
        total = sum(raw)
        starts.append(lo)
        weights.append([_fixed(w / total if total != 0.0 else w) for w in raw])
    return starts, weights


def _tables(size_in: int, size_out: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """(out, taps) source indices and int32 weights; missing taps point at index 0 with weight 0."""
    starts, weights = axis_coefficients(size_in, size_out)
    taps = max(len(w) for w in weights)
    index = torch.zeros(size_out, taps, dtype=torch.long)
    kernel = torch.zeros(size_out, taps, dtype=torch.int32)
    for i, (lo, ws) in enumerate(zip(starts, weights, strict=True)):
        index[i, : len(ws)] = torch.arange(lo, lo + len(ws))
        kernel[i, : len(ws)] = torch.tensor(ws, dtype=torch.int32)
    return index.to(device), kernel.to(device)


def _pass(x: Tensor, dim: int, size_out: int) -> Tensor:
    """One 8-bit resampling pass along ``dim`` of an int32 tensor holding 0..255."""
    index, kernel = _tables(x.shape[dim], size_out, x.device)
    shape = [1] * x.dim()
    shape[dim] = size_out
    acc = torch.full((*x.shape[:dim], size_out, *x.shape[dim + 1 :]), 1 << (PRECISION_BITS - 1),
                     dtype=torch.int32, device=x.device)
    for t in range(index.shape[1]):
        acc += x.index_select(dim, index[:, t]) * kernel[:, t].view(shape)
    return (acc >> PRECISION_BITS).clamp_(0, 255)


def bicubic_upscale(image: Tensor, scale: int) -> Tensor:
    """(…, H, W) uint8 → (…, r·H, r·W) uint8, equal to Pillow's ``resize((r·W, r·H), BICUBIC)`` per channel."""
    if image.dtype != torch.uint8:
        raise TypeError(f"expected uint8, got {image.dtype}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    h, w = image.shape[-2:]
    x = image.to(torch.int32)
    if scale > 1:
        x = _pass(x, x.dim() - 1, w * scale)
        x = _pass(x, x.dim() - 2, h * scale)
    return x.to(torch.uint8)


def muldiv255(a: Tensor, b: Tensor) -> Tensor:
    """Pillow's ``MULDIV255``: round(a·b / 255) in integers, as its premultiply computes it."""
    t = a.to(torch.int32) * b.to(torch.int32) + 128
    return ((t >> 8) + t) >> 8


def bicubic_upscale_rgba(rgb: Tensor, alpha: Tensor, scale: int) -> tuple[Tensor, Tensor]:
    """Pillow's RGBA bicubic: premultiply (RGBa), resample each band, unpremultiply; (3, H, W) + (H, W) uint8."""
    pre = muldiv255(rgb, alpha[None]).to(torch.uint8)
    up = bicubic_upscale(torch.cat([pre, alpha[None]]), scale)
    colour, a = up[:3].to(torch.int32), up[3].to(torch.int32)
    keep = (a == 255) | (a == 0)
    straight = torch.div(255 * colour, a.clamp_min(1), rounding_mode="floor").clamp_(0, 255)
    return torch.where(keep, colour, straight).to(torch.uint8), up[3]

