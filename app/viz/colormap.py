"""Colour maps for weight and phase figures, in numpy (no matplotlib at serving time).

* :func:`diverging` — blue–white–red, centred on zero, so that a weight's sign
  reads at a glance and equal magnitudes get equal saturation (ColorBrewer
  RdBu reversed, i.e. matplotlib's ``RdBu_r``).
* :func:`phase_colors` — a qualitative palette for the ``r²`` sub-pixel phases
  (tab20's strong and light hues: 16 entries, enough for ×4), extended by
  golden-ratio HSV hues beyond the table.
"""

from __future__ import annotations

import colorsys

import numpy as np

# ColorBrewer RdBu (11 classes), reversed: −limit (dark blue) … 0 (off-white) … +limit (dark red)
_DIVERGING = np.array(
    [
        (0x05, 0x30, 0x61),
        (0x21, 0x66, 0xAC),
        (0x43, 0x93, 0xC3),
        (0x92, 0xC5, 0xDE),
        (0xD1, 0xE5, 0xF0),
        (0xF7, 0xF7, 0xF7),
        (0xFD, 0xDB, 0xC7),
        (0xF4, 0xA5, 0x82),
        (0xD6, 0x60, 0x4D),
        (0xB2, 0x18, 0x2B),
        (0x67, 0x00, 0x1F),
    ],
    dtype=np.float64,
)
_POSITIONS = np.linspace(-1.0, 1.0, len(_DIVERGING))

# tab20: the ten strong hues, then six of their light partners
_PHASES: tuple[tuple[int, int, int], ...] = (
    (0x1F, 0x77, 0xB4),
    (0xFF, 0x7F, 0x0E),
    (0x2C, 0xA0, 0x2C),
    (0xD6, 0x27, 0x28),
    (0x94, 0x67, 0xBD),
    (0x8C, 0x56, 0x4B),
    (0xE3, 0x77, 0xC2),
    (0x7F, 0x7F, 0x7F),
    (0xBC, 0xBD, 0x22),
    (0x17, 0xBE, 0xCF),
    (0xAE, 0xC7, 0xE8),
    (0xFF, 0xBB, 0x78),
    (0x98, 0xDF, 0x8A),
    (0xFF, 0x98, 0x96),
    (0xC5, 0xB0, 0xD5),
    (0xC4, 0x9C, 0x94),
)


def diverging(values: np.ndarray, limit: float) -> np.ndarray:
    """Map ``values`` to RGB ``uint8`` of shape ``(…, 3)``: −limit blue, 0 white, +limit red.

    Values beyond ±limit saturate; a non-positive limit (all-zero weights) maps
    everything to the centre colour.
    """
    v = np.asarray(values, dtype=np.float64)
    t = np.clip(v / limit, -1.0, 1.0) if limit > 0 else np.zeros_like(v)
    rgb = np.stack([np.interp(t, _POSITIONS, _DIVERGING[:, ch]) for ch in range(3)], axis=-1)
    return np.rint(rgb).astype(np.uint8)


def phase_colors(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct RGB colours: the 16-entry table first, then golden-ratio HSV hues."""
    colors = list(_PHASES[:n])
    for i in range(n - len(colors)):
        hue = (0.13 + i * 0.618033988749895) % 1.0
        sat, val = (0.55, 0.95) if i % 2 else (0.85, 0.75)
        red, green, blue = (int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue, sat, val))
        colors.append((red, green, blue))
    return colors
