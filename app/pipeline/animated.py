"""Animated uploads: every frame through :meth:`Pipeline.upscale_image`, answered as an animation.

The frames are decoded as full canvases (:mod:`app.imaging.animation`), then
upscaled with several in flight, so their tiles ride the engine's batches
together and beside other requests — but never more than half the queue, so
one animation cannot starve everyone else; a frame refused by a full queue
waits and retries until the request's deadline (only the first frame's
refusal is answered, as for a still). The output format: GIF for
``format=same`` on a GIF, APNG for ``png`` (and ``same`` on an APNG), animated
WebP for ``webp``; JPEG has no animation and is refused (422).

Memory: the whole animation's decoded and upscaled frames are reserved before
the first frame is decoded, in one budget per pipeline that every animation in
flight shares (``max_animation_pixels`` × 12 bytes: 768 MiB by default); an
animation that can never fit is 413, one that does not fit now 503 +
Retry-After, as a full queue. The reservation is released once the answer is
encoded, or when the request fails or its client goes — which also stops the
decode and the encode at their next frame.

Timings: ``decode`` is the frames' decoding; ``model`` the wall time of the
frame phase (queue, model and each frame's compose, overlapped); ``compose``
the frames' compose times summed (they overlap ``model``); ``encode`` the
animated encode.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from app.engine.errors import DeadlineExceeded, QueueFull
from app.imaging.animation import (
    ANIMATION_OUTPUTS,
    DECODED_BYTES_PER_PIXEL,
    OUTPUT_BYTES_PER_PIXEL,
    Animation,
    animated_output,
    decode_animation,
    encode_animation,
)
from app.imaging.decode import DecodedImage
from app.imaging.encode import WEBP_MAX_SIDE
from app.imaging.errors import ImageTooLarge, InvalidImage
from app.imaging.limits import BudgetBusy, MemoryBudget
from app.pipeline.options import InvalidOptions, OutputOptions
from app.pipeline.result import UpscaleResult
from app.pipeline.timings import Timings

if TYPE_CHECKING:
    from app.pipeline.pipeline import Pipeline

MAX_FRAMES_IN_FLIGHT = 32
# The memory budget of a pipeline's animations: max_animation_pixels × this, so that one answer at that
# bound always fits (its output pixels at OUTPUT_BYTES_PER_PIXEL, its input at most DECODED_BYTES_PER_PIXEL each).
BUDGET_BYTES_PER_PIXEL = OUTPUT_BYTES_PER_PIXEL + DECODED_BYTES_PER_PIXEL
_budgets: weakref.WeakKeyDictionary[Pipeline, MemoryBudget] = weakref.WeakKeyDictionary()
_budgets_lock = threading.Lock()
CHOICES = "format=same (GIF for a GIF), png (APNG) or webp (animated WebP)"


@dataclass(frozen=True)
class AnimatedResult(UpscaleResult):
    """An :class:`UpscaleResult` whose body is an animation (``format``: gif, png = APNG, or webp)."""

    frames: int = 0

    @property
    def media_type(self) -> str:
        return ANIMATION_OUTPUTS[self.format]


def animated_format(options: OutputOptions, source_format: str) -> str:
    """The animation format ``options`` asks for an animated ``source_format``; InvalidOptions (422) if none."""
    fmt = animated_output(options.format, source_format)
    if fmt == "jpeg":
        raise InvalidOptions(f"JPEG cannot hold an animation; ask for {CHOICES}")
    if fmt == "gif" and options.lossless:
        raise InvalidOptions("GIF cannot be lossless (256 colours a frame); ask for format=png (APNG) "
                             "or webp with lossless=true")
    return fmt


async def upscale_animated(
    pipeline: Pipeline,
    data: bytes,
    scale: int,
    options: OutputOptions,
    *,
    deadline: float | None = None,
    timings: Timings | None = None,
) -> AnimatedResult:
    """An animated GIF/APNG/WebP upload → the ×``scale`` animation (the pipeline's path once the header says so)."""
    timings = timings or Timings()
    animated_format(options, _source_format(data))  # a JPEG asked for: 422 before any frame is decoded
    started = time.perf_counter()
    stop = threading.Event()
    decoding = asyncio.get_running_loop().run_in_executor(
        pipeline.codec_pool,
        lambda: decode_animation(data, scale, pipeline.limits, pipeline.max_animation_pixels,
                                 budget=animation_budget(pipeline), stop=stop))
    try:
        animation = await asyncio.shield(decoding)
    except BudgetBusy as e:
        raise QueueFull(f"animations in flight hold this process's memory for them: {e}",
                        pipeline.engine.retry_after_s) from None
    except asyncio.CancelledError:  # the client is gone: stop at the next frame, and free what it reserved
        stop.set()
        decoding.add_done_callback(_release_abandoned)
        raise
    try:
        if animation is None:
            raise InvalidImage("the animation's frames could not be read")
        timings.decode += time.perf_counter() - started
        pipeline.observer.stage("decode", timings.decode)
        return await upscale_animation(pipeline, animation, scale, options, deadline=deadline, timings=timings,
                                       stop=stop)
    finally:
        stop.set()
        if animation is not None and animation.reservation is not None:
            animation.reservation.release()


def animation_budget(pipeline: Pipeline) -> MemoryBudget:
    """The memory budget every animation of ``pipeline`` shares: ``max_animation_pixels`` × 12 bytes."""
    with _budgets_lock:
        budget = _budgets.get(pipeline)
        if budget is None:
            budget = _budgets[pipeline] = MemoryBudget(pipeline.max_animation_pixels * BUDGET_BYTES_PER_PIXEL)
        return budget


def _release_abandoned(done: asyncio.Future[Animation | None]) -> None:
    """The decode of a request whose client left finished anyway: give back what it reserved."""
    if done.cancelled() or done.exception() is not None:
        return
    animation = done.result()
    if animation is not None and animation.reservation is not None:
        animation.reservation.release()


def _source_format(data: bytes) -> str:
    """Pillow's name of an animated container, from its magic bytes."""
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    return "WEBP" if data[:4] == b"RIFF" else "PNG"


async def upscale_animation(
    pipeline: Pipeline,
    animation: Animation,
    scale: int,
    options: OutputOptions,
    *,
    deadline: float | None = None,
    timings: Timings | None = None,
    stop: threading.Event | None = None,
) -> AnimatedResult:
    """Decoded frames → the ×``scale`` animation encoded as ``options`` asks (``stop``: see :func:`encode_animation`)."""
    timings = timings or Timings()
    fmt = animated_format(options, animation.source_format)
    width, height = animation.size
    if fmt == "webp" and max(width, height) * scale > WEBP_MAX_SIDE:
        raise ImageTooLarge(f"WebP holds at most {WEBP_MAX_SIDE} px per side; ask for png")
    started = time.perf_counter()
    frames = await _upscale_frames(pipeline, animation.frames, scale, deadline, timings)
    timings.model += time.perf_counter() - started
    started = time.perf_counter()
    body = await pipeline.in_pool(
        lambda: encode_animation(frames, animation.durations, fmt, loop=animation.loop, quality=options.quality,
                                 lossless=options.lossless, icc_profile=animation.icc_profile,
                                 png_compress_level=pipeline.png_compress_level, stop=stop))
    timings.encode += time.perf_counter() - started
    pipeline.observer.stage("encode", time.perf_counter() - started)
    return AnimatedResult(body=body, format=fmt, model=pipeline.models[scale].manifest.name, scale=scale,
                          input_size=(width, height), output_size=(width * scale, height * scale),
                          timings=timings, frames=len(frames))


def frames_in_flight(pipeline: Pipeline, width: int, height: int) -> int:
    """Enough frames to fill two batches, at most half the queue and :data:`MAX_FRAMES_IN_FLIGHT`."""
    engine = pipeline.engine
    tiles = math.ceil(width / engine.tile) * math.ceil(height / engine.tile)
    fill = math.ceil(2 * engine.max_batch / tiles)
    room = max(1, engine.max_queue_tiles // (2 * tiles))
    return max(1, min(fill, room, MAX_FRAMES_IN_FLIGHT))


async def _upscale_frames(
    pipeline: Pipeline, frames: list[DecodedImage], scale: int, deadline: float | None, timings: Timings
) -> list[Image.Image]:
    gate = asyncio.Semaphore(frames_in_flight(pipeline, frames[0].width, frames[0].height))
    retry_s = max(0.01, pipeline.engine.retry_after_s / 20)

    async def one(index: int) -> Image.Image:
        async with gate:
            while True:
                frame_timings = Timings()
                try:
                    out = await pipeline.upscale_image(frames[index], scale, deadline=deadline, timings=frame_timings)
                except QueueFull:
                    if index == 0:
                        raise  # nothing admitted yet: answer 503 + Retry-After at once, as a still would
                    if deadline is not None and time.monotonic() + retry_s > deadline:
                        raise DeadlineExceeded("deadline exceeded while frames waited for room in the queue") \
                            from None
                    await asyncio.sleep(retry_s)
                    continue
                timings.compose += frame_timings.compose
                return out

    tasks = [asyncio.ensure_future(one(i)) for i in range(len(frames))]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
