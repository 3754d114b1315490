"""Colour conversion and the PSNR/SSIM protocol."""

from __future__ import annotations

import math

import torch

from app.core.color import rgb_to_y, rgb_to_ycbcr, ycbcr_to_rgb
from app.core.quality import psnr, ssim, y_metrics


def test_ycbcr_matches_matlab_rgb2ycbcr_and_round_trips() -> None:
    rgb = torch.tensor([[[[255.0]], [[255.0]], [[255.0]]], [[[0.0]], [[0.0]], [[0.0]]]], dtype=torch.float64)
    ycc = rgb_to_ycbcr(rgb)
    assert torch.allclose(ycc[0].flatten(), torch.tensor([235.0, 128.0, 128.0], dtype=torch.float64), atol=1e-9)
    assert torch.allclose(ycc[1].flatten(), torch.tensor([16.0, 128.0, 128.0], dtype=torch.float64), atol=1e-9)
    x = torch.rand(2, 3, 8, 9, dtype=torch.float64) * 255
    assert torch.allclose(ycbcr_to_rgb(rgb_to_ycbcr(x)), x, atol=1e-9)
    red = torch.tensor([255.0, 0, 0]).view(3, 1, 1)
    assert abs(rgb_to_y(red).item() - (16 + 65.481)) < 1e-4


def test_psnr_and_ssim_basics() -> None:
    a = torch.rand(40, 40, dtype=torch.float64) * 255
    assert psnr(a, a) == math.inf
    assert abs(ssim(a, a) - 1.0) < 1e-12
    b = a + 5.0
    assert abs(psnr(a, b) - 10 * math.log10(255**2 / 25)) < 1e-9
    noise = torch.randn(40, 40, dtype=torch.float64)
    slightly, very = (a + noise * 10).clamp(0, 255), (a + noise * 60).clamp(0, 255)
    assert 1.0 > ssim(a, slightly) > ssim(a, very) > 0.0


def test_y_metrics_crops_the_border() -> None:
    a = torch.full((30, 30), 100.0)
    b = a.clone()
    b[:3, :] = 0  # damage only inside the 3-pixel border
    p, s = y_metrics(b, a, 3)
    assert p == math.inf and abs(s - 1.0) < 1e-12
