"""ESPCN: shapes, counts, border handling, tiling exactness and the last layer as a deconvolution."""

from __future__ import annotations

import pytest
import torch

from app.core.espcn import ESPCN, pad_for
from app.core.tiling import count_tiles, extract_tiles, pad_image, plan_axis, plan_tiles, stitch_tile


@pytest.fixture(params=[2, 3, 4])
def model(request: pytest.FixtureRequest) -> ESPCN:
    torch.manual_seed(request.param)
    return ESPCN(request.param).eval()


def test_runs_on_a_batch_and_keeps_shape(model: ESPCN) -> None:
    x = torch.rand(3, 1, 13, 21)
    y = model(x)
    r = model.scale
    assert y.shape == (3, 1, 13 * r, 21 * r)
    # tiny images work too, thanks to edge replication
    assert model(torch.rand(1, 1, 1, 1)).shape == (1, 1, r, r)


def test_parameter_count_and_macs_match_the_paper_formula(model: ESPCN) -> None:
    r = model.scale
    weights = 1 * 64 * 25 + 64 * 32 * 9 + 32 * r * r * 9
    biases = 64 + 32 + r * r
    assert model.parameter_count() == weights + biases
    assert model.macs_per_lr_pixel() == weights
    assert model.radius == 4


def test_last_layer_deconvolution_reproduces_the_output(model: ESPCN) -> None:
    x = torch.rand(2, 1, 9, 11, dtype=torch.float64)
    model = model.double()
    with torch.no_grad():
        features = model.features(pad_for(model, x))
        deconv = model.last_layer_deconv()
        r = model.scale
        assert deconv.weight.shape == (32, 1, 3 * r, 3 * r)
        assert deconv.stride == r and deconv.padding == 2 * r and deconv.output_padding == 0
        assert (deconv(features) - model(x)).abs().max() < 1e-12
        assert (deconv.zero_insertion(features) - model(x)).abs().max() < 1e-12


def test_batched_equals_alone(model: ESPCN) -> None:
    xs = torch.rand(5, 1, 16, 16)
    with torch.no_grad():
        together = model(xs)
        alone = torch.cat([model(x[None]) for x in xs])
    assert (together - alone).abs().max() < 1e-6


@pytest.mark.parametrize(("h", "w", "tile"), [(37, 50, 16), (16, 16, 16), (5, 70, 32), (3, 2, 24), (64, 33, 31)])
def test_tiled_inference_equals_whole_image(model: ESPCN, h: int, w: int, tile: int) -> None:
    img = torch.rand(1, h, w)
    tiles = plan_tiles(h, w, tile)
    with torch.no_grad():
        windows = extract_tiles(pad_image(img, model.radius, tile), tiles, tile, model.radius)
        assert windows.shape[1:] == (1, tile + 2 * model.radius, tile + 2 * model.radius)
        tiled = torch.full((1, h * model.scale, w * model.scale), float("nan"))
        for t, out in zip(tiles, model.forward_valid(windows), strict=True):
            stitch_tile(tiled, out, t, model.scale)
        whole = model(img[None])[0]
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().max() < 1e-5


def test_tile_plan_owns_every_pixel_once() -> None:
    for length in (1, 7, 16, 17, 100):
        for tile in (1, 5, 16, 40):
            spans = plan_axis(length, tile)
            owned = [i for s in spans for i in range(s.own_start, s.own_stop)]
            assert owned == list(range(length))
            assert all(s.start <= s.own_start and s.own_stop <= s.start + tile for s in spans)
            assert all(s.start + tile <= max(length, tile) for s in spans)


def test_tile_count_equals_the_plan() -> None:
    for h in (1, 31, 32, 33, 95, 96, 97, 1024):
        for w in (1, 32, 64, 200):
            for tile in (1, 32, 96):
                assert count_tiles(h, w, tile) == len(plan_tiles(h, w, tile)), (h, w, tile)


def test_configurable_architecture() -> None:
    m = ESPCN(2, channels=3, widths=(16, 8, 8), kernel_sizes=(3, 3, 3, 3), activation="relu")
    assert m.radius == 4
    assert m(torch.rand(1, 3, 6, 6)).shape == (1, 3, 12, 12)
    with pytest.raises(ValueError):
        ESPCN(2, kernel_sizes=(4, 3, 3))
    with pytest.raises(ValueError):
        ESPCN(2, activation="sigmoid")
