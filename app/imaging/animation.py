"""Animated GIF, APNG and animated WebP: decoded as full frames, written back as an animation.

**Reading.** Pillow composites every frame onto the canvas before handing it
over — GIF disposal methods, APNG dispose and blend ops, WebP through libwebp's
``WebPAnimDecoder`` — so each frame here is the whole picture a viewer shows at
that moment, never a sub-rectangle. Each is then reduced to colour + alpha by
:mod:`app.imaging.decode`'s own mode handling, so a frame goes through exactly
what a still upload would. The frames of one animation share one mode: alpha
is kept for all of them when any frame has a pixel that is not opaque (an
animated WebP is always RGBA in Pillow, an opaque one loses its alpha here as
a still WebP would), and grey frames become RGB if any frame is in colour.
Before a frame is decoded, the canvas is held to the input/output pixel limits
and frames × output pixels to ``max_animation_pixels`` (413 beyond), and the
memory the whole animation will hold — decoded frames and upscaled frames with
their encoding, :func:`animation_bytes` — is reserved in the process's
:class:`~app.imaging.limits.MemoryBudget` (shared by all animations in flight:
413 if it can never fit, :class:`~app.imaging.limits.BudgetBusy` if not now).
Every frame is held to the limits again as it is decoded (a GIF frame outside
the canvas, which Pillow grows to hold it, is refused: 413 over the limits, else
400, since the frames would differ in size), and a
``stop`` event, set when the client is gone, ends the decode at the next frame.

**Writing.** What is kept: every frame's duration, the loop count (a GIF
without a loop extension plays once, and stays so: ``loop=1`` in APNG and
WebP), the look of every frame (disposal included, since the frames are
composited), and the ICC profile where the format holds one (APNG, WebP).
The frames are written whole, so the disposal written is the one that shows
whole frames correctly, not the source's per-frame codes: GIF keeps the
previous frame (1) when opaque and clears to transparent (2) when it has
transparency; APNG uses ``OP_NONE`` with ``OP_SOURCE`` blending; libwebp's
encoder chooses its own sub-frames and disposal. Pillow's writers crop each
frame to what changed and merge consecutive identical frames into one with
the summed duration, so timing is kept but such a frame count can shrink.
GIF frames are quantised to 256 colours (Pillow's fast octree, no dithering,
which flickers in animations); transparency is 1-bit (alpha < 128 is clear).
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

from app.imaging import decode as _decode
from app.imaging import guards, icc
from app.imaging.decode import DecodedImage
from app.imaging.encode import DEFAULT_QUALITY, WEBP_MAX_SIDE
from app.imaging.errors import ImageTooLarge, InvalidImage
from app.imaging.limits import DEFAULT_LIMITS, ImageLimits, MemoryBudget, MemoryReservation, check_size

ANIMATED_FORMATS = frozenset({"GIF", "PNG", "WEBP"})  # Pillow's names of the containers read as animations
ANIMATION_OUTPUTS = {"gif": "image/gif", "png": "image/png", "webp": "image/webp"}  # APNG is served as image/png
DEFAULT_MAX_ANIMATION_PIXELS = 8192 * 8192  # frames × output pixels of one answer (and the budget's size, below)
_SAME_ANIMATED = {"GIF": "gif", "PNG": "png", "WEBP": "webp"}
_GIF_TRANSPARENT = 255  # the palette index kept for transparent pixels
# What one animation holds, per pixel: a decoded frame is colour + alpha (4 bytes); an upscaled one is
# RGB(A) until encoded, plus the writer's copy of it (a GIF's quantised frame) and the encoded body.
# Measured: 1,000 90² GIF frames at ×4 peaked at 6.6 bytes per output pixel (issue 32).
DECODED_BYTES_PER_PIXEL = 4
OUTPUT_BYTES_PER_PIXEL = 8


class Stopped(Exception):
    """The decode or encode was abandoned (its client is gone): nobody reads this answer."""


@dataclass(frozen=True)
class Animation:
    """Full-canvas frames of one mode, with what is needed to write them back."""

    frames: list[DecodedImage]
    durations: list[float]  # milliseconds, one per frame
    loop: int | None  # 0: forever; None: no loop extension (a GIF that plays once)
    source_format: str  # GIF, PNG or WEBP
    icc_profile: bytes | None = None
    reservation: MemoryReservation | None = None  # what it holds in the budget: release once it is answered

    @property
    def size(self) -> tuple[int, int]:
        return self.frames[0].width, self.frames[0].height


def animated_output(requested: str, source_format: str) -> str:
    """The format an animation is answered in: ``same`` → GIF/APNG (``png``)/WebP as the source, else as asked."""
    return _SAME_ANIMATED.get(source_format.upper(), "png") if requested == "same" else requested


def may_be_animated(data: bytes) -> bool:
    """A byte-level sniff, so a still PNG or WebP costs nothing more: False means surely not animated."""
    if data.startswith(guards.PNG_MAGIC):
        idat = data.find(b"IDAT")
        return data.find(b"acTL", 8, idat if idat > 0 else len(data)) >= 0  # acTL must come before the pixels
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & 0x02)  # the animation flag
    return data[:6] in (b"GIF87a", b"GIF89a")


def check_animation_size(width: int, height: int, frames: int, scale: int, max_animation_pixels: int) -> None:
    """Refuse an animation whose frames together would pass ``max_animation_pixels`` output pixels."""
    out_w, out_h = width * scale, height * scale
    total = frames * out_w * out_h
    if total > max_animation_pixels:
        raise ImageTooLarge(
            f"the ×{scale} output of this {frames}-frame {width}×{height} animation would be "
            f"{frames} × {out_w}×{out_h} = {total:,} px; the limit for an animation is {max_animation_pixels:,} px "
            "(frames × output pixels)"
        )


def animation_bytes(width: int, height: int, frames: int, scale: int) -> int:
    """The memory an animation of ``frames`` ``width``×``height`` frames holds at ×``scale``, decoded to answered."""
    pixels = frames * width * height
    return pixels * (DECODED_BYTES_PER_PIXEL + OUTPUT_BYTES_PER_PIXEL * scale * scale)


def decode_animation(
    data: bytes,
    scale: int,
    limits: ImageLimits = DEFAULT_LIMITS,
    max_animation_pixels: int = DEFAULT_MAX_ANIMATION_PIXELS,
    *,
    budget: MemoryBudget | None = None,
    stop: threading.Event | None = None,
) -> Animation | None:
    """The frames of an animated GIF/APNG/WebP as full canvases, or None when ``data`` is not an animation.

    The container is walked by :mod:`app.imaging.guards` and every limit (the still
    limits on the canvas, ``max_animation_pixels`` on all frames) is checked, and the
    whole animation's memory reserved in ``budget``, before the first frame is decoded.
    The returned animation carries that reservation; on any exception it is released here.
    ``stop`` set: :class:`Stopped` at the next frame.
    """
    if not may_be_animated(data):
        return None
    im = _decode._open(data, scale, limits)  # the still path's own checks: guards, header, pixel limits
    try:
        if im.format not in ANIMATED_FORMATS or not getattr(im, "is_animated", False):
            return None
        frames = im.n_frames
    except _decode._BROKEN as e:
        raise InvalidImage(f"could not count the frames of the {im.format} animation: {e}") from None
    check_animation_size(im.width, im.height, frames, scale, max_animation_pixels)
    what = f"the ×{scale} answer to this {frames}-frame {im.width}×{im.height} animation"
    reservation = budget.reserve(animation_bytes(im.width, im.height, frames, scale), what) if budget else None
    try:
        return _decode_frames(im, frames, scale, limits, max_animation_pixels, reservation, stop)
    except BaseException:
        if reservation is not None:
            reservation.release()
        raise


def _decode_frames(
    im: Image.Image, frames: int, scale: int, limits: ImageLimits, max_animation_pixels: int,
    reservation: MemoryReservation | None, stop: threading.Event | None,
) -> Animation:
    source_format = im.format or ""
    canvas = im.size
    profile = im.info.get("icc_profile") or None
    loop = im.info.get("loop")
    decoded: list[DecodedImage] = []
    durations: list[float] = []
    # an APNG's default image that is not part of the animation is what non-APNG viewers show: not a frame
    first = 1 if source_format == "PNG" and im.info.get("default_image") else 0
    try:
        for index in range(first, frames):
            if stop is not None and stop.is_set():
                raise Stopped(f"abandoned at frame {index + 1} of {frames}")
            im.seek(index)
            if im.size != canvas:  # a GIF frame outside the canvas grows it: over the limits, or frames unlike
                check_size(im.width, im.height, scale, limits)
                check_animation_size(im.width, im.height, frames, scale, max_animation_pixels)
                raise InvalidImage(f"frame {index + 1} of the {source_format} animation lies outside its "
                                   f"{canvas[0]}×{canvas[1]} canvas (it would grow it to {im.width}×{im.height})")
            im.load()
            durations.append(float(im.info.get("duration", 0) or 0))
            frame = _decode._upright(im.copy())  # the copy: seeking mutates the image
            color, alpha = _decode._color_and_alpha(frame)
            decoded.append(DecodedImage(color=color, alpha=alpha, icc_profile=None,
                                        source_format=source_format, source_mode=im.mode))
    except _decode._BOMB as e:
        raise ImageTooLarge(_decode._bomb_message(e, limits)) from None
    except (EOFError, *_decode._BROKEN) as e:
        raise InvalidImage(f"frame {len(decoded) + 1} of the {source_format} animation is truncated or corrupt: {e}") \
            from None
    decoded = _one_mode(decoded)
    fits = profile if icc.fits(profile, decoded[0].color.mode) else None
    return Animation(frames=decoded, durations=durations, loop=loop if isinstance(loop, int) else None,
                     source_format=source_format, icc_profile=fits, reservation=reservation)


def _one_mode(frames: list[DecodedImage]) -> list[DecodedImage]:
    """Give every frame the same planes: alpha for all if any pixel of any frame is not opaque, RGB if any is."""
    has_alpha = any(f.alpha is not None and f.alpha.getextrema()[0] < 255 for f in frames)
    mode = "RGB" if any(f.color.mode == "RGB" for f in frames) else "L"
    out = []
    for f in frames:
        color = f.color if f.color.mode == mode else f.color.convert(mode)
        alpha = (f.alpha or Image.new("L", f.color.size, 255)) if has_alpha else None
        if color is not f.color or alpha is not f.alpha:
            f = DecodedImage(color=color, alpha=alpha, icc_profile=f.icc_profile, source_format=f.source_format,
                             source_mode=f.source_mode)
        out.append(f)
    return out


def encode_animation(
    frames: list[Image.Image],
    durations: list[float],
    fmt: str,
    *,
    loop: int | None = 0,
    quality: int | None = None,
    lossless: bool = False,
    icc_profile: bytes | None = None,
    png_compress_level: int = 1,
    stop: threading.Event | None = None,
) -> bytes:
    """Whole frames (``L``, ``LA``, ``RGB`` or ``RGBA``, one mode) → an animated GIF, APNG or WebP.

    ``stop`` set (the client is gone): :class:`Stopped` before the writer starts, and
    between GIF frames as they are quantised.
    """
    if fmt not in ANIMATION_OUTPUTS:
        raise ValueError(f"unknown animation format {fmt!r}; choose one of {', '.join(ANIMATION_OUTPUTS)}")
    if len(frames) != len(durations) or not frames:
        raise ValueError("one duration per frame, and at least one frame")
    buffer = io.BytesIO()

    def check() -> None:
        if stop is not None and stop.is_set():
            raise Stopped("abandoned while encoding")

    if fmt == "gif":
        first, *rest = [(check(), _gif_frame(f))[1] for f in frames]
        transparent = "A" in frames[0].mode
        params: dict[str, object] = {"disposal": 2 if transparent else 1, "optimize": False}
        if transparent:
            params["transparency"] = _GIF_TRANSPARENT
        if loop is not None:
            params["loop"] = loop
        first.save(buffer, "GIF", save_all=True, append_images=rest,
                   duration=[round(d) for d in durations], **params)
        return buffer.getvalue()
    params = {"duration": list(durations), "loop": 1 if loop is None else loop}
    if icc.fits(icc_profile, frames[0].mode):
        params["icc_profile"] = icc_profile
    if fmt == "png":
        # Pillow's APNG writer (the fast still-PNG writer has no frames); level 0-9 is zlib's
        params |= {"disposal": 0, "blend": 0, "compress_level": png_compress_level}
    else:
        if max(frames[0].size) > WEBP_MAX_SIDE:
            raise ImageTooLarge(f"WebP holds at most {WEBP_MAX_SIDE} px per side; ask for png")
        if frames[0].mode in ("L", "LA"):
            frames = [f.convert("RGB" if f.mode == "L" else "RGBA") for f in frames]
        params |= {"lossless": True} if lossless else {"quality": DEFAULT_QUALITY if quality is None else quality}
    check()
    frames[0].save(buffer, fmt.upper(), save_all=True, append_images=frames[1:], **params)
    return buffer.getvalue()


def _gif_frame(frame: Image.Image) -> Image.Image:
    """One frame → 256 colours (fast octree), alpha < 128 → the transparent index."""
    if "A" not in frame.mode:
        return frame.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    quantised = frame.convert("RGB").quantize(_GIF_TRANSPARENT, method=Image.Quantize.FASTOCTREE)
    indices = np.asarray(quantised).copy()
    indices[np.asarray(frame.getchannel("A")) < 128] = _GIF_TRANSPARENT
    out = Image.fromarray(indices, "P")
    palette = quantised.getpalette() or []
    out.putpalette((palette + [0] * 768)[:768])
    out.info["transparency"] = _GIF_TRANSPARENT
    return out
