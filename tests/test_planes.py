"""The tensor colour path (app/core/resample.py, app/core/planes.py) against Pillow and the NumPy compose.

On a GPU the pixel work around the model runs as tensor code; here the same
code runs on CPU tensors and must give the bytes of the Pillow/NumPy path it
replaces, for every colour mode the decoder produces.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from app.core import planes
from app.core.resample import axis_coefficients, bicubic_upscale, bicubic_upscale_rgba
from app.imaging.compose import compose, luma_tensor, planes_of
from app.imaging.decode import decode

PHOTO = Image.fromarray(data.astronaut()).crop((120, 30, 220, 110))  # 100×80: face, helmet, flag
MASK = Image.fromarray(data.camera()).resize(PHOTO.size)


def png(image: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **params)
    return buf.getvalue()


def chw(image: Image.Image) -> torch.Tensor:
    values = torch.from_numpy(np.asarray(image).copy())
    return values[None] if values.dim() == 2 else values.permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", [(1, 1), (2, 3), (5, 7), (100, 80)])
def test_bicubic_is_pillows_to_the_bit(scale: int, size: tuple[int, int]) -> None:
    source = PHOTO.resize(size, Image.Resampling.BILINEAR) if size != PHOTO.size else PHOTO
    expected = source.resize((size[0] * scale, size[1] * scale), Image.Resampling.BICUBIC)
    assert torch.equal(bicubic_upscale(chw(source), scale), chw(expected))
    grey = source.convert("L")
    assert torch.equal(bicubic_upscale(chw(grey), scale)[0], chw(grey.resize(expected.size, Image.Resampling.BICUBIC))[0])


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_premultiplied_rgba_bicubic_is_pillows_to_the_bit(scale: int) -> None:
    rgba = PHOTO.copy()
    alpha = np.asarray(MASK).copy()
    alpha[:20, :30] = 0  # fully transparent corner, with colour under it
    alpha[20:30, :] = 255
    rgba.putalpha(Image.fromarray(alpha))
    expected = np.asarray(rgba.resize((PHOTO.width * scale, PHOTO.height * scale), Image.Resampling.BICUBIC))
    rgb, a = bicubic_upscale_rgba(chw(PHOTO), torch.from_numpy(alpha), scale)
    assert np.array_equal(rgb.permute(1, 2, 0).numpy(), expected[..., :3])
    assert np.array_equal(a.numpy(), expected[..., 3])


def test_weights_renormalise_at_the_borders() -> None:
    starts, weights = axis_coefficients(10, 30)
    assert starts[0] == 0 and (weights[0] != 0).sum() < (weights[15] != 0).sum()  # taps cut by the border …
    for ws in weights:  # … and every pixel's weights still sum to one in 22-bit fixed point (±rounding)
        assert abs(int(ws.sum()) - (1 << 22)) <= len(ws)


def _pillow_axis(size_in: int, size_out: int) -> tuple[list[int], list[list[int]]]:
    """A scalar transcription of Pillow's ``precompute_coeffs`` (libImaging/Resample.c) for the bicubic."""
    def bicubic(x: float) -> float:
        a, x = -0.5, abs(x)
        if x < 1.0:
            return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        if x < 2.0:
            return (((x - 5) * x + 8) * x - 4) * a
        return 0.0

    def fixed(w: float) -> int:
        scaled = w * (1 << 22)
        return int(scaled - 0.5) if w < 0 else int(scaled + 0.5)

    scale = size_in / size_out
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    starts, weights = [], []
    for i in range(size_out):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        raw = [bicubic((x + lo - center + 0.5) / filterscale) for x in range(hi - lo)]
        total = sum(raw)
        starts.append(lo)
        weights.append([fixed(w / total if total != 0.0 else w) for w in raw])
    return starts, weights


def test_vectorised_coefficients_are_the_scalar_loops() -> None:
    """Every integer: every size to 100 at scales 1–8, larger ones at 2–4, and downscales (a wider filter)."""
    cases = [(n, n * r) for n in range(1, 101) for r in range(1, 9)]
    cases += [(n, n * r) for n in (127, 257, 360, 641) for r in (2, 3, 4)] + [(97, 31), (640, 213), (5, 2)]
    for size_in, size_out in cases:
        starts, table = axis_coefficients(size_in, size_out)
        want_starts, want_weights = _pillow_axis(size_in, size_out)
        assert starts.tolist() == want_starts, (size_in, size_out)
        for row, want in zip(table.tolist(), want_weights, strict=True):
            assert row[: len(want)] == want and not any(row[len(want):]), (size_in, size_out)


def _sources() -> dict[str, Image.Image]:
    grey16 = Image.fromarray((np.asarray(PHOTO.convert("L")).astype(np.uint16) * 257 + 3).astype(np.uint16))
    palette_t = PHOTO.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    palette_t.info["transparency"] = 0
    la = PHOTO.convert("L")
    la.putalpha(MASK)
    rgba = PHOTO.copy()
    rgba.putalpha(MASK.point(lambda v: 0 if v < 60 else v))  # a fully transparent region
    return {
        "RGB": PHOTO, "L": PHOTO.convert("L"), "RGBA": rgba, "LA": la, "P": PHOTO.convert("P"),
        "P+transparency": palette_t, "I;16": grey16, "1": PHOTO.convert("1"),
    }


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("mode", list(_sources()))
def test_tensor_compose_equals_the_pillow_compose(mode: str, scale: int) -> None:
    """Every colour mode the decoder yields: the same luma in, the same bytes out (the issue asks ≤ 1 level)."""
    image = decode(png(_sources()[mode]), scale)
    color, alpha = planes_of(image)
    y = planes.luma(color, alpha)
    assert torch.equal(y, luma_tensor(image))
    sr = torch.nn.functional.interpolate(y[None], scale_factor=scale, mode="bicubic", align_corners=False)[0]
    sr = (sr + 0.02 * torch.randn(sr.shape, generator=torch.Generator().manual_seed(scale))).clamp(0, 1)
    reference = np.asarray(compose(image, sr, scale))
    tensor = planes.compose(color, alpha, sr, scale)
    got = tensor.permute(1, 2, 0).numpy()
    got = got[..., 0] if got.shape[-1] == 1 else got
    assert got.shape == reference.shape
    assert int(np.abs(got.astype(int) - reference).max()) <= 1
    assert np.array_equal(got, reference)  # in fact bit-identical


def test_swap_keeps_chroma_and_takes_the_models_luma() -> None:
    rgb = chw(PHOTO)
    target = torch.full((1, PHOTO.height, PHOTO.width), 0.5)
    out = planes.swap_luma(rgb, target).to(torch.float64)
    y = 16 + (65.481 * out[0] + 128.553 * out[1] + 24.966 * out[2]) / 255
    inside = (out > 0).all(0) & (out < 255).all(0)  # unclipped pixels
    assert float((y - 127.5)[inside].abs().max()) < 1.0
    cb = lambda p: 128 + (-37.797 * p[0] - 74.203 * p[1] + 112.0 * p[2]) / 255  # noqa: E731
    assert float((cb(out) - cb(rgb.to(torch.float64)))[inside].abs().max()) < 1.0


def test_stacked_composes_give_each_pictures_own_bytes() -> None:
    """compose_many: frames of one size and scale go through one stack; every answer is compose's for it alone,
    whatever else is in the call (other sizes, scales, a grey picture) and wherever the pixel budget cuts."""
    gen = torch.Generator().manual_seed(7)
    frames = [chw(PHOTO.rotate(angle)) for angle in (0, 180, 7, 13)]  # four 100×80 frames, different content
    small = chw(PHOTO.resize((40, 30)))
    items = [(f, torch.rand((1, 240, 300), generator=gen), 3) for f in frames]
    items += [(small, torch.rand((1, 60, 80), generator=gen), 2), (frames[0], torch.rand((1, 160, 200), generator=gen), 2),
              (chw(PHOTO.convert("L")), torch.rand((1, 240, 300), generator=gen), 3)]
    alone = [planes.compose(c, None, sr, scale) for c, sr, scale in items]
    for budget in (planes.STACK_PIXELS, 2 * 240 * 300):  # all four ×3 frames in one stack, then two per stack
        together = planes.compose_many(items, stack_pixels=budget)
        assert len(together) == len(items)
        for got, want in zip(together, alone, strict=True):
            assert torch.equal(got, want)
    with pytest.raises(ValueError, match="sr_luma"):
        planes.compose_many([(frames[0], torch.rand((1, 300, 240)), 3)])


def test_stacked_lumas_are_each_pictures_own() -> None:
    """luma_many, for uploads decoded together: same-size RGB pictures as one stack, each its own call's values."""
    pictures = [chw(PHOTO.rotate(angle)) for angle in (0, 180, 7)] + [chw(PHOTO.resize((40, 30))),
                                                                       chw(PHOTO.convert("L"))]
    alone = [planes.luma(c) for c in pictures]
    for budget in (planes.STACK_PIXELS, 2 * PHOTO.width * PHOTO.height):
        for got, want in zip(planes.luma_many(pictures, stack_pixels=budget), alone, strict=True):
            assert got.shape == want.shape and got.is_contiguous() and torch.equal(got, want)
