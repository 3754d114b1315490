"""What the sub-pixel layer computes on a real image: r² LR maps, their phases, the shuffled result.

:func:`render_channels` draws three panels left to right, each under a
two-line label of ``TITLE_H = 36`` px (all sizes in pixels; ``r`` scale,
``H × W`` LR input):

* Display window: the whole image if ``H, W ≤ MAX_LR_SIDE = 128``, otherwise
  the centred ``h × w = min(H, 128) × min(W, 128)`` LR crop starting at
  ``((H − h) // 2, (W − w) // 2)``; its HR counterpart is ``r`` times that.
  Statistics always cover the whole image. Small images are enlarged by
  ``z = max(1, MIN_LR_SIDE // max(h, w))`` (``MIN_LR_SIDE = 96``) px per pixel.
* (a) the ``r²`` LR maps of HR channel 0 before shuffling, map ``a·r + b``
  (offset ``(a, b)``) in grid row ``a``, column ``b``; each is ``z·w × z·h``
  inside a ``FRAME = 3`` px border of ``phase_colors(r²)[a·r + b]``, framed
  maps ``GAP = 4`` apart; one grey scale for all maps (min … max over the
  whole image). ``Wa = r·(z·w + 2·FRAME) + (r − 1)·GAP``, ``Ha`` likewise with ``h``.
* (b) :func:`~app.viz.kernels.render_subpixel_map` for ``r``, then a
  ``LINE_H = 18`` px caption, then the centred HR crop of ``m = min(4, h)·r ×
  n = min(4, w)·r`` HR pixels (whole LR pixels), each enlarged to a
  ``q = ZOOM_PX // (4·r)`` px square (``ZOOM_PX = 192``) and tinted with its
  phase colour; LR pixel borders are 1 px lines. ``Wb = max(map width, n·q)``,
  ``Hb = map height + LINE_H + m·q``.
* (c) the shuffled HR luma, clamped to [0, 1]: ``Wc = z·r·w``, ``Hc = z·r·h``.

Each panel sits in a slot of width ``max(W_panel, PANEL_MIN_W = 150)``::

    width  = 4·MARGIN + Sa + Sb + Sc           (MARGIN = 10)
    height = 2·MARGIN + TITLE_H + max(Ha, Hb, Hc)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from app.core.espcn import ESPCN, pad_for
from app.viz.colormap import phase_colors
from app.viz.drawing import BACKGROUND, INK, LINE_H, MARGIN, enlarge, text
from app.viz.kernels import render_subpixel_map

MAX_LR_SIDE = 128
MIN_LR_SIDE = 96
TITLE_H = 36
FRAME = 3
GAP = 4
ZOOM_LR = 4
ZOOM_PX = 192
PANEL_MIN_W = 150
TINT = 0.45  # share of the phase colour in the tinted zoom


def _grey(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(h, w) floats → (h, w, 3) uint8 with ``lo`` black and ``hi`` white."""
    t = (x - lo) / (hi - lo) if hi > lo else np.full_like(x, 0.5)
    g = np.rint(np.clip(t, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(g[..., None], 3, axis=-1)


def _stats(lr: Tensor, r: int) -> list[dict[str, Any]]:
    flat = lr[0].flatten(1).double()  # (c·r², H·W)
    mins, maxs = flat.amin(1).tolist(), flat.amax(1).tolist()
    means, stds = flat.mean(1).tolist(), flat.std(1, correction=0).tolist()
    out = []
    for ch in range(flat.shape[0]):
        phase = ch % (r * r)
        out.append(
            {
                "channel": ch,
                "hr_channel": ch // (r * r),
                "offset": [phase // r, phase % r],
                "min": mins[ch],
                "max": maxs[ch],
                "mean": means[ch],
                "std": stds[ch],
            }
        )
    return out


def _zoom(hr: np.ndarray, r: int, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """HR luma crop (m, n) in [0, 1] → enlarged RGB, each pixel tinted by its phase colour."""
    m, n = hr.shape
    q = max(1, ZOOM_PX // (ZOOM_LR * r))
    phase = (np.arange(m)[:, None] % r) * r + np.arange(n)[None, :] % r
    tint = np.asarray(colors, dtype=np.float64)[phase]  # (m, n, 3)
    grey = np.clip(hr, 0.0, 1.0)[..., None] * 255.0
    rgb = np.rint((1 - TINT) * grey + TINT * tint).astype(np.uint8)
    big = enlarge(rgb, q)
    big[:: r * q, :] = INK  # LR pixel borders
    big[:, :: r * q] = INK
    return big


def render_channels(
    model: ESPCN, luma: Tensor, *, context: tuple[int, int, int, int] = (0, 0, 0, 0)
) -> tuple[Image.Image, dict[str, Any]]:
    """Figure of the LR maps → shuffle → HR for one LR image ``(c, H, W)`` in [0, 1], plus per-channel stats.

    ``c`` is ``model.channels`` (1 for the Y-only models); the panels show HR
    channel 0, the statistics cover all ``c·r²`` LR maps of the whole image.
    ``context`` = (top, left, bottom, right) rows/columns of ``luma`` that only
    feed the model (a crop's surroundings, so its maps equal the whole image's)
    and are trimmed from the maps before anything is drawn or counted.
    Stats: ``scale``, ``lr_size``, ``hr_size``, ``crop`` (LR window shown),
    ``display_range`` (grey scale of panel a) and ``channels``: one
    ``{channel, hr_channel, offset: [a, b], min, max, mean, std}`` per LR map
    (population std, so a 1×1 image gives 0, not NaN).
    """
    if luma.ndim != 3 or luma.shape[0] != model.channels:
        raise ValueError(f"expected a ({model.channels}, H, W) image, got shape {tuple(luma.shape)}")
    r = model.scale
    big_h, big_w = luma.shape[1:]
    param = next(model.parameters())
    with torch.no_grad():
        lr = model.forward_lr(pad_for(model, luma[None].to(param.device, param.dtype))).float().cpu()
    ct, cl, cb, cr = context
    if any(context):
        lr = lr[:, :, ct : lr.shape[2] - cb, cl : lr.shape[3] - cr]
        big_h, big_w = lr.shape[2:]
    channels = _stats(lr, r)

    h, w = min(big_h, MAX_LR_SIDE), min(big_w, MAX_LR_SIDE)
    top, left = (big_h - h) // 2, (big_w - w) // 2
    maps = lr[0, : r * r]  # HR channel 0
    lo, hi = float(maps.amin()), float(maps.amax())
    crop = maps[:, top : top + h, left : left + w]
    hr = torch.pixel_shuffle(crop[None], r)[0, 0].clamp(0.0, 1.0).numpy()
    z = max(1, MIN_LR_SIDE // max(h, w))
    colors = phase_colors(r * r)

    # panel sizes
    pitch_x, pitch_y = z * w + 2 * FRAME + GAP, z * h + 2 * FRAME + GAP
    wa, ha = r * pitch_x - GAP, r * pitch_y - GAP
    phase_map = render_subpixel_map(r)
    zm, zn = min(ZOOM_LR, h), min(ZOOM_LR, w)
    cy, cx = (h - zm) // 2 * r, (w - zn) // 2 * r
    zoom = _zoom(hr[cy : cy + zm * r, cx : cx + zn * r], r, colors)
    wb = max(phase_map.width, zoom.shape[1])
    hb = phase_map.height + LINE_H + zoom.shape[0]
    wc, hc = z * r * w, z * r * h
    slots = [max(wa, PANEL_MIN_W), max(wb, PANEL_MIN_W), max(wc, PANEL_MIN_W)]
    width = 4 * MARGIN + sum(slots)
    height = 2 * MARGIN + TITLE_H + max(ha, hb, hc)

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    xa = MARGIN
    xb = xa + slots[0] + MARGIN
    xc = xb + slots[1] + MARGIN
    y0 = MARGIN + TITLE_H
    hr_note = size_note(r, h, w, big_h, big_w)

    # (a) LR maps before shuffling, by sub-pixel offset
    text(draw, (xa, MARGIN), f"(a) {r * r} LR maps, pre-shuffle")
    text(draw, (xa, MARGIN + LINE_H), f"grey {lo:.2f} ... {hi:.2f}")
    for a in range(r):
        for b in range(r):
            x, y = xa + b * pitch_x, y0 + a * pitch_y
            draw.rectangle((x, y, x + pitch_x - GAP - 1, y + pitch_y - GAP - 1), fill=colors[a * r + b])
            tile = enlarge(_grey(crop[a * r + b].numpy(), lo, hi), z)
            canvas.paste(Image.fromarray(tile), (x + FRAME, y + FRAME))

    # (b) phase map and tinted HR zoom
    text(draw, (xb, MARGIN), "(b) sub-pixel phases")
    text(draw, (xb, MARGIN + LINE_H), "pixel_shuffle order")
    canvas.paste(phase_map, (xb, y0))
    text(draw, (xb, y0 + phase_map.height + 2), f"HR centre {zn * r}x{zm * r}, tinted by phase")  # width first
    canvas.paste(Image.fromarray(zoom), (xb, y0 + phase_map.height + LINE_H))

    # (c) the shuffled HR output
    text(draw, (xc, MARGIN), f"(c) HR output x{r}, clamped to [0, 1]")
    text(draw, (xc, MARGIN + LINE_H), hr_note)
    canvas.paste(Image.fromarray(enlarge(_grey(hr, 0.0, 1.0), z)), (xc, y0))

    stats = {
        "scale": r,
        "lr_size": [big_w, big_h],  # width, height: as everywhere else in the service
        "hr_size": [r * big_w, r * big_h],
        "crop": {"top": top, "left": left, "height": h, "width": w},
        "display_range": [lo, hi],
        "channels": channels,
    }
    return canvas, stats


def size_note(r: int, h: int, w: int, big_h: int, big_w: int) -> str:
    """The HR size the figure shows, width × height as everywhere else (it wrote height first)."""
    if (h, w) == (big_h, big_w):
        return f"{r * w}x{r * h}"
    return f"centre {r * w}x{r * h} of {r * big_w}x{r * big_h}"
