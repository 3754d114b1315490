"""ICC profiles travel with the pixels only while they describe the pixels' colour space.

A CMYK profile on an image converted to RGB, or an RGB profile on a WebP made
from greyscale, would make viewers misread every pixel; such a profile is
dropped instead (the pixels are then read as sRGB/plain grey).
"""

from __future__ import annotations

_SPACE_OF_MODE = {"L": "GRAY", "LA": "GRAY", "RGB": "RGB", "RGBA": "RGB"}


def color_space(profile: bytes) -> str | None:
    """The data colour space in an ICC header ("RGB", "GRAY", "CMYK", "Lab"…), or None if it is no ICC profile."""
    if len(profile) < 128 or profile[36:40] != b"acsp":
        return None
    return profile[16:20].decode("latin-1").strip()


def fits(profile: bytes | None, mode: str) -> bool:
    """Whether ``profile`` can be attached to an image of Pillow ``mode``."""
    return bool(profile) and color_space(profile) == _SPACE_OF_MODE.get(mode)
