"""One object owns a request from bytes to bytes: decode with limits → luma → engine → compose → encode.

The CPU work runs in the codec pool, never on the event loop; the model runs
in the engine, batched with every other request's tiles. Where the colour
work runs depends on the device: on CUDA the decoded frame goes to the GPU
once as 8-bit planes and luma, bicubic chroma, alpha and the luma swap run
there beside the model (:mod:`app.core.planes`), coming back as 8-bit planes
for the encoder; on the CPU the banded Pillow/NumPy compose
(:mod:`app.imaging.compose`) is faster and gives the same bytes. A JPEG answered
as JPEG, where the device has a JPEG codec (``SR_DEVICE_JPEG``), goes over as
its bytes and comes back as JPEG bytes: decode and encode run beside the model
(:meth:`Pipeline._on_device`). Such a JPEG has one baseline scan, so its decode
is linear in the pixels the header check has already bounded, and it skips the
decode sandbox; anything else takes the Pillow path.

Admission comes from the header: the structural checks and the header's size
(:func:`app.imaging.decode.peek`, no pixel decoded) refuse what is too large
or too complex, and the engine reserves the request's queue room, all within
milliseconds and before the decode waits for a busy codec pool. For a JPEG
or PNG the size is known from the first bytes, so :meth:`Pipeline.admit` can
hold (or refuse) the room while the client is still sending. Images over
``sandbox_min_pixels`` then decode in a killable worker process within the
decode budget (:mod:`app.imaging.sandbox`); smaller ones in the codec pool,
where the structural checks bound the work.

Cancelling :meth:`Pipeline.upscale` (the client left) stops a sandboxed decode
and drops the request's pending tiles; the deadline covers the decode and is
checked again inside the engine. Every failure is an exception of a lower layer (``ImageError``,
``EngineError``) or :class:`~app.pipeline.options.InvalidOptions`; mapping them
to statuses is the caller's business.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from app.engine import jpeg
from app.engine.batcher import Engine, Reservation
from app.engine.device import describe
from app.engine.errors import DeadlineExceeded, UnknownScale
from app.engine.pixels import PixelEngine
from app.engine.remote import RemoteEngine
from app.imaging import icc
from app.imaging.animation import ANIMATED_FORMATS, DEFAULT_MAX_ANIMATION_PIXELS
from app.imaging.compose import compose, luma_tensor
from app.imaging.compose import warm_up as warm_up_compose
from app.imaging.decode import DecodedImage, Header, decode, load_codecs, peek, peek_prefix
from app.imaging.encode import DEFAULT_QUALITY, WEBP_MAX_SIDE, encode
from app.imaging.errors import ImageTooComplex, ImageTooLarge
from app.imaging.limits import DEFAULT_LIMITS, ImageLimits
from app.imaging.sandbox import DEFAULT_BUDGET, DecodeBudget, DecodeSandbox
from app.pipeline.animated import upscale_animated
from app.pipeline.observer import PipelineObserver
from app.pipeline.options import OutputOptions
from app.pipeline.result import UpscaleResult
from app.pipeline.timings import Timings
from app.store.registry import LoadedModel

T = TypeVar("T")
log = logging.getLogger(__name__)
INLINE_PEEK_BYTES = 1 << 20  # headers of smaller uploads are checked on the event loop (≈ 0.3 ms at most)


@dataclass(frozen=True)
class _Prepared:
    image: DecodedImage
    luma: Tensor | None = None  # (1, H, W) float32: the model's input, for the CPU compose
    color: np.ndarray | None = None  # (H, W, 1 or 3) uint8, for the pixel engine (app.engine.pixels)
    alpha: np.ndarray | None = None  # (H, W) uint8


def image_planes(image: DecodedImage) -> tuple[np.ndarray, np.ndarray | None]:
    """A decoded image as the pixel engine's input: ``(H, W, C)`` colour and ``(H, W)`` alpha, uint8, writable."""
    color = np.array(image.color)
    return (color[..., None] if color.ndim == 2 else color), (np.array(image.alpha) if image.alpha is not None else None)


class Pipeline:
    """The request path below HTTP; build it with :func:`app.pipeline.build.build_pipeline`."""

    def __init__(
        self,
        models: Mapping[int, LoadedModel],
        engine: Engine,
        *,
        codec_pool: Executor,
        band_pool: Executor | None = None,
        limits: ImageLimits = DEFAULT_LIMITS,
        device: torch.device | None = None,
        pixels: PixelEngine | RemoteEngine | None = None,
        device_jpeg: PixelEngine | RemoteEngine | None = None,
        pixels_min_pixels: int = 0,
        png_compress_level: int = 1,
        request_timeout_s: float | None = None,
        observer: PipelineObserver | None = None,
        sandbox: DecodeSandbox | None = None,
        sandbox_min_pixels: int = 1024 * 1024,
        decode_budget: DecodeBudget = DEFAULT_BUDGET,
        max_animation_pixels: int = DEFAULT_MAX_ANIMATION_PIXELS,
    ) -> None:
        self.models = dict(models)
        self.engine = engine
        self.codec_pool = codec_pool
        self.band_pool = band_pool
        self.limits = limits
        self.device = device or torch.device("cpu")
        self.pixels = pixels  # the colour work beside the model (a GPU, the device process); None: the CPU compose
        self.pixels_min_pixels = pixels_min_pixels  # smaller images compose on this CPU: see _beside_model
        self.device_jpeg = device_jpeg  # JPEG → JPEG decoded and encoded on the models' device: see _on_device
        self.png_compress_level = png_compress_level
        self.request_timeout_s = request_timeout_s
        self.observer = observer or PipelineObserver()
        self.sandbox = sandbox
        self.sandbox_min_pixels = sandbox_min_pixels
        self.decode_budget = decode_budget
        self.max_animation_pixels = max_animation_pixels  # frames × output pixels of one animated answer
        self._admission = ThreadPoolExecutor(1, thread_name_prefix="admission")  # header checks of big uploads

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._admission, load_codecs)
        if self.pixels is None or self.pixels_min_pixels > 0:
            await loop.run_in_executor(self._admission, warm_up_compose)
        if self.sandbox is not None:  # its warm worker imports Pillow: off the event loop
            await loop.run_in_executor(self._admission, self.sandbox.start)
        await self.engine.start()

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Finish admitted work (up to the timeout), then stop the engine, the pools and the decode workers."""
        await self.engine.close(drain_timeout_s)
        self.codec_pool.shutdown(wait=True)
        if self.band_pool is not None:
            self.band_pool.shutdown(wait=True)
        self._admission.shutdown(wait=True)
        if self.sandbox is not None:
            self.sandbox.close()

    @property
    def ready(self) -> bool:
        return bool(self.models) and self.engine.ready

    @property
    def lost(self) -> str | None:
        """Why this process's device failed for good, if it did (then only a restart recovers; see ``/healthz``)."""
        return self.engine.lost

    @property
    def device_name(self) -> str:
        """Where the models run, in words: this process's device, or the device process's."""
        if isinstance(self.engine, RemoteEngine):
            return self.engine.device_name
        return describe(self.device)

    def backend(self, scale: int) -> str:
        """The inference path serving ``scale`` (onnxruntime, torchscript, eager)."""
        return self.engine.backend(scale)

    # -- what is served ---------------------------------------------------------------------

    @property
    def scales(self) -> tuple[int, ...]:
        """The scales of the loaded models: the one source of what a request may ask for."""
        return tuple(sorted(self.models))

    def check_scale(self, scale: int) -> None:
        """Refuse a scale no loaded model serves, before anything is read or decoded."""
        if scale not in self.models:
            served = ", ".join(str(s) for s in self.scales) or "none"
            raise UnknownScale(f"no model serves x{scale}; scales served: {served}", self.scales)

    # -- the request path -------------------------------------------------------------------

    async def in_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work (a codec, a figure) in the codec pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.codec_pool, fn, *args)

    async def decode(self, data: bytes, scale: int, *, deadline: float | None = None) -> DecodedImage:
        """Decode an upload for ×``scale`` within the limits and the decode budget (for views that need the image)."""
        self.check_scale(scale)
        header = await self.peek(data, scale)
        if self._sandboxed(header):
            return await self._sandbox_decode(data, scale, deadline)
        return await self.in_pool(decode, data, scale, self.limits)

    async def peek(self, data: bytes, scale: int) -> Header:
        """The structural checks and the header's size against the limits, never behind the codec pool."""
        if len(data) <= INLINE_PEEK_BYTES:
            return peek(data, scale, self.limits)
        return await asyncio.get_running_loop().run_in_executor(self._admission, peek, data, scale, self.limits)

    def admit(self, prefix: bytes, scale: int) -> Reservation | None:
        """Admission from the first bytes of an upload still arriving: its queue room, or a refusal now.

        ``None`` when those bytes do not tell the size (see
        :func:`~app.imaging.decode.peek_prefix`): admission then waits for the
        whole body. Pass the reservation to :meth:`upscale`, and release it if
        the body never comes. Raises ``QueueFull``/``TooManyTiles``/``ImageTooLarge``.
        """
        self.check_scale(scale)
        header = peek_prefix(prefix, scale, self.limits)
        if header is None:
            return None
        return self.engine.reserve(scale, header.height, header.width)

    async def upscale(
        self, data: bytes, scale: int, options: OutputOptions | None = None, *, deadline: float | None = None,
        reservation: Reservation | None = None,
    ) -> UpscaleResult:
        """Encoded image bytes → the ×``scale`` image encoded as ``options`` asks.

        ``deadline`` is a ``time.monotonic()`` instant; by default ``request_timeout_s`` from now.
        ``reservation``, from :meth:`admit`, is the queue room already held for it (released here
        in every case).
        """
        try:
            return await self._upscale(data, scale, options, deadline, reservation)
        finally:
            if reservation is not None:
                reservation.release()

    async def _upscale(
        self, data: bytes, scale: int, options: OutputOptions | None, deadline: float | None,
        early: Reservation | None,
    ) -> UpscaleResult:
        options = options or OutputOptions()
        self.check_scale(scale)
        if deadline is None and self.request_timeout_s is not None:
            deadline = time.monotonic() + self.request_timeout_s
        timings = Timings()
        header = await self.peek(data, scale)
        if header.frames > 1 and header.format in ANIMATED_FORMATS:  # frame by frame: app/pipeline/animated.py
            if early is not None:
                early.release()  # an animation takes its room frame by frame
            return await upscale_animated(self, data, scale, options, deadline=deadline, timings=timings)
        fmt = options.resolve(header.format)
        if fmt == "webp" and max(header.width, header.height) * scale > WEBP_MAX_SIDE:
            raise ImageTooLarge(f"WebP holds at most {WEBP_MAX_SIDE} px per side; ask for png or jpeg")
        if early is not None and early.covers(scale, header.height, header.width):
            reservation = early  # taken from the first bytes, before the body was in
        else:
            if early is not None:
                early.release()
            reservation = self.engine.reserve(scale, header.height, header.width)  # queue room, or 503 now
        answered: tuple[bytes, tuple[int, int]] | None = None
        try:
            if fmt == "jpeg" and header.format in ("JPEG", "MPO") and self._jpeg_on_device():
                answered = await self._on_device(data, header, scale, options, deadline, timings, reservation)
                if answered is None and not reservation.covers(scale, header.height, header.width):
                    reservation = self.engine.reserve(scale, header.height, header.width)  # the device let it go
            if answered is None:
                if self._sandboxed(header):
                    started = time.perf_counter()
                    image = await self._sandbox_decode(data, scale, deadline)
                    prepared = await self.in_pool(self._prepare, image)
                    timings.decode = time.perf_counter() - started
                    self.observer.stage("decode", timings.decode)
                else:
                    prepared = await self.in_pool(self._decode_and_prepare, data, scale, timings)
                sr = await self._model(prepared, scale, deadline, timings, reservation)
        finally:
            reservation.release()
        if answered is None:
            body = await self.in_pool(self._compose_and_encode, prepared, sr, scale, fmt, options, timings)
            size = (prepared.image.width, prepared.image.height)
        else:
            body, size = answered
        return UpscaleResult(body=body, format=fmt, model=self.models[scale].manifest.name, scale=scale,
                             input_size=size, output_size=(size[0] * scale, size[1] * scale), timings=timings)

    def _jpeg_on_device(self) -> bool:
        return self.device_jpeg is not None and self.device_jpeg.jpeg_ready

    async def _on_device(
        self, data: bytes, header: Header, scale: int, options: OutputOptions, deadline: float | None,
        timings: Timings, reservation: Reservation,
    ) -> tuple[bytes, tuple[int, int]] | None:
        """A JPEG answered as JPEG with decode, model, compose and encode on the models' device: the body and the
        upright input size; None when the bytes must take the Pillow path (:func:`app.engine.jpeg.probe` says why).

        The header is probed here first, so ineligible uploads never leave this process; the answer
        keeps the ICC profile the Pillow path keeps, and gives its pixels within the bound
        :mod:`app.engine.jpeg` states (its very bytes where the device is a CPU). Images under
        ``pixels_min_pixels`` stay on this CPU, as their compose does (see :meth:`_beside_model`).
        """
        assert self.device_jpeg is not None
        if not self._worth_the_device(header.width * header.height):
            self.observer.jpeg_codec("pillow")
            return None
        found = await self.in_pool(functools.partial(jpeg.probe, data, max_pixels=self.limits.max_input_pixels))
        if not found.eligible:
            self.observer.jpeg_codec("pillow")
            return None
        profile = found.icc_profile if icc.fits(found.icc_profile, "RGB") else None
        quality = DEFAULT_QUALITY if options.quality is None else options.quality
        try:
            body, spent = await self.device_jpeg.upscale_jpeg(
                data, scale, quality=quality, icc_profile=profile, max_pixels=self.limits.max_input_pixels,
                probe=found, deadline=deadline, reservation=reservation)
        except jpeg.NotEligible as exc:
            log.info("the device's JPEG codec refused an upload (%s): Pillow answers it", exc.reason)
            self.observer.jpeg_codec("pillow")
            return None
        timings.decode, timings.model, timings.compose, timings.encode = (
            spent.decode_s, spent.model_s, spent.compose_s, spent.encode_s)
        for stage in ("decode", "compose", "encode"):
            self.observer.stage(stage, getattr(timings, stage))
        self.observer.jpeg_codec("device")
        w, h = found.width, found.height
        self.observer.pixels(scale, w * h, w * h * scale * scale)
        return body, (w, h)

    async def upscale_image(
        self, image: DecodedImage, scale: int, *, deadline: float | None = None, timings: Timings | None = None
    ) -> Image.Image:
        """An already decoded image (a video or animation frame) → its ×``scale`` image, same mode.

        The same luma, engine and compose as :meth:`upscale`, without the codecs: frames of one
        video ride the engine's batches beside every other request.
        """
        self.check_scale(scale)
        timings = timings or Timings()
        prepared = await self.in_pool(self._prepare, image)
        sr = await self._model(prepared, scale, deadline, timings)
        return await self.in_pool(self._timed_compose, prepared, sr, scale, timings)

    def _sandboxed(self, header: Header) -> bool:
        return self.sandbox is not None and header.width * header.height > self.sandbox_min_pixels

    async def _sandbox_decode(self, data: bytes, scale: int, deadline: float | None) -> DecodedImage:
        assert self.sandbox is not None
        try:
            return await self.sandbox.decode(data, scale, self.limits, self.decode_budget, deadline=deadline)
        except ImageTooComplex:
            if deadline is not None and time.monotonic() >= deadline:  # the deadline stopped it, not the image
                raise DeadlineExceeded("deadline exceeded while decoding") from None
            raise

    async def _model(
        self, prepared: _Prepared, scale: int, deadline: float | None, timings: Timings,
        reservation: Reservation | None = None,
    ) -> Tensor | np.ndarray:
        """The model's luma (CPU compose), or the composed output planes (pixel engine)."""
        if deadline is not None and time.monotonic() > deadline:
            raise DeadlineExceeded("deadline exceeded before the model ran (while decoding)")
        started = time.perf_counter()
        sr: Tensor | np.ndarray
        if prepared.color is not None:
            assert self.pixels is not None
            sr, spent = await self.pixels.upscale_planes(prepared.color, prepared.alpha, scale, deadline=deadline,
                                                         reservation=reservation)
            timings.compose += spent.compose_s
            self.observer.stage("compose", spent.compose_s)
            timings.model += time.perf_counter() - started - spent.compose_s
        else:
            assert prepared.luma is not None
            sr = await self.engine.upscale(prepared.luma, scale, deadline=deadline, reservation=reservation)
            timings.model += time.perf_counter() - started
        w, h = prepared.image.width, prepared.image.height
        self.observer.pixels(scale, w * h, w * h * scale * scale)
        return sr

    # -- codec-pool work --------------------------------------------------------------------

    def _decode_and_prepare(self, data: bytes, scale: int, timings: Timings) -> _Prepared:
        start = time.perf_counter()
        try:
            return self._prepare(decode(data, scale, self.limits))
        finally:
            timings.decode = time.perf_counter() - start
            self.observer.stage("decode", timings.decode)

    def _beside_model(self, image: DecodedImage) -> bool:
        """Whether the pixel engine does this image's colour work (on the model's device), or this CPU does.

        A small image's compose is some fifty kernel launches: on a GPU they cost more CPU than the
        compiled CPU compose (measured on an H200 host: docs/benchmarks.md), and in the
        device process that CPU time is one GIL's, shared by every worker. So images under
        ``pixels_min_pixels`` send only their luma, and compose here, spread over the workers.
        """
        return self.pixels is not None and self._worth_the_device(image.width * image.height)

    def _worth_the_device(self, pixels: int) -> bool:
        return pixels >= self.pixels_min_pixels

    def _prepare(self, image: DecodedImage) -> _Prepared:
        """The model's luma for the CPU compose, or the 8-bit planes for the pixel engine."""
        if self._beside_model(image):
            return _Prepared(image, None, *image_planes(image))
        return _Prepared(image, luma_tensor(image))

    def _timed_compose(self, prepared: _Prepared, sr: Tensor | np.ndarray, scale: int, timings: Timings) -> Image.Image:
        """Model Y + bicubic chroma (+ alpha) → the output image, in the source's mode."""
        if isinstance(sr, np.ndarray):  # composed by the pixel engine already
            return Image.fromarray(sr[..., 0] if sr.shape[-1] == 1 else sr, prepared.image.mode)
        start = time.perf_counter()
        try:
            return compose(prepared.image, sr, scale, self.band_pool)
        finally:
            elapsed = time.perf_counter() - start
            timings.compose += elapsed
            self.observer.stage("compose", elapsed)

    def _compose_and_encode(
        self, prepared: _Prepared, sr: Tensor, scale: int, fmt: str, options: OutputOptions, timings: Timings
    ) -> bytes:
        result = self._timed_compose(prepared, sr, scale, timings)
        start = time.perf_counter()
        try:
            return encode(result, fmt, quality=options.quality, lossless=options.lossless,
                          icc_profile=prepared.image.icc_profile, png_compress_level=self.png_compress_level)
        finally:
            timings.encode = time.perf_counter() - start
            self.observer.stage("encode", timings.encode)

