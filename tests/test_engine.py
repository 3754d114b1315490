"""The batching engine on real models: exactness across batches, back-pressure, cancellation, draining."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
import torch

from app.core.espcn import ESPCN
from app.core.tiling import plan_tiles
from app.engine.batcher import Engine
from app.engine.device import max_batch_for
from app.engine.errors import DeadlineExceeded, EngineClosed, QueueFull, TooManyTiles, UnknownScale
from app.engine.host import codec_threads_for
from app.engine.observer import EngineObserver
from app.engine.onnx_backend import OrtModel
from app.engine.runner import ModelRunner


class Recorder(EngineObserver):
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.rejections: list[str] = []
        self.depths: list[int] = []

    def batch(self, scale: int, device: str, size: int, max_batch: int, seconds: float) -> None:
        self.batches.append(size)

    def rejected(self, reason: str) -> None:
        self.rejections.append(reason)

    def queue_depth(self, tiles: int) -> None:
        self.depths.append(tiles)


def models() -> dict[int, ESPCN]:
    out = {}
    for r in (2, 3):
        torch.manual_seed(r)
        out[r] = ESPCN(r).eval()
    return out


def engine(observer: EngineObserver | None = None, **kwargs: object) -> Engine:
    runners = {r: ModelRunner(m, torch.device("cpu")) for r, m in models().items()}
    # whole_max_pixels=0: tiles for every image, the batching these tests are about (the service's default,
    # whole-image calls for mid-sized images, is the Engine's default too and has tests of its own)
    options: dict = {"tile": 16, "max_batch": 8, "max_delay_s": 0.005, "whole_max_pixels": 0, **kwargs}
    return Engine(runners, observer=observer, **options)


def whole(model: ESPCN, luma: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(luma[None])[0].clamp(0, 1)


def test_batched_equals_alone_equals_whole_image() -> None:
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(1, h, w, generator=gen) for h, w in [(5, 7), (32, 32), (80, 23), (66, 140), (1, 1), (17, 99)]]
    scales = [2, 3, 2, 3, 3, 2]
    reference = models()

    async def run() -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
        rec = Recorder()
        eng = engine(rec, tile=32, max_delay_s=0.05)  # 40-px windows (oneDNN may switch algorithms below)
        await eng.start()
        together = await asyncio.gather(*[eng.upscale(x, r) for x, r in zip(images, scales, strict=True)])
        alone = [await eng.upscale(x, r) for x, r in zip(images, scales, strict=True)]
        await eng.close()
        return list(together), alone, rec.batches

    together, alone, batches = asyncio.run(run())
    assert max(batches) > 1  # requests really shared model calls
    for x, r, a, b in zip(images, scales, together, alone, strict=True):
        assert torch.equal(a, b)  # bit-exact: a tile's result does not depend on its batch-mates
        assert (a - whole(reference[r], x)).abs().max() < 1e-5


def test_queue_bound_and_too_many_tiles() -> None:
    async def run() -> None:
        rec = Recorder()
        eng = engine(rec, max_queue_tiles=6, max_batch=64, max_delay_s=0.5)
        await eng.start()
        first = asyncio.ensure_future(eng.upscale(torch.rand(1, 32, 32), 2))  # 4 tiles
        await asyncio.sleep(0)  # one step of the loop: admitted, and no timer (the batch window) can have run
        assert eng.queue_depth == 4
        with pytest.raises(QueueFull) as info:
            await eng.upscale(torch.rand(1, 32, 32), 2)
        assert info.value.retry_after_s == 1.0
        with pytest.raises(TooManyTiles):
            await eng.upscale(torch.rand(1, 64, 64), 2)  # 16 tiles > 6, ever
        with pytest.raises(UnknownScale):
            await eng.upscale(torch.rand(1, 8, 8), 4)
        assert (await first).shape == (1, 64, 64)
        assert eng.queue_depth == 0
        await eng.close()
        assert rec.rejections == ["queue_full"]  # too large is an input error, counted by the HTTP layer

    asyncio.run(run())


def test_cancelled_request_drops_its_tiles() -> None:
    async def run() -> None:
        rec = Recorder()
        eng = engine(rec, max_batch=64, max_delay_s=0.3)
        await eng.start()
        doomed = asyncio.ensure_future(eng.upscale(torch.rand(1, 48, 48), 2))  # 9 tiles
        await asyncio.sleep(0)  # one step of the loop: admitted, and no timer (the batch window) can have run
        assert eng.queue_depth == 9
        doomed.cancel()
        await asyncio.sleep(0)
        assert eng.queue_depth == 0
        survivor = await eng.upscale(torch.rand(1, 16, 16), 2)  # 1 tile
        await eng.close()
        assert survivor.shape == (1, 32, 32)
        assert rec.batches == [1]  # the cancelled tiles never ran
        assert rec.rejections == ["client_gone"]

    asyncio.run(run())


@pytest.mark.parametrize("deadline", [None, 60.0], ids=["no-deadline", "deadline"])
def test_a_cancel_that_meets_the_answer_is_never_lost(deadline: float | None) -> None:
    """The caller is cancelled in the very step its answer arrives: upscale must raise CancelledError all the same.

    asyncio.wait_for of Python 3.11 returned the answer instead when the two met (it swallowed the
    cancellation, python/cpython#86296); a video job cancelled at that moment kept encoding and then
    waited for ever on a queue its cancelled producer would never fill. The hook is the job's future
    (the engine's own), on which a callback cancels the caller as soon as the answer is set.
    """
    async def run() -> tuple[bool, bool]:
        eng = engine(max_delay_s=0.0)
        await eng.start()
        call = asyncio.ensure_future(eng.upscale(torch.rand(1, 16, 16), 2,
                                                 deadline=None if deadline is None else time.monotonic() + deadline))
        await asyncio.sleep(0)  # admitted
        job = eng._pending[2][0]
        job.future.add_done_callback(lambda _: call.cancel())  # after the engine's own callbacks: same step
        try:
            await call
            cancelled = False
        except asyncio.CancelledError:
            cancelled = True
        await eng.close()
        return cancelled, job.future.done() and not job.future.cancelled()

    cancelled, answered = asyncio.run(run())
    assert answered, "the answer was computed (the race this test is about)"
    assert cancelled, "the cancellation was swallowed: upscale returned the answer to a cancelled caller"


def test_deadline_is_enforced_while_queued() -> None:
    async def run() -> None:
        rec = Recorder()
        eng = engine(rec, max_batch=64, max_delay_s=60.0)
        await eng.start()
        # answered at the deadline, while its tiles wait for the minute-long batch window ("before the model
        # ran" would be the window's end); the outer 30 s only stops a broken engine from hanging the test
        with pytest.raises(DeadlineExceeded, match="while waiting for the model"):
            await asyncio.wait_for(eng.upscale(torch.rand(1, 20, 20), 3, deadline=time.monotonic() + 0.05), 30)
        assert eng.queue_depth == 0
        await eng.close()
        assert rec.rejections == ["timeout"]

    asyncio.run(run())


def test_close_drains_admitted_work_then_refuses() -> None:
    async def run() -> None:
        eng = engine(max_batch=4, max_delay_s=0.0)
        await eng.start()
        pending = [asyncio.ensure_future(eng.upscale(torch.rand(1, 40, 40), 3)) for _ in range(5)]
        await asyncio.sleep(0)
        await eng.close(drain_timeout_s=30)
        results = await asyncio.gather(*pending)
        assert all(r.shape == (1, 120, 120) for r in results)
        assert not eng.ready
        with pytest.raises(EngineClosed):
            await eng.upscale(torch.rand(1, 8, 8), 3)

    asyncio.run(run())


def test_a_failing_model_call_fails_its_requests_not_the_worker() -> None:
    async def run() -> None:
        eng = engine(max_batch=8, max_delay_s=0.0)
        await eng.start()
        with pytest.raises(RuntimeError):
            await eng.upscale(torch.rand(2, 16, 16), 2)  # two channels into a one-channel model
        assert eng.ready
        assert (await eng.upscale(torch.rand(1, 16, 16), 2)).shape == (1, 32, 32)
        await eng.close()

    asyncio.run(run())


@pytest.mark.parametrize("backend", ["onnxruntime", "torchscript", "eager"])
def test_runner_backends_match_the_eager_model_and_ignore_batch_mates(backend: str) -> None:
    torch.manual_seed(7)
    model = ESPCN(4).eval()
    runner = ModelRunner(model, torch.device("cpu"), backend=backend, tile=32)
    assert runner.backend == backend
    windows = torch.rand(6, 1, 40, 40)
    together = runner(windows)
    alone = torch.cat([runner(w[None]) for w in windows])
    assert torch.equal(together, alone)
    with torch.no_grad():
        assert (together - model.forward_valid(windows).clamp(0, 1)).abs().max() <= 1e-4


def test_mid_sized_images_run_whole_and_equal_the_tiled_result() -> None:
    gen = torch.Generator().manual_seed(3)
    images = [torch.rand(1, h, w, generator=gen) for h, w in [(70, 90), (20, 20), (33, 100), (90, 70)]]
    reference = models()

    async def run(whole_max: int) -> tuple[list[torch.Tensor], list[int]]:
        rec = Recorder()
        eng = engine(rec, tile=32, max_batch=8, whole_max_pixels=whole_max)
        await eng.start()
        together = await asyncio.gather(*[eng.upscale(x, 2) for x in images])
        alone = [await eng.upscale(x, 2) for x in images]
        await eng.close()
        assert all(torch.equal(a, b) for a, b in zip(together, alone, strict=True))
        return list(together), rec.batches

    as_whole, whole_batches = asyncio.run(run(10_000))
    as_tiles, _ = asyncio.run(run(0))
    for x, a, b in zip(images, as_whole, as_tiles, strict=True):
        assert a.shape == b.shape == (1, x.shape[1] * 2, x.shape[2] * 2)
        assert (a - b).abs().max() < 1e-5
        assert (a - whole(reference[2], x)).abs().max() < 1e-5
    # the 70×90 image is one model call, reported as the 9 tiles it stands for
    assert len(plan_tiles(70, 90, 32)) == 9 and 9 in whole_batches


def test_max_batch_auto_depends_on_the_device() -> None:
    assert max_batch_for(torch.device("cpu"), backend="torchscript") == 8
    assert max_batch_for(torch.device("cpu"), backend="onnxruntime") == 8
    assert max_batch_for(torch.device("cuda"), backend="eager") == 64  # only the device type is read: no GPU needed
    assert max_batch_for(torch.device("cpu"), 3, "onnxruntime") == 3


def test_padding_waits_for_the_inference_thread() -> None:
    """Admission only queues the luma; the edge padding (PyTorch work) happens off the event loop."""

    async def main() -> None:
        eng = engine(max_batch=64, max_delay_s=0.5)
        await eng.start()
        try:
            task = asyncio.ensure_future(eng.upscale(torch.rand(1, 20, 20), 2))
            await asyncio.sleep(0)
            (job,) = eng._pending[2]
            assert job.padded is None
            await task
            assert job.padded is not None
        finally:
            await eng.close()

    asyncio.run(main())


@pytest.mark.parametrize("activation", ["tanh", "relu", "prelu"])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_onnx_graph_equals_the_eager_model_on_any_shape(activation: str, scale: int) -> None:
    """The hand-written ONNX graph (Conv, activation, DepthToSpace CRD) is forward_valid, whole images included."""
    torch.manual_seed(scale)
    model = ESPCN(scale, activation=activation).eval()
    if activation == "prelu":  # away from PyTorch's initial 0.25, so a wrong slope would show
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.PReLU):
                    module.weight.fill_(-0.3)
    ort_model = OrtModel(model, threads=1)
    for shape in [(1, 1, 9, 9), (3, 1, 40, 40), (2, 1, 23, 57)]:
        x = torch.rand(shape)
        with torch.no_grad():
            assert (ort_model(x) - model.forward_valid(x)).abs().max() <= 1e-5


def test_a_whole_image_call_does_not_wait_for_batch_mates() -> None:
    """It runs alone anyway, so the batching window (here a minute) must not delay it."""

    async def main() -> None:
        eng = engine(max_batch=64, max_delay_s=60.0, whole_max_pixels=100_000)
        await eng.start()
        try:  # within 30 s: a call that waited for the window would take the whole minute
            out = await asyncio.wait_for(eng.upscale(torch.rand(1, 40, 40), 2), 30)  # 9 tiles of 16: one call
            assert out.shape == (1, 80, 80)
        finally:
            await eng.close()

    asyncio.run(main())


def test_codec_threads_follow_the_usable_cores_unless_set() -> None:
    assert codec_threads_for(3) == 3
    assert codec_threads_for(0) == max(2, len(os.sched_getaffinity(0)))
