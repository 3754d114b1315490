"""The pixel work around the model as one call: 8-bit planes in, 8-bit planes out, beside the model.

On a GPU the decoded image crosses the bus once, as 8-bit planes, and luma,
alpha bleeding, the model, bicubic chroma and the luma swap all run on the
device (:mod:`app.core.planes`), the output crossing back once as 8-bit planes.
The device process (:mod:`app.engine.device_server`) serves exactly this call to
the HTTP workers, and an HTTP worker that owns its GPU itself calls it in-process;
on a CPU host the same call is the reference the compiled compose is tested against.

Planes travel in the image's own interleaved layout, ``(H, W, C)`` uint8 (C = 1 or
3, alpha apart as ``(H, W)``), which is what Pillow decodes to and encodes from, so
the HTTP side never re-lays pixels out; the output is ``(r·H, r·W, C')`` with C' the
output image's bands (L, LA, RGB, RGBA).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

from app.core import planes
from app.engine import jpeg
from app.engine.batcher import Engine, Reservation
from app.engine.device import transfer
from app.engine.errors import EngineError
from app.engine.group_call import GroupCall

_T = TypeVar("_T")
_R = TypeVar("_R")
_Upload = tuple[bytes, int | None, jpeg.JpegProbe | None]  # JPEG bytes, the pixel limit, its header if read already
_Decoded = tuple[Tensor, Tensor, float]  # an upload's upright (3, H, W) uint8 planes, its luma, when it was decoded
_Composition = tuple[Tensor, Tensor | None, Tensor, int, np.ndarray]  # planes, alpha, model luma, scale, answer's home
_Answer = tuple[Tensor, Tensor, int, int, bytes | None]  # upright planes, model luma, scale, JPEG quality, ICC profile
JPEG_DECODE_BATCH = 16  # uploads per device decode call at most (nvJPEG's batched decode: docs/benchmarks.md)
COMPOSE_BATCH = 16  # answers per compose (and JPEG encode) call at most; same-size ones stack (planes.compose_many)


@dataclass(frozen=True)
class PixelTimings:
    model_s: float  # from admission to the model's luma, queue wait included
    compose_s: float  # luma before, chroma, alpha and the luma swap after, with the copies to and from the device


@dataclass(frozen=True)
class JpegTimings(PixelTimings):
    """:class:`PixelTimings` of :meth:`PixelEngine.upscale_jpeg`; ``compose_s`` there is luma and compose alone.

    Times are the host's: on a GPU a stage's kernels may still run when the next stage
    starts, and the encode, which waits for its bytes, then absorbs them.
    """

    decode_s: float = 0.0  # header probe and device decode, upright planes on the device
    encode_s: float = 0.0  # device encode and the bytes' copy back to the host


def output_shape(height: int, width: int, bands: int, alpha: bool, scale: int) -> tuple[int, int, int]:
    """The ``(r·H, r·W, C')`` uint8 planes an input of ``bands`` colour planes (+ alpha) comes back as."""
    return height * scale, width * scale, bands + int(alpha)


def _device_planes(color: np.ndarray, alpha: np.ndarray | None, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """``(H, W, C)`` / ``(H, W)`` arrays → ``(C, H, W)`` / ``(H, W)`` uint8 tensors on ``device``."""
    c = transfer(torch.from_numpy(color).permute(2, 0, 1), device)
    a = transfer(torch.from_numpy(alpha), device) if alpha is not None else None
    return c, a


class PixelEngine:
    """8-bit planes → luma → :class:`Engine` (batched with every other request) → composed 8-bit planes.

    ``executor`` runs the tensor work before and after the model (copies and kernel
    launches), off the event loop. ``jpeg``: whether the pipeline sends it JPEG→JPEG
    requests (:meth:`upscale_jpeg`; ``SR_DEVICE_JPEG`` resolved by :func:`app.engine.jpeg.enabled`).
    """

    def __init__(self, engine: Engine, device: torch.device, executor: Executor, *, jpeg: bool = False) -> None:
        self.engine = engine
        self.device = device
        self.executor = executor
        self.jpeg_ready = jpeg
        # uploads that arrive while a decode runs are decoded together next (one nvJPEG batch call)
        self.jpeg_decodes: GroupCall[_Upload, _Decoded | jpeg.NotEligible] = GroupCall(
            self._decode_jpegs, executor, max_batch=JPEG_DECODE_BATCH)
        # and the answers that come back from the model while a compose runs are composed (and encoded) together next
        self.composes: GroupCall[_Composition, None | Exception] = GroupCall(
            self._compose_into, executor, max_batch=COMPOSE_BATCH)
        self.jpeg_encodes: GroupCall[_Answer, tuple[bytes, float] | Exception] = GroupCall(
            self._encode_jpegs, executor, max_batch=COMPOSE_BATCH)

    async def upscale_planes(
        self, color: np.ndarray, alpha: np.ndarray | None, scale: int, *, deadline: float | None = None,
        reservation: Reservation | None = None,
    ) -> tuple[np.ndarray, PixelTimings]:
        """``color`` (H, W, 1 or 3) and ``alpha`` (H, W) uint8 → the ×``scale`` output planes and their timings."""
        h, w, c = color.shape
        out = np.empty(output_shape(h, w, c, alpha is not None, scale), np.uint8)
        timings = await self.upscale_into(color, alpha, scale, out, deadline=deadline, reservation=reservation)
        return out, timings

    async def upscale_into(
        self, color: np.ndarray, alpha: np.ndarray | None, scale: int, out: np.ndarray, *,
        deadline: float | None = None, reservation: Reservation | None = None,
    ) -> PixelTimings:
        """As :meth:`upscale_planes`, writing into ``out`` (shape :func:`output_shape`), e.g. shared memory."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        c, a, luma = await self._first_step(
            reservation, self._on_device(loop.run_in_executor(self.executor, self._before, color, alpha)))
        prepared = time.perf_counter()
        sr = await self.engine.upscale(luma, scale, deadline=deadline, reservation=reservation)
        modelled = time.perf_counter()
        await self._on_device(self.composes((c, a, sr, scale, out)))
        return PixelTimings(model_s=modelled - prepared, compose_s=(prepared - started) + (time.perf_counter() - modelled))

    @staticmethod
    async def _first_step(reservation: Reservation | None, step: Awaitable[_T]) -> _T:
        """The step before the model: when it fails the request ends there, so its reservation is released;
        except :class:`~app.engine.jpeg.NotEligible`, where the CPU path takes it on."""
        try:
            return await step
        except jpeg.NotEligible:
            raise
        except BaseException:
            if reservation is not None:
                reservation.release()
            raise

    async def _on_device(self, step: Awaitable[_R | Exception]) -> _R:
        """A step's result, raising what it raised or returned; after a failure that is not the request's own
        (a refusal, an ineligible JPEG), the device is asked whether it still computes, and if not the answer
        is :class:`~app.engine.errors.DeviceLost` (see :meth:`Engine.device_failed`)."""
        try:
            return _raise_if_failed(await step)
        except (EngineError, jpeg.NotEligible):
            raise
        except Exception as exc:
            if await self.engine.device_failed(exc):
                raise self.engine.lost_error() from exc
            raise

    def _before(self, color: np.ndarray, alpha: np.ndarray | None) -> tuple[Tensor, Tensor | None, Tensor]:
        c, a = _device_planes(color, alpha, self.device)
        return c, a, planes.luma(c, a)

    @staticmethod
    def _compose_into(items: list[_Composition]) -> list[None | Exception]:
        """Compose several answers on the device (those of one size stacked: :func:`app.core.planes.compose_many`)
        into their ``out`` arrays. A batch that fails is redone one answer at a time, so a failure stays its own."""
        try:
            opaque = [i for i, item in enumerate(items) if item[1] is None]
            stacked = planes.compose_many([(items[i][0], items[i][2], items[i][3]) for i in opaque])
            composed = dict(zip(opaque, stacked, strict=True))
            for i, (c, a, sr, scale, out) in enumerate(items):
                answer = composed[i] if i in composed else planes.compose(c, a, sr, scale)
                torch.from_numpy(out).copy_(answer.permute(1, 2, 0))
            return [None] * len(items)
        except Exception:
            if len(items) == 1:
                raise
        return _each_alone(PixelEngine._compose_into, items)  # after the block: its traceback holds the stack's tensors

    async def upscale_jpeg(
        self, data: bytes, scale: int, *, quality: int, icc_profile: bytes | None = None,
        max_pixels: int | None = None, probe: jpeg.JpegProbe | None = None, deadline: float | None = None,
        reservation: Reservation | None = None,
    ) -> tuple[bytes, JpegTimings]:
        """JPEG bytes → the ×``scale`` answer as JPEG bytes, decode to encode on the device (:mod:`app.engine.jpeg`).

        The steps of :meth:`upscale_planes` between the device codec's decode and encode,
        so the frame crosses the bus as compressed bytes each way. ``icc_profile`` is what
        the answer carries: the profile the CPU path keeps (the probe's, where it fits RGB).
        ``probe``: :func:`app.engine.jpeg.probe` of ``data``, where the caller has read it already.

        Raises :class:`~app.engine.jpeg.NotEligible` before the model runs when the bytes
        must take the CPU path (torchvision missing, a progressive JPEG, ...: see
        :func:`app.engine.jpeg.probe`), leaving ``reservation`` held for that path.
        """
        if not 1 <= quality <= 100:
            raise ValueError(f"quality must be between 1 and 100, got {quality}")
        started = time.perf_counter()
        upload = (data, max_pixels, probe)
        c, luma, decoded = await self._first_step(reservation, self._on_device(self.jpeg_decodes(upload)))
        prepared = time.perf_counter()
        sr = await self.engine.upscale(luma, scale, deadline=deadline, reservation=reservation)
        modelled = time.perf_counter()
        body, composed = await self._on_device(self.jpeg_encodes((c, sr, scale, quality, icc_profile)))
        done = time.perf_counter()
        return body, JpegTimings(model_s=modelled - prepared, compose_s=(prepared - decoded) + (composed - modelled),
                                 decode_s=decoded - started, encode_s=done - composed)

    def _decode_jpegs(self, uploads: list[_Upload]) -> list[_Decoded | jpeg.NotEligible]:
        """Device decode (upright) and luma of several uploads in one codec call, each probed unless it was; each
        upload's planes, luma and when the decode ended (``perf_counter``), or why it must take Pillow."""
        if not jpeg.available(self.device):
            return [jpeg.NotEligible(f"torchvision's JPEG codec is not available on {self.device}") for _ in uploads]
        probes = [found or jpeg.probe(data, max_pixels=limit) for data, limit, found in uploads]
        decoded = jpeg.decode_batch([data for data, _, _ in uploads], self.device, probes=probes)
        ended = time.perf_counter()
        pictures = [i for i, c in enumerate(decoded) if not isinstance(c, jpeg.NotEligible)]
        lumas = dict(zip(pictures, planes.luma_many([decoded[i] for i in pictures]), strict=True))
        return [(c, lumas[i], ended) if i in lumas else c for i, c in enumerate(decoded)]

    @staticmethod
    def _encode_jpegs(answers: list[_Answer]) -> list[tuple[bytes, float] | Exception]:
        """Compose several answers on the device (those of one size stacked), then encode those of one quality in
        one device call; each answer's bytes and when the composes ended. A batch that fails is redone one answer
        at a time, so a failure stays its answer's own."""
        try:
            composed = planes.compose_many([(c, sr, scale) for c, sr, scale, _, _ in answers])
            ended = time.perf_counter()
            bodies: dict[int, bytes] = {}
            for quality in dict.fromkeys(quality for _, _, _, quality, _ in answers):
                members = [i for i, answer in enumerate(answers) if answer[3] == quality]
                encoded = jpeg.encode_batch([composed[i] for i in members], quality, [answers[i][4] for i in members])
                bodies.update(zip(members, encoded, strict=True))
            return [(bodies[i], ended) for i in range(len(answers))]
        except Exception:
            if len(answers) == 1:
                raise
        return _each_alone(PixelEngine._encode_jpegs, answers)  # after the block: its traceback holds the stack's tensors


def _each_alone(batch: Callable[[list[_T]], list[_R]], items: list[_T]) -> list[_R | Exception]:
    """``batch`` called on each item alone: its result, or the exception it raised, for each."""
    results: list[_R | Exception] = []
    for item in items:
        try:
            results.extend(batch([item]))
        except Exception as e:
            results.append(e)
    return results


def _raise_if_failed(result: _R | Exception) -> _R:
    if isinstance(result, Exception):
        raise result
    return result
