"""Figures: sizes follow the documented formulas and every weight/map sits where the docstrings say."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from app.core.espcn import ESPCN, pad_for
from app.viz import channels as ch
from app.viz import kernels as kn
from app.viz import render_channels, render_kernels, render_subpixel_map
from app.viz.colormap import diverging, phase_colors
from app.viz.drawing import LINE_H, MARGIN


@pytest.fixture(params=[2, 3, 4])
def model(request: pytest.FixtureRequest) -> ESPCN:
    torch.manual_seed(request.param)
    return ESPCN(request.param).eval()


def _pixel(img, x: int, y: int) -> tuple[int, int, int]:
    return tuple(int(v) for v in img.getpixel((x, y)))


def _rgb(a: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in a)


# ---------------------------------------------------------------- colour maps


def test_diverging_is_white_at_zero_red_above_blue_below() -> None:
    limit = 0.3
    out = diverging(np.array([0.0, limit, -limit, 10.0, -10.0]), limit)
    assert out.shape == (5, 3) and out.dtype == np.uint8
    zero, pos, neg, over, under = (out[i].astype(int) for i in range(5))
    assert zero.min() >= 235
    assert pos[0] > pos[1] + 60 and pos[0] > pos[2] + 60  # dark red
    assert neg[2] > neg[0] + 60 and neg[2] > neg[1] + 30  # dark blue
    assert (over == pos).all() and (under == neg).all()  # saturates beyond ±L
    # symmetric magnitudes, monotone saturation; zero limit → centre colour
    grid = diverging(np.linspace(0, limit, 6), limit).astype(int)
    assert (np.diff(grid[:, 1]) <= 0).all()
    assert (diverging(np.zeros((2, 2)), 0.0) == zero).all()


@pytest.mark.parametrize("n", [1, 4, 9, 16, 25])
def test_phase_colors_are_distinct(n: int) -> None:
    colors = phase_colors(n)
    assert len(colors) == n == len(set(colors))
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)


# ---------------------------------------------------------------- kernel figure


def _kernel_figure_size(r: int, k: int, c: int, i: int, cell: int) -> tuple[int, int]:
    big_k, big_d = k * cell, k * r * cell
    w_top, h_top = i * (big_k + kn.GAP) - kn.GAP, c * r * r * (big_k + kn.GAP) - kn.GAP
    cols = math.ceil(i / r)
    rows = c * math.ceil(i / cols)
    w_bot, h_bot = cols * (big_d + kn.GAP) - kn.GAP, rows * (big_d + kn.GAP) - kn.GAP
    width = 2 * MARGIN + kn.LABEL_W + max(w_top, w_bot, kn.BAR_W)
    height = 4 * MARGIN + 2 * kn.TITLE_H + h_top + h_bot + kn.LEGEND_H
    return width, height


@pytest.mark.parametrize("cell", [None, 5])
def test_kernel_figure_size_follows_the_formula(model: ESPCN, cell: int | None) -> None:
    img = render_kernels(model.subpixel_layer(), model.last_layer_deconv(), cell=cell)
    assert img.mode == "RGB"
    assert img.size == _kernel_figure_size(model.scale, 3, 1, 32, cell or kn.CELL)


def test_kernel_figure_puts_each_weight_where_documented(model: ESPCN) -> None:
    layer, deconv = model.subpixel_layer(), model.last_layer_deconv()
    cell, r, k = kn.CELL, model.scale, 3
    img = render_kernels(layer, deconv)
    w = layer.weight.double().numpy()
    dw = deconv.weight.double().numpy()
    limit = float(np.abs(w).max())
    x0, y0 = MARGIN + kn.LABEL_W, MARGIN + kn.TITLE_H
    pitch = k * cell + kn.GAP
    h_top = r * r * pitch - kn.GAP
    y1 = y0 + h_top + MARGIN + kn.TITLE_H
    cols = math.ceil(32 / r)
    dpitch = k * r * cell + kn.GAP

    def conv_px(n: int, j: int, u: int, v: int) -> tuple[int, int, int]:
        return _pixel(img, x0 + j * pitch + v * cell + cell // 2, y0 + n * pitch + u * cell + cell // 2)

    def deconv_px(j: int, s: int, t: int) -> tuple[int, int, int]:
        x = x0 + (j % cols) * dpitch + t * cell + cell // 2
        y = y1 + (j // cols) * dpitch + s * cell + cell // 2
        return _pixel(img, x, y)

    rng = np.random.default_rng(r)
    for n, j, u, v in zip(*(rng.integers(0, m, 40) for m in (r * r, 32, k, k)), strict=True):
        assert conv_px(n, j, u, v) == _rgb(diverging(w[n, j, u, v], limit))
    for j in range(32):
        assert deconv_px(j, 0, 0) == _rgb(diverging(dw[j, 0, 0, 0], limit))
        s, t = rng.integers(0, k * r, 2)
        assert deconv_px(j, s, t) == _rgb(diverging(dw[j, 0, s, t], limit))
    # the note's point, read off the figure: LR tap (u, v) of phase (a, b) is deconv tap ((k-1-u)r+a, (k-1-v)r+b)
    for a in range(r):
        for b in range(r):
            j, u, v = (int(x) for x in rng.integers(0, (32, k, k)))
            assert conv_px(a * r + b, j, u, v) == deconv_px(j, (k - 1 - u) * r + a, (k - 1 - v) * r + b)


def test_kernel_figure_rejects_mismatched_layers() -> None:
    torch.manual_seed(0)
    a, b = ESPCN(2), ESPCN(2, widths=(64, 16))
    with pytest.raises(ValueError):
        render_kernels(a.subpixel_layer(), b.last_layer_deconv())


# ---------------------------------------------------------------- sub-pixel map


@pytest.mark.parametrize(("r", "c", "n"), [(2, 1, None), (3, 1, None), (4, 1, None), (3, 2, 7)])
def test_subpixel_map_colours_each_hr_pixel_by_its_lr_channel(r: int, c: int, n: int | None) -> None:
    img = render_subpixel_map(r, channels=c, hr_size=n)
    side, s = n or 2 * r, kn.SUBPIXEL_CELL
    assert img.size == (2 * MARGIN + c * side * s + (c - 1) * MARGIN, 2 * MARGIN + kn.TITLE_H + side * s)
    colors = phase_colors(r * r)
    for o in range(c):
        for y in range(side):
            for x in range(side):
                px = MARGIN + o * (side * s + MARGIN) + x * s + 4
                py = MARGIN + kn.TITLE_H + y * s + 4
                assert _pixel(img, px, py) == colors[(y % r) * r + x % r]


# ---------------------------------------------------------------- channel figure


def _channel_layout(r: int, big_h: int, big_w: int) -> dict[str, int]:
    h, w = min(big_h, ch.MAX_LR_SIDE), min(big_w, ch.MAX_LR_SIDE)
    z = max(1, ch.MIN_LR_SIDE // max(h, w))
    wa = r * (z * w + 2 * ch.FRAME) + (r - 1) * ch.GAP
    ha = r * (z * h + 2 * ch.FRAME) + (r - 1) * ch.GAP
    q = ch.ZOOM_PX // (4 * r)
    map_w, map_h = 2 * MARGIN + 2 * r * kn.SUBPIXEL_CELL, 2 * MARGIN + kn.TITLE_H + 2 * r * kn.SUBPIXEL_CELL
    wb = max(map_w, min(4, w) * r * q)
    hb = map_h + LINE_H + min(4, h) * r * q
    wc, hc = z * r * w, z * r * h
    sa, sb, sc = (max(v, ch.PANEL_MIN_W) for v in (wa, wb, wc))
    return {
        "h": h,
        "w": w,
        "z": z,
        "sa": sa,
        "sb": sb,
        "width": 4 * MARGIN + sa + sb + sc,
        "height": 2 * MARGIN + ch.TITLE_H + max(ha, hb, hc),
    }


def _forward_lr(model: ESPCN, luma: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_lr(pad_for(model, luma[None]))


def test_channel_stats_match_torch(model: ESPCN) -> None:
    r = model.scale
    torch.manual_seed(10 + r)
    luma = torch.rand(1, 17, 23)
    _, stats = render_channels(model, luma)
    json.dumps(stats, allow_nan=False)
    assert stats["scale"] == r and stats["lr_size"] == [23, 17] and stats["hr_size"] == [23 * r, 17 * r]
    lr = _forward_lr(model, luma)[0].double()
    assert len(stats["channels"]) == r * r
    for i, entry in enumerate(stats["channels"]):
        assert entry["channel"] == i and entry["offset"] == [i // r, i % r]
        m = lr[i]
        assert entry["min"] == pytest.approx(float(m.min()), abs=1e-6)
        assert entry["max"] == pytest.approx(float(m.max()), abs=1e-6)
        assert entry["mean"] == pytest.approx(float(m.mean()), abs=1e-6)
        assert entry["std"] == pytest.approx(float(m.std(correction=0)), abs=1e-6)


def test_channel_figure_layout(model: ESPCN) -> None:
    r = model.scale
    torch.manual_seed(20 + r)
    luma = torch.rand(1, 20, 28)
    img, stats = render_channels(model, luma)
    lay = _channel_layout(r, 20, 28)
    assert img.size == (lay["width"], lay["height"])
    z, h, w = lay["z"], lay["h"], lay["w"]
    lr = _forward_lr(model, luma)[0]
    lo, hi = float(lr.min()), float(lr.max())
    assert stats["display_range"] == pytest.approx([lo, hi])
    colors = phase_colors(r * r)
    y0 = MARGIN + ch.TITLE_H
    pitch_x, pitch_y = z * w + 2 * ch.FRAME + ch.GAP, z * h + 2 * ch.FRAME + ch.GAP
    rng = np.random.default_rng(r)
    for a in range(r):
        for b in range(r):
            x, y = MARGIN + b * pitch_x, y0 + a * pitch_y
            assert _pixel(img, x, y) == colors[a * r + b]  # frame in the phase colour
            for yy, xx in rng.integers(0, (h, w), (5, 2)):
                grey = round((float(lr[a * r + b, yy, xx]) - lo) / (hi - lo) * 255)
                got = _pixel(img, x + ch.FRAME + xx * z, y + ch.FRAME + yy * z)
                assert all(abs(v - grey) <= 1 for v in got)
    # panel (c): the shuffled, clamped HR output at z px per HR pixel
    hr = torch.pixel_shuffle(lr[None], r)[0, 0].clamp(0, 1)
    xc = 3 * MARGIN + lay["sa"] + lay["sb"]
    for yy, xx in rng.integers(0, (r * h, r * w), (20, 2)):
        got = _pixel(img, xc + xx * z, y0 + yy * z)
        assert all(abs(v - round(float(hr[yy, xx]) * 255)) <= 1 for v in got)


def test_large_input_renders_a_bounded_centre_crop_quickly() -> None:
    torch.manual_seed(4)
    model = ESPCN(4).eval()
    luma = torch.rand(1, 400, 600)
    start = time.perf_counter()
    img, stats = render_channels(model, luma)
    assert time.perf_counter() - start < 10
    lay = _channel_layout(4, 400, 600)
    assert img.size == (lay["width"], lay["height"])
    assert max(img.size) < 1500
    assert stats["crop"] == {"top": 136, "left": 236, "height": 128, "width": 128}
    assert stats["hr_size"] == [2400, 1600]
    lr = _forward_lr(model, luma)[0]
    assert stats["channels"][5]["max"] == pytest.approx(float(lr[5].max()), abs=1e-6)  # whole image, not the crop


def test_channel_figure_rejects_wrong_shapes() -> None:
    model = ESPCN(2)
    with pytest.raises(ValueError):
        render_channels(model, torch.rand(3, 8, 8))
    with pytest.raises(ValueError):
        render_channels(model, torch.rand(8, 8))
