"""ICC profiles travel with the pixels only while they are sane and describe the pixels' colour space.

A CMYK profile on an image converted to RGB, or an RGB profile on a WebP made
from greyscale, would make viewers misread every pixel; such a profile is
dropped instead (the pixels are then read as sRGB/plain grey).

A profile is client bytes echoed into the answer, so it is also checked as a
profile before it is kept: at most :data:`MAX_PROFILE_BYTES`, a header whose
size field is the profile's length, ``acsp`` signature, a device class an
image may embed, an XYZ/Lab connection space, a tag table whose every entry
lies inside the profile, and LittleCMS must open it. The bound is far above
real RGB and grey profiles (sRGB 3 KB, Display P3 0.5 KB, LUT-based RGB
profiles some 100 KB) and below what Pillow reads back: a PNG ``iCCP`` chunk
inflating past 1 MB makes ``Image.open`` refuse the whole file, so an answer
carrying a 2 MB profile would not decode at all.
"""

from __future__ import annotations

import io
import struct

try:
    from PIL import ImageCms
except ImportError:  # a Pillow built without LittleCMS: the structural checks still apply
    ImageCms = None  # type: ignore[assignment]

MAX_PROFILE_BYTES = 256 * 1024
HEADER_BYTES = 128
_SPACE_OF_MODE = {"L": "GRAY", "LA": "GRAY", "RGB": "RGB", "RGBA": "RGB"}
# input, display, output and colour-space classes; device links, abstract and named-colour
# profiles are not meant to be embedded in an image
_EMBEDDABLE_CLASSES = frozenset({b"scnr", b"mntr", b"prtr", b"spac"})
_CONNECTION_SPACES = frozenset({b"XYZ ", b"Lab "})


def color_space(profile: bytes) -> str | None:
    """The data colour space in an ICC header ("RGB", "GRAY", "CMYK", "Lab"…), or None if it is no ICC profile."""
    if len(profile) < HEADER_BYTES or profile[36:40] != b"acsp":
        return None
    return profile[16:20].decode("latin-1").strip()


def problem(profile: bytes) -> str | None:
    """Why ``profile`` is not a sane ICC profile to pass on, or None when it is."""
    size = len(profile)
    if size > MAX_PROFILE_BYTES:
        return f"profile of {size} bytes is over the {MAX_PROFILE_BYTES}-byte bound"
    if size < HEADER_BYTES + 4 or profile[36:40] != b"acsp":
        return "no ICC header"
    declared, count = struct.unpack_from(">I", profile, 0)[0], struct.unpack_from(">I", profile, HEADER_BYTES)[0]
    if declared != size:
        return f"header says {declared} bytes, the profile has {size}"
    if profile[12:16] not in _EMBEDDABLE_CLASSES:
        return f"device class {profile[12:16]!r} is not one an image embeds"
    if profile[20:24] not in _CONNECTION_SPACES:
        return f"connection space {profile[20:24]!r} is neither XYZ nor Lab"
    if HEADER_BYTES + 4 + 12 * count > size:
        return f"tag table of {count} entries runs past the profile's end"
    for i in range(count):
        _, offset, length = struct.unpack_from(">4sII", profile, HEADER_BYTES + 4 + 12 * i)
        if offset < HEADER_BYTES or offset + length > size:
            return f"tag {i} lies outside the profile"
    if ImageCms is None:
        return None
    try:
        ImageCms.ImageCmsProfile(io.BytesIO(profile))
    except (OSError, ValueError, TypeError) as e:
        return f"LittleCMS cannot read it: {e}"
    return None


def fits(profile: bytes | None, mode: str) -> bool:
    """Whether ``profile`` is a sane profile that can be attached to an image of Pillow ``mode``."""
    if not profile or color_space(profile) != _SPACE_OF_MODE.get(mode):
        return False
    return problem(profile) is None
