"""The image layer: decoding every pixel mode safely, the Y/CbCr/alpha pipeline, encoding."""

from __future__ import annotations

import io
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms
from skimage import data

from app.core.color import rgb_to_y
from app.imaging import compose as compose_module
from app.imaging import icc
from app.imaging.compose import compose, luma_tensor
from app.imaging.decode import _color_and_alpha, decode, peek, peek_prefix
from app.imaging.encode import OUTPUT_FORMATS, encode
from app.imaging.errors import ImageError, ImageTooLarge, InvalidImage, UnsupportedImageType
from app.imaging.limits import ImageLimits, check_size
from tests.conftest import encoded, natural

RNG = np.random.default_rng(0)
ASTRONAUT = Image.fromarray(data.astronaut()).crop((150, 40, 246, 136))  # 96×96, face and helmet
CAT = Image.fromarray(data.chelsea()).convert("L").crop((100, 50, 196, 122))  # 96×72 grey
SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def to_bytes(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def reopen(blob: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(blob))
    im.load()
    return im


def fake_profile(space: bytes) -> bytes:
    """A header-only ICC profile in colour space ``space`` (enough for readers that just carry it)."""
    header = bytearray(128)
    header[0:4] = (132).to_bytes(4, "big")
    header[12:16], header[16:20], header[20:24], header[36:40] = b"mntr", space, b"XYZ ", b"acsp"
    return bytes(header) + bytes(4)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def with_ihdr_size(png: bytes, width: int, height: int) -> bytes:
    """The same PNG, its header claiming ``width``×``height`` (CRC fixed, pixel data left as it was)."""
    ihdr = png[16:29]
    return png[:8] + png_chunk(b"IHDR", struct.pack(">II", width, height) + ihdr[8:]) + png[33:]


def pixels(im: Image.Image) -> np.ndarray:
    return np.asarray(im).astype(np.int64)


# --- decoding: modes ----------------------------------------------------------------------------------


def test_rgb_and_l_pass_through_exactly() -> None:
    rgb = RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    out = decode(to_bytes(Image.fromarray(rgb), "PNG"), 2)
    assert (out.mode, out.source_format, out.source_mode, out.alpha) == ("RGB", "PNG", "RGB", None)
    assert (out.width, out.height) == (8, 6)
    assert np.array_equal(np.asarray(out.color), rgb)
    grey = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    out = decode(to_bytes(Image.fromarray(grey), "BMP"), 2)
    assert (out.mode, out.source_format) == ("L", "BMP")
    assert np.array_equal(np.asarray(out.color), grey)


def test_bilevel_becomes_l() -> None:
    bits = Image.fromarray(np.indices((6, 6)).sum(0) % 2 == 0)
    out = decode(to_bytes(bits, "PNG"), 2)
    assert (out.mode, out.source_mode) == ("L", "1")
    assert set(np.unique(np.asarray(out.color))) == {0, 255}


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_rgba_splits_into_rgb_and_alpha(fmt) -> None:
    rgba = RNG.integers(0, 256, (6, 8, 4), dtype=np.uint8)
    params = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    out = decode(to_bytes(Image.fromarray(rgba), fmt, **params), 2)
    assert (out.color.mode, out.alpha.mode, out.mode) == ("RGB", "L", "RGBA")
    assert np.array_equal(np.asarray(out.color), rgba[..., :3])
    assert np.array_equal(np.asarray(out.alpha), rgba[..., 3])


def test_la_splits_into_l_and_alpha() -> None:
    la = RNG.integers(0, 256, (6, 8, 2), dtype=np.uint8)
    out = decode(to_bytes(Image.fromarray(la, "LA"), "PNG"), 2)
    assert out.mode == "LA"
    assert np.array_equal(np.asarray(out.color), la[..., 0])
    assert np.array_equal(np.asarray(out.alpha), la[..., 1])


def _palette_image() -> Image.Image:
    p = Image.new("P", (4, 4), 0)
    p.putpalette([255, 0, 0, 0, 255, 0])
    p.putpixel((1, 1), 1)
    return p


def test_palette_without_transparency_becomes_rgb() -> None:
    out = decode(to_bytes(_palette_image(), "PNG"), 2)
    assert (out.mode, out.source_mode) == ("RGB", "P")
    assert out.color.getpixel((0, 0)) == (255, 0, 0) and out.color.getpixel((1, 1)) == (0, 255, 0)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency_gets_alpha(fmt) -> None:
    out = decode(to_bytes(_palette_image(), fmt, transparency=1), 2)
    assert (out.mode, out.source_format, out.source_mode) == ("RGBA", fmt, "P")
    assert out.color.getpixel((0, 0)) == (255, 0, 0)
    assert out.alpha.getpixel((1, 1)) == 0 and out.alpha.getpixel((0, 0)) == 255


def test_colour_key_transparency_becomes_alpha() -> None:
    out = decode(to_bytes(Image.new("L", (4, 4), 7), "PNG", transparency=7), 2)
    assert out.mode == "LA" and out.alpha.getextrema() == (0, 0)
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    rgb.putpixel((0, 0), (9, 9, 9))
    out = decode(to_bytes(rgb, "PNG", transparency=(1, 2, 3)), 2)
    assert out.mode == "RGBA" and out.alpha.getpixel((0, 0)) == 255 and out.alpha.getpixel((1, 1)) == 0


def test_cmyk_jpeg_becomes_rgb_and_drops_its_cmyk_profile() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    blob = to_bytes(cmyk, "JPEG", quality=95, icc_profile=fake_profile(b"CMYK"))
    assert reopen(blob).info["icc_profile"] == fake_profile(b"CMYK")
    out = decode(blob, 2)
    assert (out.mode, out.source_mode, out.icc_profile) == ("RGB", "CMYK", None)
    assert np.abs(pixels(out.color) - [255, 0, 0]).max() <= 3


@pytest.mark.parametrize(("fmt", "mode"), [("PNG", "I;16"), ("TIFF", "I;16B")])
def test_16_bit_grey_is_scaled_over_the_full_range(fmt, mode) -> None:
    values = np.array([[0, 128, 129, 257], [385, 386, 32896, 65535]], dtype=np.uint16)
    im = Image.fromarray(values)
    if mode == "I;16B":
        im = Image.frombytes("I;16B", im.size, values.astype(">u2").tobytes())
    out = decode(to_bytes(im, fmt), 2)
    assert (out.mode, out.source_mode) == ("L", mode)
    assert np.asarray(out.color).tolist() == [[0, 0, 1, 1], [1, 2, 128, 255]]  # round(v / 257)


def test_32_bit_int_and_float_grey_are_clipped() -> None:
    ints = Image.fromarray(np.array([[-100, 0, 257, 70000]], dtype=np.int32), "I")
    out = decode(to_bytes(ints, "TIFF"), 2)
    assert (out.mode, out.source_mode) == ("L", "I")
    assert np.asarray(out.color).tolist() == [[0, 0, 1, 255]]
    floats = Image.fromarray(np.array([[-5.0, 0.4, 0.6, 127.4, 300.0, np.nan]], dtype=np.float32), "F")
    out = decode(to_bytes(floats, "TIFF"), 2)
    assert (out.mode, out.source_mode) == ("L", "F")
    assert np.asarray(out.color).tolist() == [[0, 0, 1, 127, 255, 0]]


def test_16_bit_rgb_png_opens_as_8_bit_high_bytes() -> None:
    """Pillow cannot write one, so it is built by hand; Pillow keeps each sample's high byte."""
    samples = np.array([[[65535, 0, 32896], [51600, 127, 511]]], dtype=">u2")
    raw = b"".join(b"\x00" + row.tobytes() for row in samples)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 1, 16, 2, 0, 0, 0))
        + png_chunk(b"IDAT", zlib.compress(raw))
        + png_chunk(b"IEND", b"")
    )
    out = decode(png, 2)
    assert (out.mode, out.source_mode) == ("RGB", "RGB")
    assert np.asarray(out.color).tolist() == [[[255, 0, 128], [201, 0, 1]]]


@pytest.mark.parametrize("mode", ["LAB", "YCbCr"])
def test_other_colour_spaces_become_rgb(mode) -> None:
    out = decode(to_bytes(Image.new(mode, (8, 8), (200, 128, 128)), "TIFF"), 2)
    assert (out.mode, out.source_mode) == ("RGB", mode)


def test_hsv_becomes_rgb() -> None:  # no format Pillow writes holds HSV: convert in memory
    color, alpha = _color_and_alpha(Image.new("HSV", (4, 4), (0, 255, 255)))
    assert color.mode == "RGB" and alpha is None and color.getpixel((0, 0)) == (255, 0, 0)


# --- decoding: orientation and colour profile ------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the stored left edge is the top
    out = decode(to_bytes(stored, "JPEG", quality=95, exif=exif), 2)
    assert (out.width, out.height) == (20, 40)
    top, bottom = pixels(out.color)[5, 10], pixels(out.color)[35, 10]
    assert np.abs(top - [255, 0, 0]).max() <= 3 and np.abs(bottom - [0, 0, 255]).max() <= 3


def test_orientation_swap_is_checked_against_the_limits() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    blob = to_bytes(Image.new("RGB", (40, 20)), "JPEG", exif=exif)
    assert decode(blob, 1, ImageLimits(max_side=40)).height == 40
    with pytest.raises(ImageTooLarge):
        decode(blob, 2, ImageLimits(max_side=40))


@pytest.mark.parametrize("fmt", list(OUTPUT_FORMATS))
def test_icc_profile_survives_decode_upscale_encode(fmt) -> None:
    out = decode(to_bytes(ASTRONAUT, "PNG", icc_profile=SRGB), 2)
    assert out.icc_profile == SRGB and icc.color_space(SRGB) == "RGB"
    upscaled = compose(out, torch.rand(1, 192, 192), 2)
    assert reopen(encode(upscaled, fmt, icc_profile=out.icc_profile)).info.get("icc_profile") == SRGB


def test_profile_not_matching_the_pixels_is_dropped() -> None:
    assert decode(to_bytes(CAT, "PNG", icc_profile=SRGB), 2).icc_profile is None  # RGB profile on grey
    grey = fake_profile(b"GRAY")
    assert reopen(encode(CAT, "png", icc_profile=grey)).info["icc_profile"] == grey
    assert "icc_profile" not in reopen(encode(CAT, "webp", icc_profile=grey)).info  # WebP makes grey RGB
    assert not icc.fits(b"not a profile", "RGB")


# --- decoding: refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "blob",
    [b"", RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes(), b"GIF89a", b"\x89PNG\r\n\x1a\n"],
    ids=["empty", "random", "gif-magic-only", "png-signature-only"],
)
def test_non_images_are_invalid(blob) -> None:
    with pytest.raises(InvalidImage) as caught:
        decode(blob, 2)
    assert "BytesIO" not in str(caught.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_invalid(fmt) -> None:
    blob = to_bytes(ASTRONAUT, fmt)
    with pytest.raises(InvalidImage, match="truncated|corrupt"):
        decode(blob[: len(blob) // 2], 2)


def test_header_is_checked_before_decoding() -> None:
    """A 200-byte PNG claiming 5000×5000: refused as too large, not found truncated by decoding it."""
    bomb = with_ihdr_size(to_bytes(Image.new("1", (8, 8)), "PNG"), 5000, 5000)
    with pytest.raises(ImageTooLarge, match=r"5000×5000 = 25,000,000 px \(25.0 Mpx\); the limit is 16,777,216 px \(16.8 Mpx\)"):
        decode(bomb, 2)
    roomy = ImageLimits(max_input_pixels=10**8, max_output_pixels=10**9, max_side=20000)
    with pytest.raises(InvalidImage):
        decode(bomb, 1, roomy)  # allowed in: then the decoder finds no data


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 50_000])  # over Pillow's warning, and over its error threshold
def test_decompression_bombs_are_too_large(side) -> None:
    bomb = with_ihdr_size(to_bytes(Image.new("1", (8, 8)), "PNG"), side, side)
    with pytest.raises(ImageTooLarge):
        decode(bomb, 2)
    if side == 50_000:  # Pillow's own guard refuses it in Image.open, whatever our limits
        with pytest.raises(ImageTooLarge, match=r"declares 2,500,000,000 px; the limit is 10,000,000,000 px"):
            decode(bomb, 1, ImageLimits(max_input_pixels=10**10, max_output_pixels=10**11, max_side=10**6))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_error_is_too_large() -> None:
    bomb = with_ihdr_size(to_bytes(Image.new("1", (8, 8)), "PNG"), 20_000, 20_000)
    with pytest.raises(ImageTooLarge, match=r"declares 400,000,000 px; the limit is 10,000,000,000 px"):
        decode(bomb, 2, ImageLimits(max_input_pixels=10**10, max_output_pixels=10**11, max_side=10**6))


def test_cheap_big_image_over_a_low_limit() -> None:
    blob = to_bytes(Image.new("1", (300, 300)), "PNG")
    with pytest.raises(ImageTooLarge, match=r"300×300 = 90,000 px; the limit is 10,000 px"):
        decode(blob, 1, ImageLimits(max_input_pixels=10_000))


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "QOI"])
def test_formats_pillow_reads_but_we_refuse(fmt) -> None:
    with pytest.raises(UnsupportedImageType, match=f"{fmt} images are not accepted"):
        decode(to_bytes(Image.new("RGB", (16, 16)), fmt), 2)


def test_errors_share_a_base() -> None:
    assert all(issubclass(e, ImageError) for e in (InvalidImage, UnsupportedImageType, ImageTooLarge))


# --- limits ---------------------------------------------------------------------------------------------


def test_limit_messages() -> None:
    with pytest.raises(ImageTooLarge) as caught:
        check_size(9000, 9000, 2, ImageLimits())
    assert str(caught.value) == "image is 9000×9000 = 81,000,000 px (81.0 Mpx); the limit is 16,777,216 px (16.8 Mpx)"
    with pytest.raises(ImageTooLarge, match="no side may exceed 16384 px"):
        check_size(20000, 10, 1, ImageLimits())
    with pytest.raises(InvalidImage):
        check_size(0, 10, 1, ImageLimits())


def test_output_limit_depends_on_scale() -> None:
    limits = ImageLimits(max_output_pixels=5_000_000)
    check_size(1000, 1000, 2, limits)  # 4 Mpx out
    with pytest.raises(ImageTooLarge, match=r"×3 output of a 1000×1000 image would be 3000×3000 = 9,000,000 px \(9.0 Mpx\)"):
        check_size(1000, 1000, 3, limits)
    check_size(4096, 4096, 2, ImageLimits())
    with pytest.raises(ImageTooLarge, match="no side may exceed"):
        check_size(4096, 4096, 5, ImageLimits())  # 20480 px wide
    blob = to_bytes(Image.new("L", (100, 100)), "PNG")
    assert decode(blob, 2, ImageLimits(max_output_pixels=40_000)).width == 100
    with pytest.raises(ImageTooLarge):
        decode(blob, 3, ImageLimits(max_output_pixels=40_000))


# --- the colour pipeline --------------------------------------------------------------------------------


def bicubic_sr(luma: torch.Tensor, scale: int) -> torch.Tensor:
    """A stand-in for the network: float bicubic on Y."""
    return F.interpolate(luma[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp(0, 1)


def test_luma_is_the_training_protocols_y() -> None:
    rgb = decode(to_bytes(ASTRONAUT, "PNG"), 2)
    expected = rgb_to_y(torch.from_numpy(np.asarray(ASTRONAUT, dtype=np.float32)).permute(2, 0, 1)) / 255.0
    y = luma_tensor(rgb)
    assert y.shape == (1, 96, 96) and y.dtype == torch.float32 and torch.equal(y, expected)
    grey = decode(to_bytes(CAT, "PNG"), 2)
    as_rgb = torch.from_numpy(np.asarray(CAT.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)
    assert torch.allclose(luma_tensor(grey), rgb_to_y(as_rgb) / 255.0, atol=1e-6)


@pytest.mark.parametrize("source", ["rgb", "grey", "opaque-rgba"])
def test_compose_of_bicubic_luma_is_pillows_bicubic(source) -> None:
    scale = 3
    base = {"rgb": ASTRONAUT, "grey": CAT, "opaque-rgba": ASTRONAUT.convert("RGBA")}[source]
    img = decode(to_bytes(base, "PNG"), scale)
    expected = base.resize((base.width * scale, base.height * scale), Image.Resampling.BICUBIC)
    sr_luma = luma_tensor(decode(to_bytes(expected, "PNG"), 1))
    out = compose(img, sr_luma, scale)
    assert out.mode == expected.mode and out.size == expected.size
    assert np.abs(pixels(out) - pixels(expected)).max() <= 1


def test_greyscale_stays_greyscale() -> None:
    img = decode(to_bytes(CAT, "JPEG"), 2)
    out = compose(img, bicubic_sr(luma_tensor(img), 2), 2)
    assert out.mode == "L" and out.size == (192, 144)
    assert reopen(encode(out, "jpeg")).mode == "L"
    webp = np.asarray(reopen(encode(out, "webp", lossless=True)))
    assert np.array_equal(webp[..., 0], webp[..., 1]) and np.array_equal(webp[..., 1], webp[..., 2])
    la = compose(decode(to_bytes(Image.merge("LA", (CAT, CAT)), "PNG"), 2), bicubic_sr(luma_tensor(img), 2), 2)
    assert la.mode == "LA"


def _red_square_on_transparent_black() -> Image.Image:
    rgba = Image.new("RGBA", (48, 48), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (16, 16, 32, 32))
    return rgba


def test_alpha_survives_upscaling_without_dark_fringes() -> None:
    scale = 3
    img = decode(to_bytes(_red_square_on_transparent_black(), "PNG"), scale)
    y = luma_tensor(img)
    red_y = (16 + 65.481) / 255
    assert abs(y[0, 24, 15].item() - red_y) < 1e-5  # hidden black next to the square reads as red
    assert abs(y[0, 24, 8].item() - red_y) < 1e-5  # … up to BLEED_REACH pixels away
    assert abs(y[0, 0, 0].item() - 16 / 255) < 1e-6  # beyond it: untouched
    out = compose(img, bicubic_sr(y, scale), scale)
    assert out.mode == "RGBA" and out.size == (144, 144)
    rgba = pixels(out)
    assert rgba[:40, :, 3].max() == 0 and rgba[:, :40, 3].max() == 0  # transparent stays transparent
    assert rgba[54:90, 54:90, 3].min() == 255  # opaque stays opaque
    assert np.array_equal(rgba[..., 3], pixels(img.alpha.resize((144, 144), Image.Resampling.BICUBIC)))
    visible = rgba[..., 3] > 0
    assert rgba[visible][:, 0].min() >= 250 and rgba[visible][:, 1:3].max() <= 5  # red to the very edge


def test_compose_checks_the_luma_shape() -> None:
    img = decode(to_bytes(CAT, "PNG"), 2)
    with pytest.raises(ValueError, match=r"\(1, 144, 192\)"):
        compose(img, torch.zeros(1, 144, 191), 2)


# --- encoding -------------------------------------------------------------------------------------------


def _sample(mode: str) -> Image.Image:
    rgba = _red_square_on_transparent_black()
    rgba.paste((0, 128, 255, 128), (0, 24, 32, 32))  # half-transparent blue strip
    return {"RGB": ASTRONAUT, "L": CAT, "RGBA": rgba, "LA": rgba.convert("LA")}[mode]


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_png_is_lossless(mode) -> None:
    im = _sample(mode)
    back = reopen(encode(im, "png"))
    assert (back.format, back.mode, back.size) == ("PNG", mode, im.size)
    assert np.array_equal(np.asarray(back), np.asarray(im))
    assert encode(im, "PNG", png_compress_level=9) != b""


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_jpeg_flattens_alpha_over_white(mode) -> None:
    im = _sample(mode)
    back = reopen(encode(im, "jpeg"))
    assert (back.format, back.mode, back.size) == ("JPEG", mode.rstrip("A"), im.size)
    if mode.endswith("A"):
        assert min(np.ravel(back.getpixel((2, 2)))) >= 250  # transparent → white, not black
    else:
        assert np.abs(pixels(back) - pixels(im)).mean() < 3
    assert len(encode(im, "jpg", quality=30)) < len(encode(im, "jpeg", quality=95))


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_webp_lossy_and_lossless(mode) -> None:
    im = _sample(mode)
    want = "RGBA" if mode.endswith("A") else "RGB"
    lossy = reopen(encode(im, "webp"))
    assert (lossy.format, lossy.mode, lossy.size) == ("WEBP", want, im.size)
    lossless = reopen(encode(im, "webp", lossless=True))
    expected = pixels(im.convert(want))
    visible = expected[..., 3] > 0 if want == "RGBA" else np.ones(im.size[::-1], bool)
    assert np.array_equal(pixels(lossless)[visible], expected[visible])  # invisible colour may be dropped


def test_encode_refusals() -> None:
    with pytest.raises(ValueError, match="unknown output format"):
        encode(ASTRONAUT, "gif")
    with pytest.raises(ValueError, match="quality"):
        encode(ASTRONAUT, "jpeg", quality=0)
    with pytest.raises(ValueError, match="lossless"):
        encode(ASTRONAUT, "jpeg", lossless=True)
    with pytest.raises(ImageTooLarge, match="WebP"):
        encode(Image.new("RGB", (16384, 1)), "webp")


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_compose_in_parallel_bands_equals_one_band(monkeypatch: pytest.MonkeyPatch, mode: str, scale: int) -> None:
    """Big images are upscaled and composed band by band on several threads; the seams must not show."""
    source = Image.fromarray(data.astronaut()).crop((100, 20, 260, 150))  # 160×130: face, helmet, flag
    if mode == "RGBA":
        source.putalpha(Image.fromarray(data.camera()).resize(source.size))
    image = decode(to_bytes(source, "PNG"), scale)
    sr = torch.rand(1, scale * image.height, scale * image.width, generator=torch.Generator().manual_seed(5))
    one_band = np.asarray(compose(image, sr, scale))
    rows = 7
    monkeypatch.setattr(compose_module, "_BAND_PIXELS", rows * scale * scale * image.width + 5)
    monkeypatch.setattr(compose_module, "_MIN_BAND_ROWS", 1)
    with ThreadPoolExecutor(3) as bands:  # 19 bands of 7 rows, the last of 4
        assert np.array_equal(np.asarray(compose(image, sr, scale, bands)), one_band)
    # the bicubic under it, band by band with its halo, is Pillow's whole-image bicubic to the bit
    whole = np.asarray(source.resize((scale * source.width, scale * source.height), Image.Resampling.BICUBIC))
    banded = [compose_module._bicubic_rows(source, top, min(top + rows, source.height), scale)
              for top in range(0, source.height, rows)]
    assert np.array_equal(np.concatenate(banded), whole)


def test_the_first_bytes_of_a_jpeg_or_png_tell_its_size_as_the_whole_header_does() -> None:
    """Admission mid-upload: the size from a prefix is the full header's; too few bytes or another format: None."""
    image = natural((320, 200))
    exif = Image.Exif()
    exif[0x010E] = "x" * 30000  # a large APP1 segment before the JPEG's size marker
    for upload in (encoded(image, "JPEG", quality=90), encoded(image, "JPEG", exif=exif.tobytes()),
                 encoded(image, "PNG")):
        full = peek(upload, 2)
        told = [peek_prefix(upload[:n], 2) for n in (8, 64, 1024, 40_000, len(upload))]
        assert told[0] is None  # the magic alone says no size
        assert told[-1] == full and told[-2] == full
        assert all(t is None or t == full for t in told)
    assert peek_prefix(encoded(image, "GIF"), 2) is None  # only JPEG and still PNG
    assert peek_prefix(encoded(image, "PNG", save_all=True, append_images=[image.rotate(90)]), 2) is None  # APNG
    with pytest.raises(ImageTooLarge):
        peek_prefix(encoded(image, "PNG")[:100], 2, ImageLimits(max_input_pixels=320 * 199))

