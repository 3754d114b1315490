"""BT.601 studio-swing YCbCr, as MATLAB's ``rgb2ycbcr`` (the SR literature's Y channel).

Y = 16 + (65.481·R + 128.553·G + 24.966·B)/255 for 8-bit R, G, B. The models
are trained and scored on this Y, so the service converts with the very same
matrix; Cb and Cr only ever travel bicubically.
"""

from __future__ import annotations

import torch
from torch import Tensor

_RGB_TO_YCBCR = torch.tensor(
    [
        [65.481, 128.553, 24.966],
        [-37.797, -74.203, 112.0],
        [112.0, -93.786, -18.214],
    ],
    dtype=torch.float64,
) / 255.0
_OFFSET = torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64)
_YCBCR_TO_RGB = torch.linalg.inv(_RGB_TO_YCBCR)
Y_WEIGHTS: tuple[float, float, float] = tuple(_RGB_TO_YCBCR[0].tolist())  # R, G, B weights of Y
Y_OFFSET = 16.0


def _apply(matrix: Tensor, x: Tensor) -> Tensor:
    """Apply a 3×3 matrix over the channel axis ``-3`` of (…, 3, H, W)."""
    return torch.einsum("ij,...jhw->...ihw", matrix.to(x.dtype), x)


def rgb_to_ycbcr(rgb: Tensor) -> Tensor:
    """(…, 3, H, W) RGB in [0, 255] → YCbCr in [16, 235/240], floating point."""
    if rgb.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(rgb.shape)}")
    return _apply(_RGB_TO_YCBCR, rgb) + _OFFSET.to(rgb.dtype).view(3, 1, 1)


def ycbcr_to_rgb(ycbcr: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_ycbcr` (not clamped)."""
    if ycbcr.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(ycbcr.shape)}")
    return _apply(_YCBCR_TO_RGB, ycbcr - _OFFSET.to(ycbcr.dtype).view(3, 1, 1))


def rgb_to_y(rgb: Tensor) -> Tensor:
    """(…, 3, H, W) RGB in [0, 255] → (…, 1, H, W) luma in [16, 235] (only the Y row is computed)."""
    if rgb.shape[-3] != 3:
        raise ValueError(f"expected 3 channels at dim -3, got shape {tuple(rgb.shape)}")
    # Three scaled planes added in order: the same roundings as a weighted sum over the channel axis,
    # but 3× faster on the channels-last views that decoded images arrive as.
    red, green, blue = rgb.unbind(-3)
    wr, wg, wb = Y_WEIGHTS
    return (red * wr + green * wg + blue * wb + Y_OFFSET).unsqueeze(-3)
