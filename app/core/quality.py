"""PSNR and SSIM under the SR literature's protocol: Y channel, 8-bit, ``r``-pixel border crop.

SSIM follows Wang et al. (2004): 11×11 Gaussian window with σ = 1.5,
K1 = 0.01, K2 = 0.03, L = 255, valid filtering, mean over the map — the
reference implementation that published SR tables use.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def crop_border(x: Tensor, border: int) -> Tensor:
    return x[..., border : x.shape[-2] - border, border : x.shape[-1] - border] if border else x


def psnr(a: Tensor, b: Tensor, peak: float = 255.0) -> float:
    """PSNR in dB between two same-shaped tensors (computed in float64)."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g /= g.sum()
    return torch.outer(g, g).view(1, 1, size, size)


def ssim(a: Tensor, b: Tensor, peak: float = 255.0) -> float:
    """SSIM of two single-channel images (H, W), in float64."""
    x = a.double().view(1, 1, *a.shape[-2:])
    y = b.double().view(1, 1, *b.shape[-2:])
    w = _gaussian_window()
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mu_x, mu_y = F.conv2d(x, w), F.conv2d(y, w)
    sxx = F.conv2d(x * x, w) - mu_x**2
    syy = F.conv2d(y * y, w) - mu_y**2
    sxy = F.conv2d(x * y, w) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return float((num / den).mean())


def y_metrics(sr_y: Tensor, hr_y: Tensor, scale: int) -> tuple[float, float]:
    """(PSNR, SSIM) of two luma images in [0, 255]: rounded to 8 bits, ``scale`` pixels cropped."""
    a = crop_border(sr_y.double().round().clamp(0, 255), scale)
    b = crop_border(hr_y.double().round().clamp(0, 255), scale)
    return psnr(a, b), ssim(a, b)
