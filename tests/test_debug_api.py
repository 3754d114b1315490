"""Debug routes ("look inside the model"): deconvolution kernels, their figure, the shuffled channels."""

from __future__ import annotations

import io
import math
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from safetensors.torch import load as load_safetensors

from app.assets import SAMPLE_IMAGE
from app.core.espcn import pad_for
from app.imaging.compose import luma_tensor
from app.imaging.decode import decode
from app.imaging.limits import ImageLimits
from app.main import create_app
from app.store.registry import discover
from app.viz import channels as ch
from app.viz import kernels as kn
from app.viz.colormap import diverging
from app.viz.drawing import LINE_H, MARGIN
from tests.conftest import encoded, make_settings, natural, open_bytes
from tests.test_api import BAD_UPLOADS, assert_error, post_bad, post_upload

SCALES = (2, 3, 4)
DEBUG_GETS = ("/kernels/deconv", "/kernels/deconv.png", "/debug/channels")


@pytest.fixture(scope="module")
def served(seeded_store: Path) -> dict:
    return {r: loaded.model for r, loaded in discover(seeded_store).items()}


def kernels_json(client: TestClient, scale: int) -> dict:
    response = client.get("/kernels/deconv", params={"scale": scale})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def f64(values: object) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def post_channels(client: TestClient, data: bytes, **kwargs: object) -> httpx.Response:
    return post_upload(client, "/debug/channels", data, **kwargs)  # type: ignore[arg-type]


# -- /kernels/deconv: the served layer and its deconvolution ---------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_client_side_deconv_equals_conv_shuffle_and_the_served_layer(
    client: TestClient, served: dict, scale: int
) -> None:
    doc = kernels_json(client, scale)
    r = scale
    assert doc["scale"] == r and doc["model"] == f"seeded-x{r}"
    conv, deconv = doc["conv"], doc["deconv"]
    assert conv["shape"] == [r * r, 32, 3, 3] and deconv["shape"] == [32, 1, 3 * r, 3 * r]
    assert deconv["periodic_bias_shape"] == [1, r, r]
    conv_w, conv_b = f64(conv["weight"]), f64(conv["bias"])
    deconv_w, periodic = f64(deconv["weight"]), f64(deconv["periodic_bias"])
    assert list(conv_w.shape) == conv["shape"] and list(deconv_w.shape) == deconv["shape"]
    assert list(conv_b.shape) == [r * r] and list(periodic.shape) == [1, r, r]
    assert deconv["stride"] == r
    uniform = bool((periodic == periodic.flatten()[0]).all())
    assert deconv["bias_is_uniform"] is uniform
    assert (deconv["bias"] is None) is (not uniform)
    assert doc["verification"]["max_abs_diff"] < 1e-12 and doc["verification"]["dtype"] == "float64"

    g = torch.Generator().manual_seed(1000 + r)
    x = torch.randn(2, 32, 9, 12, generator=g, dtype=torch.float64)
    a = F.pixel_shuffle(F.conv2d(x, conv_w, conv_b, padding=conv["padding"]), r)
    b = F.conv_transpose2d(x, deconv_w, None, deconv["stride"], deconv["padding"], deconv["output_padding"])
    assert a.shape == b.shape
    hh, ww = b.shape[2:]
    rows, cols = torch.arange(hh) % r, torch.arange(ww) % r
    b = b + periodic[:, rows[:, None], cols[None, :]][None]
    assert float((a - b).abs().max()) <= 1e-9

    layer = served[r].subpixel
    with torch.no_grad():
        own = F.pixel_shuffle(layer(x.float()), r).double()
    assert own.shape == b.shape
    assert float((own - b).abs().max()) <= 1e-4
    # the JSON holds the served float32 numbers exactly
    assert torch.equal(conv_w.float(), layer.weight.detach()) and torch.equal(conv_b.float(), layer.bias.detach())


@pytest.mark.parametrize("scale", SCALES)
def test_downloads_hold_the_json_numbers(client: TestClient, scale: int) -> None:
    doc = kernels_json(client, scale)
    expected = {
        "conv.weight": np.array(doc["conv"]["weight"], np.float32),
        "conv.bias": np.array(doc["conv"]["bias"], np.float32),
        "deconv.weight": np.array(doc["deconv"]["weight"], np.float32),
        "deconv.periodic_bias": np.array(doc["deconv"]["periodic_bias"], np.float32),
    }

    r = client.get("/kernels/deconv", params={"scale": scale, "format": "npz"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert "attachment" in r.headers["content-disposition"] and ".npz" in r.headers["content-disposition"]
    with np.load(io.BytesIO(r.content)) as npz:
        for key, want in expected.items():
            got = npz[key.replace(".", "_")]
            assert got.shape == want.shape and np.array_equal(got, want), key
        assert int(npz["scale"]) == scale and int(npz["deconv_stride"]) == doc["deconv"]["stride"]
        assert int(npz["conv_padding"]) == doc["conv"]["padding"]
        assert int(npz["deconv_padding"]) == doc["deconv"]["padding"]
        assert int(npz["deconv_output_padding"]) == doc["deconv"]["output_padding"]

    r = client.get("/kernels/deconv", params={"scale": scale, "format": "safetensors"})
    assert r.status_code == 200 and ".safetensors" in r.headers["content-disposition"]
    tensors = load_safetensors(r.content)
    assert set(tensors) == set(expected)
    for key, want in expected.items():
        assert np.array_equal(tensors[key].numpy(), want), key


# -- /kernels/deconv.png ---------------------------------------------------------------------------


def _kernel_figure_size(r: int, k: int, c: int, i: int) -> tuple[int, int]:
    cell = kn.CELL
    pitch_conv, pitch_deconv = k * cell + kn.GAP, k * r * cell + kn.GAP
    w_top, h_top = i * pitch_conv - kn.GAP, c * r * r * pitch_conv - kn.GAP
    cols = math.ceil(i / r)
    rows = c * math.ceil(i / cols)
    w_bot, h_bot = cols * pitch_deconv - kn.GAP, rows * pitch_deconv - kn.GAP
    width = 2 * MARGIN + kn.LABEL_W + max(w_top, w_bot, kn.BAR_W)
    height = 4 * MARGIN + 2 * kn.TITLE_H + h_top + h_bot + kn.LEGEND_H
    return width, height


@pytest.mark.parametrize("scale", SCALES)
def test_kernel_figure_size_and_colours(client: TestClient, scale: int) -> None:
    doc = kernels_json(client, scale)
    w = np.array(doc["conv"]["weight"], np.float64)  # (c·r², i, k, k)
    dw = np.array(doc["deconv"]["weight"], np.float64)  # (i, c, K, K)
    n_lr, i, k = w.shape[:3]
    c, big_k = dw.shape[1], dw.shape[2]
    r = scale
    assert c * r * r == n_lr and big_k == k * r

    response = client.get("/kernels/deconv.png", params={"scale": scale})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    img = open_bytes(response.content)
    assert img.format == "PNG" and img.mode == "RGB"
    assert img.size == _kernel_figure_size(r, k, c, i)

    pix = np.asarray(img)
    limit = float(np.abs(w).max())
    cell = kn.CELL
    x0, y0 = MARGIN + kn.LABEL_W, MARGIN + kn.TITLE_H
    pitch, dpitch = k * cell + kn.GAP, big_k * cell + kn.GAP
    y1 = y0 + n_lr * pitch - kn.GAP + MARGIN + kn.TITLE_H
    cols = math.ceil(i / r)
    rows_per = math.ceil(i / cols)
    rng = np.random.default_rng(scale)
    for n, j, u, v in zip(*(rng.integers(0, m, 30) for m in (n_lr, i, k, k)), strict=True):
        x, y = x0 + j * pitch + v * cell, y0 + n * pitch + u * cell
        want = diverging(w[n, j, u, v], limit)
        assert np.array_equal(pix[y, x], want) and np.array_equal(pix[y + cell - 1, x + cell - 1], want)
    for j, o, s, t in zip(*(rng.integers(0, m, 30) for m in (i, c, big_k, big_k)), strict=True):
        row, col = o * rows_per + j // cols, j % cols
        x, y = x0 + col * dpitch + t * cell, y1 + row * dpitch + s * cell
        want = diverging(dw[j, o, s, t], limit)
        assert np.array_equal(pix[y, x], want) and np.array_equal(pix[y + cell - 1, x + cell - 1], want)


# -- /debug/channels -------------------------------------------------------------------------------


def _channels_size(r: int, big_h: int, big_w: int) -> tuple[int, int]:
    h, w = min(big_h, ch.MAX_LR_SIDE), min(big_w, ch.MAX_LR_SIDE)
    z = max(1, ch.MIN_LR_SIDE // max(h, w))
    wa = r * (z * w + 2 * ch.FRAME) + (r - 1) * ch.GAP
    ha = r * (z * h + 2 * ch.FRAME) + (r - 1) * ch.GAP
    n, s = 2 * r, kn.SUBPIXEL_CELL  # render_subpixel_map(r): one HR channel, 2r HR pixels a side
    map_w, map_h = 2 * MARGIN + n * s, 2 * MARGIN + kn.TITLE_H + n * s
    q = ch.ZOOM_PX // (4 * r)
    wb = max(map_w, min(4, w) * r * q)
    hb = map_h + LINE_H + min(4, h) * r * q
    wc, hc = z * r * w, z * r * h
    slots = [max(v, ch.PANEL_MIN_W) for v in (wa, wb, wc)]
    return 4 * MARGIN + sum(slots), 2 * MARGIN + ch.TITLE_H + max(ha, hb, hc)


@pytest.mark.parametrize("scale", SCALES)
def test_channels_figure_for_the_sample_image(client: TestClient, scale: int) -> None:
    response = client.get("/debug/channels", params={"scale": scale})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    img = open_bytes(response.content)
    with Image.open(SAMPLE_IMAGE) as sample:
        big_w, big_h = sample.size
    assert img.mode == "RGB" and img.size == _channels_size(scale, big_h, big_w)
    stats = client.get("/debug/channels", params={"scale": scale, "format": "json"}).json()
    assert stats["lr_size"] == [big_w, big_h] and len(stats["channels"]) == scale * scale


@pytest.mark.parametrize(("scale", "size"), [(2, (45, 37)), (3, (150, 20)), (4, (9, 13))])
def test_channels_for_an_upload(client: TestClient, served: dict, scale: int, size: tuple[int, int]) -> None:
    data = encoded(natural(size))
    response = post_channels(client, data, scale=scale)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    big_w, big_h = size
    assert open_bytes(response.content).size == _channels_size(scale, big_h, big_w)
    # raw body: the same figure
    raw = post_channels(client, data, raw=True, scale=scale)
    assert raw.status_code == 200 and raw.content == response.content

    response = post_channels(client, data, scale=scale, format="json")
    assert response.status_code == 200 and response.headers["content-type"].startswith("application/json")
    stats = response.json()
    r = scale
    assert stats["scale"] == r and stats["lr_size"] == [big_w, big_h] and stats["hr_size"] == [r * big_w, r * big_h]
    model = served[r]
    luma = luma_tensor(decode(data, r, ImageLimits()))
    with torch.no_grad():
        lr = model.forward_lr(pad_for(model, luma[None]))[0].double()
    assert lr.shape[1:] == (big_h, big_w)
    assert len(stats["channels"]) == r * r
    for n, entry in enumerate(stats["channels"]):
        assert entry["channel"] == n and entry["hr_channel"] == 0 and entry["offset"] == [n // r, n % r]
        m = lr[n]
        assert entry["min"] == pytest.approx(float(m.min()), abs=1e-6)
        assert entry["max"] == pytest.approx(float(m.max()), abs=1e-6)
        assert entry["mean"] == pytest.approx(float(m.mean()), abs=1e-6)
        assert entry["std"] == pytest.approx(float(m.std(correction=0)), abs=1e-6)


# -- switches, limits, errors ----------------------------------------------------------------------


def test_debug_routes_can_be_switched_off(seeded_store: Path) -> None:
    data = encoded(natural())
    with TestClient(create_app(make_settings(seeded_store, debug_routes=False))) as c:
        for path in DEBUG_GETS:
            assert_error(c.get(path, params={"scale": 3}), 404)
        assert_error(post_channels(c, data), 404)
        assert_error(c.get("/kernels/deconv", params={"scale": 3, "format": "npz"}), 404)
        up = c.post("/upscale", params={"scale": 3}, files={"file": ("x.png", data, "image/png")})
        assert up.status_code == 200 and open_bytes(up.content).size == (144, 120)


@pytest.mark.parametrize(("kind", "status"), [*BAD_UPLOADS.items(), ("format gif", 422)])
def test_bad_channel_uploads_get_the_upscale_errors(client: TestClient, kind: str, status: int) -> None:
    good = encoded(natural())
    if kind == "format gif":
        r = post_channels(client, good, format="gif")
    else:
        r = post_bad(client, "/debug/channels", kind, good)
    assert_error(r, status)


def test_channel_uploads_obey_the_size_limits(seeded_store: Path) -> None:
    settings = make_settings(seeded_store, max_body_bytes=2048, max_input_pixels=40 * 40, max_output_pixels=100 * 100)
    with TestClient(create_app(settings)) as c:
        big = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
        assert assert_error(post_channels(c, big), 413)["code"] == "body_too_large"
        assert_error(post_channels(c, big, raw=True), 413)
        assert assert_error(post_channels(c, encoded(Image.new("L", (41, 40)))), 413)["code"] == "image_too_large"
        assert_error(post_channels(c, encoded(Image.new("L", (30, 30))), scale=4), 413)  # ×4 output too large
        assert post_channels(c, encoded(Image.new("L", (30, 30))), scale=3).status_code == 200


@pytest.mark.parametrize("params", [{"scale": 5}, {"scale": 1}, {"scale": "x"}, {}, {"scale": 9}])
def test_bad_scale_is_422_on_every_debug_route(client: TestClient, params: dict) -> None:
    for path in DEBUG_GETS:
        error = assert_error(client.get(path, params=params), 422)
        if params.get("scale") in (1, 5):  # a valid factor no loaded model serves
            assert error["code"] == "unknown_scale" and "scales served: 2, 3, 4" in error["detail"]
        else:
            assert error["code"] == "invalid_parameters"
    upload = {"file": ("x.png", encoded(natural()), "image/png")}
    assert_error(client.post("/debug/channels", params=params, files=upload), 422)


def test_bad_kernel_format_is_422(client: TestClient) -> None:
    assert_error(client.get("/kernels/deconv", params={"scale": 3, "format": "pickle"}), 422)
    assert_error(client.get("/debug/channels", params={"scale": 3, "format": "npz"}), 422)
