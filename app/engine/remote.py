"""The HTTP worker's side of the device process: :class:`PixelEngine`'s call, served by another process.

A worker that does not own the device holds one connection to the device
process (:mod:`app.engine.device_server`) and sends each request's 8-bit planes
in a memfd; the answer's planes come back in the same pages. It keeps only what
admission needs: the served scales, the queue's bounds and the depth the device
reports (with each answer, and whenever it changes), plus its own reservations,
so an overloaded device is refused from the image header, as in-process. The
device process still has the last word: its own admission refuses what would
pass the bound.

When the device process goes (killed, restarting), the requests waiting on it
fail with :class:`DeviceUnavailable` (503, retry), :attr:`ready` turns false, and
the worker reconnects as soon as it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from dataclasses import fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from app.core.tiling import count_tiles
from app.engine import errors, jpeg
from app.engine.batcher import Reservation
from app.engine.channel import Channel, SharedBuffer, connect
from app.engine.device_server import WIRE_ERRORS, WireLayout, jpeg_layout, probe_fields, wire_layout
from app.engine.pixels import JpegTimings, PixelTimings

log = logging.getLogger(__name__)
RECONNECT_S = 0.2  # between attempts while the device process is away


class DeviceUnavailable(errors.WorkerRestarted):
    """The device process is not there (starting, or restarting after a crash): retry (503)."""


def raise_error(reply: dict[str, Any]) -> None:
    """Rebuild the engine refusal a device reply names (see :func:`app.engine.device_server.error_message`)."""
    message = reply.get("message", "")
    if reply["error"] == "NotEligible":
        raise jpeg.NotEligible(message)
    cls = WIRE_ERRORS.get(reply["error"], errors.ModelError)
    if cls is errors.QueueFull:
        raise errors.QueueFull(message, float(reply.get("retry_after_s", 1.0)))
    if cls is errors.UnknownScale:
        raise errors.UnknownScale(message, tuple(reply.get("served", ())))
    raise cls(message)


class RemoteEngine:
    """The engine and pixel calls of a worker whose device lives in the device process at ``path``."""

    def __init__(self, path: str, *, retry_after_s: float = 1.0) -> None:
        self.path = path
        self.retry_after_s = retry_after_s
        self.info: dict[str, Any] = {}  # the device's hello: scales, backends, device, bounds
        self._channel: Channel | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._ids = itertools.count()
        self._depth = 0
        self._reserved = 0  # tiles of this worker's requests admitted from their header (Reservation's field)
        self._accepting = False
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.lost: str | None = None  # never set: a device process whose device fails exits, and another starts

    # -- what the pipeline reads -----------------------------------------------------------

    @property
    def tile(self) -> int:
        return int(self.info.get("tile", 96))

    @property
    def max_batch(self) -> int:
        return int(self.info.get("max_batch", 64))

    @property
    def max_queue_tiles(self) -> int:
        return int(self.info.get("max_queue_tiles", 4096))

    @property
    def queue_depth(self) -> int:
        """Tiles pending in the device process, as of its last answer."""
        return self._depth

    @property
    def ready(self) -> bool:
        return self._accepting and self._channel is not None and bool(self.info.get("ready"))

    @property
    def device_name(self) -> str:
        return f"{self.info.get('device', 'unknown')}, in the device process" if self.info else \
            "the device process (not connected)"

    def backend(self, scale: int) -> str:
        return str(self.info.get("backends", {}).get(str(scale), "unknown"))

    @property
    def jpeg_ready(self) -> bool:
        """Whether the device process decodes and encodes JPEG itself (its ``SR_DEVICE_JPEG``, its torchvision)."""
        return bool(self.info.get("jpeg"))

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, wait_s: float = 0.0) -> None:
        """Connect in the background (and keep reconnecting); wait up to ``wait_s`` for the first connection."""
        self._accepting = True
        self._task = asyncio.create_task(self._stay_connected(), name="device-connection")
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._connected.wait(), wait_s)

    async def close(self, drain_timeout_s: float = 30.0) -> None:
        """Stop admitting, let the requests in flight finish (up to the timeout), then disconnect."""
        self._accepting = False
        deadline = time.monotonic() + drain_timeout_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail_pending(errors.EngineClosed("the service is shutting down"))

    async def _stay_connected(self) -> None:
        while True:
            try:
                channel = Channel(await connect(self.path))
            except OSError:
                await asyncio.sleep(RECONNECT_S)
                continue
            try:
                await channel.send({"op": "hello"})
                received = await channel.receive()
                if received is None or received[0].get("op") != "hello":
                    raise ConnectionError("the device process closed before saying hello")
                self.info, self._depth = received[0], int(received[0].get("depth", 0))
                self._channel = channel
                self._connected.set()
                log.info("connected to the device process at %s (%s)", self.path, self.info.get("device"))
                await self._read(channel)
            except (OSError, ConnectionError) as exc:
                log.warning("device process connection lost: %s", exc)
            finally:
                self._channel = None
                self._connected.clear()
                channel.close()
                self._fail_pending(DeviceUnavailable("the device process went away; retry"))
            await asyncio.sleep(RECONNECT_S)

    async def _read(self, channel: Channel) -> None:
        while (received := await channel.receive()) is not None:
            reply, fd = received
            if "depth" in reply:
                self._depth = int(reply["depth"])
            if reply.get("op") == "hello":
                self.info = reply
            future = self._pending.pop(reply.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(reply | ({"fd": fd} if fd is not None else {}))
            elif fd is not None:
                os.close(fd)  # an answer nobody waits for any more
        raise ConnectionError("the device process closed the connection")

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: its request may be gone

    # -- admission -------------------------------------------------------------------------

    def reserve(self, scale: int, height: int, width: int) -> Reservation:
        """Queue room for an image from its header, against the device's last depth and this worker's holds."""
        tiles = count_tiles(height, width, self.tile)
        if not self._accepting:
            raise errors.EngineClosed("the service is not accepting work")
        if not self.ready:
            raise DeviceUnavailable("the device process is not ready; retry")
        served = tuple(int(s) for s in self.info.get("backends", {}))
        if scale not in served:
            raise errors.UnknownScale(f"no model for scale {scale}", served)
        if tiles > self.max_queue_tiles:
            raise errors.TooManyTiles(f"the image needs {tiles} tiles; the queue holds {self.max_queue_tiles}")
        pending = self._depth + self._reserved
        if pending + tiles > self.max_queue_tiles:
            raise errors.QueueFull(
                f"queue full: {pending} tiles pending, {tiles} more would pass the bound of {self.max_queue_tiles}",
                self.retry_after_s,
            )
        self._reserved += tiles
        return Reservation(self, tiles, (scale, height, width))  # type: ignore[arg-type]

    # -- the calls -------------------------------------------------------------------------

    async def upscale(
        self, luma: Tensor, scale: int, *, deadline: float | None = None, reservation: Reservation | None = None
    ) -> Tensor:
        """As :meth:`app.engine.batcher.Engine.upscale` (float32 luma in and out), computed by the device process."""
        c, h, w = luma.shape
        layout = wire_layout("luma", h, w, c, False, scale)
        buffer, _ = await self._call("luma", layout, {"luma": luma.numpy()},
                                     {"scale": scale, "h": h, "w": w, "c": c, "alpha": False}, deadline, reservation)
        return torch.from_numpy(layout.view(buffer, "out"))

    async def upscale_planes(
        self, color: np.ndarray, alpha: np.ndarray | None, scale: int, *, deadline: float | None = None,
        reservation: Reservation | None = None,
    ) -> tuple[np.ndarray, PixelTimings]:
        """As :meth:`app.engine.pixels.PixelEngine.upscale_planes`, computed by the device process."""
        h, w, c = color.shape
        layout = wire_layout("planes", h, w, c, alpha is not None, scale)
        arrays = {"color": color} | ({"alpha": alpha} if alpha is not None else {})
        buffer, reply = await self._call("planes", layout, arrays,
                                         {"scale": scale, "h": h, "w": w, "c": c, "alpha": alpha is not None},
                                         deadline, reservation)
        return layout.view(buffer, "out"), PixelTimings(model_s=float(reply.get("model_s", 0.0)),
                                                        compose_s=float(reply.get("compose_s", 0.0)))

    async def upscale_jpeg(
        self, data: bytes, scale: int, *, quality: int, icc_profile: bytes | None = None,
        max_pixels: int | None = None, probe: jpeg.JpegProbe | None = None, deadline: float | None = None,
        reservation: Reservation | None = None,
    ) -> tuple[bytes, JpegTimings]:
        """As :meth:`app.engine.pixels.PixelEngine.upscale_jpeg`, computed by the device process.

        The upload goes over as its bytes and the answer comes back as JPEG bytes: the device
        process decodes and encodes. ``reservation`` is released when the request is sent (the
        device process admits it), so after :class:`~app.engine.jpeg.NotEligible` the caller
        reserves again for the Pillow path.
        """
        profile = icc_profile or b""
        layout = jpeg_layout(len(data), len(profile))
        inputs = {"data": np.frombuffer(data, np.uint8), "icc": np.frombuffer(profile, np.uint8)}
        message = {"scale": scale, "size": len(data), "icc_size": len(profile), "quality": quality,
                   "max_pixels": max_pixels, "probe": probe_fields(probe) if probe is not None else None}
        _, reply = await self._call("jpeg", layout, inputs, message, deadline, reservation)
        fd, size = reply.get("fd"), int(reply.get("size", 0))
        if fd is None or size <= 0:
            if fd is not None:
                os.close(fd)
            raise errors.ModelError("the device process answered a JPEG request without its bytes")
        answer = SharedBuffer(size, fd)  # maps, then closes the descriptor
        try:
            body = answer.map[:size]
        finally:
            answer.map.close()
        return body, JpegTimings(**{f.name: float(reply.get(f.name, 0.0)) for f in fields(JpegTimings)})

    async def _call(
        self, op: str, layout: WireLayout, inputs: dict[str, np.ndarray], fields: dict[str, Any],
        deadline: float | None, reservation: Reservation | None,
    ) -> tuple[SharedBuffer, dict[str, Any]]:
        """Write ``inputs`` into a fresh shared buffer, send it with ``fields``, wait for the answer; the buffer then
        holds the output (``planes``, ``luma``), or the reply's ``fd`` does (``jpeg``)."""
        if reservation is not None:
            reservation.release()  # the device process admits it now, against its own queue
        channel = self._channel
        if channel is None or not self._accepting:
            raise DeviceUnavailable("the device process is not connected; retry")
        buffer = SharedBuffer(layout.size)
        try:
            for name, array in inputs.items():
                layout.view(buffer, name)[...] = array
            request_id = next(self._ids)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[request_id] = future
            try:
                await channel.send({"op": op, "id": request_id, **fields, "deadline": deadline}, buffer.fd)
            except OSError as exc:
                self._pending.pop(request_id, None)
                raise DeviceUnavailable(f"the device process could not be reached ({exc}); retry") from None
            finally:
                buffer.close()  # the device process holds its own mapping now
            try:
                reply = await future
            except asyncio.CancelledError:
                self._pending.pop(request_id, None)
                if future.done() and not future.cancelled() and "fd" in future.result():
                    os.close(future.result()["fd"])  # answered just before the cancel: its JPEG is not wanted
                with contextlib.suppress(OSError):
                    await asyncio.shield(channel.send({"op": "cancel", "id": request_id}))
                raise
        except BaseException:
            buffer.close()
            raise
        if "error" in reply:
            raise_error(reply)
        return buffer, reply
