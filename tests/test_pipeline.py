"""The request pipeline below HTTP: served scales from the store, refusals before decoding, and one path for all.

Real models (seeded, from a real store on disk), real images, the real engine.
"""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.engine.errors import DeadlineExceeded, UnknownScale
from app.imaging.compose import compose, luma_tensor
from app.imaging.decode import decode
from app.imaging.errors import ImageTooLarge, InvalidImage
from app.main import create_app
from app.pipeline import InvalidOptions, OutputOptions
from app.pipeline.build import build_pipeline
from app.store.registry import discover
from tests.conftest import encoded, make_settings, natural, open_bytes


def run(coro):  # one event loop per test: the engine's worker lives in it
    return asyncio.run(coro)


async def _with_pipeline(settings, work):
    pipeline = build_pipeline(settings)
    await pipeline.start()
    try:
        return await work(pipeline)
    finally:
        await pipeline.close(5)


def test_served_scales_come_from_the_store(seeded_store: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    for name in ("seeded-x2", "seeded-x4"):  # only two of the three models
        for suffix in (".json", ".safetensors"):
            shutil.copy(seeded_store / f"{name}{suffix}", store)
    with TestClient(create_app(make_settings(store))) as c:
        assert c.get("/readyz").json()["scales"] == [2, 4]
        r = c.post("/upscale", params={"scale": 3}, files={"file": ("x.png", encoded(natural()), "image/png")})
        assert r.status_code == 422
        answer = r.json()
        assert answer["code"] == "unknown_scale" and "scales served: 2, 4" in answer["detail"]
        assert answer["errors"] == [{"loc": ["query", "scale"], "msg": "no model serves x3; scales served: 2, 4",
                                     "type": "unknown_scale"}]
        assert c.post("/upscale", params={"scale": 4}, files={"file": ("x.png", encoded(natural()), "image/png")}
                      ).status_code == 200
        assert c.get("/kernels/deconv", params={"scale": 3}).json()["code"] == "unknown_scale"


def test_unknown_scale_and_bad_options_are_refused_before_the_body_is_read(client: TestClient) -> None:
    junk = b"not an image at all"  # would be a 400 if it were decoded
    r = client.post("/upscale", params={"scale": 5}, content=junk, headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (422, "unknown_scale")
    r = client.post("/upscale", params={"scale": 3, "format": "jpeg", "lossless": "true"}, content=junk,
                    headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_parameters")
    r = client.post("/upscale?scale=2&scale=3", content=junk, headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_parameters") and "scale" in r.json()["detail"]
    r = client.post("/upscale", params={"scale": 3, "quality": 50}, content=junk, headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (422, "invalid_parameters")  # PNG has no quality
    r = client.post("/upscale", params={"scale": 3}, content=junk, headers={"content-type": "image/png"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_image")


def test_options_are_checked_where_they_are_made() -> None:
    with pytest.raises(InvalidOptions, match="lossless"):
        OutputOptions("jpeg", lossless=True)
    with pytest.raises(InvalidOptions, match="quality"):
        OutputOptions("webp", quality=0)
    with pytest.raises(InvalidOptions, match="unknown output format"):
        OutputOptions("gif")
    with pytest.raises(InvalidOptions, match="quality applies to JPEG and WebP"):
        OutputOptions("png", quality=80)
    assert OutputOptions("same", quality=80).resolve("JPEG") == "jpeg"
    assert OutputOptions("same", quality=80).resolve("PNG") == "png"  # documented: ignored for PNG answers
    same = OutputOptions("same", lossless=True)
    assert same.resolve("WEBP") == "webp" and same.resolve("PNG") == "png"
    with pytest.raises(InvalidOptions):
        same.resolve("JPEG")  # lossless + same: refused once the input turns out to be a JPEG


def test_the_pipeline_alone_answers_what_the_model_and_compose_give(seeded_store: Path) -> None:
    """No HTTP: the CLI and the benchmark call this; it must equal whole-image inference + compose + PNG."""
    data = encoded(natural((70, 50)))

    async def work(pipeline):
        assert pipeline.scales == (2, 3, 4)
        with pytest.raises(UnknownScale) as refused:
            await pipeline.upscale(data, 5)
        assert refused.value.served == (2, 3, 4)
        with pytest.raises(InvalidImage):
            await pipeline.upscale(b"junk", 3)
        return await pipeline.upscale(data, 3, OutputOptions("png"))

    result = run(_with_pipeline(make_settings(seeded_store, whole_image_max_pixels=0), work))
    image = decode(data, 3)
    with torch.no_grad():
        sr = discover(seeded_store)[3].model(luma_tensor(image)[None])[0].clamp(0, 1)
    expected = np.asarray(compose(image, sr, 3))
    got = np.asarray(open_bytes(result.body))
    assert got.shape == expected.shape and int(np.abs(got.astype(int) - expected).max()) <= 1
    assert (result.format, result.scale, result.input_size, result.output_size) == ("png", 3, (70, 50), (210, 150))
    assert result.model == "seeded-x3" and result.media_type == "image/png"
    t = result.timings
    assert min(t.decode, t.model, t.compose, t.encode) > 0
    assert [p.split(";")[0] for p in t.server_timing().split(", ")] == ["decode", "model", "compose", "encode"]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_tensor_compose_through_the_service_gives_the_same_bytes(seeded_store: Path, mode: str) -> None:
    """SR_COMPOSE=tensor (what CUDA runs) against the Pillow path, through the real pipeline on this CPU."""
    source = natural((60, 44))
    if "A" in mode:
        source = source.convert(mode[:-1])
        source.putalpha(Image.linear_gradient("L").resize(source.size))
    else:
        source = source.convert(mode)
    data = encoded(source)
    answers = {}
    for path in ("pillow", "tensor"):
        async def work(pipeline):
            return await pipeline.upscale(data, 2, OutputOptions("png"))

        answers[path] = run(_with_pipeline(make_settings(seeded_store, compose=path), work)).body
    pillow, tensor = (np.asarray(open_bytes(answers[p])) for p in ("pillow", "tensor"))
    assert open_bytes(answers["tensor"]).mode == mode
    assert np.array_equal(pillow, tensor)


def test_deadline_covers_the_decode(seeded_store: Path) -> None:
    data = encoded(natural((64, 64)))

    async def work(pipeline):
        import time

        return await pipeline.upscale(data, 2, deadline=time.monotonic() - 1)

    with pytest.raises(DeadlineExceeded, match="while decoding"):
        run(_with_pipeline(make_settings(seeded_store), work))


def test_webp_side_limit_is_checked_before_the_model(seeded_store: Path) -> None:
    buf = io.BytesIO()
    Image.new("L", (4096, 2)).save(buf, "PNG")  # ×4: 16384 px, within the output limit, over WebP's 16383

    async def work(pipeline):
        return await pipeline.upscale(buf.getvalue(), 4, OutputOptions("webp"))

    with pytest.raises(ImageTooLarge, match="WebP"):
        run(_with_pipeline(make_settings(seeded_store), work))


def test_a_decoded_frame_goes_the_same_way_as_an_upload(seeded_store: Path) -> None:
    """upscale_image (video and animation frames) and upscale (uploads) give the same pixels."""
    data = encoded(natural((50, 40)))
    image = decode(data, 2)

    async def work(pipeline):
        frame = await pipeline.upscale_image(image, 2)
        whole = await pipeline.upscale(data, 2, OutputOptions("png"))
        return frame, whole

    frame, whole = run(_with_pipeline(make_settings(seeded_store), work))
    assert frame.size == (100, 80) and frame.mode == "RGB"
    assert np.array_equal(np.asarray(frame), np.asarray(open_bytes(whole.body)))


def test_admission_from_the_header_refuses_at_once_while_the_codec_pool_is_busy(seeded_store: Path) -> None:
    """The queue's room is checked from the header, before the decode waits for a codec thread.

    Every codec thread is held until after the refusal: a refusal that needed one would never come
    (the 30 s only stops such a regression from hanging the test)."""
    import threading

    from app.engine.errors import QueueFull

    data = encoded(natural((64, 64)))  # 4 tiles of 32²
    release, entered = threading.Event(), threading.Semaphore(0)

    def hold() -> None:
        entered.release()
        release.wait(60)

    async def work(pipeline):
        held = pipeline.engine.reserve(2, 64, 64)  # another request's room, still decoding
        tasks = [asyncio.ensure_future(pipeline.in_pool(hold)) for _ in range(2)]  # every codec thread busy
        try:
            for _ in range(2):
                assert await asyncio.to_thread(entered.acquire, True, 30), "a codec thread never took its job"
            with pytest.raises(QueueFull):
                await asyncio.wait_for(pipeline.upscale(data, 2), 30)
        finally:
            held.release()
            release.set()
            await asyncio.gather(*tasks)
        return await pipeline.upscale(data, 2)  # the room came back

    settings = make_settings(seeded_store, max_queue_tiles=4, codec_threads=2, whole_image_max_pixels=0)
    ok = run(_with_pipeline(settings, work))
    assert ok.output_size == (128, 128)


def test_a_failed_decode_gives_its_reserved_room_back(seeded_store: Path) -> None:
    good = encoded(natural((64, 64)))
    broken = good[: len(good) // 2]  # the header is fine, the pixels are not

    async def work(pipeline):
        for _ in range(3):
            with pytest.raises(InvalidImage):
                await pipeline.upscale(broken, 2)
        assert pipeline.engine._reserved == 0
        return await pipeline.upscale(good, 2)

    assert run(_with_pipeline(make_settings(seeded_store, max_queue_tiles=4), work)).output_size == (128, 128)


def test_big_images_decode_in_the_sandbox_and_give_the_same_answer(seeded_store: Path) -> None:
    data = encoded(natural((80, 60)), "JPEG", quality=90)

    async def work(pipeline):
        return (await pipeline.upscale(data, 2, OutputOptions("png"))).body

    sandboxed = run(_with_pipeline(make_settings(seeded_store, decode_sandbox_min_pixels=0), work))
    in_process = run(_with_pipeline(make_settings(seeded_store, decode_sandbox_min_pixels=10**9), work))
    assert sandboxed == in_process


def test_the_sandbox_budget_binds_only_above_the_threshold(seeded_store: Path) -> None:
    """A 4096² RGBA PNG (64 MB of pixels in a 200 KB file) past a 64 MiB decode budget: refused in the sandbox."""
    from app.imaging.errors import ImageTooComplex

    big = encoded(Image.new("RGBA", (4096, 4096), (1, 2, 3, 4)))

    async def work(pipeline):
        return await pipeline.decode(big, 2)

    tight = {"decode_memory_mb": 64}
    with pytest.raises(ImageTooComplex, match="memory"):
        run(_with_pipeline(make_settings(seeded_store, decode_sandbox_min_pixels=1024, **tight), work))
    decoded = run(_with_pipeline(make_settings(seeded_store, decode_sandbox_min_pixels=10**9, **tight), work))
    assert decoded.color.size == (4096, 4096)  # in-process: no budget but the structural checks
