"""The colour pipeline around the model, as in the paper: Y through the network, Cb/Cr bicubic.

Y is BT.601 studio-swing luma (:mod:`app.core.color`), the very signal the
models are trained on. Greyscale images are fed as R = G = B = g, so they meet
the same input statistics as colour ones, and they come back greyscale (no
chroma is ever invented for them).

Alpha, never seen by the model, is upscaled on its own with bicubic. Two
measures keep transparent edges free of dark or coloured fringes (the
colour under fully transparent pixels is often black, or junk):

- chroma: the RGB+alpha image is resized with Pillow's ``RGBA`` bicubic,
  which premultiplies by alpha internally, so invisible pixels weigh nothing;
  its ``A`` band is exactly the separate bicubic upscale of alpha;
- luma: before the network, Y under fully transparent pixels is replaced by
  the mean Y of its visible neighbours, grown outwards ``BLEED_REACH`` pixels
  ("alpha bleeding"), beyond the network's receptive field plus the bicubic
  support, so no visible output pixel sees the hidden colour.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from app.core.color import Y_OFFSET, Y_WEIGHTS, rgb_to_y
from app.imaging.decode import DecodedImage

BLEED_REACH = 8  # LR pixels: ESPCN's radius 4 + bicubic support 2, with margin
_BAND_PIXELS = 1 << 20  # colour in bands of about a megapixel: bounds the float memory, spreads big images over cores
_WR, _WG, _WB = (np.float32(w) for w in Y_WEIGHTS)
_Y_TO_RGB = 255.0 / 219.0  # the Y column of BT.601 studio-swing YCbCr → RGB, equal for R, G, B


def luma_tensor(img: DecodedImage) -> Tensor:
    """The model input: (1, H, W) float32 studio-swing Y / 255, in [16/255, 235/255]."""
    values = np.asarray(img.color, dtype=np.float32)
    if img.color.mode == "L":
        y = torch.from_numpy((16.0 + values * np.float32(219.0 / 255.0)) / np.float32(255.0))[None]
    else:
        y = rgb_to_y(torch.from_numpy(values).permute(2, 0, 1)) / 255.0
    if img.alpha is not None:
        y = _bleed(y, img.alpha)
    return y.contiguous()


def bicubic_base(img: DecodedImage, scale: int) -> Image.Image:
    """The bicubic upscale that supplies chroma and alpha: ``RGB``/``RGBA``, or ``L``/``LA`` for greyscale.

    It depends on the input only, so the service computes it while the model
    runs. With alpha, Pillow's ``RGBA`` bicubic premultiplies internally, so
    invisible pixels weigh nothing; its ``A`` band is the bicubic upscale of alpha.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    size = (img.width * scale, img.height * scale)
    base = img.color.copy() if img.alpha is not None else img.color
    if img.alpha is not None:
        base.putalpha(img.alpha)
    if base.mode == "L":  # greyscale without alpha: only its size matters
        return Image.new("L", size)
    return base.resize(size, Image.Resampling.BICUBIC)


def compose(img: DecodedImage, sr_luma: Tensor, scale: int, base: Image.Image | None = None) -> Image.Image:
    """Model output Y (1, r·H, r·W) in [0, 1] + bicubic chroma (+ bicubic alpha) → ``L``/``LA``/``RGB``/``RGBA``.

    ``base`` is :func:`bicubic_base` of the same image, when it was computed beforehand.
    """
    base = bicubic_base(img, scale) if base is None else base
    size = base.size
    y = _plane(sr_luma, size, scale)
    if img.color.mode == "L":
        out = Image.fromarray(_grey(y), "L")
    else:
        out = Image.fromarray(_with_luma(np.asarray(base.convert("RGB") if base.mode == "RGBA" else base), y), "RGB")
    if img.alpha is not None:
        out.putalpha(base.getchannel("A"))
    return out


def _plane(sr_luma: Tensor, size: tuple[int, int], scale: int) -> np.ndarray:
    """The model output as an (H, W) float32 array in [0, 255]."""
    width, height = size
    if sr_luma.dim() < 2 or tuple(sr_luma.shape[-2:]) != (height, width) or sr_luma.numel() != width * height:
        raise ValueError(
            f"sr_luma must be (1, {height}, {width}) for ×{scale} of a {width // scale}×{height // scale} image, "
            f"got {tuple(sr_luma.shape)}"
        )
    y = sr_luma.detach().to(device="cpu", dtype=torch.float32).reshape(height, width).numpy()
    return y * np.float32(255.0)


def _grey(y: np.ndarray) -> np.ndarray:
    """Studio-swing Y in [0, 255] → full-range grey, uint8."""
    g = (y - np.float32(16.0)) * np.float32(255.0 / 219.0)
    return np.clip(np.rint(g, out=g), 0, 255, out=g).astype(np.uint8)


def _with_luma(rgb: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Swap the Y of a (H, W, 3) uint8 RGB array for ``y`` (H, W, in [0, 255]), keeping its Cb/Cr.

    Fused: YCbCr → RGB is linear and its Y column is 255/219 for R, G and B
    alike, so keeping Cb/Cr while replacing Y adds ``255/219 · (y − Y(rgb))``
    to every channel — one dot product instead of two 3×3 colour conversions.
    NumPy, not PyTorch, on purpose: this runs in the codec pool while the model
    runs, and PyTorch would fan these element-wise ops out over its intra-op
    threads, fighting the model's threads for the same cores. Images of more
    than one band (a megapixel) spread their bands over the cores instead.
    """
    out = np.empty_like(rgb)
    rows = max(1, _BAND_PIXELS // rgb.shape[1])
    tops = range(0, rgb.shape[0], rows)

    def band(top: int) -> None:  # writes only its own rows of ``out``
        values = rgb[top : top + rows].astype(np.float32)
        luma = values[..., 0] * _WR + values[..., 1] * _WG + values[..., 2] * _WB + np.float32(Y_OFFSET)
        delta = (y[top : top + rows] - luma) * np.float32(_Y_TO_RGB)
        values += delta[..., None]
        out[top : top + rows] = np.clip(np.rint(values, out=values), 0, 255, out=values)

    if len(tops) == 1:
        band(0)
    else:  # big images: bands in parallel (NumPy releases the GIL); band tasks never wait, so no deadlock
        list(_band_pool().map(band, tops))
    return out


@functools.cache
def _band_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="compose-band")


def _bleed(y: Tensor, alpha: Image.Image) -> Tensor:
    """Fill Y under fully transparent pixels from visible neighbours, ``BLEED_REACH`` pixels deep."""
    lowest, highest = alpha.getextrema()
    if lowest > 0 or highest == 0:
        return y
    known = torch.from_numpy(np.asarray(alpha) > 0)[None, None].to(y.dtype)
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
