"""Pixel limits, checked from the image header before a single pixel is decoded.

Pillow's own decompression-bomb guard is a process-wide setting with a high
default (≈ 89 Mpx warns, ≈ 179 Mpx fails), so the service checks its own,
per-request limits on the input and on the output the scale would produce.

The structural bounds (scans, chunks, frames, metadata bytes) are what
:mod:`app.imaging.guards` holds a file's container to before decoding it.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.imaging.errors import ImageTooLarge, InvalidImage


@dataclass(frozen=True)
class ImageLimits:
    max_input_pixels: int = 4096 * 4096
    max_output_pixels: int = 8192 * 8192
    max_side: int = 16384
    max_jpeg_scans: int = 100  # progressive encoders write about 10; each scan is a pass over the image
    max_chunks: int = 20_000  # JPEG segments, PNG/WebP chunks, GIF blocks, TIFF directory entries
    max_frames: int = 1000  # GIF, APNG and WebP frames (only the first is decoded)
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
