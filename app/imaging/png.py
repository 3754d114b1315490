"""A fast PNG writer for 8-bit ``L``/``LA``/``RGB``/``RGBA`` images: Up filter in NumPy, ISA-L deflate.

Why not Pillow's encoder for the service's default answer: Pillow tries all
five PNG filters on every row and then runs zlib, which costs about 6 ms for a
288² RGB answer and 80 ms for 1080p — more than the model itself. Every PNG
filter predicts from *unfiltered* neighbours, so a filter is one vectorised
subtraction; the Up filter (this row minus the row above) compresses photos
almost as well as Pillow's adaptive choice (files about 5 % bigger), and
Intel's ISA-L deflate (the ``isal`` package, a small well-kept binding) is
about 5× faster than zlib at the same ratio. Together: 0.55 against 6.3 ms for
a 288² answer, 10–14 against 81 ms for 1080p.

Rows are filtered and compressed in bands, so the extra memory is a few MiB
whatever the image size. The stream is a standard zlib stream, so any PNG
reader decodes it; tests compare the decoded pixels with the input exactly.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from isal import isal_zlib
from PIL import Image

# PNG colour types for 8-bit images: greyscale, grey+alpha, truecolour, truecolour+alpha
COLOR_TYPES = {"L": (0, 1), "LA": (4, 2), "RGB": (2, 3), "RGBA": (6, 4)}
FAST_LEVELS = range(0, 4)  # ISA-L's levels; higher levels go to Pillow's adaptive encoder
UP = 2  # the PNG filter type byte for "Up"
BAND_BYTES = 4 << 20  # filtered bytes per compress call: bounds memory, amortises call overhead
SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(kind))  # without concatenating a payload of megabytes
    return b"".join((struct.pack(">I", len(payload)), kind, payload, struct.pack(">I", crc)))


def _idat(payload: bytes) -> bytes:
    return _chunk(b"IDAT", payload) if payload else b""  # a PNG may split its data over many IDAT chunks


def encode_png(image: Image.Image, level: int = 1, icc_profile: bytes | None = None) -> bytes:
    """``image`` as PNG bytes; ``level`` 0–3 is ISA-L's (0: fastest, 3: smallest)."""
    if image.mode not in COLOR_TYPES:
        raise ValueError(f"encode_png takes L, LA, RGB or RGBA images, got {image.mode}")
    if level not in FAST_LEVELS:
        raise ValueError(f"level must be in 0..3 (ISA-L), got {level}")
    color_type, channels = COLOR_TYPES[image.mode]
    width, height = image.size
    rows = np.asarray(image).reshape(height, width * channels)
    parts = [SIGNATURE, _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))]
    if icc_profile:
        parts.append(_chunk(b"iCCP", b"ICC Profile\x00\x00" + zlib.compress(icc_profile)))
    compressor = isal_zlib.compressobj(level)
    band_rows = max(1, BAND_BYTES // (rows.shape[1] + 1))
    filtered = np.empty((min(band_rows, height), rows.shape[1] + 1), np.uint8)
    filtered[:, 0] = UP
    for top in range(0, height, band_rows):
        band = rows[top : top + band_rows]
        out = filtered[: len(band)]
        # Up: each row minus the one above (all zeros above the first), wrapping mod 256
        out[0, 1:] = band[0] if top == 0 else band[0] - rows[top - 1]
        np.subtract(band[1:], band[:-1], out=out[1:, 1:])
        parts.append(_idat(compressor.compress(out)))
    parts.append(_idat(compressor.flush()))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
