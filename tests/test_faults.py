"""Fault injection without mocks (issue 15): real runners that fail on a marked input, a worker that dies,
a device that is lost.

:class:`MarkedRunner` is a real :class:`ModelRunner` over a seeded ESPCN; its
model call raises ``RuntimeError`` when a window of the batch is the black
level everywhere (an all-black image: a tensor condition of the real input),
and raises :class:`WorkerKill` (a ``BaseException``: no ``except Exception``
catches it, as with a thread torn down from inside) when a window is all white,
which kills the batching worker. :class:`LosingRunner` stands for a GPU whose
CUDA context an all-grey window poisons: the call raises what PyTorch raises
for an illegal memory access, and from then on the device's check says it no
longer computes, for every runner of the process. Everything else is the real
engine, pipeline and app.
"""

from __future__ import annotations

import asyncio
import io
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.cli.benchlib.synth_video import make_clip
from app.core import planes
from app.core.espcn import ESPCN, pad_for
from app.engine.batcher import Engine
from app.engine.errors import DeviceLost, ModelError, WorkerRestarted
from app.engine.observer import EngineObserver
from app.engine.pixels import PixelEngine
from app.engine.runner import ModelRunner
from app.imaging.compose import luma_tensor
from app.imaging.decode import decode
from app.imaging.limits import ImageLimits
from app.main import create_app
from tests.conftest import encoded, make_settings, natural

BLACK, WHITE = 16 / 255, 235 / 255  # studio-swing luma of black and white (planes.luma)


class WorkerKill(BaseException):
    """What no ``except Exception`` stops: stands for the inference thread dying under the worker."""


class MarkedRunner(ModelRunner):
    """The real runner, failing on marked windows (all black: the call raises; all white: the worker dies)."""

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        flat = windows.flatten(1)
        if bool(((flat - BLACK).abs().amax(1) < 1e-6).any()):
            raise RuntimeError("marked input: an all-black window")
        if bool(((flat - WHITE).abs().amax(1) < 1e-6).any()):
            raise WorkerKill("marked input: an all-white window")
        return super().__call__(windows)


GREY = float(luma_tensor(decode(encoded(Image.new("L", (16, 16), 128)), 2, ImageLimits())).flatten()[0])
ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


class LosingRunner(MarkedRunner):
    """A runner on a device that an all-grey window breaks for good (``context`` is the process's, shared).

    A window all at ``late`` computes, but breaks the device on the way: CUDA reports such errors
    at a later call, here the next step on the device.
    """

    def __init__(self, *args: object, context: dict[str, bool], late: float = -1.0, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.context, self.late = context, late

    def __call__(self, windows: torch.Tensor, **kwargs: bool) -> torch.Tensor:
        flat = windows.flatten(1)
        if self.context["poisoned"] or bool(((flat - GREY).abs().amax(1) < 1e-6).any()):
            self.context["poisoned"] = True
            raise torch.AcceleratorError(ILLEGAL_ACCESS)  # what PyTorch raises for a sticky CUDA error
        answer = super().__call__(windows, **kwargs)
        if bool(((flat - self.late).abs().amax(1) < 1e-6).any()):
            self.context["poisoned"] = True
        return answer

    def healthy(self) -> bool:
        return not self.context["poisoned"]


class KillsOnce(ModelRunner):
    """The real runner whose ``at``-th call (counted over every scale's, in ``calls``) kills the batching worker."""

    def __init__(self, *args: object, calls: list[int], at: int, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.calls, self.at = calls, at

    def __call__(self, windows: torch.Tensor, **kwargs: bool) -> torch.Tensor:
        self.calls.append(len(windows))
        if len(self.calls) == self.at:
            raise WorkerKill(f"marked call: number {self.at}")
        return super().__call__(windows, **kwargs)


class Counted(EngineObserver):
    def __init__(self) -> None:
        self.lost = 0

    def device_lost(self) -> None:
        self.lost += 1


def seeded(scale: int) -> ESPCN:
    torch.manual_seed(100 + scale)
    return ESPCN(scale).eval()


def marked_engine(**kwargs: object) -> Engine:
    runners = {r: MarkedRunner(seeded(r), torch.device("cpu"), backend="eager", tile=16) for r in (2, 3)}
    # tiles for every image: the marked windows are tiles (whole-image calls are the Engine's default)
    return Engine(runners, **{"tile": 16, "max_batch": 8, "max_delay_s": 0.05, "whole_max_pixels": 0, **kwargs})


def plain(value: float, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.full((1, h, w), value)


def test_a_failing_model_call_fails_only_its_batch() -> None:
    async def run() -> None:
        eng = marked_engine()
        await eng.start()
        gen = torch.Generator().manual_seed(0)
        good = [torch.rand(1, 16, 16, generator=gen) * 0.5 + 0.2 for _ in range(3)]
        # one batch (×2, within max_delay): the black image and a good one; beside them a ×3 request
        results = await asyncio.gather(eng.upscale(plain(BLACK), 2), eng.upscale(good[0], 2),
                                       eng.upscale(good[1], 3), return_exceptions=True)
        assert isinstance(results[0], ModelError) and isinstance(results[1], ModelError)
        assert "all-black" in str(results[0]) and isinstance(results[0].__cause__, RuntimeError)
        assert isinstance(results[2], torch.Tensor) and results[2].shape == (1, 48, 48)  # another batch: served
        assert eng.ready and eng.restarts == 0
        # the next batch is unaffected, and exact
        again = await eng.upscale(good[0], 2)
        with torch.no_grad():
            want = seeded(2)(good[0][None])[0].clamp(0, 1)
        assert (again - want).abs().max() < 1e-5
        await eng.close()

    asyncio.run(run())


def test_a_dead_worker_is_restarted_and_nothing_queued_is_lost() -> None:
    async def run() -> None:
        eng = marked_engine(max_delay_s=0.0, restart_delay_s=0.3)
        await eng.start()
        gen = torch.Generator().manual_seed(1)
        killer = asyncio.ensure_future(eng.upscale(plain(WHITE), 2))
        await asyncio.sleep(0)  # admitted first: it runs alone
        queued = [asyncio.ensure_future(eng.upscale(torch.rand(1, 24, 20, generator=gen), 2 + i % 2))
                  for i in range(6)]
        with pytest.raises(WorkerRestarted):
            await killer
        assert not eng.ready and eng.restarts == 1  # /readyz answers 503 now
        started = time.monotonic()
        outs = await asyncio.gather(*queued)  # served once the worker is back
        assert time.monotonic() - started >= 0.2
        assert [o.shape for o in outs] == [(1, 24 * (2 + i % 2), 20 * (2 + i % 2)) for i in range(6)]
        assert eng.ready
        await eng.close()

    asyncio.run(run())


def test_a_lost_device_fails_what_it_holds_refuses_the_rest_and_says_why() -> None:
    """A sticky CUDA error: the batch, everything queued (other scales too) and every later request get
    DeviceLost, readiness goes, the owner of the process is woken; a device whose check still passes after a
    failed call (test_a_failing_model_call_fails_only_its_batch) keeps serving instead."""
    async def run() -> None:
        context = {"poisoned": False}
        observer = Counted()
        runners = {r: LosingRunner(seeded(r), torch.device("cpu"), backend="eager", tile=16, context=context)
                   for r in (2, 3)}
        eng = Engine(runners, tile=16, max_batch=8, max_delay_s=0.0, whole_max_pixels=0, observer=observer)
        await eng.start()
        gen = torch.Generator().manual_seed(2)
        assert (await eng.upscale(torch.rand(1, 20, 20, generator=gen), 2)).shape == (1, 40, 40)
        watcher = asyncio.ensure_future(eng.wait_lost())
        poison = asyncio.ensure_future(eng.upscale(plain(GREY), 2))
        await asyncio.sleep(0)  # admitted first: its batch runs first
        queued = [asyncio.ensure_future(eng.upscale(torch.rand(1, 40, 40, generator=gen), 2 + i % 2))
                  for i in range(4)]
        results = await asyncio.gather(poison, *queued, return_exceptions=True)
        assert all(isinstance(r, DeviceLost) for r in results), results
        assert eng.lost == f"AcceleratorError: {ILLEGAL_ACCESS}" and ILLEGAL_ACCESS in str(results[0])
        assert await asyncio.wait_for(watcher, 1) == eng.lost
        assert not eng.ready and eng.queue_depth == 0 and observer.lost == 1
        with pytest.raises(DeviceLost):
            eng.reserve(3, 16, 16)
        with pytest.raises(DeviceLost):
            await eng.upscale(torch.rand(1, 16, 16, generator=gen), 3)
        await eng.close(1)

    asyncio.run(run())


@pytest.mark.parametrize("kind", ["video", "image"])
def test_jobs_wait_out_a_restart_instead_of_failing(seeded_store: Path, tmp_path: Path, kind: str) -> None:
    """A job's frame refused with WorkerRestarted (503 to /upscale; a device process restarting says the same)
    is offered again once the engine is back: the job ends done, whole, and as it would have without the fault."""
    if kind == "video":
        data, media, at = make_clip(tmp_path / "c.mp4", 64, 36, 30, 1.0).read_bytes(), "video/mp4", 5
    else:
        data, media, at = encoded(natural((60, 44))), "image/png", 1
    with TestClient(create_app(make_settings(seeded_store, jobs_dir=tmp_path / "jobs"))) as c:
        engine = c.app.state.service.pipeline.engine
        engine.restart_delay_s = 0.3
        calls: list[int] = []
        for scale, loaded in c.app.state.service.pipeline.models.items():
            engine.runners[scale] = KillsOnce(loaded.model, torch.device("cpu"), backend="eager", tile=32,
                                              calls=calls, at=at)
        job = c.post("/jobs", params={"scale": 2}, content=data, headers={"content-type": media}).json()
        deadline = time.monotonic() + 60
        while (status := c.get(f"/jobs/{job['id']}").json())["state"] not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert status["state"] == "done", status
        assert engine.restarts == 1 and len(calls) > at  # the worker died once, and the job went on after it
        result = c.get(f"/jobs/{job['id']}/result").content
        if kind == "video":
            assert status["frames_done"] == 30
        else:
            assert result == _post(c, data).content


@pytest.mark.parametrize("breaks", [False, True], ids=["device-computes", "device-lost"])
def test_a_failed_pixel_step_asks_the_device_too(breaks: bool) -> None:
    """A step of the pixel engine that fails after the model (its compose, here into an output of the wrong
    size) is its request's error while the device computes, and DeviceLost once the device is broken."""
    colour = np.full((20, 24, 1), 64, np.uint8)
    late = float(planes.luma(torch.from_numpy(colour).permute(2, 0, 1))[0, 0, 0])

    async def run() -> BaseException:
        context = {"poisoned": False}
        runners = {2: LosingRunner(seeded(2), torch.device("cpu"), backend="eager", tile=16, context=context,
                                   late=late if breaks else -1.0)}
        eng = Engine(runners, tile=16, max_batch=8, max_delay_s=0.0, whole_max_pixels=0)
        await eng.start()
        pixels = PixelEngine(eng, torch.device("cpu"), ThreadPoolExecutor(1))
        try:
            await pixels.upscale_into(colour, None, 2, np.empty((40, 40, 1), np.uint8))  # 48 wide, not 40
        except Exception as exc:
            assert eng.ready is not breaks and (eng.lost is not None) is breaks
            return exc
        finally:
            await eng.close(1)
            pixels.executor.shutdown()
        raise AssertionError("the compose into the wrong size did not fail")

    raised = asyncio.run(run())
    assert isinstance(raised, DeviceLost) is breaks, raised
    assert "size" in str(raised.__cause__ if breaks else raised)  # the compose's own error, kept as the cause


def _metric(c: TestClient, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", c.get("/metrics").text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.fixture()
def marked_app(seeded_store: Path) -> TestClient:
    with TestClient(create_app(make_settings(seeded_store))) as c:
        engine = c.app.state.service.pipeline.engine
        for scale, loaded in c.app.state.service.pipeline.models.items():
            engine.runners[scale] = MarkedRunner(loaded.model, torch.device("cpu"), backend="eager", tile=32)
        engine.restart_delay_s = 0.5
        yield c


def _post(c: TestClient, data: bytes, scale: int = 2):
    return c.post(f"/upscale?scale={scale}", content=data, headers={"content-type": "image/png"})


def test_over_http_a_model_fault_is_a_500_with_a_code_and_a_dead_worker_503_then_ready(marked_app: TestClient) -> None:
    c = marked_app
    good = encoded(natural((40, 32)))
    black, white = encoded(Image.new("RGB", (40, 32), "black")), encoded(Image.new("L", (40, 32), 255))
    assert _post(c, good).status_code == 200

    r = _post(c, black)
    assert r.status_code == 500 and r.json()["code"] == "model_error" and "batch" in r.json()["detail"]
    assert _post(c, good).status_code == 200 and c.get("/readyz").status_code == 200

    restarts = _metric(c, "sr_worker_restarts_total")
    r = _post(c, white)
    assert r.status_code == 503 and r.json()["code"] == "worker_restarted" and r.headers["retry-after"] == "1"
    assert c.get("/readyz").status_code == 503
    deadline = time.monotonic() + 5
    while c.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.05)
    assert _metric(c, "sr_worker_restarts_total") == restarts + 1
    up = _post(c, good, 3)
    assert up.status_code == 200 and Image.open(io.BytesIO(up.content)).size == (120, 96)


def test_over_http_a_lost_device_is_a_503_and_fails_liveness(seeded_store: Path) -> None:
    """In-process models: the request that met the error and every one after get 503 ``device_lost`` with a
    Retry-After; /readyz and /healthz both say 503 (Kubernetes' liveness probe restarts the pod); it is counted."""
    with TestClient(create_app(make_settings(seeded_store))) as c:
        engine = c.app.state.service.pipeline.engine
        context = {"poisoned": False}
        for scale, loaded in c.app.state.service.pipeline.models.items():
            engine.runners[scale] = LosingRunner(loaded.model, torch.device("cpu"), backend="eager", tile=32,
                                                 context=context)
        good = encoded(natural((40, 32)))
        assert _post(c, good).status_code == 200 and c.get("/healthz").json() == {"status": "ok"}
        lost = _metric(c, "sr_device_lost_total")
        r = _post(c, encoded(Image.new("L", (40, 32), 128)))
        assert r.status_code == 503 and r.json()["code"] == "device_lost" and r.headers["retry-after"] == "5"
        assert ILLEGAL_ACCESS in r.json()["detail"]
        again = _post(c, good, 3)
        assert again.status_code == 503 and again.json()["code"] == "device_lost"
        assert c.get("/readyz").status_code == 503
        health = c.get("/healthz")
        assert health.status_code == 503 and health.json() == {"status": "device lost",
                                                               "detail": f"AcceleratorError: {ILLEGAL_ACCESS}"}
        assert _metric(c, "sr_device_lost_total") == lost + 1


def test_a_huge_debug_upload_costs_a_bounded_crop_with_exact_maps(seeded_store: Path) -> None:
    """Past SR_DEBUG_MAX_PIXELS only the centre is analysed, with context: its maps equal the whole image's."""
    rng = np.random.default_rng(0)
    image = np.asarray(natural((300, 200))).astype(np.int16) + rng.integers(-20, 20, (200, 300, 3))
    data = encoded(Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)))
    with TestClient(create_app(make_settings(seeded_store, debug_max_pixels=48 * 48))) as c:
        r = c.post("/debug/channels?scale=2&format=json", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        stats = r.json()
        assert stats["analysed"] == {"top": 76, "left": 126, "height": 48, "width": 48, "cropped": True,
                                     "max_pixels": 48 * 48}
        assert stats["source_size"] == [300, 200] and stats["lr_size"] == [48, 48]  # width, height
        assert r.headers["x-debug-analysed"] == "48x48+126+76 of 300x200"  # W×H+left+top, as X11 geometry
        model = c.app.state.service.pipeline.models[2].model
        png = c.post("/debug/channels?scale=2", content=data, headers={"content-type": "image/png"})
        assert png.status_code == 200 and png.headers["x-debug-analysed"] == "48x48+126+76 of 300x200"
    with torch.no_grad():
        lr = model.forward_lr(pad_for(model, luma_tensor(decode(data, 2, ImageLimits()))[None]))[0]
    window = lr[:, 76:124, 126:174].double()
    for n, entry in enumerate(stats["channels"]):
        assert entry["mean"] == pytest.approx(float(window[n].mean()), abs=1e-5)
        assert entry["min"] == pytest.approx(float(window[n].min()), abs=1e-5)
        assert entry["max"] == pytest.approx(float(window[n].max()), abs=1e-5)
