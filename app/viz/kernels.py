"""The note's figures: sub-pixel conv kernels above the deconvolution kernels they equal.

:func:`render_kernels` — layout (all sizes in pixels; ``cell`` px per weight,
``k`` kernel size, ``r`` scale, ``c`` HR channels, ``i`` input feature maps,
``K = k·cell``, ``D = k·r·cell``; constants ``MARGIN = 10``, ``GAP = 2``,
``LABEL_W = 64``, ``TITLE_H = 22``, ``LEGEND_H = 44``, ``BAR_W = 256``)::

    x0 = MARGIN + LABEL_W
    conv block, top-left (x0, y0), y0 = MARGIN + TITLE_H:
        c·r² rows (LR output channel n = o·r² + a·r + b, labelled "n (a,b)")
        × i columns (input map j); weight[n, j, u, v] is the cell at
        x = x0 + j·(K + GAP) + v·cell,  y = y0 + n·(K + GAP) + u·cell
        Wt = i·(K + GAP) − GAP,  Ht = c·r²·(K + GAP) − GAP
    deconv block, top-left (x0, y1), y1 = y0 + Ht + MARGIN + TITLE_H:
        cols = ⌈i / r⌉ kernels per row (so both blocks are about as wide),
        rows = c·⌈i / cols⌉; kernel weight[j, o] sits in grid row
        R = o·⌈i / cols⌉ + j // cols, column C = j mod cols, and
        weight[j, o, s, t] is the cell at
        x = x0 + C·(D + GAP) + t·cell,  y = y1 + R·(D + GAP) + s·cell
        Wb = cols·(D + GAP) − GAP,  Hb = rows·(D + GAP) − GAP
    legend: colour bar (BAR_W × 12) at (x0, y1 + Hb + MARGIN), −L / 0 / +L under it

    width  = 2·MARGIN + LABEL_W + max(Wt, Wb, BAR_W)
    height = 4·MARGIN + 2·TITLE_H + Ht + Hb + LEGEND_H

Both blocks share one symmetric colour scale, ``L = max |w|`` (the deconv
holds the very same numbers, rearranged), so a weight has the same colour in
both places. Gaps between kernels are grey: near-zero weights are near-white.

:func:`render_subpixel_map` — the note's colour-coded phase map. ``n`` HR
pixels per side (default ``2·r``: 2×2 LR pixels), ``S = SUBPIXEL_CELL = 28``
px per HR pixel, one ``n × n`` grid per HR channel ``o``, side by side. HR pixel
``(Y, X)`` of channel ``o`` is fed by LR channel ``o·r² + (Y mod r)·r + X mod r``,
is filled with ``phase_colors(r²)[(Y mod r)·r + X mod r]`` and shows that LR
channel's number; it spans ``x = MARGIN + o·(n·S + MARGIN) + X·S``,
``y = MARGIN + TITLE_H + Y·S`` (``S`` px each way). LR pixel borders are 3 px
lines, HR borders 1 px::

    width  = 2·MARGIN + c·n·S + (c − 1)·MARGIN
    height = 2·MARGIN + TITLE_H + n·S
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from app.core.subpixel import Deconv, SubPixelConv
from app.viz.colormap import diverging, phase_colors
from app.viz.drawing import BACKGROUND, GAP_COLOR, INK, LINE_H, MARGIN, colour_bar, enlarge, ink_for, text

CELL = 8
GAP = 2
LABEL_W = 64
TITLE_H = 22
LEGEND_H = 44
BAR_W = 256
BAR_H = 12
SUBPIXEL_CELL = 28
SWATCH = 9


def _weight_limit(w: np.ndarray) -> float:
    return float(np.abs(w).max()) if w.size else 0.0


def _paste_grid(
    canvas: Image.Image, tiles: np.ndarray, x0: int, y0: int, positions: list[tuple[int, int]], pitch: int, cell: int
) -> None:
    """Paste ``tiles[m]`` (an ``(h, w, 3)`` RGB kernel) at grid (row, col) ``positions[m]``."""
    for tile, (row, col) in zip(tiles, positions, strict=True):
        canvas.paste(Image.fromarray(enlarge(tile, cell)), (x0 + col * pitch, y0 + row * pitch))


def render_kernels(layer: SubPixelConv, deconv: Deconv, *, cell: int | None = None) -> Image.Image:
    """The sub-pixel layer's ``c·r²·i`` kernels above the ``i·c`` deconvolution kernels they equal."""
    if layer.ndim != 2 or deconv.ndim != 2:
        raise ValueError("only 2-D layers can be drawn")
    cell = CELL if cell is None else cell
    if cell < 1:
        raise ValueError(f"cell must be >= 1, got {cell}")
    w = layer.weight.detach().cpu().double().numpy()  # (c·r², i, k, k)
    dw = deconv.weight.detach().cpu().double().numpy()  # (i, c, K, K)
    r, k = layer.scale, layer.kernel_size
    n_lr, i = w.shape[:2]
    c, big_k = dw.shape[1], dw.shape[2]
    if dw.shape[0] != i:
        raise ValueError(f"deconv has {dw.shape[0]} input maps, the conv layer {i}")
    limit = max(_weight_limit(w), _weight_limit(dw))

    pitch_conv, pitch_deconv = k * cell + GAP, big_k * cell + GAP
    w_top, h_top = i * pitch_conv - GAP, n_lr * pitch_conv - GAP
    cols = math.ceil(i / r)
    rows_per = math.ceil(i / cols)
    w_bot, h_bot = cols * pitch_deconv - GAP, c * rows_per * pitch_deconv - GAP
    width = 2 * MARGIN + LABEL_W + max(w_top, w_bot, BAR_W)
    height = 4 * MARGIN + 2 * TITLE_H + h_top + h_bot + LEGEND_H

    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    x0, y0 = MARGIN + LABEL_W, MARGIN + TITLE_H
    y1 = y0 + h_top + MARGIN + TITLE_H

    # conv block: row n = LR output channel, column j = input map
    text(
        draw,
        (MARGIN, MARGIN + 2),
        f"sub-pixel conv {tuple(w.shape)}: row = LR channel n (offset a,b), column = input map j",
    )
    draw.rectangle((x0, y0, x0 + w_top - 1, y0 + h_top - 1), fill=GAP_COLOR)
    _paste_grid(
        canvas,
        diverging(w, limit).reshape(n_lr * i, k, k, 3),
        x0,
        y0,
        [(n, j) for n in range(n_lr) for j in range(i)],
        pitch_conv,
        cell,
    )
    colors = phase_colors(r * r)
    for n in range(n_lr if pitch_conv >= LINE_H else 0):  # labels only where they fit
        phase = n % (r * r)
        cy = y0 + n * pitch_conv + (k * cell) // 2
        draw.rectangle(
            (MARGIN, cy - SWATCH // 2, MARGIN + SWATCH - 1, cy + SWATCH // 2), fill=colors[phase], outline=INK
        )
        text(draw, (MARGIN + SWATCH + 4, cy), f"{n} ({phase // r},{phase % r})", anchor="lm")

    # deconv block: kernel weight[j, o] at row o·rows_per + j // cols, column j mod cols
    text(
        draw,
        (MARGIN, y1 - TITLE_H + 2),
        f"deconvolution {tuple(dw.shape)}, stride {deconv.stride}: one {big_k}x{big_k} kernel per input map j",
    )
    draw.rectangle((x0, y1, x0 + w_bot - 1, y1 + h_bot - 1), fill=GAP_COLOR)
    order = [(j, o) for o in range(c) for j in range(i)]
    positions = [(o * rows_per + j // cols, j % cols) for j, o in order]
    tiles = np.stack([diverging(dw[j, o], limit) for j, o in order])
    _paste_grid(canvas, tiles, x0, y1, positions, pitch_deconv, cell)
    for o in range(c):
        for row in range(rows_per):
            label = f"j {row * cols}+" if c == 1 else f"o{o} j {row * cols}+"
            text(draw, (MARGIN, y1 + (o * rows_per + row) * pitch_deconv + 2), label)
    # empty slots at the end of a row read as background, not as zero kernels
    for o in range(c):
        for j in range(i, rows_per * cols):
            x, y = x0 + (j % cols) * pitch_deconv, y1 + (o * rows_per + j // cols) * pitch_deconv
            draw.rectangle((x - GAP, y - GAP, x + pitch_deconv - 1, y + pitch_deconv - 1), fill=BACKGROUND)

    y_bar = y1 + h_bot + MARGIN
    text(draw, (MARGIN, y_bar + BAR_H // 2), "weight", anchor="lm")
    colour_bar(canvas, x0, y_bar, BAR_W, BAR_H, limit)
    return canvas


def render_subpixel_map(scale: int, channels: int = 1, hr_size: int | None = None) -> Image.Image:
    """Which LR channel feeds which HR pixel: PyTorch ``pixel_shuffle`` order, colour-coded."""
    r = scale
    if r < 1 or channels < 1:
        raise ValueError("scale and channels must be >= 1")
    n = 2 * r if hr_size is None else hr_size
    if n < 1:
        raise ValueError(f"hr_size must be >= 1, got {n}")
    s = SUBPIXEL_CELL
    width = 2 * MARGIN + channels * n * s + (channels - 1) * MARGIN
    height = 2 * MARGIN + TITLE_H + n * s
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    text(draw, (MARGIN, MARGIN + 2), f"x{r}: HR pixel <- LR channel")
    colors = phase_colors(r * r)
    y0 = MARGIN + TITLE_H
    for o in range(channels):
        x0 = MARGIN + o * (n * s + MARGIN)
        for y in range(n):
            for x in range(n):
                phase = (y % r) * r + x % r
                box = (x0 + x * s, y0 + y * s, x0 + (x + 1) * s - 1, y0 + (y + 1) * s - 1)
                draw.rectangle(box, fill=colors[phase], outline=INK)
                centre = (x0 + x * s + s / 2, y0 + y * s + s / 2)
                text(draw, centre, str(o * r * r + phase), fill=ink_for(colors[phase]), anchor="mm")
        # LR pixel borders: 3 px lines centred on every r-th HR border
        for t in range(0, n + 1, r):
            lx, ly = x0 + min(t * s, n * s - 1), y0 + min(t * s, n * s - 1)
            draw.line((lx, y0 - 1, lx, y0 + n * s), fill=INK, width=3)
            draw.line((x0 - 1, ly, x0 + n * s, ly), fill=INK, width=3)
        if n % r:  # close the partial LR pixel at the far edge
            draw.rectangle((x0 - 1, y0 - 1, x0 + n * s, y0 + n * s), outline=INK, width=1)
    return canvas
