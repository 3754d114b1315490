"""Uploaded bytes → an upright 8-bit colour image, an optional alpha plane and its ICC profile.

Order matters for safety: the container is walked first
(:mod:`app.imaging.guards`: scans, chunks, frames, tiles out of proportion are
refused before Pillow parses anything), ``Image.open`` then reads only the
header, and only for the accepted formats, so the format and the pixel limits
are checked before ``load()`` decodes anything — a 50000×50000 PNG of a few
hundred bytes is refused without allocating it. What no structural check
foresees is bounded by running this in a killable worker process with a time
and memory budget (:func:`app.imaging.sandbox.decode_bounded`).

Pixel modes are reduced to what the model pipeline handles, ``L`` or ``RGB``
plus a separate alpha plane:

- ``1`` → ``L``; ``LA``/``La`` → ``L`` + alpha; ``RGBA``/``RGBa`` → ``RGB`` + alpha;
  ``P``/``PA`` → ``RGB``, + alpha if the palette has transparency; a tRNS
  colour key on ``L``/``RGB`` becomes an alpha plane too.
- 16/32-bit integer grey (``I;16``, ``I;16B``, ``I``…) → ``L`` as round(v/257)
  over the full 16-bit range (``I`` is clipped to it first); ``F`` → ``L``
  rounded and clipped to [0, 255]. Done with numpy, on purpose: Pillow's own
  ``convert("L")`` clips 16-bit values at 255 and whitens the picture.
- 16-bit RGB(A) PNGs are already 8-bit when Pillow opens them (it keeps each
  sample's high byte: truncation, less than one level from rounding).
- ``CMYK``, ``YCbCr``, ``LAB``, ``HSV`` → ``RGB`` by Pillow's conversion. The
  output is RGB, so an embedded CMYK/Lab profile no longer describes it and is
  dropped (the result is read as sRGB); any profile that does not match the
  final colour space is dropped the same way (see :mod:`app.imaging.icc`).

EXIF orientation is applied (the output carries no EXIF, so it cannot be
applied twice); an unreadable EXIF block is ignored rather than refusing a
picture that decodes. Multi-frame files (TIFF pages, MPO) give their first
frame here; animated GIF, APNG and WebP are decoded frame by frame by
:mod:`app.imaging.animation`, which reuses these checks.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from app.imaging import guards, icc
from app.imaging.errors import ImageTooComplex, ImageTooLarge, InvalidImage, UnsupportedImageType
from app.imaging.limits import DEFAULT_LIMITS, ImageLimits, check_size

# MPO is how Pillow names the multi-picture JPEGs many phones write.
INPUT_FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "BMP", "GIF", "TIFF"})
_ACCEPTED = "PNG, JPEG, WebP, BMP, GIF or TIFF"
# What Pillow raises on malformed input (its fuzzers' list, plus the codecs'; a TIFF whose later
# directory lacks its size gives a TypeError when its pages are counted).
_BROKEN = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, ArithmeticError,
           struct.error, zlib.error)
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_INT_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
# MPO has no parser of its own: the JPEG one returns MPO pictures.
_OPEN_FORMATS = tuple(sorted(INPUT_FORMATS - {"MPO"}))
_SNIFF_BYTES = 64 * 1024
OUT_OF_MEMORY = "decoding the image needs more memory than it may use"


@dataclass(frozen=True)
class DecodedImage:
    """``color`` is ``L`` or ``RGB``; ``alpha`` (``L``, same size) is kept apart from it."""

    color: Image.Image
    alpha: Image.Image | None
    icc_profile: bytes | None
    source_format: str
    source_mode: str

    def __post_init__(self) -> None:
        if self.color.mode not in ("L", "RGB"):
            raise ValueError(f"color must be L or RGB, got {self.color.mode}")
        if self.alpha is not None and (self.alpha.mode != "L" or self.alpha.size != self.color.size):
            raise ValueError("alpha must be an L image of the colour image's size")

    @property
    def width(self) -> int:
        return self.color.width

    @property
    def height(self) -> int:
        return self.color.height

    @property
    def mode(self) -> str:
        """The image as a whole: ``L``, ``LA``, ``RGB`` or ``RGBA`` (what :func:`compose` returns)."""
        return self.color.mode + ("A" if self.alpha is not None else "")


def load_codecs() -> None:
    """Import every Pillow format plugin now, at start-up: Pillow does it on the first ``Image.open``,
    which would otherwise be the first request's admission, on the event loop (tens of ms in a burst)."""
    Image.init()


def decode(data: bytes, scale: int, limits: ImageLimits = DEFAULT_LIMITS) -> DecodedImage:
    """Decode an upload for a ×``scale`` upscale, refusing it before decoding if it is over ``limits``."""
    try:
        return _decode(data, scale, limits)
    except MemoryError:  # in a sandbox worker: past its budget; here: past what the process can get
        raise ImageTooComplex(OUT_OF_MEMORY) from None


@dataclass(frozen=True)
class Header:
    """What the header says, before any pixel is decoded: enough to admit or refuse a request."""

    format: str  # Pillow's name: PNG, JPEG, MPO, WEBP, BMP, GIF, TIFF
    width: int  # as stored (EXIF orientation may swap the sides; the pixel count is the same)
    height: int
    frames: int  # 1 for a still image


def peek(data: bytes, scale: int, limits: ImageLimits = DEFAULT_LIMITS) -> Header:
    """The structural checks and the header's size against ``limits``, without decoding (fast: no pixel is read).

    The frame count too runs after the structural checks (which bound the frames and
    TIFF directories it walks) and inside the error mapping: a corrupt later frame or
    directory is a 400, never an exception of Pillow's.
    """
    im, counted = _open_counted(data, scale, limits)
    if counted is None or im.format not in ("TIFF", "GIF"):
        frames = count_frames(im)  # APNG: from acTL; WebP: libwebp's demuxer; both C-speed or constant
    elif im.format == "GIF" and counted > 1:  # Pillow agrees it moves: frame 2 parses (a cheap seek)
        frames = counted if _is_animated(im) else 1
    else:
        frames = max(counted, 1)
    return Header(im.format or "", im.width, im.height, frames)


def _is_animated(im: Image.Image) -> bool:
    try:
        return bool(getattr(im, "is_animated", False))
    except _BROKEN as e:
        raise InvalidImage(f"could not read the second frame of the {im.format} image: {type(e).__name__}: {e}") \
            from None


def count_frames(im: Image.Image) -> int:
    """``im.n_frames`` of an image opened by :func:`_open`, its parser's errors as :class:`InvalidImage`."""
    try:
        return int(getattr(im, "n_frames", 1))
    except _BOMB as e:
        raise ImageTooLarge(f"a later frame of the {im.format} image is too large: {e}") from None
    except _BROKEN as e:
        raise InvalidImage(f"could not count the frames of the {im.format} image: {type(e).__name__}: {e}") \
            from None


# The magic numbers of the accepted formats: enough to tell an image upload from a video one.
_MAGICS = (b"\xff\xd8", guards.PNG_MAGIC, b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"II+\x00",
           b"MM\x00+")


def looks_like_image(prefix: bytes) -> bool:
    """Whether the first bytes of an upload are those of an accepted image format (by magic number only)."""
    return prefix.startswith(_MAGICS) or (prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP")


def peek_file(path: str | os.PathLike[str], scale: int, limits: ImageLimits = DEFAULT_LIMITS,
              max_bytes: int | None = None) -> Header | None:
    """:func:`peek` of an upload on disk, or ``None`` when its magic number is no accepted image's (a video).

    For uploads that may be a video or an image (``POST /jobs``): only files that
    start like an image are read, and they get the same structural checks as
    ``/upscale`` before any Pillow parser walks them. ``max_bytes``: an image file
    larger than this is refused (:class:`ImageTooLarge`) without reading it.
    """
    with open(path, "rb") as f:
        if not looks_like_image(f.read(16)):
            return None
        size = os.fstat(f.fileno()).st_size
        if max_bytes is not None and size > max_bytes:
            raise ImageTooLarge(f"image files over {max_bytes} bytes are not accepted here")
        f.seek(0)
        data = f.read()
    return peek(data, scale, limits)


# Formats whose header tells a still image's size from the first bytes, read by a parser that stops there.
_PREFIX_FORMATS = ("JPEG", "PNG")


def peek_prefix(prefix: bytes, scale: int, limits: ImageLimits = DEFAULT_LIMITS) -> Header | None:
    """The size of a JPEG or still PNG from the first bytes of an upload still arriving; ``None`` if they do not tell.

    For admission before the body is in: a queue that cannot hold the image
    refuses it while the client is still sending. Only the size counts here —
    every structural check runs on the whole upload (:func:`peek`), and ``None``
    (too few bytes yet, another format, an animation, anything odd) just means
    admission waits for the body. Raises :class:`ImageTooLarge` when the header
    declares more than ``limits`` allow.
    """
    try:
        im = Image.open(io.BytesIO(prefix), formats=_PREFIX_FORMATS)
        header = Header(im.format or "", im.width, im.height, getattr(im, "n_frames", 1))
    except Exception:  # a prefix may be cut anywhere: decide on the whole body
        return None
    if header.frames != 1:
        return None
    check_size(header.width, header.height, scale, limits)
    return header


def _open(data: bytes, scale: int, limits: ImageLimits) -> Image.Image:
    """Guards, then the header only (``Image.open``), checked against the limits."""
    return _open_counted(data, scale, limits)[0]


def _open_counted(data: bytes, scale: int, limits: ImageLimits) -> tuple[Image.Image, int | None]:
    """:func:`_open`, and the frame count the guards found (TIFF, GIF; ``None`` for other formats)."""
    if not data:
        raise InvalidImage("the upload is empty: no image data")
    directories = guards.check_structure(data, scale, limits)
    try:
        # only the accepted formats' parsers see the bytes: others are named from their magic alone
        im = Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except _BOMB as e:
        raise ImageTooLarge(_bomb_message(e, limits)) from None
    except Image.UnidentifiedImageError:
        other = _other_format(data)
        if other:
            raise UnsupportedImageType(f"{other} images are not accepted; send {_ACCEPTED}") from None
        raise InvalidImage(f"the data is not a recognised image; send {_ACCEPTED}") from None
    except _BROKEN as e:
        raise InvalidImage(f"could not read the image header: {e}") from None
    check_size(im.width, im.height, scale, limits)
    guards.check_opened(im, data)
    return im, directories


def _bomb_message(error: Exception, limits: ImageLimits) -> str:
    """Pillow's bomb error, in the service's terms (its limit, not Pillow's process-wide one)."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    declared = f"{int(found.group(1)):,} px" if found else "more pixels than Pillow opens"
    return f"the image header declares {declared}; the limit is {limits.max_input_pixels:,} px"


def _decode(data: bytes, scale: int, limits: ImageLimits) -> DecodedImage:
    im = _open(data, scale, limits)
    fmt, source_mode = im.format, im.mode
    try:
        im.load()
    except _BOMB as e:
        raise ImageTooLarge(_bomb_message(e, limits)) from None
    except _BROKEN as e:
        raise InvalidImage(f"the {fmt} data is truncated or corrupt: {e}") from None
    profile = im.info.get("icc_profile") or None
    im = _upright(im)
    check_size(im.width, im.height, scale, limits)
    color, alpha = _color_and_alpha(im)
    return DecodedImage(
        color=color,
        alpha=alpha,
        icc_profile=profile if icc.fits(profile, color.mode) else None,
        source_format=fmt,
        source_mode=source_mode,
    )


def _other_format(data: bytes) -> str | None:
    """The format of an image we do not accept, named by Pillow from its first 64 KiB.

    Only that prefix, so no other format's header parser ever reads a whole upload.
    """
    try:
        with Image.open(io.BytesIO(data[:_SNIFF_BYTES])) as other:
            return other.format
    except (*_BOMB, Image.UnidentifiedImageError, *_BROKEN):
        return None


def _upright(im: Image.Image) -> Image.Image:
    try:
        if im.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return im
        return ImageOps.exif_transpose(im)
    except _BROKEN:
        return im


def _color_and_alpha(im: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    mode = im.mode
    if mode in _INT_GREY:
        return _grey16(im), _key_alpha(im)
    if mode == "F":
        values = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L"), None
    if mode in ("1", "L", "RGB") and im.has_transparency_data:  # a tRNS colour key
        im = im.convert("RGBA" if mode == "RGB" else "LA")
    elif mode in ("P", "PA"):
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    elif mode in ("La", "RGBa"):
        im = im.convert(mode.upper())
    if im.mode in ("L", "RGB"):
        return im, None
    if im.mode == "1":
        return im.convert("L"), None
    if im.mode == "LA":
        return im.getchannel("L"), im.getchannel("A")
    if im.mode == "RGBA":
        return im.convert("RGB"), im.getchannel("A")
    try:  # CMYK, YCbCr, LAB, HSV, RGBX…
        if im.has_transparency_data:  # not "A" in bands: LAB has an A band
            return _color_and_alpha(im.convert("RGBA"))
        return im.convert("RGB"), None
    except ValueError:
        raise UnsupportedImageType(f"pixel mode {mode} is not supported") from None


def _grey16(im: Image.Image) -> Image.Image:
    values = np.clip(np.asarray(im).astype(np.int32), 0, 65535)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L")  # = round(v / 257), exactly


def _key_alpha(im: Image.Image) -> Image.Image | None:
    key = im.info.get("transparency")
    if not isinstance(key, int):
        return None
    return Image.fromarray(np.where(np.asarray(im) == key, 0, 255).astype(np.uint8), "L")
