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
  the mean Y of its visible neighbours, grown outwards ``planes.BLEED_REACH`` pixels
  ("alpha bleeding"), beyond the network's receptive field plus the bicubic
  support, so no visible output pixel sees the hidden colour.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from app.core import planes
from app.core.color import Y_OFFSET, Y_WEIGHTS
from app.imaging import fused
from app.imaging.decode import DecodedImage

_BAND_PIXELS = 1 << 19  # output pixels per colour band: bounds the scratch memory, spreads big images over cores
_CHUNK_PIXELS = 1 << 17  # pixels per step of the luma swap: its scratch stays in the core's cache
_HALO = 3  # source rows around a band: bicubic reads 2 on each side when upscaling
_MIN_BAND_ROWS = 32  # source rows: keeps the halo's extra resize work under a fifth on very wide images
_WR, _WG, _WB = (np.float32(w) for w in Y_WEIGHTS)


def planes_of(img: DecodedImage) -> tuple[Tensor, Tensor | None]:
    """The decoded image as 8-bit tensor planes: colour (1 or 3, H, W) and alpha (H, W), views of its pixels."""
    values = torch.from_numpy(np.array(img.color))  # a writable copy (Pillow's buffer is read-only)
    color = values[None] if values.dim() == 2 else values.permute(2, 0, 1)
    alpha = torch.from_numpy(np.array(img.alpha)) if img.alpha is not None else None
    return color, alpha


def luma_tensor(img: DecodedImage) -> Tensor:
    """The model input: (1, H, W) float32 studio-swing Y / 255, in [16/255, 235/255] (see :func:`planes.luma`)."""
    return planes.luma(*planes_of(img))


FUSED = fused.available()  # RGB answers through the compiled pass (same bytes as the Pillow path below)


def warm_up() -> None:
    """Compile the RGB compose before the first request needs it (a no-op without Numba)."""
    if FUSED:
        fused.warm_up()


def compose(
    img: DecodedImage, sr_luma: Tensor, scale: int, bands: Executor | None = None, *, use_fused: bool | None = None
) -> Image.Image:
    """Model output Y (1, r·H, r·W) in [0, 1] + bicubic chroma (+ bicubic alpha) → ``L``/``LA``/``RGB``/``RGBA``.

    Opaque RGB, the common case, goes through :func:`app.imaging.fused.compose_rows`
    when Numba is there (``use_fused``, default :data:`FUSED`): the same bytes,
    2–3× faster. Otherwise colour images go band by band: each band of the source is upscaled with
    Pillow's bicubic (a few rows of halo make it bit-identical to upscaling
    the whole image, see :func:`_bicubic_rows`) and gets its luma swapped at
    once, while it is still in cache. Bands of a big image run on all cores
    (this runs after the request's model call, so a lone big request has
    them all) when ``bands`` is given: a pool of its own, never the pool this
    runs in, since a task waiting on tasks queued behind it could deadlock.
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    size = (img.width * scale, img.height * scale)
    y = _plane(sr_luma, size, scale)
    if img.color.mode == "L":
        out = Image.fromarray(_grey(y), "L")
        if img.alpha is not None:
            out.putalpha(img.alpha.resize(size, Image.Resampling.BICUBIC))
        return out
    rows = max(_MIN_BAND_ROWS, _BAND_PIXELS // (img.width * scale * scale))  # source rows per band
    tops = range(0, img.height, rows)
    if img.alpha is None and (FUSED if use_fused is None else use_fused):
        return _fused(img, y, scale, rows, tops, bands)
    source = img.color
    if img.alpha is not None:
        source = img.color.copy()
        source.putalpha(img.alpha)  # Pillow's RGBA bicubic premultiplies: invisible colour weighs nothing
    pixels = np.empty((size[1], size[0], len(source.mode)), np.uint8)

    def band(top: int) -> None:  # writes only its own rows of ``pixels``
        bottom = min(img.height, top + rows)
        upscaled = _bicubic_rows(source, top, bottom, scale)
        hr = slice(top * scale, bottom * scale)
        _swap_luma(upscaled, y[hr], pixels[hr])

    _run_bands(band, tops, bands)  # NumPy and Pillow's resize release the GIL
    return Image.fromarray(pixels, source.mode)


def _fused(img: DecodedImage, y: np.ndarray, scale: int, rows: int, tops: range,
           bands: Executor | None) -> Image.Image:
    """Opaque RGB in one compiled pass per band (the bands of a big image on all cores, without the GIL)."""
    src = np.asarray(img.color)
    pixels = np.empty((img.height * scale, img.width * scale, 3), np.uint8)

    def band(top: int) -> None:
        hr = slice(top * scale, min(img.height, top + rows) * scale)
        fused.compose_rows(src, y[hr], scale, hr.start, hr.stop, out=pixels[hr])

    _run_bands(band, tops, bands)
    return Image.fromarray(pixels, "RGB")


def _run_bands(band: Callable[[int], None], tops: range, bands: Executor | None) -> None:
    if len(tops) == 1 or bands is None:
        for top in tops:
            band(top)
    else:
        list(bands.map(band, tops))


def _bicubic_rows(source: Image.Image, top: int, bottom: int, scale: int) -> np.ndarray:
    """Rows ``top:bottom`` of ``source`` upscaled ×``scale`` with Pillow's bicubic, as an (r·h, r·W, C) array.

    Bit-identical to the same rows of the whole image's upscale: the crop
    keeps ``_HALO`` source rows on each side (bicubic reads two), and where
    it meets the image border it is the image border, so Pillow computes the
    same weights. (Pillow's own ``box=`` argument does not give the same
    numbers; a test holds this to exactness.)
    """
    first, last = max(0, top - _HALO), min(source.height, bottom + _HALO)
    window = source.crop((0, first, source.width, last)) if (first, last) != (0, source.height) else source
    upscaled = window.resize((source.width * scale, (last - first) * scale), Image.Resampling.BICUBIC)
    return np.asarray(upscaled)[(top - first) * scale : (bottom - first) * scale]


def _plane(sr_luma: Tensor, size: tuple[int, int], scale: int) -> np.ndarray:
    """The model output as an (H, W) float32 array in [0, 1]: a view of it, when it is on the CPU already."""
    width, height = size
    if sr_luma.dim() < 2 or tuple(sr_luma.shape[-2:]) != (height, width) or sr_luma.numel() != width * height:
        raise ValueError(
            f"sr_luma must be (1, {height}, {width}) for ×{scale} of a {width // scale}×{height // scale} image, "
            f"got {tuple(sr_luma.shape)}"
        )
    return sr_luma.detach().to(device="cpu", dtype=torch.float32).reshape(height, width).numpy()


def _grey(y: np.ndarray) -> np.ndarray:
    """Studio-swing Y in [0, 1] → full-range grey, uint8."""
    g = y * np.float32(255.0)
    g -= np.float32(16.0)
    g *= np.float32(255.0 / 219.0)
    return np.clip(np.rint(g, out=g), 0, 255, out=g).astype(np.uint8)


def _swap_luma(upscaled: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
    """Give the RGB of ``upscaled`` (h, W, 3 or 4) the luma ``y`` (h, W, in [0, 1]), keeping its Cb/Cr.

    YCbCr → RGB is linear and its Y column is 255/219 for R, G and B alike,
    so keeping Cb/Cr while replacing Y moves every channel by the same
    ``255/219 · (255·y − Y(rgb))``: one plane of float work, rounded once to whole
    levels, then a small-integer add to the three channels (each is clipped
    to [0, 255] on its own, as any YCbCr → RGB conversion does). A 4th
    channel (alpha) is copied. NumPy, not PyTorch, on purpose: this runs in
    the codec pool beside other requests' model calls, and PyTorch would fan
    these element-wise ops out over its intra-op threads, fighting the model
    for the same cores.
    """
    step = max(1, _CHUNK_PIXELS // upscaled.shape[1])
    for top in range(0, len(upscaled), step):  # chunks that stay in cache: this is memory-bound
        rgb, chunk = upscaled[top : top + step], out[top : top + step]
        shift = rgb[..., 0] * _WR
        shift += rgb[..., 1] * _WG
        shift += rgb[..., 2] * _WB
        shift += np.float32(Y_OFFSET)
        np.subtract(y[top : top + step] * np.float32(255.0), shift, out=shift)
        shift *= np.float32(planes.Y_TO_RGB)
        moved = rgb[..., :3].astype(np.int16)
        moved += np.rint(shift, out=shift).astype(np.int16)[..., None]
        chunk[..., :3] = np.clip(moved, 0, 255, out=moved)
        if rgb.shape[-1] == 4:
            chunk[..., 3] = rgb[..., 3]
