"""The device process's side of the wire: one owner of the device serves every HTTP worker's pixels.

One process per GPU holds the models, the cross-request batcher and the pixel
work (:class:`~app.engine.pixels.PixelEngine`), so tiles from every worker share
its batches and one CUDA context owns the GPU (no time slicing between contexts).
The HTTP workers keep HTTP and the CPU codecs and send 8-bit planes in shared
memory (:mod:`app.engine.channel`); :mod:`app.engine.remote` is their side.

Messages (JSON, one datagram each):

- ``hello`` → what is served: scales and their backends, the device, the queue's bounds;
- ``planes`` (+ a memfd holding the input planes, then room for the output)
  → ``ok`` with timings, or ``error`` naming the engine's refusal (``QueueFull``…);
- ``luma``: the same for the model alone, float32 luma in and out (small images, whose colour
  work is cheaper on the worker's CPU than as some fifty kernel launches on this process's GIL);
- ``jpeg`` (+ a memfd holding the upload's bytes and the ICC profile the answer keeps) → ``ok``
  with the answer's JPEG bytes in a memfd of their own (their size is known only once encoded),
  decoded and encoded on the device (:meth:`PixelEngine.upscale_jpeg`); or ``error``
  ``NotEligible`` when the device codec refused them and the worker's Pillow must answer;
- ``cancel``: the worker's client has gone; its tiles are dropped unrun.

Every reply carries the queue depth, which the workers use for early admission,
and a ``depth`` message tells every worker of each change (at most every
:data:`DEPTH_EVERY_S`): a worker that sends nothing for a while would otherwise
admit against the depth of its last answer, and refuse for a queue long gone.
A worker that disconnects has its requests cancelled. Any failure answers that
request alone; the server itself only stops when asked.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from app.engine import errors, jpeg
from app.engine.batcher import Engine
from app.engine.channel import Channel, SharedBuffer
from app.engine.pixels import PixelEngine, PixelTimings, output_shape

log = logging.getLogger(__name__)
DEPTH_EVERY_S = 0.02  # how stale a worker's view of the queue may get, at most, plus a message's trip

# engine refusals that cross the wire by name; anything else answers as ModelError
WIRE_ERRORS: dict[str, type[errors.EngineError]] = {
    cls.__name__: cls
    for cls in (errors.QueueFull, errors.TooManyTiles, errors.DeadlineExceeded, errors.ModelError,
                errors.WorkerRestarted, errors.DeviceLost, errors.EngineClosed, errors.UnknownScale)
}


def error_message(exc: BaseException) -> dict[str, Any]:
    """An exception as the wire's ``error`` fields (what :func:`app.engine.remote.raise_error` rebuilds)."""
    if isinstance(exc, jpeg.NotEligible):  # not a failure: the worker's Pillow answers instead
        return {"error": "NotEligible", "message": exc.reason}
    known = type(exc).__name__ in WIRE_ERRORS
    message: dict[str, Any] = {"error": type(exc).__name__ if known else "ModelError",
                               "message": str(exc) if known else f"{type(exc).__name__}: {exc}"}
    if isinstance(exc, errors.QueueFull):
        message["retry_after_s"] = exc.retry_after_s
    if isinstance(exc, errors.UnknownScale):
        message["served"] = list(exc.served)
    return message


@dataclass(frozen=True)
class WireLayout:
    """Where each array lies in a request's shared buffer: the input, then room for the output."""

    parts: tuple[tuple[str, np.dtype, tuple[int, ...]], ...]

    @property
    def size(self) -> int:
        return sum(int(np.prod(shape)) * dtype.itemsize for _, dtype, shape in self.parts)

    def view(self, buffer: SharedBuffer, name: str) -> np.ndarray:
        offset = 0
        for part, dtype, shape in self.parts:
            count = int(np.prod(shape))
            if part == name:
                return np.frombuffer(buffer.map, dtype, count, offset).reshape(shape)
            offset += count * dtype.itemsize
        raise KeyError(name)


def wire_layout(op: str, h: int, w: int, c: int, alpha: bool, scale: int) -> WireLayout:
    """``planes``: uint8 colour (H, W, C), alpha (H, W), output (r·H, r·W, C'); ``luma``: float32 (c, H, W) in and
    (c, r·H, r·W) out."""
    if op == "luma":
        f32 = np.dtype(np.float32)
        return WireLayout((("luma", f32, (c, h, w)), ("out", f32, (c, h * scale, w * scale))))
    u8 = np.dtype(np.uint8)
    parts = [("color", u8, (h, w, c))] + ([("alpha", u8, (h, w))] if alpha else [])
    return WireLayout((*parts, ("out", u8, output_shape(h, w, c, alpha, scale))))


def jpeg_layout(size: int, icc_size: int) -> WireLayout:
    """``jpeg``: the upload's ``size`` bytes, then the ``icc_size`` bytes of the profile the answer keeps."""
    u8 = np.dtype(np.uint8)
    return WireLayout((("data", u8, (size,)), ("icc", u8, (icc_size,))))


# what the device's decode needs of a worker's header read (app.engine.jpeg.probe), so it is not read twice
_PROBE_FIELDS = ("width", "height", "orientation", "size")


def probe_fields(found: jpeg.JpegProbe) -> dict[str, int]:
    """An eligible upload's :class:`~app.engine.jpeg.JpegProbe` as the ``jpeg`` message carries it."""
    return {name: int(getattr(found, name)) for name in _PROBE_FIELDS}


class DeviceServer:
    """Serves :class:`PixelEngine` calls to HTTP workers over a Unix ``SOCK_SEQPACKET`` socket."""

    def __init__(self, pixels: PixelEngine, device: str, **extra: Any) -> None:
        self.pixels = pixels
        self.engine: Engine = pixels.engine
        engine = self.engine
        self.info = {  # what ``hello`` answers besides the live queue: ``device`` in words, the engine's bounds
            "device": device, "tile": engine.tile, "max_batch": engine.max_batch,
            "max_queue_tiles": engine.max_queue_tiles, "retry_after_s": engine.retry_after_s,
            "backends": {str(s): engine.backend(s) for s in engine.runners}, "jpeg": pixels.jpeg_ready, **extra,
        }
        self._connections: set[asyncio.Task[None]] = set()
        self._channels: set[Channel] = set()  # the connected workers, told of each change of the depth
        self._requests: set[asyncio.Task[None]] = set()
        self._closing = False

    async def serve(self, sock: Any) -> None:
        """Accept workers on the listening socket until cancelled."""
        loop = asyncio.get_running_loop()
        announcer = asyncio.create_task(self._announce_depth(), name="device-depth")
        try:
            while True:
                conn, _ = await loop.sock_accept(sock)
                conn.setblocking(False)
                task = asyncio.create_task(self._connection(Channel(conn)), name="device-connection")
                self._connections.add(task)
                task.add_done_callback(self._connections.discard)
        finally:
            announcer.cancel()

    async def _announce_depth(self) -> None:
        """Send every worker the queue depth whenever it has changed since the last time."""
        told = self.engine.queue_depth
        while True:
            await asyncio.sleep(DEPTH_EVERY_S)
            depth = self.engine.queue_depth
            if depth != told:
                told = depth
                message = {"op": "depth", "depth": depth}  # a worker that went is its connection's to clean up
                await asyncio.gather(*(c.send(message) for c in self._channels), return_exceptions=True)

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def drain(self, timeout_s: float) -> None:
        """Shutdown: wait (up to ``timeout_s``) until every worker has gone, then stop the engine."""
        self._closing = True
        deadline = time.monotonic() + timeout_s
        while self._connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self.engine.close(max(0.0, deadline - time.monotonic()))

    async def settled(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until every request has been answered."""
        deadline = time.monotonic() + timeout_s
        while self._requests and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def _connection(self, channel: Channel) -> None:
        mine: dict[int, asyncio.Task[None]] = {}
        self._channels.add(channel)
        try:
            while (received := await channel.receive()) is not None:
                message, fd = received
                op = message.get("op")
                if op in ("planes", "luma", "jpeg") and fd is not None:
                    task = asyncio.create_task(self._upscale(channel, message, fd))
                    mine[message["id"]] = task
                    self._requests.add(task)
                    task.add_done_callback(self._requests.discard)
                    task.add_done_callback(lambda _t, i=message["id"]: mine.pop(i, None))
                elif op == "cancel":
                    if (task := mine.get(message.get("id", -1))) is not None:
                        task.cancel()
                elif op == "hello":
                    await channel.send(self._hello())
                else:
                    if fd is not None:
                        os.close(fd)
                    log.warning("device server: unknown message %r", op)
        finally:
            self._channels.discard(channel)
            for task in mine.values():  # the worker has gone: so have its clients
                task.cancel()
            channel.close()

    def _hello(self) -> dict[str, Any]:
        return {"op": "hello", **self.info, "ready": self.engine.ready and not self._closing,
                "depth": self.engine.queue_depth}

    async def _upscale(self, channel: Channel, message: dict[str, Any], fd: int) -> None:
        reply: dict[str, Any] = {"id": message["id"]}
        answer: SharedBuffer | None = None  # a ``jpeg`` answer's bytes, passed back with the reply
        try:
            try:
                scale = int(message["scale"])
                if message["op"] == "jpeg":
                    layout = jpeg_layout(int(message["size"]), int(message.get("icc_size", 0)))
                else:
                    h, w, c = (int(message[k]) for k in ("h", "w", "c"))
                    alpha = bool(message.get("alpha"))
                    layout = wire_layout(message["op"], h, w, c, alpha, scale)
            except BaseException:
                os.close(fd)
                raise
            buffer = SharedBuffer(layout.size, fd)  # maps, then closes the descriptor
            deadline = message.get("deadline")
            if message["op"] == "jpeg":
                answer, timings = await self._jpeg(layout, buffer, message, scale, deadline)
                reply["size"] = answer.size
            elif message["op"] == "luma":
                luma = torch.from_numpy(layout.view(buffer, "luma"))
                started = time.perf_counter()
                sr = await self.engine.upscale(luma, scale, deadline=deadline)
                torch.from_numpy(layout.view(buffer, "out")).copy_(sr)
                timings = PixelTimings(model_s=time.perf_counter() - started, compose_s=0.0)
            else:
                plane = layout.view(buffer, "alpha") if alpha else None
                timings = await self.pixels.upscale_into(layout.view(buffer, "color"), plane, scale,
                                                         layout.view(buffer, "out"), deadline=deadline)
            reply.update(ok=True, **{f.name: getattr(timings, f.name) for f in fields(timings)})
        except asyncio.CancelledError:
            return  # the worker asked, or went: nobody waits for an answer
        except Exception as exc:  # one request's failure answers that request alone
            if not isinstance(exc, errors.EngineError | jpeg.NotEligible):
                log.exception("device server: request failed")
            reply.update(error_message(exc))
        reply["depth"] = self.engine.queue_depth
        try:
            await channel.send(reply, answer.fd if answer is not None else None)
        except OSError:
            pass  # the worker went while we computed
        finally:
            if answer is not None:
                answer.close()  # the worker maps its own copy of the descriptor

    async def _jpeg(
        self, layout: WireLayout, buffer: SharedBuffer, message: dict[str, Any], scale: int, deadline: float | None
    ) -> tuple[SharedBuffer, PixelTimings]:
        """JPEG bytes in, the answer's JPEG bytes in a fresh shared buffer out (see ``jpeg`` above)."""
        data = layout.view(buffer, "data").tobytes()
        icc_profile = layout.view(buffer, "icc").tobytes() or None
        max_pixels, read = message.get("max_pixels"), message.get("probe")
        found = jpeg.JpegProbe(None, **{k: int(read[k]) for k in _PROBE_FIELDS}) if read else None
        body, timings = await self.pixels.upscale_jpeg(
            data, scale, quality=int(message["quality"]), icc_profile=icc_profile,
            max_pixels=int(max_pixels) if max_pixels is not None else None, probe=found, deadline=deadline)
        answer = SharedBuffer(len(body))
        answer.map[:] = body
        return answer, timings
