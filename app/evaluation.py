"""Score super-resolvers under the protocol: per-image Y-PSNR/SSIM, then the mean over images."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from PIL import Image
from torch import Tensor

from app.core.espcn import ESPCN, upscale
from app.core.quality import y_metrics
from app.datasets import Pair, luma

# A super-resolver under test: LR RGB image → (1, rH, rW) luma in [0, 255].
Upscaler = Callable[[Image.Image], Tensor]


@dataclass(frozen=True)
class Score:
    name: str
    psnr: float
    ssim: float


def bicubic_upscaler(scale: int) -> Upscaler:
    def run(lr: Image.Image) -> Tensor:
        hr = lr.resize((lr.width * scale, lr.height * scale), Image.Resampling.BICUBIC)
        return luma(hr) * 255.0

    return run


def model_upscaler(model: ESPCN) -> Upscaler:
    device = next(model.parameters()).device

    def run(lr: Image.Image) -> Tensor:
        y = luma(lr).unsqueeze(0).to(device)
        return upscale(model, y)[0].cpu() * 255.0

    return run


def score_pairs(upscaler: Upscaler, pairs: Iterable[Pair], scale: int) -> list[Score]:
    scores = []
    with torch.no_grad():
        for pair in pairs:
            sr = upscaler(pair.lr)
            p, s = y_metrics(sr[0], luma(pair.hr)[0] * 255.0, scale)
            scores.append(Score(pair.name, p, s))
    return scores


def mean_score(scores: list[Score]) -> Score:
    n = len(scores)
    return Score("mean", sum(s.psnr for s in scores) / n, sum(s.ssim for s in scores) / n)
