"""The compiled RGB compose (app/imaging/fused.py) gives the Pillow/NumPy compose's bytes, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from app.core.resample import axis_coefficients
from app.imaging import fused
from app.imaging.compose import compose
from app.imaging.decode import decode
from app.store import DEFAULT_STORE
from app.store.registry import discover
from tests.conftest import encoded

pytestmark = pytest.mark.skipif(not fused.available(), reason="numba is not installed")

ASTRONAUT = Image.fromarray(data.astronaut())
SIZES = [(1, 1), (1, 7), (7, 1), (2, 3), (5, 5), (37, 23), (96, 96), (161, 130)]


def _model_luma(image, scale: int) -> torch.Tensor:
    """The shipped model's Y for ``image``: what the pipeline would hand the compose."""
    from app.imaging.compose import luma_tensor

    model = discover(DEFAULT_STORE)[scale].model
    x = torch.nn.functional.pad(luma_tensor(image)[None], (model.radius,) * 4, mode="replicate")
    with torch.no_grad():
        return model.forward_valid(x)[0].clamp(0, 1)


def _both(image, sr: torch.Tensor, scale: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.asarray(compose(image, sr, scale, use_fused=True)),
            np.asarray(compose(image, sr, scale, use_fused=False)))


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("size", SIZES)
def test_fused_compose_of_a_photograph_is_the_pillow_compose(scale: int, size: tuple[int, int]) -> None:
    image = decode(encoded(ASTRONAUT.crop((120, 40, 120 + size[0], 40 + size[1]))), scale)
    fast, reference = _both(image, _model_luma(image, scale), scale)
    assert fast.shape == (size[1] * scale, size[0] * scale, 3)
    assert np.array_equal(fast, reference)


@pytest.mark.parametrize("scale", [1, 2, 3, 4, 5, 8])
def test_fused_compose_clips_as_pillow_does_on_saturated_edges(scale: int) -> None:
    """Pure colours on black and white, and luma at both ends: every clip of both passes and of the swap."""
    rng = np.random.default_rng(scale)
    blocks = rng.choice(np.array([0, 255], np.uint8), size=(9, 11, 3))
    pixels = np.kron(blocks, np.ones((2, 3, 1), np.uint8))  # 18×33 with hard edges
    pixels[::5] = rng.integers(0, 256, pixels[::5].shape, dtype=np.uint8)
    image = decode(encoded(Image.fromarray(pixels)), scale)
    sr = torch.from_numpy(rng.choice(np.array([0.0, 1.0, 0.5, 0.0627, 0.9216], np.float32),
                                     size=(1, 18 * scale, 33 * scale)))
    fast, reference = _both(image, sr, scale)
    assert np.array_equal(fast, reference)
    assert (fast == 0).any() and (fast == 255).any()  # the clips were reached


def test_fused_coefficients_are_pillows() -> None:
    for size, scale in ((1, 3), (5, 2), (96, 3), (161, 4)):
        starts, table = fused.coefficients(size, scale)
        want_starts, want_weights = axis_coefficients(size, size * scale)
        assert np.array_equal(starts, want_starts) and np.array_equal(table, want_weights)
        assert starts.dtype == table.dtype == np.int32 and table.flags.c_contiguous


def test_fused_rows_can_be_written_in_place_band_by_band() -> None:
    src = np.asarray(ASTRONAUT.crop((0, 0, 40, 30)))
    y = np.random.default_rng(1).random((90, 120), dtype=np.float32)
    whole = fused.compose_rows(src, y, 3, 0, 90)
    out = np.zeros_like(whole)
    for top in range(0, 90, 21):  # bands that do not follow source rows
        bottom = min(90, top + 21)
        fused.compose_rows(src, y[top:bottom], 3, top, bottom, out=out[top:bottom])
    assert np.array_equal(out, whole)
    with pytest.raises(ValueError, match="y must be"):
        fused.compose_rows(src, y[:10], 3, 0, 90)


def test_warm_up_compiles_what_a_decoded_image_needs() -> None:
    """A decoded image's pixels are read-only to Numba: the warm-up must compile that kind too,
    or the first request pays for a compile (about 2 s where no cache folder is writable)."""
    fused.warm_up()
    compiled = fused._compiled()
    before = list(compiled.signatures)
    image = decode(encoded(ASTRONAUT.crop((0, 0, 37, 23)), "PNG"), 3)
    assert not np.asarray(image.color).flags.writeable  # the case the warm-up exists for
    compose(image, _model_luma(image, 3), 3, use_fused=True)
    assert compiled.signatures == before
