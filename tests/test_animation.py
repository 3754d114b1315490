"""Animated GIF, APNG and WebP uploads come back animated, frame for frame what a still upload of that frame gives.

Real photographs (scikit-image's astronaut, panned), real Pillow containers,
the seeded models and the real engine behind the real app.
"""

from __future__ import annotations

import asyncio
import io
import math
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageSequence

from app.engine.observer import EngineObserver
from app.imaging.animation import decode_animation, may_be_animated
from app.main import create_app
from app.pipeline import OutputOptions
from app.pipeline.animated import AnimatedResult
from app.pipeline.build import build_pipeline
from tests.conftest import encoded, make_settings, natural, open_bytes

DURATIONS = [40, 50, 60, 70, 80, 90, 100, 110, 120, 130]


def panned(n: int = 10, size: tuple[int, int] = (64, 48), step: int = 5) -> list[Image.Image]:
    """``n`` frames of a camera panning across a photograph: every frame differs."""
    base = natural((size[0] + n * step, size[1] + 8))
    return [base.crop((i * step, 4, i * step + size[0], 4 + size[1])) for i in range(n)]


def animation(frames: list[Image.Image], fmt: str, durations: list[int] | None = None, **params: object) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=durations or DURATIONS[: len(frames)],
                   **params)
    return buf.getvalue()


def shown_frames(data: bytes, mode: str = "RGB") -> list[Image.Image]:
    """What a viewer shows, frame by frame (Pillow composites disposal and blending)."""
    return [frame.convert(mode) for frame in ImageSequence.Iterator(Image.open(io.BytesIO(data)))]


def still_result(client: TestClient, frame: Image.Image, scale: int = 3) -> Image.Image:
    r = client.post("/upscale", params={"scale": scale}, files={"file": ("f.png", encoded(frame), "image/png")})
    assert r.status_code == 200, r.text
    return open_bytes(r.content)


def post(client: TestClient, data: bytes, **params: object):
    return client.post("/upscale", params={"scale": 3, **params}, content=data,
                       headers={"content-type": "application/octet-stream"})


def psnr(a: Image.Image, b: Image.Image) -> float:
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_a_10_frame_gif_comes_back_a_10_frame_gif_at_3x_with_its_durations(client: TestClient) -> None:
    gif = animation(panned(), "GIF", loop=0)
    r = post(client, gif, format="same")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/gif"
    out = Image.open(io.BytesIO(r.content))
    assert (out.format, out.size, out.n_frames) == ("GIF", (192, 144), 10)
    assert out.info["loop"] == 0
    assert [f.info["duration"] for f in ImageSequence.Iterator(out)] == DURATIONS
    # each frame is the still-image answer for that frame, up to the GIF palette
    scores = [psnr(got, still_result(client, frame))
              for got, frame in zip(shown_frames(r.content), shown_frames(gif), strict=True)]
    assert min(scores) >= 30, scores


def test_apng_and_lossless_webp_frames_equal_the_still_answers_exactly(client: TestClient) -> None:
    frames = panned(4)
    for source in (animation(frames, "PNG", loop=2), animation(frames, "WEBP", loop=2, lossless=True)):
        expected = [still_result(client, f) for f in shown_frames(source)]
        for fmt, params in (("png", {}), ("webp", {"lossless": "true"})):
            r = post(client, source, format=fmt, **params)
            assert r.status_code == 200, r.text
            out = Image.open(io.BytesIO(r.content))
            assert (out.format, out.n_frames, out.size, out.info["loop"]) == (fmt.upper(), 4, (192, 144), 2)
            durations = []
            for f in ImageSequence.Iterator(out):
                f.load()  # WebP reports a frame's duration once it is loaded
                durations.append(round(f.info["duration"]))
            assert durations == DURATIONS[:4]
            for got, want in zip(shown_frames(r.content), expected, strict=True):
                assert np.array_equal(np.asarray(got), np.asarray(want)), (source[:4], fmt)


def test_transparency_and_disposal_survive(client: TestClient) -> None:
    """A transparent hole moves across the frames: each answer frame is clear exactly there (×3), opaque elsewhere."""
    frames = []
    for i, frame in enumerate(panned(5)):
        rgba = np.asarray(frame.convert("RGBA")).copy()
        rgba[10:30, 8 * i : 8 * i + 16, 3] = 0
        frames.append(Image.fromarray(rgba, "RGBA"))
    for source, fmt in ((animation(frames, "GIF", disposal=2), "same"), (animation(frames, "PNG"), "png"),
                        (animation(frames, "WEBP", lossless=True), "webp")):
        r = post(client, source, format=fmt)
        assert r.status_code == 200, r.text
        got = shown_frames(r.content, "RGBA")
        assert len(got) == 5
        for i, g in enumerate(got):
            alpha = np.asarray(g)[..., 3]
            assert (alpha[33:87, 24 * i + 3 : 24 * i + 45] < 128).all(), (fmt, i)  # the hole, inside its edges
            inside = np.zeros_like(alpha, dtype=bool)
            inside[24:96, max(0, 24 * i - 6) : 24 * i + 54] = True
            assert (alpha[~inside] > 128).all(), (fmt, i)  # the earlier holes are gone: disposal right


def test_loop_count_is_kept_and_a_gif_that_plays_once_still_does(client: TestClient) -> None:
    once = animation(panned(3), "GIF")  # no NETSCAPE loop extension: plays once
    r = post(client, once, format="same")
    assert "loop" not in Image.open(io.BytesIO(r.content)).info
    assert Image.open(io.BytesIO(post(client, once, format="png").content)).info["loop"] == 1
    thrice = animation(panned(3), "GIF", loop=3)
    assert Image.open(io.BytesIO(post(client, thrice, format="same").content)).info["loop"] == 3


def test_jpeg_or_lossless_gif_for_an_animation_is_a_422_naming_the_choices(client: TestClient) -> None:
    gif = animation(panned(3), "GIF")
    r = post(client, gif, format="jpeg")
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_parameters"
    assert all(word in r.json()["detail"] for word in ("same", "png", "webp", "APNG"))
    r = post(client, gif, format="same", lossless="true")
    assert (r.status_code, r.json()["code"]) == (422, "invalid_parameters")
    assert post(client, gif, format="webp", lossless="true").status_code == 200


def test_frames_times_output_pixels_are_bounded(seeded_store: Path) -> None:
    gif = animation(panned(10), "GIF")  # 10 × 192×144 = 276,480 output pixels at ×3
    with TestClient(create_app(make_settings(seeded_store, max_animation_pixels=200_000))) as c:
        r = post(c, gif, format="same")
        assert (r.status_code, r.json()["code"]) == (413, "image_too_large")
        assert "10 × 192×144 = 276,480 px" in r.json()["detail"] and "200,000" in r.json()["detail"]
        assert post(c, animation(panned(7), "GIF"), format="same").status_code == 200  # 193,536
        # stills are not animations: a bigger still image is unaffected by the animation bound
        r = c.post("/upscale", params={"scale": 3}, files={"file": ("s.png", encoded(natural((200, 150))), "image/png")})
        assert r.status_code == 200


def test_stills_take_the_still_path(client: TestClient) -> None:
    still_gif = encoded(natural((40, 30)), "GIF")
    r = post(client, still_gif, format="same")
    assert (r.status_code, r.headers["content-type"]) == (200, "image/png")  # GIF → PNG, as before
    assert Image.open(io.BytesIO(r.content)).size == (120, 90)
    png = encoded(natural((40, 30)))
    assert not may_be_animated(png) and may_be_animated(animation(panned(2), "PNG"))
    assert decode_animation(png, 3) is None and decode_animation(still_gif, 3) is None


def test_a_truncated_animation_is_a_400_and_the_service_goes_on(client: TestClient) -> None:
    gif = animation(panned(10), "GIF")
    r = post(client, gif[: len(gif) * 2 // 3], format="same")
    assert (r.status_code, r.json()["code"]) == (400, "invalid_image")
    assert "frame 7 of the gif animation is truncated" in r.json()["detail"].lower()
    assert post(client, animation(panned(3), "GIF"), format="same").status_code == 200


class _Batches(EngineObserver):
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def batch(self, scale: int, device: str, size: int, max_batch: int, seconds: float) -> None:
        self.sizes.append(size)


def test_frames_share_the_engines_batches(seeded_store: Path) -> None:
    """Frames of one tile each: with several in flight, model calls carry several frames."""
    batches = _Batches()
    gif = animation(panned(16, (24, 20), 3), "GIF", durations=[50] * 16)

    async def work() -> AnimatedResult:
        pipeline = build_pipeline(make_settings(seeded_store, max_delay_ms=20.0), engine_observer=batches)
        await pipeline.start()
        try:
            return await pipeline.upscale(gif, 3, OutputOptions("png"))
        finally:
            await pipeline.close(5)

    result = asyncio.run(work())
    assert isinstance(result, AnimatedResult) and result.frames == 16
    assert sum(batches.sizes) == 16 and max(batches.sizes) > 1, batches.sizes


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_decoded_frames_are_full_canvases(fmt: str) -> None:
    frames = panned(4)
    decoded = decode_animation(animation(frames, fmt, **({"lossless": True} if fmt == "WEBP" else {})), 2)
    assert decoded is not None and len(decoded.frames) == 4
    assert decoded.durations == [float(d) for d in DURATIONS[:4]]
    for got, want in zip(decoded.frames, frames, strict=True):
        assert (got.width, got.height) == want.size
        assert got.alpha is None and got.color.mode == "RGB"  # opaque frames lose the WebP's all-255 alpha
        if fmt != "GIF":  # lossless containers: the very pixels
            assert np.array_equal(np.asarray(got.color), np.asarray(want))


def test_an_apng_default_image_outside_the_animation_is_not_a_frame() -> None:
    frames = panned(4)
    data = animation(frames, "PNG", default_image=True)  # frames[0]: shown by viewers without APNG only
    decoded = decode_animation(data, 2)
    assert decoded is not None and len(decoded.frames) == 3
    for got, want in zip(decoded.frames, frames[1:], strict=True):
        assert np.array_equal(np.asarray(got.color), np.asarray(want))
