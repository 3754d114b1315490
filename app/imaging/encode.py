"""Upscaled image → PNG, JPEG or WebP bytes, with the source's ICC profile.

- PNG is always lossless. Levels 0–3 (default 1) go through :mod:`app.imaging.png`
  (Up filter + ISA-L deflate), about 10× faster than Pillow's level 1 for a file
  about 5 % bigger: the output is large (up to 67 Mpx) and users wait for it.
  Levels 4–9 use Pillow's adaptive filters and zlib, for the smallest files.
- JPEG cannot hold alpha: a transparent image is composited over white (what
  a transparent area looks like on a page) rather than over the black that
  dropping the alpha band would reveal. Greyscale stays greyscale JPEG.
- WebP has no greyscale mode, so grey becomes R = G = B; ``lossless=True``
  gives truly lossless WebP (``quality`` then has no effect on the pixels).
- No EXIF is written: orientation was applied when decoding.
- The ICC profile is written only if it fits the encoded colour space (a grey
  profile cannot describe an RGB WebP), see :mod:`app.imaging.icc`.
"""

from __future__ import annotations

import io

from PIL import Image

from app.imaging import icc
from app.imaging.errors import ImageTooLarge
from app.imaging.png import FAST_LEVELS, encode_png

OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_SAME_AS_SOURCE = {"JPEG": "jpeg", "MPO": "jpeg", "WEBP": "webp"}  # any other input (PNG, GIF, BMP, TIFF) → PNG
DEFAULT_QUALITY = 90
WEBP_MAX_SIDE = 16383  # libwebp's hard limit


def format_like(source_format: str) -> str:
    """The output format that matches a decoded image's format (Pillow's name): JPEG, WebP, else PNG."""
    return _SAME_AS_SOURCE.get(source_format.upper(), "png")


def encode(
    image: Image.Image,
    fmt: str,
    *,
    quality: int | None = None,
    lossless: bool = False,
    icc_profile: bytes | None = None,
    png_compress_level: int = 1,
) -> bytes:
    """Encode ``image`` (``L``, ``LA``, ``RGB`` or ``RGBA``) as ``fmt`` (a key of :data:`OUTPUT_FORMATS`)."""
    key = fmt.lower()
    key = "jpeg" if key == "jpg" else key
    if key not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if quality is not None and not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    if image.mode not in ("L", "LA", "RGB", "RGBA"):
        image = image.convert("RGBA" if image.has_transparency_data else "RGB")
    params: dict[str, object]
    if key == "png":
        if not 0 <= png_compress_level <= 9:
            raise ValueError(f"png_compress_level must be between 0 and 9, got {png_compress_level}")
        if png_compress_level in FAST_LEVELS:
            return encode_png(image, png_compress_level, icc_profile if icc.fits(icc_profile, image.mode) else None)
        params = {"compress_level": png_compress_level}
    elif key == "jpeg":
        if lossless:
            raise ValueError("JPEG cannot be lossless; ask for png or lossless webp")
        image = _over_white(image)
        params = {"quality": DEFAULT_QUALITY if quality is None else quality}
    else:
        if max(image.size) > WEBP_MAX_SIDE:
            raise ImageTooLarge(
                f"WebP cannot hold a {image.width}×{image.height} image (no side over {WEBP_MAX_SIDE} px); "
                "ask for png or jpeg"
            )
        if image.mode in ("L", "LA"):
            image = image.convert("RGB" if image.mode == "L" else "RGBA")
        params = {"lossless": True} if lossless else {"quality": DEFAULT_QUALITY if quality is None else quality}
    if icc.fits(icc_profile, image.mode):
        params["icc_profile"] = icc_profile
    buffer = io.BytesIO()
    image.save(buffer, format=key.upper(), **params)
    return buffer.getvalue()


def _over_white(image: Image.Image) -> Image.Image:
    """Composite ``LA``/``RGBA`` over white (straight alpha); other modes pass through."""
    if image.mode not in ("LA", "RGBA"):
        return image
    opaque = image.mode[:-1]
    background = Image.new(opaque, image.size, 255 if opaque == "L" else (255, 255, 255))
    background.paste(image.convert(opaque), mask=image.getchannel("A"))
    return background
