"""Shared Pillow helpers: one font, fixed text boxes, nearest-neighbour cells, a colour bar.

Text never decides a figure's size: every title gets a fixed-height line, so
the documented size formulas hold whatever font Pillow ships.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from app.viz.colormap import diverging

MARGIN = 10  # px around and between blocks
LINE_H = 18  # px reserved for one line of text
FONT_SIZE = 12
BACKGROUND = (255, 255, 255)
GAP_COLOR = (110, 110, 110)  # between kernels: near-zero weights are near-white
INK = (20, 20, 20)


@cache
def font(size: int = FONT_SIZE) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font (no font files needed); the bitmap fallback ignores ``size``.

    Its glyphs are Latin-1 only: labels use ``x``, ``<-`` and ``...``, not ×, ← or ….
    """
    return ImageFont.load_default(size=size)


def ink_for(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads better on ``rgb``."""
    luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return INK if luma > 140 else (255, 255, 255)


def text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    s: str,
    *,
    fill: tuple[int, int, int] = INK,
    anchor: str = "la",
    size: int = FONT_SIZE,
) -> None:
    draw.text(xy, s, fill=fill, font=font(size), anchor=anchor)


def enlarge(rgb: np.ndarray, cell: int) -> np.ndarray:
    """Nearest-neighbour enlargement of an ``(h, w, 3)`` array: each pixel a ``cell``² square."""
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


def colour_bar(canvas: Image.Image, x: int, y: int, width: int, height: int, limit: float) -> None:
    """A horizontal ``diverging`` bar at ``(x, y)`` with −L, 0 and +L written under it."""
    bar = diverging(np.linspace(-limit, limit, width), limit)
    canvas.paste(Image.fromarray(np.broadcast_to(bar, (height, width, 3)).copy()), (x, y))
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((x - 1, y - 1, x + width, y + height), outline=INK)
    below = y + height + 3
    for frac, label in ((0.0, f"{-limit:+.3g}"), (0.5, "0"), (1.0, f"{limit:+.3g}")):
        tx = x + round(frac * (width - 1))
        draw.line((tx, y + height, tx, below), fill=INK)
        text(draw, (tx, below + 1), label, anchor="ma")
