"""The fast PNG writer: any PNG reader gets the exact pixels back, in every mode, level and size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms
from skimage import data

from app.imaging import png
from app.imaging.encode import encode

PHOTO = Image.fromarray(data.astronaut())
RNG = np.random.default_rng(7)


def decoded(blob: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(blob))
    image.load()  # Pillow checks every chunk's CRC and the zlib stream here
    return image


def sample(mode: str, size: tuple[int, int] = (97, 61)) -> Image.Image:
    photo = PHOTO.resize(size, Image.Resampling.BICUBIC)
    if mode.endswith("A"):
        photo = photo.convert("RGBA")
        photo.putalpha(Image.fromarray(RNG.integers(0, 256, size[::-1], dtype=np.uint8)))
    return photo.convert(mode)


@pytest.mark.parametrize("level", [0, 1, 2, 3])
@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
def test_pixels_come_back_exactly(mode: str, level: int) -> None:
    image = sample(mode)
    back = decoded(png.encode_png(image, level))
    assert (back.format, back.mode, back.size) == ("PNG", mode, image.size)
    assert np.array_equal(np.asarray(back), np.asarray(image))


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (3, 2)])
def test_tiny_images(size: tuple[int, int]) -> None:
    image = Image.fromarray(RNG.integers(0, 256, (*size[::-1], 3), dtype=np.uint8))
    assert np.array_equal(np.asarray(decoded(png.encode_png(image))), np.asarray(image))


def test_many_bands_join_seamlessly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows are filtered band by band; the first row of a band must still predict from the row above."""
    monkeypatch.setattr(png, "BAND_BYTES", 3 * 97 * 5 + 7)  # about 5 rows per band, not a divisor of 61
    image = sample("RGB")
    assert np.array_equal(np.asarray(decoded(png.encode_png(image))), np.asarray(image))


def test_icc_profile_is_written() -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert decoded(png.encode_png(sample("RGB"), icc_profile=srgb)).info["icc_profile"] == srgb
    assert "icc_profile" not in decoded(png.encode_png(sample("RGB"))).info


def test_files_are_close_to_pillows_and_faster_levels_are_not_smaller() -> None:
    image = PHOTO.resize((288, 288), Image.Resampling.BICUBIC)
    pillow = io.BytesIO()
    image.save(pillow, "PNG", compress_level=1)
    ours = [len(png.encode_png(image, level)) for level in (1, 3)]
    assert ours[0] < 1.15 * len(pillow.getvalue())
    assert ours[1] <= ours[0] * 1.02


def test_refusals() -> None:
    with pytest.raises(ValueError, match="L, LA, RGB or RGBA"):
        png.encode_png(Image.new("P", (4, 4)))
    with pytest.raises(ValueError, match="0..3"):
        png.encode_png(Image.new("RGB", (4, 4)), level=4)


@pytest.mark.parametrize("level", [1, 6])
def test_encode_picks_the_writer_by_level(level: int) -> None:
    """Levels 0–3 give the fast writer's bytes, 4–9 Pillow's; both are lossless."""
    image = sample("RGB")
    blob = encode(image, "png", png_compress_level=level)
    fast = png.encode_png(image, level) if level <= 3 else None
    assert (blob == fast) == (level <= 3)
    assert np.array_equal(np.asarray(decoded(blob)), np.asarray(image))
