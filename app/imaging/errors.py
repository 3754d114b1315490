"""Errors of the image layer, one class per answer the HTTP layer gives (400, 415, 413, 422).

The messages are written for a JSON error body: they say what was wrong with
the upload, never how the server is built.
"""

from __future__ import annotations


class ImageError(Exception):
    """Base class: anything wrong with an uploaded image."""


class InvalidImage(ImageError):
    """Not an image, empty, truncated or corrupt (HTTP 400)."""


class UnsupportedImageType(ImageError):
    """A real image in a format or pixel mode we refuse, or a non-image content type (HTTP 415)."""


class ImageTooLarge(ImageError):
    """Over the pixel limits, input or output, decompression bombs included (HTTP 413)."""


class ImageTooComplex(ImageError):
    """Within the pixel limits, but its decoding would cost out of proportion with the image (HTTP 422).

    Too many JPEG scans or container chunks, TIFF tiles larger than the image, a
    decode over its time or memory budget: refused before (or instead of) finishing it.
    """
