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

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from app.core.color import rgb_to_y
from app.imaging.decode import DecodedImage

BLEED_REACH = 8  # LR pixels: ESPCN's radius 4 + bicubic support 2, with margin
_BAND_PIXELS = 1 << 20  # convert colour in bands of about a megapixel to bound the float memory
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
    y = _plane(sr_luma, size, scale) * 255.0
    if img.color.mode == "L":
        grey = y.sub_(16.0).mul_(255.0 / 219.0).round_().clamp_(0, 255).to(torch.uint8)
        out = Image.fromarray(grey.numpy(), "L")
    else:
        out = Image.fromarray(_with_luma(np.asarray(base.convert("RGB") if base.mode == "RGBA" else base), y), "RGB")
    if img.alpha is not None:
        out.putalpha(base.getchannel("A"))
    return out


def _plane(sr_luma: Tensor, size: tuple[int, int], scale: int) -> Tensor:
    width, height = size
    if sr_luma.dim() < 2 or tuple(sr_luma.shape[-2:]) != (height, width) or sr_luma.numel() != width * height:
        raise ValueError(
            f"sr_luma must be (1, {height}, {width}) for ×{scale} of a {width // scale}×{height // scale} image, "
            f"got {tuple(sr_luma.shape)}"
        )
    return sr_luma.detach().to(device="cpu", dtype=torch.float32).reshape(height, width)


def _with_luma(rgb: np.ndarray, y: Tensor) -> np.ndarray:
    """Swap the Y of a (H, W, 3) uint8 RGB array for ``y`` (H, W, in [0, 255]), keeping its Cb/Cr.

    Fused: YCbCr → RGB is linear and its Y column is 255/219 for R, G and B
    alike, so keeping Cb/Cr while replacing Y adds ``255/219 · (y − Y(rgb))``
    to every channel — one dot product instead of two 3×3 colour conversions.
    """
    out = np.empty_like(rgb)
    rows = max(1, _BAND_PIXELS // rgb.shape[1])
    for top in range(0, rgb.shape[0], rows):
        band = torch.from_numpy(rgb[top : top + rows].astype(np.float32))
        delta = (y[top : top + rows] - rgb_to_y(band.permute(2, 0, 1))[0]).mul_(_Y_TO_RGB)
        out[top : top + rows] = band.add_(delta[..., None]).round_().clamp_(0, 255).to(torch.uint8).numpy()
    return out


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
