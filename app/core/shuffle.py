"""Periodic shuffling (PS) and its inverse, for 1-D and 2-D signals.

The channel order is PyTorch's ``pixel_shuffle`` order, generalised to any
number of spatial dimensions: in 2-D, LR channel ``c·r² + a·r + b`` lands at
sub-pixel offset ``(a, b)`` of HR output channel ``c``; in 1-D, channel
``c·r + a`` lands at offset ``a``. Everything else in :mod:`app.core` (the
conv ⇄ deconv conversions, ESPCN) relies on exactly this order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_scale(scale: int) -> None:
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale!r}")


def periodic_shuffle(x: Tensor, scale: int) -> Tensor:
    """(N, C·r^d, *S) → (N, C, *(r·S)) for d = 1 or 2 spatial dimensions."""
    _check_scale(scale)
    if x.ndim == 4:
        if x.shape[1] % scale**2:
            raise ValueError(f"channels {x.shape[1]} not divisible by scale² = {scale**2}")
        return torch.pixel_shuffle(x, scale)
    if x.ndim == 3:
        n, cr, length = x.shape
        if cr % scale:
            raise ValueError(f"channels {cr} not divisible by scale {scale}")
        # (N, C, r, L) → (N, C, L, r) → (N, C, L·r): channel c·r + a → l·r + a
        return x.reshape(n, cr // scale, scale, length).transpose(2, 3).reshape(n, cr // scale, length * scale)
    raise ValueError(f"expected a 3-D (N, C, L) or 4-D (N, C, H, W) tensor, got {x.ndim}-D")


def periodic_unshuffle(y: Tensor, scale: int) -> Tensor:
    """Inverse of :func:`periodic_shuffle`: (N, C, *(r·S)) → (N, C·r^d, *S)."""
    _check_scale(scale)
    if y.ndim == 4:
        if y.shape[2] % scale or y.shape[3] % scale:
            raise ValueError(f"spatial size {tuple(y.shape[2:])} not divisible by scale {scale}")
        return torch.pixel_unshuffle(y, scale)
    if y.ndim == 3:
        n, c, length = y.shape
        if length % scale:
            raise ValueError(f"length {length} not divisible by scale {scale}")
        return y.reshape(n, c, length // scale, scale).transpose(2, 3).reshape(n, c * scale, length // scale)
    raise ValueError(f"expected a 3-D (N, C, L) or 4-D (N, C, H, W) tensor, got {y.ndim}-D")
