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

from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images
_SUPPORT = 2.0  # bicubic


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic, a = −0.5, elementwise in float64 with the C code's operations in its order."""
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@lru_cache(maxsize=512)
def axis_coefficients(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index: the first source index ``(out,)`` and the fixed-point weights of its taps
    ``(out, taps)``, int32, Pillow's order, zero after each index's own taps (the borders have fewer).

    Vectorised over the output indices, each step the same float64 operation as Pillow's C loop
    in the same order (no fused multiply-add in NumPy), so the integers are Pillow's: tested
    against a scalar transcription (every size to 100 at ×1–8, larger ones, downscales). A Python
    loop was an order of magnitude slower, paid by every request of a new size and by every request
    in the tensor compose (docs/benchmarks.md). Cached, and read-only, since request sizes repeat.
    """
    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    center = (np.arange(size_out, dtype=np.float64) + 0.5) * scale
    lo = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # C's (int) truncates toward zero
    hi = np.minimum(np.trunc(center + support + 0.5), size_in).astype(np.int64)
    counts = hi - lo
    k = np.arange(int(counts.max()))
    own = k[None, :] < counts[:, None]
    raw = np.where(own, _bicubic(((k[None, :] + lo[:, None]) - center[:, None] + 0.5) / filterscale), 0.0)
    total = np.zeros(size_out)
    for t in range(len(k)):  # left to right, as the C loop sums (the zeros after a row's taps add nothing)
        total = total + raw[:, t]
    nonzero = total != 0.0
    w = np.where(nonzero[:, None], raw / np.where(nonzero, total, 1.0)[:, None], raw)
    scaled = w * (1 << PRECISION_BITS)
    weights = np.where(w < 0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5)).astype(np.int32)  # half away from 0
    starts = lo.astype(np.int32)
    starts.flags.writeable = weights.flags.writeable = False
    return starts, weights


@lru_cache(maxsize=256)
def _taps(size_in: int, size_out: int, device: torch.device, from_end: int) -> tuple[tuple[Tensor, Tensor], ...]:
    """Per tap, on ``device``: each output index's source index ``(out,)`` (past a border clamped into the
    image, where its weight is 0) and its int32 weight, shaped to broadcast along the axis ``from_end``
    places from the last (1: columns, 2: rows).

    Cached per device, so a request of a size seen before builds nothing and copies nothing to a GPU;
    contiguous per tap, so each tap is one gather and one multiply-add.
    """
    starts, weights = axis_coefficients(size_in, size_out)
    shape = (size_out,) + (1,) * (from_end - 1)
    taps = []
    for t in range(weights.shape[1]):
        index = torch.from_numpy(np.minimum(starts.astype(np.int64) + t, size_in - 1))
        weight = torch.from_numpy(weights[:, t].copy()).reshape(shape)
        taps.append((index.to(device), weight.to(device)))
    return tuple(taps)


def _pass(x: Tensor, dim: int, size_out: int) -> Tensor:
    """One 8-bit resampling pass along ``dim`` of an int32 tensor holding 0..255: Σ taps, + 2²¹, >> 22, clip.

    Integer sums are exact in any order, so summing the taps first and rounding after is Pillow's result.
    """
    (index, weight), *rest = _taps(x.shape[dim], size_out, x.device, x.dim() - dim)
    acc = x.index_select(dim, index) * weight
    for index, weight in rest:
        acc.addcmul_(x.index_select(dim, index), weight)
    acc += 1 << (PRECISION_BITS - 1)
    acc >>= PRECISION_BITS
    return acc.clamp_(0, 255)


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

