"""The batching worker: tiles from any number of requests share one model call.

Shape (after Ray Serve's batcher): each request is a :class:`_Job` holding its
LR luma (edge-padded once, by the inference thread, never on the event loop),
its tile plan, an output tensor and an ``asyncio.Future``.
One worker task per engine waits for the first pending tile, then up to
``max_delay`` for more, takes at most ``max_batch`` tiles of one scale (oldest
request first), cuts their windows, runs the model once in the inference
thread, copies each tile's owned pixels into its request's output, and
resolves every request whose last tile is done — or fails all of the batch's
requests with the same exception.

Every tile window has the same shape, and an output pixel depends only on its
own window (see :mod:`app.core.espcn`), so a request's result does not depend
on what it was batched with.

Mid-sized images (more than one tile, at most ``whole_max_pixels``) skip the
tiling: they run as one whole-image model call, which saves the halos and
the overlap of the last tile row and column (a 640×360 frame costs 1.27× its
whole-image compute as 96-px tiles). Which path an image takes depends only
on its size, never on its neighbours in the queue, so results stay
independent of concurrency; the queue still counts such an image in tiles.

Back-pressure: admission is refused at once when the pending tiles would pass
``max_queue_tiles``; deadlines are re-checked when tiles are dequeued, and the
tiles of a cancelled request (client gone, deadline) are dropped unrun.

Faults: a model call that raises fails that batch's requests with
:class:`ModelError` (500 ``model_error``) and nothing else. Should the worker
itself die (any exception outside the model call, or a ``BaseException`` from
the inference thread), a supervisor fails only the requests of the batch it
held (:class:`WorkerRestarted`, 503), counts the restart
(``EngineObserver.worker_restarted``), keeps :attr:`Engine.ready` false for
``restart_delay_s`` (doubling up to 10 s while it keeps dying), then restarts
it with a fresh inference thread; the queued requests are served after that.

A failed model call is followed by a check of the device (:func:`app.engine.device.healthy`):
when the device no longer computes (a sticky CUDA error, after which every call of this
process would fail), :meth:`Engine.lose` fails the batch and everything queued with
:class:`DeviceLost` (503), refuses what comes after, and wakes :meth:`Engine.wait_lost`,
on which the owner of the process ends it: only a new CUDA context recovers, and a server
that stays up answers errors for hours (antirez/ds4#759, sgl-project/sglang#853).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from app.config import TILE_SIZE, WHOLE_IMAGE_MAX_PIXELS
from app.core.tiling import Tile, count_tiles, pad_image, plan_tiles, stitch_tile
from app.engine.device import transfer
from app.engine.errors import (
    DeadlineExceeded,
    DeviceLost,
    EngineClosed,
    ModelError,
    QueueFull,
    TooManyTiles,
    UnknownScale,
    WorkerRestarted,
)
from app.engine.observer import EngineObserver
from app.engine.runner import ModelRunner

log = logging.getLogger(__name__)
HEALTH_TIMEOUT_S = 10.0  # a device that has not answered its check by then is lost too (a hung GPU)


@dataclass(eq=False)
class _Job:
    scale: int
    luma: Tensor  # (c, H, W) float32, as admitted
    tiles: list[Tile]
    out: Tensor  # (c, r·H, r·W) for stitched tiles; a one-tile or whole-image job gets a view of the model's output
    future: asyncio.Future[Tensor]
    deadline: float | None
    admitted: float = field(default_factory=time.monotonic)
    next_tile: int = 0  # first tile not yet handed to a batch
    remaining: int = 0  # tiles not yet computed
    whole: bool = False  # one model call on the whole padded image instead of tiles
    padded: Tensor | None = None  # (c, H + 2R (+ fill), W + 2R (+ fill)); made by the inference thread

    def padded_for(self, radius: int, tile: int) -> Tensor:
        """The luma edge-replicated once, on first use: in the inference thread, never on the event loop."""
        if self.padded is None:
            self.padded = pad_image(self.luma, radius, tile)
        return self.padded

    @property
    def unscheduled(self) -> int:
        return len(self.tiles) - self.next_tile


class Reservation:
    """Queue room held for a request whose image is still being decoded (see :meth:`Engine.reserve`)."""

    def __init__(self, engine: Engine, tiles: int, shape: tuple[int, int, int]) -> None:
        self._engine, self.tiles = engine, tiles
        self.shape = shape  # (scale, height, width) it was taken for

    def covers(self, scale: int, height: int, width: int) -> bool:
        """Whether this room is held for that image (and still held)."""
        return self.tiles > 0 and self.shape == (scale, height, width)

    def release(self) -> None:
        """Give the room back (idempotent): on failure before admission, or when the tiles are admitted."""
        if self.tiles:
            self._engine._reserved -= self.tiles
            self.tiles = 0


@dataclass(frozen=True)
class _Slot:
    job: _Job
    tile: Tile


class Engine:
    """Admits luma images, batches their tiles across requests, returns the super-resolved luma."""

    def __init__(
        self,
        runners: dict[int, ModelRunner],
        *,
        tile: int = TILE_SIZE,
        max_batch: int = 32,
        max_delay_s: float = 0.005,
        max_queue_tiles: int = 4096,
        retry_after_s: float = 1.0,
        whole_max_pixels: int = WHOLE_IMAGE_MAX_PIXELS,
        observer: EngineObserver | None = None,
        restart_delay_s: float = 0.5,
    ) -> None:
        if tile < 1 or max_batch < 1 or max_queue_tiles < 1:
            raise ValueError("tile, max_batch and max_queue_tiles must be >= 1")
        self.runners = runners
        self.tile = tile
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue_tiles = max_queue_tiles
        self.retry_after_s = retry_after_s
        self.whole_max_pixels = whole_max_pixels
        self.observer = observer or EngineObserver()
        self._pending: dict[int, deque[_Job]] = {scale: deque() for scale in runners}
        self._depth = 0
        self._reserved = 0  # tiles of requests admitted from their header, still decoding
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._accepting = False
        self._busy = False  # a batch is in the inference thread
        self._worker: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self.restart_delay_s = restart_delay_s
        self.restarts = 0  # times the supervisor restarted a dead worker
        self._alive = False  # the worker loop runs (false while the supervisor waits to restart it)
        self._inflight: list[_Slot] = []  # the batch the worker holds now
        self.lost: str | None = None  # why the device failed for good (see :meth:`lose`); None while it computes
        self._lost = asyncio.Event()
        # device checks run beside the inference thread, never queued behind a long model call
        self._checks = ThreadPoolExecutor(1, thread_name_prefix="device-check")

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Warm every model up at the serving shape, then start the worker."""
        loop = asyncio.get_running_loop()
        for runner in self.runners.values():
            await loop.run_in_executor(self._executor, runner.warm_up, self.tile, self.max_batch)
        self._accepting = True
        self._worker = asyncio.create_task(self._supervise(), name="batching-worker")

    @property
    def ready(self) -> bool:
        return (self._accepting and self._alive and self._worker is not None and not self._worker.done()
                and self.lost is None)

    @property
    def queue_depth(self) -> int:
        """Tiles admitted and not yet handed to a batch."""
        return self._depth

    def backend(self, scale: int) -> str:
        """The inference path of ``scale``'s runner (onnxruntime, torchscript, eager)."""
        return self.runners[scale].backend

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Stop admitting, finish what was admitted (up to the timeout), then stop the worker."""
        self._accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), drain_timeout_s)
        except TimeoutError:
            log.warning("shutdown: %d tiles still pending after %.0f s; failing them", self._depth, drain_timeout_s)
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        for jobs in self._pending.values():
            for job in jobs:
                self._fail(job, EngineClosed("the service is shutting down"))
            jobs.clear()
        self._executor.shutdown(wait=True)
        self._checks.shutdown(wait=False)  # a check stuck on a hung GPU keeps its thread

    # -- admission -------------------------------------------------------------------------

    def reserve(self, scale: int, height: int, width: int) -> Reservation:
        """Admission from the image header: hold the queue room an ``height × width`` image needs, or refuse now.

        Lets a request be refused (:class:`QueueFull`, :class:`TooManyTiles`) within
        milliseconds, before its decode waits for a busy codec pool; pass the
        reservation to :meth:`upscale` once decoded (or release it on failure).
        """
        tiles = count_tiles(height, width, self.tile)  # EXIF rotation swaps the sides, not the count
        self._check_room(scale, tiles, self._depth + self._reserved)
        reservation = Reservation(self, tiles, (scale, height, width))
        self._reserved += tiles
        return reservation

    def _check_room(self, scale: int, tiles: int, pending: int) -> None:
        if self.lost is not None:
            raise self.lost_error()
        if not self._accepting:
            raise EngineClosed("the service is not accepting work")
        if scale not in self.runners:
            raise UnknownScale(f"no model for scale {scale}", tuple(sorted(self.runners)))
        if tiles > self.max_queue_tiles:
            raise TooManyTiles(f"the image needs {tiles} tiles; the queue holds {self.max_queue_tiles}")
        if pending + tiles > self.max_queue_tiles:
            self.observer.rejected("queue_full")
            raise QueueFull(
                f"queue full: {pending} tiles pending, {tiles} more would pass the bound of {self.max_queue_tiles}",
                self.retry_after_s,
            )

    async def upscale(
        self, luma: Tensor, scale: int, *, deadline: float | None = None, reservation: Reservation | None = None
    ) -> Tensor:
        """(c, H, W) float32 in [0, 1] → (c, r·H, r·W) on the same device; ``deadline`` is a ``time.monotonic()`` instant.

        Raises :class:`QueueFull` (retry later), :class:`TooManyTiles`,
        :class:`DeadlineExceeded`, :class:`EngineClosed` or :class:`UnknownScale`.
        Cancelling the awaiting task drops the request's pending tiles.
        """
        if reservation is not None:
            reservation.release()  # its room becomes the job's own (or, if admission fails now, free)
        job = self._admit(luma, scale, deadline)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns an answer that arrives in the step
            # its caller is cancelled, and the cancellation is lost (python/cpython#86296)
            async with asyncio.timeout(None if deadline is None else max(deadline - time.monotonic(), 0.0)):
                return await asyncio.shield(job.future)
        except TimeoutError:
            self._fail(job, DeadlineExceeded("deadline exceeded while waiting for the model"))
            self.observer.rejected("timeout")
            raise DeadlineExceeded("deadline exceeded while waiting for the model") from None
        except asyncio.CancelledError:
            if not job.future.done():
                job.future.cancel()
                self._forget(job)
                self.observer.rejected("client_gone")
            raise

    def _admit(self, luma: Tensor, scale: int, deadline: float | None) -> _Job:
        c, h, w = luma.shape
        tiles = plan_tiles(h, w, self.tile)
        self._check_room(scale, len(tiles), self._depth + self._reserved)
        whole = len(tiles) > 1 and h * w <= self.whole_max_pixels
        job = _Job(
            scale=scale,
            luma=luma.float(),
            tiles=tiles,
            # a one-tile or whole-image job gets a view of the model's output instead: no copy, no buffer
            out=luma.new_empty((c, h * scale, w * scale) if len(tiles) > 1 and not whole else (0,),
                               dtype=torch.float32),
            future=asyncio.get_running_loop().create_future(),
            deadline=deadline,
            remaining=len(tiles),
            whole=whole,
        )
        self._pending[scale].append(job)
        self._set_depth(self._depth + len(tiles))
        self._idle.clear()
        self._wakeup.set()
        return job

    # -- the worker ------------------------------------------------------------------------

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self.observer.queue_depth(depth)

    def _forget(self, job: _Job) -> None:
        """Drop a finished or abandoned job's unscheduled tiles from the queue."""
        jobs = self._pending[job.scale]
        if job in jobs:
            jobs.remove(job)
            self._set_depth(self._depth - job.unscheduled)
            job.next_tile = len(job.tiles)
        self._check_idle()

    def _fail(self, job: _Job, exc: Exception) -> None:
        if not job.future.done():
            job.future.set_exception(exc)
            job.future.exception()  # mark retrieved: the awaiting request may be gone
        self._forget(job)

    def _check_idle(self) -> None:
        if self._depth == 0 and not self._busy:
            self._idle.set()

    def _oldest_scale(self) -> int | None:
        heads = [(jobs[0].admitted, scale) for scale, jobs in self._pending.items() if jobs]
        return min(heads)[1] if heads else None

    def _take(self, scale: int) -> list[_Slot]:
        """Up to ``max_batch`` tiles of one scale, oldest request first; expired requests are failed."""
        now = time.monotonic()
        jobs = self._pending[scale]
        batch: list[_Slot] = []
        while jobs and len(batch) < self.max_batch:
            job = jobs[0]
            if job.future.done():
                self._forget(job)
                continue
            if job.deadline is not None and now > job.deadline:
                self._fail(job, DeadlineExceeded("deadline exceeded before the model ran"))
                self.observer.rejected("timeout")
                continue
            if job.whole and batch:
                break  # a whole-image call runs alone: next batch
            take = job.unscheduled if job.whole else min(job.unscheduled, self.max_batch - len(batch))
            batch.extend(_Slot(job, t) for t in job.tiles[job.next_tile : job.next_tile + take])
            job.next_tile += take
            self._set_depth(self._depth - take)
            if job.unscheduled == 0:
                jobs.popleft()
            if job.whole:
                break
        return batch

    async def _gather_window(self, scale: int) -> None:
        """Wait up to ``max_delay`` after the oldest tile's admission for a fuller batch."""
        jobs = self._pending[scale]
        if not jobs or self.max_delay_s <= 0 or jobs[0].whole:  # a whole-image call runs alone: no one to wait for
            return
        until = jobs[0].admitted + self.max_delay_s
        while sum(j.unscheduled for j in jobs) < self.max_batch:
            left = until - time.monotonic()
            if left <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(left):  # not wait_for: see upscale (a lost cancel would hang close())
                    await self._wakeup.wait()
            except TimeoutError:
                return

    async def _supervise(self) -> None:
        """Run the worker; if it dies, fail only its batch's requests, wait, and start it again."""
        delay = self.restart_delay_s
        while True:
            self._alive = True
            began = time.monotonic()
            try:
                await self._run()
            except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # whatever killed it, the service must go on
                log.exception("batching worker died (holding %d tiles); restarting in %.1f s", len(self._inflight), delay)
                error = WorkerRestarted(f"the batching worker failed ({type(exc).__name__}); retry")
            self._alive = False
            for job in {slot.job for slot in self._inflight}:
                self._fail(job, error)
            self._inflight = []
            self._busy = False
            self.restarts += 1
            self.observer.worker_restarted()
            old, self._executor = self._executor, ThreadPoolExecutor(1, thread_name_prefix="inference")
            old.shutdown(wait=False)  # a hung call keeps its thread; new batches get a fresh one
            await asyncio.sleep(delay)
            delay = min(2 * delay, 10.0) if time.monotonic() - began < 60 else self.restart_delay_s

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            scale = self._oldest_scale()
            if scale is None:
                self._wakeup.clear()
                self._check_idle()
                await self._wakeup.wait()
                continue
            await self._gather_window(scale)
            batch = self._take(scale)
            if not batch:
                continue
            self._busy = True
            started = time.monotonic()
            for slot in batch:
                self.observer.queue_wait(started - slot.job.admitted)
            runner = self.runners[scale]
            self._inflight = batch
            try:
                await loop.run_in_executor(self._executor, self._compute, runner, batch)
            except Exception as exc:  # one bad batch fails its requests, never the worker
                log.exception("model call failed for %d tiles", len(batch))
                if await self.device_failed(exc):
                    continue  # lose() failed this batch with the rest
                error = ModelError(f"the model call for this request's batch failed ({type(exc).__name__}: {exc})")
                error.__cause__ = exc
                for job in {slot.job for slot in batch}:
                    self._fail(job, error)
                self._inflight = []
            else:
                self.observer.batch(scale, runner.device.type, len(batch), self.max_batch,
                                    time.monotonic() - started)
                for slot in batch:
                    job = slot.job
                    job.remaining -= 1
                    if job.remaining == 0 and not job.future.done():
                        job.future.set_result(job.out)
                self._inflight = []
            finally:
                self._busy = False
                self._check_idle()

    # -- a device that fails for good ----------------------------------------------------------

    async def device_failed(self, exc: BaseException) -> bool:
        """After ``exc`` from work on the device: whether the device is lost (then :meth:`lose` has run).

        Asks the device itself, in a thread of its own (a synchronize waits for the kernels queued
        before it, milliseconds); no answer within :data:`HEALTH_TIMEOUT_S` counts as lost, as a
        hung GPU is no better. The CPU answers at once.
        """
        if self.lost is not None:
            return True
        runner = next(iter(self.runners.values()))  # one device holds them all
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):  # not wait_for: see upscale
                ok = await asyncio.get_running_loop().run_in_executor(self._checks, runner.healthy)
        except TimeoutError:
            ok = False
        if not ok:
            self.lose(exc)
        return not ok

    def lose(self, exc: BaseException) -> None:
        """The device no longer computes: fail the batch in hand and everything queued with
        :class:`DeviceLost`, refuse what comes, count it, and wake :meth:`wait_lost`."""
        if self.lost is not None:
            return
        self.lost = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        log.critical("the device failed for good (%s): every later call would fail; this process must restart",
                     self.lost)
        self.observer.device_lost()
        error = self.lost_error()
        for job in {slot.job for slot in self._inflight} | {j for jobs in self._pending.values() for j in jobs}:
            self._fail(job, error)
        self._inflight = []
        self._lost.set()

    async def wait_lost(self) -> str:
        """Return once the device is lost (see :meth:`lose`), with why."""
        await self._lost.wait()
        assert self.lost is not None
        return self.lost

    def lost_error(self) -> DeviceLost:
        return DeviceLost(f"the device failed ({self.lost}); the service is restarting it: retry")

    def _compute(self, runner: ModelRunner, batch: list[_Slot]) -> None:
        """Inference thread: cut windows, run the model once, stitch each tile into its request."""
        job = batch[0].job
        if job.whole:
            out = runner(job.padded_for(runner.radius, self.tile)[None], borrow=True)[0]
            _, h, w = job.luma.shape
            job.out = out[:, : h * runner.scale, : w * runner.scale]  # the model's own output: no copy
            return
        size = self.tile + 2 * runner.radius
        windows = [
            s.job.padded_for(runner.radius, self.tile)[
                :, s.tile.rows.start : s.tile.rows.start + size, s.tile.cols.start : s.tile.cols.start + size
            ]
            for s in batch
        ]
        if len({w.device for w in windows}) > 1:  # on a GPU: small uploads' luma (host) beside decoded-there luma
            windows = [transfer(w, runner.device) for w in windows]
        outputs = runner(torch.stack(windows))
        for slot, tile_out in zip(batch, outputs, strict=True):
            job = slot.job
            if job.future.done():
                continue
            if len(job.tiles) == 1:  # the tile is the image (cut to its size): a view where the luma was, no copy
                _, h, w = job.luma.shape
                job.out = transfer(tile_out[:, : h * runner.scale, : w * runner.scale], job.luma.device)
            else:
                stitch_tile(job.out, tile_out, slot.tile, runner.scale)  # copies across devices where they differ
