"""Fixed-size tiles with a halo, and stitching their outputs back — exact by construction.

The image is padded once by the model's receptive-field radius ``R`` (see
:mod:`app.core.espcn`); every tile is a ``(t + 2R)²`` window of that padded
image, so the network sees exactly what it sees in whole-image inference.
Tiles along an axis start at ``0, t, 2t, …`` and the last one is shifted back
to end at the image edge (it overlaps its neighbour instead of hanging over
the border); each tile *owns* the output rows/columns that no earlier tile
owns, so stitching is a plain copy. An image smaller than one tile gets a
single window filled out with edge replication; the filler never reaches an
owned output pixel because the convolutions are unpadded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Span:
    """One tile along one axis: window start, and the owned LR range ``[own_start, own_stop)``."""

    start: int
    own_start: int
    own_stop: int


@dataclass(frozen=True)
class Tile:
    rows: Span
    cols: Span


def plan_axis(length: int, tile: int) -> list[Span]:
    """Tile one axis of ``length`` LR pixels with windows of ``tile`` pixels (halo excluded)."""
    if length < 1 or tile < 1:
        raise ValueError(f"length and tile must be >= 1, got {length} and {tile}")
    if length <= tile:
        return [Span(0, 0, length)]
    starts = list(range(0, length - tile, tile)) + [length - tile]
    spans = []
    owned = 0
    for start in starts:
        stop = start + tile
        spans.append(Span(start, owned, stop))
        owned = stop
    return spans


def plan_tiles(height: int, width: int, tile: int) -> list[Tile]:
    """Row-major tiles covering an ``height × width`` LR image."""
    return [Tile(r, c) for r in plan_axis(height, tile) for c in plan_axis(width, tile)]


def count_tiles(height: int, width: int, tile: int) -> int:
    """``len(plan_tiles(height, width, tile))`` without building them (admission counts often, on the event loop)."""
    if height < 1 or width < 1 or tile < 1:
        raise ValueError(f"height, width and tile must be >= 1, got {height}, {width} and {tile}")
    return -(-height // tile) * -(-width // tile)


def pad_image(image: Tensor, halo: int, tile: int) -> Tensor:
    """(C, H, W) → edge-replicated to at least ``(tile + 2·halo)`` per side, plus the halo ring."""
    _, h, w = image.shape
    extra_h, extra_w = max(0, tile - h), max(0, tile - w)
    return F.pad(image.unsqueeze(0), (halo, halo + extra_w, halo, halo + extra_h), mode="replicate").squeeze(0)


def extract_tiles(padded: Tensor, tiles: list[Tile], tile: int, halo: int) -> Tensor:
    """Cut the ``(C, t + 2h, t + 2h)`` windows of ``tiles`` out of a :func:`pad_image` result."""
    size = tile + 2 * halo
    return torch.stack([padded[:, t.rows.start : t.rows.start + size, t.cols.start : t.cols.start + size] for t in tiles])


def stitch_tile(out: Tensor, tile_out: Tensor, t: Tile, scale: int) -> None:
    """Copy the owned part of one tile's HR output ``(C, r·t, r·t)`` into ``out`` (C, r·H, r·W)."""
    r = scale
    oy0, oy1 = t.rows.own_start * r, t.rows.own_stop * r
    ox0, ox1 = t.cols.own_start * r, t.cols.own_stop * r
    sy, sx = (t.rows.own_start - t.rows.start) * r, (t.cols.own_start - t.cols.start) * r
    out[:, oy0:oy1, ox0:ox1] = tile_out[:, sy : sy + oy1 - oy0, sx : sx + ox1 - ox0]
