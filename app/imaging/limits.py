"""Pixel limits, checked from the image header before a single pixel is decoded.

Pillow's own decompression-bomb guard is a process-wide setting with a high
default (≈ 89 Mpx warns, ≈ 179 Mpx fails), so the service checks its own,
per-request limits on the input and on the output the scale would produce.

The structural bounds (scans, chunks, frames, metadata bytes) are what
:mod:`app.imaging.guards` holds a file's container to before decoding it.
:class:`MemoryBudget` bounds what work of one kind (animations) holds in a
process at once, all its requests together.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from app.imaging.errors import ImageTooLarge, InvalidImage


@dataclass(frozen=True)
class ImageLimits:
    max_input_pixels: int = 4096 * 4096
    max_output_pixels: int = 8192 * 8192
    max_side: int = 16384
    max_jpeg_scans: int = 100  # progressive encoders write about 10; each scan is a pass over the image
    max_chunks: int = 20_000  # JPEG segments, PNG/WebP chunks, GIF blocks, TIFF directory entries
    max_frames: int = 1000  # GIF, APNG and WebP frames (an animation is upscaled frame by frame)
    max_metadata_bytes: int = 16 * 1024 * 1024  # PNG/WebP ancillary chunks together (JPEG's largest ICC fits)

    def __post_init__(self) -> None:
        for name in ("max_input_pixels", "max_output_pixels", "max_side", "max_jpeg_scans", "max_chunks",
                     "max_frames", "max_metadata_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


DEFAULT_LIMITS = ImageLimits()


def _amount(pixels: int) -> str:
    """Exact counts: "16,777,216 px (16.8 Mpx)" — rounding alone made a refusal read "16.8 Mpx; the limit is 16.8 Mpx"."""
    return f"{pixels:,} px ({pixels / 1e6:.1f} Mpx)" if pixels >= 100_000 else f"{pixels:,} px"


def check_size(width: int, height: int, scale: int, limits: ImageLimits = DEFAULT_LIMITS) -> None:
    """Raise :class:`ImageTooLarge` if a ``width``×``height`` input, or its ×``scale`` output, is over ``limits``."""
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    if width < 1 or height < 1:
        raise InvalidImage(f"image is {width}×{height}: it has no pixels")
    if max(width, height) > limits.max_side:
        raise ImageTooLarge(f"image is {width}×{height}; no side may exceed {limits.max_side} px")
    if width * height > limits.max_input_pixels:
        raise ImageTooLarge(
            f"image is {width}×{height} = {_amount(width * height)}; the limit is {_amount(limits.max_input_pixels)}"
        )
    out_w, out_h = width * scale, height * scale
    if max(out_w, out_h) > limits.max_side:
        raise ImageTooLarge(
            f"the ×{scale} output of a {width}×{height} image would be {out_w}×{out_h}; "
            f"no side may exceed {limits.max_side} px"
        )
    if out_w * out_h > limits.max_output_pixels:
        raise ImageTooLarge(
            f"the ×{scale} output of a {width}×{height} image would be {out_w}×{out_h} = {_amount(out_w * out_h)}; "
            f"the limit is {_amount(limits.max_output_pixels)}"
        )


class BudgetBusy(Exception):
    """A :class:`MemoryBudget` has not the room now: others hold it; retry later (503 + Retry-After)."""


class MemoryBudget:
    """Bytes a process may hold at once for one kind of work, reserved before the work starts.

    One budget is shared by every request of its kind in the process, so concurrent
    requests cannot together pass it: a reservation larger than the whole budget can
    never fit (:class:`ImageTooLarge`, 413); one that does not fit beside those held
    now is :class:`BudgetBusy`. Thread-safe (reservations are made in codec threads).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def reserve(self, nbytes: int, what: str) -> MemoryReservation:
        """Hold ``nbytes`` for ``what`` (a phrase for the refusal) until the reservation is released."""
        reservation = MemoryReservation(self, 0, what)
        reservation.grow(nbytes)
        return reservation

    def _take(self, nbytes: int, held: int, what: str) -> None:
        if held + nbytes > self.capacity:
            raise ImageTooLarge(f"{what} needs {_mib(held + nbytes)} of memory; at most {_mib(self.capacity)} "
                                "are held for such work at once")
        with self._lock:
            if self._used + nbytes > self.capacity:
                raise BudgetBusy(f"{what} needs {_mib(nbytes)} of memory and {_mib(self.capacity - self._used)} "
                                 "are free now; retry later")
            self._used += nbytes

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes


class MemoryReservation:
    """Bytes held in a :class:`MemoryBudget`; grown when the work turns out larger, released once."""

    def __init__(self, budget: MemoryBudget, nbytes: int, what: str) -> None:
        self.budget, self.nbytes, self.what = budget, nbytes, what

    def grow(self, extra: int) -> None:
        """Hold ``extra`` bytes more, or raise as :meth:`MemoryBudget.reserve` does (keeping what is held)."""
        if extra > 0:
            self.budget._take(extra, self.nbytes, self.what)
            self.nbytes += extra

    def release(self) -> None:
        """Give the bytes back (idempotent)."""
        held, self.nbytes = self.nbytes, 0
        if held:
            self.budget._give(held)


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):,.0f} MiB"
