"""JPEG decode and encode on the model's device: nvJPEG on a GPU, libjpeg-turbo on the CPU, both through torchvision.

Why: on a GPU host the CPU codec is the bottleneck (an H200 encodes a 1080p answer
in 0.29 ms with nvJPEG against 8.6 ms with Pillow), and a frame that crosses the
bus as compressed bytes each way moves some 0.3 MB instead of a 6 MB RGB array.

torchvision is optional (the ``gpu`` extra) and imported only when first asked for:
:func:`available` is False where it is missing or does not import (PyPI's wheel
beside a CPU build of torch fails with "operator torchvision::nms does not exist"),
and then nothing here is ever used.

Only JPEGs whose device decode is the CPU path's (:mod:`app.imaging.decode`) go this
way; :func:`probe` decides from the header alone (no pixel decoded) and says why
not otherwise, and the caller then takes the Pillow path with the same bytes:

- baseline or extended sequential Huffman coding, 8-bit, one interleaved scan
  followed by its end-of-image marker (not progressive, lossless, arithmetic,
  hierarchical or truncated);
- three YCbCr components with luma sampled 1×1, 2×1, 1×2 or 2×2 and chroma 1×1
  (4:4:4, 4:2:2, 4:4:0, 4:2:0); not greyscale (torchvision's nvJPEG encoder takes
  three channels only, so a grey answer could not stay grey as Pillow's does), not
  CMYK/YCCK, not RGB-coded (Adobe transform 0, or components named R, G, B);
- EXIF orientation as Pillow reads it (EXIF, else XMP), applied as
  ``ImageOps.exif_transpose`` does: same pixels, no EXIF in the answer;
- an ICC profile is no obstacle: pixels are never colour-converted on either path,
  and :func:`encode` writes the profile it is given as Pillow does (APP2 segments
  after the JFIF header), so the caller passes what the CPU path would keep.

The structural bounds of :mod:`app.imaging.guards` and the pixel limits are the
caller's first step (``app.imaging.decode.peek``); :func:`probe` only adds its own
segment bound and an optional ``max_pixels``. A device codec that still refuses the
bytes raises :class:`NotEligible` too, so Pillow answers them as it would anyway.

Planes are ``(C, H, W)`` uint8 on the device, what :mod:`app.core.planes` works on
and what torchvision decodes to and encodes from: no re-layout on either side.

Where the answers differ: on the CPU, torchvision's libjpeg-turbo gives exactly
Pillow's pixels and bytes (measured: tests/test_device_jpeg.py). nvJPEG decodes
with its own IDCT and chroma upsampling, and torchvision's nvJPEG encoder writes
4:4:4 chroma where Pillow writes 4:2:0 (larger files, no less detail): there the
bound is the issue's, one grey level on average from the CPU path's answer, which
the ``cuda`` cases of tests/test_device_jpeg.py assert.

Batches: :func:`decode_batch` and :func:`encode_batch` make one torchvision call for
several pictures (nvJPEG batches them; on the CPU it is a loop). Gathering requests
into such batches is the caller's business.
"""

from __future__ import annotations

import contextlib
import io
import re
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

import torch
from PIL import ExifTags, Image
from torch import Tensor

from app.engine.device import concrete

MAX_SEGMENTS = 20_000  # marker segments before the scan (ImageLimits.max_chunks's default)
ORIENTATION = ExifTags.Base.Orientation
_FILL = re.compile(rb"\xff+")
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")  # a marker that is no stuffed byte, restart or fill
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range
_CODING = {0xC2: "progressive", 0xC3: "lossless", 0xC5: "hierarchical", 0xC6: "hierarchical", 0xC7: "hierarchical",
           0xC9: "arithmetic-coded", 0xCA: "arithmetic-coded", 0xCB: "arithmetic-coded", 0xCD: "arithmetic-coded",
           0xCE: "arithmetic-coded", 0xCF: "arithmetic-coded"}
_LUMA_SAMPLING = frozenset({(1, 1), (2, 1), (1, 2), (2, 2)})  # (h, v) with chroma 1×1: 4:4:4, 4:2:2, 4:4:0, 4:2:0
_ICC_CHUNK = 65533 - 14  # Pillow's bytes per APP2 segment: its marker bound less "ICC_PROFILE\0", index, count
_SEGMENTS = frozenset({0xC4, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)})  # DHT, DQT, DRI, COM, APPn: kept as libjpeg reads
# What Pillow raises on a malformed header (app.imaging.decode's list)
_OPENS = (Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError,
          ArithmeticError, struct.error)


class NotEligible(Exception):
    """The device path would not give the CPU path's answer for these bytes: decode them with Pillow."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class JpegProbe:
    """What the header says. ``reason`` is None when the device path gives the CPU path's answer."""

    reason: str | None
    width: int = 0  # upright, after EXIF orientation (what the answer's sides are divided by the scale)
    height: int = 0
    orientation: int = 1  # EXIF orientation as Pillow reads it; 2-8 are applied on the device
    icc_profile: bytes | None = None  # as Pillow reads it; the caller decides whether the answer keeps it
    size: int = 0  # bytes up to the first end-of-image marker: what the device codec is given

    @property
    def eligible(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class _Frame:
    precision: int
    height: int
    width: int
    components: tuple[tuple[int, int, int], ...]  # (id, h, v)
    jfif: bool
    adobe_transform: int | None
    end: int  # offset after EOI


def probe(data: bytes, *, max_pixels: int | None = None) -> JpegProbe:
    """Read the header of ``data`` and say whether the device path may take it (no pixel decoded: 0.1-0.2 ms)."""
    found = _walk(data)
    if isinstance(found, str):
        return JpegProbe(found)
    reason = _frame_problem(found, max_pixels)
    if reason is not None:
        return JpegProbe(reason)
    try:
        im = Image.open(io.BytesIO(memoryview(data)[: found.end]), formats=("JPEG",))
        profile = im.info.get("icc_profile") or None
        orientation = _orientation(im)
    except _OPENS as e:
        return JpegProbe(f"Pillow cannot read its header or EXIF: {type(e).__name__}")
    if im.size != (found.width, found.height) or im.mode != "RGB":
        return JpegProbe(f"Pillow reads it as {im.mode} {im.width}×{im.height}")
    swapped = orientation in (5, 6, 7, 8)
    width, height = (found.height, found.width) if swapped else (found.width, found.height)
    return JpegProbe(None, width, height, orientation, profile, found.end)


def eligible(data: bytes, *, max_pixels: int | None = None) -> str | None:
    """Why ``data`` must take the Pillow path, or None when the device path gives the same answer (see :func:`probe`)."""
    return probe(data, max_pixels=max_pixels).reason


def _orientation(im: Image.Image) -> int:
    """The orientation ``app.imaging.decode`` applies, or an exception where it would keep the picture as stored.

    decode.py reads ``getexif()`` (EXIF, else XMP) and calls ``ImageOps.exif_transpose``,
    which also rewrites the EXIF without its orientation; where either raises, decode.py
    keeps the picture unrotated. Raising here sends such files to Pillow.
    """
    exif = im.getexif()
    orientation = int(exif.get(ORIENTATION, 1))
    if orientation not in range(2, 9):
        return 1  # exif_transpose knows no other value: the picture stays as stored
    if ORIENTATION in exif and "exif" in im.info:
        del exif[ORIENTATION]
        exif.tobytes()
    return orientation


def _walk(data: bytes) -> _Frame | str:
    """The markers up to the end of the first image: its frame header, or why the device path may not take it."""
    if not data.startswith(b"\xff\xd8"):
        return "not a JPEG"
    n, pos, segments, scans = len(data), 2, 0, 0
    sof: bytes | None = None  # the frame header's body
    jfif, adobe = False, None
    while True:
        if pos >= n:
            return "truncated: no end-of-image marker"
        if data[pos] != 0xFF:
            return "bytes between its markers"
        fill = _FILL.match(data, pos)
        assert fill is not None
        pos = fill.end()
        if pos >= n:
            return "truncated: no end-of-image marker"
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            break
        if marker == 0x00 or marker == 0x01 or 0xD0 <= marker <= 0xD8:
            return f"a stray marker 0xFF{marker:02X}"
        if pos + 2 > n:
            return "truncated: no end-of-image marker"
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2 or pos + length > n:
            return "a marker segment runs past the end"
        segments += 1
        if segments > MAX_SEGMENTS:
            return f"over {MAX_SEGMENTS} marker segments"
        body = data[pos + 2 : pos + length] if marker in _SOF or marker in (0xDA, 0xE0, 0xEE) else b""
        pos += length
        if marker in _SOF:
            if marker not in (0xC0, 0xC1):
                return f"{_CODING.get(marker, 'unknown')} JPEG"
            if sof is not None:
                return "more than one frame header"
            sof = body
        elif marker == 0xDA:
            scans += 1
            if sof is None:
                return "a scan before the frame header"
            if scans > 1:
                return "more than one scan"
            if not body or len(sof) < 6 or body[0] != sof[5]:
                return "a scan that is not interleaved"
            end = _SCAN_END.search(data, pos)
            if end is None:
                return "truncated: no end-of-image marker"
            pos = end.start()
        elif marker == 0xE0 and len(body) >= 14 and body.startswith(b"JFIF\x00"):  # libjpeg's test, APP0_DATA_LEN
            jfif = True
        elif marker == 0xEE and len(body) >= 12 and body.startswith(b"Adobe"):  # APP14_DATA_LEN
            adobe = body[11]
        elif marker not in _SEGMENTS:  # DNL, DAC, hierarchical, reserved: libjpeg refuses some, nvJPEG may not
            return f"a marker 0xFF{marker:02X} the device path does not take"
    if sof is None or scans == 0:
        return "no frame or no scan"
    body = sof
    if len(body) < 6 or len(body) < 6 + 3 * body[5]:
        return "a short frame header"
    components = tuple((body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(body[5]))
    return _Frame(body[0], (body[1] << 8) | body[2], (body[3] << 8) | body[4], components, jfif, adobe, pos)


def _frame_problem(frame: _Frame, max_pixels: int | None) -> str | None:
    """What in the frame header the device path does not decode as libjpeg does, or None."""
    if frame.precision != 8:
        return f"{frame.precision}-bit samples"
    if frame.width < 1 or frame.height < 1:
        return f"{frame.width}×{frame.height}: no pixels"
    if max_pixels is not None and frame.width * frame.height > max_pixels:
        return f"{frame.width}×{frame.height} is over {max_pixels} px"
    count = len(frame.components)
    if count == 1:
        return "greyscale (torchvision's nvJPEG encoder writes three channels only)"
    if count != 3:
        return f"{count} components (CMYK or YCCK)" if count == 4 else f"{count} components"
    if not frame.jfif and (frame.adobe_transform == 0 if frame.adobe_transform is not None
                           else tuple(c[0] for c in frame.components) == (82, 71, 66)):
        return "RGB-coded (no YCbCr transform)"  # libjpeg's guess of the colour space, jdapimin.c
    (_, h, v), *chroma = frame.components
    if (h, v) not in _LUMA_SAMPLING or any((ch, cv) != (1, 1) for _, ch, cv in chroma):
        return "unusual chroma sampling " + ",".join(f"{ch}x{cv}" for _, ch, cv in frame.components)
    return None


# -- torchvision, lazily ---------------------------------------------------------------------

_lock = threading.Lock()
_imported: list[ModuleType | None] = []  # [torchvision.io] or [None] once tried
_works: dict[torch.device, bool] = {}
_side_streams: dict[torch.device, torch.cuda.Stream] = {}  # one per GPU for nvJPEG calls: see _nvjpeg_streams


def _io() -> ModuleType | None:
    """``torchvision.io``, imported on first use; None where torchvision is missing or broken."""
    with _lock:
        if not _imported:
            try:
                import torchvision.io as tvio
            except Exception:  # ImportError; RuntimeError "operator torchvision::nms does not exist"; OSError
                _imported.append(None)
            else:
                # 0.29 deprecates its codecs in favour of TorchCodec on every call; the calls are unchanged.
                # One filter, set once: warnings.catch_warnings per call is not thread-safe.
                warnings.filterwarnings("ignore", category=DeprecationWarning, module="torchvision.io.image")
                _imported.append(tvio)
        return _imported[0]


def available(device: torch.device | str = "cpu") -> bool:
    """Whether torchvision imports and its JPEG codec round-trips an 8×8 picture on ``device`` (checked once each).

    False is the normal state without the ``gpu`` extra: callers then use Pillow, as before.
    On a GPU the check also starts nvJPEG, so call it at start-up rather than on a request.
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return False
    device = concrete(device)  # the form decoded tensors report, compared below
    with _lock:
        known = _works.get(device)
    if known is not None:
        return known
    works = False
    if _io() is not None:
        try:
            picture = torch.arange(192, dtype=torch.uint8).reshape(3, 8, 8).to(device)
            back = _decode_tensors([_as_tensor(encode(picture, 90))], device)[0]
            works = tuple(back.shape) == (3, 8, 8) and back.device == device
        except Exception:
            works = False
    with _lock:
        _works[device] = works
    return works


def enabled(mode: str, device: torch.device) -> bool:
    """``SR_DEVICE_JPEG`` resolved for the models' ``device``: ``auto`` means on CUDA only, ``on`` anywhere the
    codec works, ``off`` never. Checks the codec (starting nvJPEG): call it at start-up."""
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    return available(device)


def _tvio() -> ModuleType:
    tvio = _io()
    if tvio is None:
        raise NotEligible("torchvision is not installed or does not import")
    return tvio


def _as_tensor(data: bytes | memoryview) -> Tensor:
    """Bytes as the 1-D uint8 CPU tensor torchvision reads (one copy: torch wants a writable buffer)."""
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def _decode_tensors(encoded: list[Tensor], device: torch.device) -> list[Tensor]:
    tvio = _tvio()
    with _nvjpeg_streams(device) as caller:
        decoded = list(tvio.decode_jpeg(encoded, mode=tvio.ImageReadMode.RGB, device=device))
    if caller is not None:
        for planes in decoded:  # read on the caller's stream from now on: not reused before that work has run
            planes.record_stream(caller)
    return decoded


@contextlib.contextmanager
def _nvjpeg_streams(device: torch.device, *, reads_planes: bool = False) -> Iterator[torch.cuda.Stream | None]:
    """Around a torchvision nvJPEG call on a GPU: a stream of its own current, and the caller's stream after it.

    torchvision allocates a call's outputs on the current stream but has nvJPEG write them
    from a private stream that does not wait for it (pytorch/vision#9606): on the caller's
    stream, shared here by the inference and pixel threads, a block just freed while kernels
    queued there still read it could be handed to the decoder and overwritten. On a side
    stream of its own the allocator only hands the call memory freed there. An encode
    (``reads_planes``) also waits for the planes it reads, made by kernels on the caller's
    stream (corrupt files otherwise: pytorch/vision#8587, #9060). On the CPU, nothing.
    Yields the caller's stream (``None`` on the CPU).
    """
    if device.type != "cuda":
        yield None
        return
    caller = torch.cuda.current_stream(device)
    if reads_planes:
        caller.synchronize()
    with _lock:
        side = _side_streams.get(device)
        if side is None:
            side = _side_streams[device] = torch.cuda.Stream(device)
    with torch.cuda.stream(side):
        yield caller
    caller.wait_stream(side)


# -- decode ----------------------------------------------------------------------------------


def decode(data: bytes, device: torch.device, *, max_pixels: int | None = None) -> Tensor:
    """An eligible JPEG → its upright ``(3, H, W)`` uint8 planes on ``device``; :class:`NotEligible` otherwise."""
    result = decode_batch([data], device, max_pixels=max_pixels)[0]
    if isinstance(result, NotEligible):
        raise result
    return result


def decode_batch(
    datas: Sequence[bytes], device: torch.device, *, max_pixels: int | None = None,
    probes: Sequence[JpegProbe | None] | None = None,
) -> list[Tensor | NotEligible]:
    """Several JPEGs in one device call (nvJPEG decodes a batch at once): planes, or why each must take Pillow.

    ``probes``: what :func:`probe` already said of each (None where it has not been read), so a
    caller that checked the header first does not read it twice. A batch that the device codec
    refuses is retried one by one, so one bad bitstream sends only itself to Pillow.
    """
    given = list(probes) if probes is not None else [None] * len(datas)
    probes = [p if p is not None else probe(d, max_pixels=max_pixels) for d, p in zip(datas, given, strict=True)]
    results: list[Tensor | NotEligible] = [NotEligible(p.reason or "") for p in probes]
    todo = [i for i, p in enumerate(probes) if p.reason is None]
    encoded = [_as_tensor(memoryview(datas[i])[: probes[i].size]) for i in todo]
    try:
        if todo:
            for i, planes in zip(todo, _decode_tensors(encoded, device), strict=True):
                results[i] = _upright(planes, probes[i])
    except NotEligible as e:  # no torchvision
        return [e if i in todo else r for i, r in enumerate(results)]
    except (RuntimeError, ValueError) as e:
        if len(todo) == 1:
            results[todo[0]] = NotEligible(f"the device codec refused it: {e}")
        else:
            for i in todo:
                results[i] = decode_batch([datas[i]], device, probes=[probes[i]])[0]
    return results


def _upright(planes: Tensor, found: JpegProbe) -> Tensor | NotEligible:
    """Stored planes → upright, as ``ImageOps.exif_transpose`` turns them (a pure permutation of pixels)."""
    stored = (found.height, found.width) if found.orientation < 5 else (found.width, found.height)
    if tuple(planes.shape) != (3, *stored):
        return NotEligible(f"the device codec gave {tuple(planes.shape)} for a {stored[1]}×{stored[0]} picture")
    o = found.orientation
    if o == 1:
        return planes
    if o == 2:  # FLIP_LEFT_RIGHT
        out = planes.flip(-1)
    elif o == 3:  # ROTATE_180
        out = planes.flip(-2, -1)
    elif o == 4:  # FLIP_TOP_BOTTOM
        out = planes.flip(-2)
    elif o == 5:  # TRANSPOSE: across the main diagonal
        out = planes.transpose(-2, -1)
    elif o == 6:  # ROTATE_270: a quarter turn clockwise
        out = planes.rot90(-1, (-2, -1))
    elif o == 7:  # TRANSVERSE: across the other diagonal
        out = planes.transpose(-2, -1).flip(-2, -1)
    else:  # 8, ROTATE_90: a quarter turn anticlockwise
        out = planes.rot90(1, (-2, -1))
    return out.contiguous()


# -- encode ----------------------------------------------------------------------------------


def encode(planes: Tensor, quality: int, icc_profile: bytes | None = None) -> bytes:
    """``(3, H, W)`` uint8 planes on any device → JPEG bytes at ``quality`` (1-100), carrying ``icc_profile`` if given.

    On the CPU: libjpeg-turbo with Pillow's settings (4:2:0, the same tables), the same bytes
    as ``app.imaging.encode``. On a GPU: nvJPEG, 4:4:4 (torchvision sets it, no choice).
    """
    return encode_batch([planes], quality, [icc_profile])[0]


def encode_batch(
    planes: Sequence[Tensor], quality: int, icc_profiles: Sequence[bytes | None] | None = None
) -> list[bytes]:
    """Several pictures at one ``quality`` in one device call (nvJPEG's batched encode): their JPEG bytes, in order."""
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    profiles = list(icc_profiles) if icc_profiles is not None else [None] * len(planes)
    if len(profiles) != len(planes):
        raise ValueError(f"{len(planes)} pictures but {len(profiles)} ICC profiles")
    for p in planes:
        if p.dtype != torch.uint8 or p.dim() != 3 or p.shape[0] != 3:
            raise ValueError(f"expected (3, H, W) uint8 planes, got {tuple(p.shape)} {p.dtype}")
    if not planes:
        return []
    with _nvjpeg_streams(planes[0].device, reads_planes=True):
        encoded = _tvio().encode_jpeg(list(planes), quality=quality)
    out = []
    for bitstream, profile in zip(encoded, profiles, strict=True):
        body = bitstream.cpu().numpy().tobytes()
        out.append(with_icc(body, profile) if profile else body)
    return out


def with_icc(jpeg: bytes, profile: bytes) -> bytes:
    """``jpeg`` with ``profile`` in APP2 ``ICC_PROFILE`` segments after its JFIF header, as Pillow writes them."""
    chunks = [profile[i : i + _ICC_CHUNK] for i in range(0, len(profile), _ICC_CHUNK)]
    if len(chunks) > 255:
        raise ValueError(f"an ICC profile of {len(profile)} bytes does not fit in 255 JPEG segments")
    segments = b"".join(
        b"\xff\xe2" + struct.pack(">H", 16 + len(chunk)) + b"ICC_PROFILE\x00" + bytes((i, len(chunks))) + chunk
        for i, chunk in enumerate(chunks, 1)
    )
    at = 2
    if jpeg[2:4] == b"\xff\xe0":  # JFIF APP0 first, as libjpeg writes it and Pillow inserts after it
        at = 4 + ((jpeg[4] << 8) | jpeg[5])
    return jpeg[:at] + segments + jpeg[at:]
