"""HTTP API: every route, format, colour mode and error class, on real images and real models."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image, ImageCms

from app.imaging.compose import compose, luma_tensor
from app.imaging.decode import decode
from app.imaging.limits import ImageLimits
from app.main import create_app
from app.store.registry import discover
from tests.conftest import as_array, encoded, make_settings, natural, open_bytes
from tests.gates import WAIT_S, GatedRunner, gated, wait_until

SCALES = (2, 3, 4)


def post_upload(client: TestClient, path: str, data: bytes, *, raw: bool = False, content_type: str = "image/png",
                **params: object) -> httpx.Response:
    """An image to ``path`` (``/upscale``, ``/debug/channels``) as a multipart file, or as the raw body."""
    query = {"scale": 3, **params}
    if raw:
        return client.post(path, params=query, content=data, headers={"content-type": content_type})
    return client.post(path, params=query, files={"file": ("x.png", data, content_type)})


def post(client: TestClient, data: bytes, **kwargs: object) -> httpx.Response:
    return post_upload(client, "/upscale", data, **kwargs)  # type: ignore[arg-type]


# Bad uploads that every image route answers alike: kind → status.
BAD_UPLOADS = {
    "not an image": 400,
    "empty": 400,
    "truncated": 400,
    "text/plain raw": 415,
    "text/plain file": 415,
    "json raw": 415,
    "scale 5": 422,
    "no scale": 422,
    "no file field": 422,
    "no body": 422,
}


def post_bad(client: TestClient, path: str, kind: str, good: bytes) -> httpx.Response:
    """One of :data:`BAD_UPLOADS` to ``path``; ``good`` is a valid PNG the bad ones are made from."""
    uploads = {
        "not an image": lambda: post_upload(client, path, b"hello, this is text and not an image"),
        "empty": lambda: post_upload(client, path, b""),
        "truncated": lambda: post_upload(client, path, good[: len(good) // 2]),
        "text/plain raw": lambda: post_upload(client, path, b"abc", raw=True, content_type="text/plain"),
        "text/plain file": lambda: post_upload(client, path, good, content_type="text/plain"),
        "json raw": lambda: client.post(f"{path}?scale=3", json={"image": "x"}),
        "scale 5": lambda: post_upload(client, path, good, scale=5),
        "no scale": lambda: client.post(path, files={"file": ("x.png", good, "image/png")}),
        "no file field": lambda: client.post(f"{path}?scale=3", files={"other": ("x.png", good, "image/png")}),
        "no body": lambda: client.post(f"{path}?scale=3"),
    }
    return uploads[kind]()


def reference(store: Path, data: bytes, scale: int) -> Image.Image:
    """Whole-image inference on the same decoded image, without the service: what the answer must equal."""
    model = discover(store)[scale].model
    image = decode(data, scale, ImageLimits())
    with torch.no_grad():
        sr = model(luma_tensor(image)[None])[0].clamp(0, 1)
    return compose(image, sr, scale)


def assert_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["detail"] and body["code"]
    return body


# -- health, readiness, models, docs ------------------------------------------------------------


def test_health_ready_models_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["scales"] == [2, 3, 4]
    models = client.get("/models").json()["models"]
    assert [m["scale"] for m in models] == [2, 3, 4]
    for m in models:
        r = m["scale"]
        assert m["parameters"] == 64 * 25 + 64 * 32 * 9 + 32 * r * r * 9 + 64 + 32 + r * r
        assert m["macs_per_lr_pixel"] == 64 * 25 + 64 * 32 * 9 + 32 * r * r * 9
        assert m["device"].startswith("cpu") and m["name"] == f"seeded-x{r}"
        assert m["backend"] == "onnxruntime"  # installed with the project: auto picks it on the CPU
    spec = client.get("/openapi.json").json()
    upscale = spec["paths"]["/upscale"]["post"]
    assert {"multipart/form-data", "image/*"} <= set(upscale["requestBody"]["content"])
    assert {"200", "400", "413", "415", "422", "503", "504"} <= set(upscale["responses"])
    assert {"/kernels/deconv", "/kernels/deconv.png", "/debug/channels", "/models", "/readyz"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


def test_readyz_is_503_without_models(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as c:
        assert c.get("/readyz").status_code == 503
        assert c.get("/healthz").status_code == 200


# -- the happy path: sizes, formats, exactness ---------------------------------------------------


@pytest.mark.parametrize("scale", SCALES)
def test_upscale_equals_whole_image_inference(client: TestClient, seeded_store: Path, scale: int) -> None:
    data = encoded(natural((45, 37)))
    response = post(client, data, scale=scale)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-model"] == f"seeded-x{scale}" and response.headers["x-scale"] == str(scale)
    assert "model;dur=" in response.headers["server-timing"]
    out = open_bytes(response.content)
    assert out.size == (45 * scale, 37 * scale) and out.mode == "RGB"
    # tiles of 32 with a halo, batched by the worker == one pass over the whole image
    assert np.abs(as_array(out) - as_array(reference(seeded_store, data, scale))).max() <= 1


@pytest.mark.parametrize(("fmt", "media", "pil"), [("png", "image/png", "PNG"), ("jpeg", "image/jpeg", "JPEG"),
                                                   ("webp", "image/webp", "WEBP")])
def test_output_formats(client: TestClient, fmt: str, media: str, pil: str) -> None:
    response = post(client, encoded(natural()), format=fmt, **({} if fmt == "png" else {"quality": 80}))
    assert response.status_code == 200 and response.headers["content-type"] == media
    out = open_bytes(response.content)
    assert out.format == pil and out.size == (144, 120)


@pytest.mark.parametrize(("source", "media"), [("JPEG", "image/jpeg"), ("WEBP", "image/webp"), ("PNG", "image/png"),
                                               ("GIF", "image/png"), ("BMP", "image/png")])
def test_same_format_as_the_input(client: TestClient, source: str, media: str) -> None:
    response = post(client, encoded(natural(), source), format="same", quality=85)
    assert response.status_code == 200 and response.headers["content-type"] == media
    assert open_bytes(response.content).size == (144, 120)


def test_same_format_refuses_lossless_jpeg_and_oversized_webp(client: TestClient) -> None:
    assert assert_error(post(client, encoded(natural(), "JPEG"), format="same", lossless=True), 422)
    assert post(client, encoded(natural(), "WEBP"), format="same", lossless=True).status_code == 200
    wide = encoded(Image.new("RGB", (4096, 2)), "WEBP", lossless=True)
    assert assert_error(post(client, wide, scale=4, format="same"), 413)["code"] == "image_too_large"


def test_lossless_webp_equals_png(client: TestClient) -> None:
    data = encoded(natural())
    png = open_bytes(post(client, data).content)
    webp = open_bytes(post(client, data, format="webp", lossless=True).content)
    assert np.array_equal(np.asarray(png), np.asarray(webp.convert("RGB")))


def test_raw_body_equals_multipart(client: TestClient) -> None:
    data = encoded(natural(), "JPEG", quality=92)
    a = post(client, data, content_type="image/jpeg")
    b = post(client, data, raw=True, content_type="image/jpeg")
    assert a.status_code == b.status_code == 200
    assert a.content == b.content


# -- colour modes ---------------------------------------------------------------------------------


def test_greyscale_stays_greyscale(client: TestClient) -> None:
    out = open_bytes(post(client, encoded(natural().convert("L"))).content)
    assert out.mode == "L" and out.size == (144, 120)


def test_rgba_keeps_its_alpha(client: TestClient) -> None:
    rgba = natural().convert("RGBA")
    alpha = np.full((40, 48), 255, np.uint8)
    alpha[:, :16] = 0
    rgba.putalpha(Image.fromarray(alpha))
    out = open_bytes(post(client, encoded(rgba)).content)
    assert out.mode == "RGBA"
    a = np.asarray(out)[:, :, 3]
    assert a[:, :40].max() == 0 and a[:, 56:].min() == 255


@pytest.mark.parametrize("mode", ["P", "CMYK", "I;16", "1", "LA"])
def test_other_modes_are_converted(client: TestClient, mode: str) -> None:
    base = natural()
    if mode == "P":
        image, fmt = base.convert("P"), "PNG"
    elif mode == "CMYK":
        image, fmt = base.convert("CMYK"), "JPEG"
    elif mode == "I;16":
        grey = (np.asarray(base.convert("L")).astype(np.uint16) * 257)
        image, fmt = Image.fromarray(grey), "PNG"
    elif mode == "LA":
        image, fmt = base.convert("LA"), "PNG"
    else:
        image, fmt = base.convert("1"), "PNG"
    response = post(client, encoded(image, fmt))
    assert response.status_code == 200, response.text
    out = open_bytes(response.content)
    assert out.size == (144, 120)
    assert out.mode == {"P": "RGB", "CMYK": "RGB", "I;16": "L", "1": "L", "LA": "LA"}[mode]


def test_exif_orientation_is_applied_and_icc_profile_kept(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encoded(natural((48, 40)), "JPEG", exif=exif, icc_profile=icc)
    out = open_bytes(post(client, data).content)
    assert out.size == (40 * 3, 48 * 3)  # width and height swapped
    assert out.info.get("icc_profile") == icc


# -- errors: clear JSON, 4xx, and the service keeps serving ---------------------------------------


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims another size (a decompression bomb's signature)."""
    data = bytearray(encoded(Image.new("L", (8, 8))))
    ihdr = 8 + 8  # signature, then length + type
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


@pytest.mark.parametrize(
    ("kind", "status"),
    [*BAD_UPLOADS.items(), ("bomb", 413), ("format exe", 422), ("quality 0", 422), ("lossless jpeg", 422)],
)
def test_bad_input_gets_a_clear_4xx(client: TestClient, kind: str, status: int) -> None:
    good = encoded(natural())
    if kind == "bomb":
        r = post(client, _png_claiming(60000, 60000))
    elif kind == "format exe":
        r = post(client, good, format="exe")
    elif kind == "quality 0":
        r = post(client, good, format="jpeg", quality=0)
    elif kind == "lossless jpeg":
        r = post(client, good, format="jpeg", lossless=True)
    else:
        r = post_bad(client, "/upscale", kind, good)
    assert_error(r, status)
    assert post(client, good).status_code == 200  # and the service keeps serving


def test_limits_body_bytes_and_pixels(seeded_store: Path) -> None:
    settings = make_settings(seeded_store, max_body_bytes=2048, max_input_pixels=40 * 40, max_output_pixels=100 * 100)
    with TestClient(create_app(settings)) as c:
        big = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
        body = assert_error(post(c, big), 413)
        assert body["code"] == "body_too_large"
        assert_error(post(c, big, raw=True), 413)
        assert assert_error(post(c, encoded(Image.new("L", (41, 40)))), 413)["code"] == "image_too_large"
        # 30×30 fits the input limit, but ×4 → 120×120 passes the output limit
        assert_error(post(c, encoded(Image.new("L", (30, 30))), scale=4), 413)
        assert post(c, encoded(Image.new("L", (30, 30))), scale=3).status_code == 200
    wide = make_settings(seeded_store, max_input_pixels=5000 * 2, max_output_pixels=10**9)
    with TestClient(create_app(wide)) as c:  # 4096 px × 4 = 16384: within max_side, one over WebP's limit
        assert assert_error(post(c, encoded(Image.new("L", (4096, 2))), scale=4, format="webp"), 413)["code"] == (
            "image_too_large")


# -- back-pressure and deadlines ------------------------------------------------------------------


def _queue_held_full(c: TestClient, gate: GatedRunner, answers: list[int]) -> list[threading.Thread]:
    """A one-tile request held at the gated model call, and 4 tiles queued behind it: the 4-tile queue is full."""
    engine = c.app.state.service.pipeline.engine
    threads = [threading.Thread(target=lambda d=d: answers.append(post(c, d).status_code))
               for d in (encoded(natural((20, 20))), encoded(natural((64, 64))))]
    threads[0].start()
    assert gate.entered.wait(WAIT_S), "the first request never reached the model"
    threads[1].start()
    wait_until(lambda: engine.queue_depth == 4, "the second request's 4 tiles queued")
    return threads


@pytest.mark.parametrize("status", [503, 429])
def test_queue_full_answers_the_overload_status_with_retry_after(seeded_store: Path, status: int) -> None:
    settings = make_settings(seeded_store, max_queue_tiles=4, max_batch=64, retry_after_s=2, overload_status=status)
    with TestClient(create_app(settings)) as c:
        answers: list[int] = []
        with gated(c.app.state.service.pipeline.engine, 3) as gate:
            threads = _queue_held_full(c, gate, answers)
            r = post(c, encoded(natural((20, 20))))
            body = assert_error(r, status)
            assert body["code"] == "queue_full" and r.headers["retry-after"] == "2"
            # an image larger than the whole queue can never be admitted: 413, not an overload
            assert_error(post(c, encoded(natural((100, 100)))), 413)
        for thread in threads:
            thread.join()
        assert answers == [200, 200]
        assert post(c, encoded(natural((20, 20)))).status_code == 200


def test_deadline_answers_504(seeded_store: Path) -> None:
    settings = make_settings(seeded_store, request_timeout_s=0.2, max_batch=64, max_delay_ms=1000)
    with TestClient(create_app(settings)) as c:
        assert assert_error(post(c, encoded(natural())), 504)["code"] == "timeout"
        assert c.get("/readyz").status_code == 200


# -- batching does not change results -------------------------------------------------------------


@pytest.mark.parametrize("whole_max", [0, 4096], ids=["tiles", "whole-image for mid sizes"])
def test_concurrent_requests_equal_alone(seeded_store: Path, whole_max: int) -> None:
    settings = make_settings(seeded_store, max_batch=16, max_delay_ms=20, whole_image_max_pixels=whole_max)
    rng = np.random.default_rng(1)
    sizes = [(int(rng.integers(8, 90)), int(rng.integers(8, 90))) for _ in range(12)]
    images = [encoded(natural(s)) for s in sizes]
    scales = [SCALES[i % 3] for i in range(len(images))]
    with TestClient(create_app(settings)) as c:
        alone = [post(c, d, scale=s).content for d, s in zip(images, scales, strict=True)]
        together: list[bytes | None] = [None] * len(images)

        def run(i: int) -> None:
            together[i] = post(c, images[i], scale=scales[i]).content

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batches = c.get("/metrics").text
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        assert b == a, f"image {i} {sizes[i]} differs when batched with others"  # bit-exact PNGs
    assert "sr_batch_size_count" in batches


def test_sample_image_asset_is_a_real_photo() -> None:
    sample = Path(__file__).resolve().parents[1] / "app" / "assets" / "sample.png"
    with Image.open(sample) as im:
        assert im.size == (128, 128) and im.mode == "RGB"
        assert np.asarray(im).std() > 30


def test_body_bytes_are_not_read_past_the_limit(seeded_store: Path) -> None:
    """A declared Content-Length over the limit is refused before the body is read."""
    settings = make_settings(seeded_store, max_body_bytes=4096)
    with TestClient(create_app(settings)) as c:
        r = c.post("/upscale?scale=2", content=io.BytesIO(b"x" * 100_000).read(),
                   headers={"content-type": "image/png"})
        assert_error(r, 413)


def test_settings_come_from_sr_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.config import Settings

    for name, value in {"SR_OVERLOAD_STATUS": "429", "SR_MAX_BATCH": "7", "SR_DEBUG_ROUTES": "false",
                        "SR_DEVICE": "cpu", "SR_MAX_DELAY_MS": "2.5"}.items():
        monkeypatch.setenv(name, value)
    s = Settings()
    assert (s.overload_status, s.max_batch, s.debug_routes, s.device, s.max_delay_ms) == (429, 7, False, "cpu", 2.5)
    monkeypatch.setenv("SR_OVERLOAD_STATUS", "500")
    with pytest.raises(ValueError):
        Settings()


def test_whole_image_path_equals_whole_image_inference(seeded_store: Path) -> None:
    with TestClient(create_app(make_settings(seeded_store, whole_image_max_pixels=10_000))) as c:
        data = encoded(natural((70, 50)))  # 3 × 2 tiles of 32, run as one call
        out = open_bytes(post(c, data, scale=3).content)
        assert np.abs(as_array(out) - as_array(reference(seeded_store, data, 3))).max() <= 1
