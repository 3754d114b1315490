"""Which video encoder a job uses, with which options, and what it holds in memory.

- ``webm``: VP9 (libvpx-vp9) always: no faster VP9 encoder is in PyAV's wheels.
- ``mp4``: H.264. NVENC (``h264_nvenc``) where this FFmpeg build has it and it opens at the
  output's size (a GPU host with NVENC: Hopper data-centre parts such as the H100/H200 have none),
  else libx264. The first check is probed once per process and cached; one at the output's size
  is cached per size (H.264 NVENC stops at 4096 pixels a side). A fallback is logged once and
  said in the job's result (``VideoResult.encoder``). ``hevc_nvenc`` is taken only when asked for
  by name: HEVC in MP4 plays in fewer browsers.
- libx264's options depend on the output's size (issue 32): at 7680×4320 (1080p ×4) the jobs'
  options held ≈ 1.4 GB in x264 (B-frames and the threads' lookahead buffers, whatever the thread
  count); ``tune=zerolatency`` (no B-frames, no lookahead, sliced threads) holds ≈ 0.62 GB and
  encodes as fast or faster, for ≈ 17 % more bytes at the same CRF and Y-PSNR (at 4K: 551 → 145 MB,
  +60 % bytes). So frames over :data:`LEAN_ABOVE_PIXELS` use it; up to 1080p the preset keeps its
  B-frames and lookahead (a third of the bytes for ≈ 150 MB). Over 4K (:data:`FULLPEL_ABOVE_PIXELS`)
  ``subme=0`` also drops the half-pel planes x264 keeps per frame: 625 → 429 MB at 7680×4320, 28 %
  less CPU, +21 % bytes, Y-PSNR 56.4 → 54.9 dB at CRF 18; without it a 1080p ×4 job's process tree
  grew ≈ 1.47 GB, at the 1.5 GB bound. Figures: ``scripts/x264_probe.py``, in docs/benchmarks.md.

The encoder's bytes (:attr:`VideoEncoder.memory_bytes`) are counted in the job's memory budget
before its frames in flight are (``frames_in_flight``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from fractions import Fraction

import av
import numpy as np

log = logging.getLogger(__name__)

ENCODER_CHOICES = ("auto", "libx264", "h264_nvenc", "hevc_nvenc")
LEAN_ABOVE_PIXELS = 1920 * 1088  # output frames larger than 1080p get x264's lean options
FULLPEL_ABOVE_PIXELS = 3840 * 2160  # larger than 4K: also no sub-pixel motion search (no half-pel planes per frame)
# what libx264 holds per output pixel (peak RSS over the encode ÷ pixels; scripts/x264_probe.py): veryfast
# 75 B at 1080p with 3 threads, 91 B with 24, 66 B at 4K; zerolatency 17–19 B at 4K and 8K whatever the threads
_X264_BYTES_PER_PIXEL = 96
_X264_LEAN_BYTES_PER_PIXEL = 20
_X264_FULLPEL_BYTES_PER_PIXEL = 14  # zerolatency + subme=0: 429 MB at 7680×4320
_NVENC_HOST_BYTES_PER_PIXEL = 4  # NVENC holds its frames on the GPU; the host keeps the upload staging
_VP9_BYTES_PER_PIXEL = 24  # realtime, cpu-used 8: reference and scaled frames

_probe_lock = threading.Lock()
_refusals: dict[tuple[str, int, int, str], str | None] = {}  # (encoder, width, height, options) → why not, or None
_said: set[str] = set()


@dataclass(frozen=True)
class VideoEncoder:
    name: str  # FFmpeg encoder
    options: dict[str, str] = field(default_factory=dict)
    memory_bytes: int = 0  # what it holds at its peak (host memory), an estimate from measurements
    note: str = ""  # why this one, when it is not the one asked for

    def describe(self) -> str:
        """``libx264 preset veryfast crf 18`` and the note: what ``VideoResult.encoder`` says."""
        shown = " ".join(f"{k} {v}" for k, v in self.options.items() if k not in ("b", "row-mt"))
        return f"{self.name} {shown}".strip() + (f" ({self.note})" if self.note else "")


def refusal(name: str, width: int = 256, height: int = 256, options: dict[str, str] | None = None) -> str | None:
    """``None`` when encoder ``name`` opens here for ``width``×``height`` with ``options`` and encodes a frame,
    else why not.

    Cached per (name, size, options): a build without the encoder, or a host without the device or
    driver, answers in microseconds the first time and from the cache after.
    """
    key = (name, width, height, repr(sorted((options or {}).items())))
    with _probe_lock:
        if key in _refusals:
            return _refusals[key]
        _refusals[key] = reason = _try_open(name, width, height, options or {})
        return reason


def _try_open(name: str, width: int, height: int, options: dict[str, str]) -> str | None:
    if name not in av.codecs_available:
        return "not in this FFmpeg build"
    try:
        ctx = av.CodecContext.create(name, "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, 30)
        ctx.options = dict(options)
        ctx.open()
        frame = av.VideoFrame.from_ndarray(np.zeros((height * 3 // 2, width), np.uint8), format="yuv420p")
        frame.pts = 0
        ctx.encode(frame)
        ctx.encode(None)
    except Exception as exc:  # any failure (no device, no driver, a size it refuses) means: not here
        return getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
    return None


def x264_options(preset: str, crf: int, width: int, height: int) -> dict[str, str]:
    """libx264's options for a ``width``×``height`` output: leaner as the frames grow (see the module's notes)."""
    options = {"preset": preset, "crf": str(crf)}
    if width * height > LEAN_ABOVE_PIXELS:
        options["tune"] = "zerolatency"
    if width * height > FULLPEL_ABOVE_PIXELS:
        options["x264-params"] = "subme=0"
    return options


def x264_bytes(width: int, height: int) -> int:
    """What libx264 with :func:`x264_options` holds for such frames (an upper estimate)."""
    pixels = width * height
    if pixels > FULLPEL_ABOVE_PIXELS:
        return pixels * _X264_FULLPEL_BYTES_PER_PIXEL
    return pixels * (_X264_LEAN_BYTES_PER_PIXEL if pixels > LEAN_ABOVE_PIXELS else _X264_BYTES_PER_PIXEL)


def choose(fmt: str, width: int, height: int, *, asked: str = "auto", x264_preset: str = "veryfast",
           x264_crf: int = 18, vp9_crf: int = 32) -> VideoEncoder:
    """The encoder for a ``fmt`` (mp4/webm) output of ``width``×``height``: NVENC if asked or ``auto`` and it
    opens at that size, else libx264 (the reason said once in the log and always in the result)."""
    pixels = width * height
    if fmt == "webm":
        return VideoEncoder("libvpx-vp9", {"crf": str(vp9_crf), "b": "0", "deadline": "realtime", "cpu-used": "8",
                                           "row-mt": "1"}, pixels * _VP9_BYTES_PER_PIXEL)
    if asked not in ENCODER_CHOICES:
        raise ValueError(f"unknown video encoder {asked!r}; choose one of {', '.join(ENCODER_CHOICES)}")
    note = ""
    if asked != "libx264":
        nvenc = "h264_nvenc" if asked == "auto" else asked
        # p1: NVENC's fastest preset; constant quality ≈ the x264 CRF (vbr with cq and no bitrate target)
        options = {"preset": "p1", "rc": "vbr", "cq": str(x264_crf), "b": "0"}
        # probed bare at a small size once, then at this size with these options (size limits differ by GPU)
        reason = refusal(nvenc) or refusal(nvenc, width, height, options)
        if reason is None:
            return VideoEncoder(nvenc, options, pixels * _NVENC_HOST_BYTES_PER_PIXEL)
        note = f"{nvenc} unavailable: {reason}"
        if note not in _said:
            _said.add(note)
            log.info("video jobs encode with libx264: %s", note)
    return VideoEncoder("libx264", x264_options(x264_preset, x264_crf, width, height), x264_bytes(width, height), note)
