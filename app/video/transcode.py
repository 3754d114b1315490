"""A video through the super-resolution pipeline: decode → ``Pipeline.upscale_image`` per frame → encode, streaming.

Three things run at once for one video: a decode thread (PyAV demux + decode,
one frame ahead), the frames' super-resolution (each frame a request of the
batching engine, through :meth:`Pipeline.upscale_image`: luma, engine, compose
exactly as an upload), and an encode thread writing the output as frames come
back, in order. At most ``frames_in_flight`` frames are between decode and
encode, so memory is bounded whatever the length, and a video never holds
more than that many requests in the engine's queue: the engine serves the
oldest admitted request first, so an ``/upscale`` request that arrives
mid-video waits for at most those few frames, not for the video.

What is kept: the frame timestamps (the output's time base is the input's,
each frame keeps its pts, so variable frame rates survive), the frame rate,
the display rotation (as metadata: pixels stay as coded, the display matrix
is copied), and the first audio track, copied packet by packet when the
output container holds its codec well (:data:`COPIED_AUDIO`), else decoded and
re-encoded (AAC for MP4, Opus for WebM: PCM, MP2, Vorbis… any codec this
FFmpeg decodes); audio it cannot decode is dropped. The result says which.

Bounds, checked while decoding, since headers can lie and any frame may
differ from the first (issue 32):

- every frame against the per-frame pixel limits of :class:`VideoLimits`
  (the decoder is told the input limit, so it refuses an oversize frame
  before allocating it), and against the first frame's size: the output has
  one size, so a frame of another size fails the job with its size in the
  reason — scaling it would distort it and cropping would lose it silently;
- the frame count and the duration (the frames' and audio's timestamps);
- memory: the frames in flight are as many as their decoded and output bytes
  (:func:`frame_bytes`) fit in ``memory_bytes``, reserved before each frame's
  work (one at least, whatever its size, once it passes the pixel limits);
- audio demuxed ahead of its muxing is held to ``audio_buffer_bytes``: in
  step with the video the decode waits for the encoder; before the first
  video frame (pre-roll, when nothing can be written yet) more than that
  fails the job;
- the wall time of the whole video, ``timeout_s``.

Output codecs (set in :class:`EncoderConfig`; which encoder and its options:
:mod:`app.video.encoders`):

- ``mp4``: H.264, yuv420p: NVENC where it opens, else libx264 at CRF 18 with
  the preset measured for this machine's class (``scripts/x264_probe.py``,
  docs/benchmarks.md), lean options for frames over 4K. CRF 18 is visually
  lossless (≈ 45 dB Y-PSNR against the uncompressed SR frames on the test
  clips) — the model already needs most of the CPU.
- ``webm``: VP9 (libvpx-vp9), CRF 32 in constant-quality mode, ``realtime``
  deadline with ``cpu-used 8`` and row multithreading (VP9's good-quality mode
  runs at a few 1080p frames/s here).

The encoder's own memory (:attr:`~app.video.encoders.VideoEncoder.memory_bytes`)
comes off ``memory_bytes`` before the frames in flight are counted.
Progress counts frames out of the encoder (written), so a job's frames/s is
output frames per second of wall time.

yuv420p needs even sides: an odd output side (an odd input at ×3) loses its
last pixel column or row.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error
import numpy as np
from PIL import Image

from app.engine.errors import RESTART_RETRY_S, RESTARTING, QueueFull
from app.imaging.decode import DecodedImage
from app.pipeline import Pipeline
from app.video import encoders
from app.video.errors import InvalidVideo, UnsupportedVideo, VideoTimeout, VideoTooLarge
from app.video.probe import VideoLimits, frame_rate, limit_decoder, oversize_frame

# format → (FFmpeg muxer, video encoder, media type, file extension)
VIDEO_FORMATS: dict[str, tuple[str, str, str, str]] = {
    "mp4": ("mp4", "libx264", "video/mp4", "mp4"),
    "webm": ("webm", "libvpx-vp9", "video/webm", "webm"),
}
# audio codecs copied packet by packet; any other decodable audio is re-encoded (FFmpeg's mp4 muxer lists PCM,
# then refuses it; what it takes beyond these plays in few players)
COPIED_AUDIO: dict[str, frozenset[str]] = {
    "mp4": frozenset({"aac", "mp3", "opus", "ac3", "eac3", "alac", "flac"}),
    "webm": frozenset({"opus", "vorbis"}),
}
_REENCODE_AUDIO = {"mp4": "aac", "webm": "libopus"}
# peak bytes per decoded pixel (RGB frame, luma planes) and per output pixel (float32 model output, composed RGB,
# compose intermediates, the encoder's copy): a 6000×6000 frame at ×2 grew the process by 2.27 GB (≈ 15.8 B per
# output pixel) before frames were bounded
_BYTES_PER_INPUT_PIXEL = 10
_BYTES_PER_OUTPUT_PIXEL = 16
_PACKET_OVERHEAD = 512  # a buffered audio item's own cost beyond its payload

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class EncoderConfig:
    x264_crf: int = 18
    x264_preset: str = "veryfast"  # scripts/x264_probe.py: a third of superfast's bytes, ≈ 15 % slower (docs/benchmarks.md)
    vp9_crf: int = 32
    frames_in_flight: int = 4  # most frames between decode and encode: in the engine, composing, or waiting
    max_frames: int | None = None  # refuse past this many decoded frames (headers can lie); also limits.max_frames
    frame_timeout_s: float = 60.0  # per-frame deadline in the engine
    retry_s: float = 0.05  # wait before re-offering a frame the engine's full queue refused
    restart_retry_s: float = RESTART_RETRY_S  # wait before re-offering a frame refused while the engine restarts
    limits: VideoLimits = field(default_factory=VideoLimits)  # per-frame pixels, frames, duration: every frame
    memory_bytes: int = 768 << 20  # the frames in flight's decoded and output bytes together (frame_bytes)
    audio_buffer_bytes: int = 16 << 20  # audio demuxed but not yet muxed (pre-roll before the first frame included)
    timeout_s: float | None = None  # the whole video's wall time; None: no limit
    video_encoder: str = "auto"  # mp4: auto (NVENC if it opens, else libx264), libx264, h264_nvenc, hevc_nvenc

    def __post_init__(self) -> None:
        for name in ("frames_in_flight", "memory_bytes", "audio_buffer_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0 (or None)")
        if self.video_encoder not in encoders.ENCODER_CHOICES:
            raise ValueError(f"video_encoder must be one of {', '.join(encoders.ENCODER_CHOICES)}")


@dataclass(frozen=True)
class VideoResult:
    format: str  # mp4 or webm
    frames: int
    width: int
    height: int
    fps: float
    duration_s: float
    audio: str  # "none", "copied <codec>", "re-encoded <codec> → <codec>" or "dropped <codec> (…)"
    seconds: float
    frames_in_flight: int = 0  # as many as the memory budget allowed for this frame size
    encoder: str = ""  # the video encoder and its options, with why when it is not the one asked for
    frames_per_s: float = 0.0  # output frames per second of wall time, open to close (the job's throughput)


def output_format(fmt: str, container: str) -> str:
    """``mp4``/``webm`` as asked; ``same``: WebM for a WebM/Matroska input, MP4 for anything else."""
    if fmt == "same":
        return "webm" if "webm" in container or "matroska" in container else "mp4"
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"unknown video format {fmt!r}; choose mp4, webm or same")
    return fmt


def frame_bytes(width: int, height: int, scale: int) -> int:
    """What one ``width``×``height`` frame costs at its peak between decode and encode at ×``scale`` (an estimate)."""
    pixels = width * height
    return pixels * _BYTES_PER_INPUT_PIXEL + pixels * scale * scale * _BYTES_PER_OUTPUT_PIXEL


def frames_in_flight(width: int, height: int, scale: int, config: EncoderConfig, encoder_bytes: int = 0) -> int:
    """How many such frames may be between decode and encode: the memory budget's share, 1 to ``frames_in_flight``.

    The encoder's own bytes (``encoder_bytes``) and the frame the decode thread
    holds while it waits for room (its RGB image) come off the budget first.
    """
    room = config.memory_bytes - encoder_bytes - width * height * 3
    return max(1, min(config.frames_in_flight, room // frame_bytes(width, height, scale)))


@dataclass
class _Item:
    kind: str  # "video" or "audio"
    packet: av.Packet | None = None  # audio copied as is
    frames: list[av.AudioFrame] | None = None  # audio decoded for re-encoding
    size: int = 0  # audio bytes held until muxed
    image: Image.Image | None = None
    pts: int | None = None
    task: asyncio.Task[Image.Image] | None = None


class _Transcoder:
    """The PyAV side: every method runs in the decode thread or in the encode thread, never both."""

    def __init__(self, src: Path, dst: Path, scale: int, fmt: str, config: EncoderConfig) -> None:
        self.src, self.dst, self.scale, self.config = src, dst, scale, config
        self.limits = config.limits
        self.max_frames = min(config.max_frames or self.limits.max_frames, self.limits.max_frames)
        self.requested = fmt
        self.inp: av.container.InputContainer | None = None
        self.out: av.container.OutputContainer | None = None
        self.decoded = 0
        self.encoded = 0  # frames given to the encoder
        self.written = 0  # frames out of it, in the file (behind ``encoded`` by its delay)
        self.encoder: encoders.VideoEncoder | None = None
        self.size: tuple[int, int] | None = None  # every frame's (the first frame's) width, height
        self.rotation = 0
        self.starts: dict[str, float] = {}  # each stream's first timestamp (s): durations count from it
        self.last_pts: int | None = None
        self.pending_audio: list[_Item] = []
        self.written_audio = 0  # audio bytes muxed (or dropped) since the event loop last took the count
        self.audio_mode = "none"
        self.audio_plan = "none"  # none, copy, reencode or drop
        self.audio_errors = 0
        self.resampler: av.AudioResampler | None = None

    # -- decode thread ----------------------------------------------------------------------

    def open_input(self) -> None:
        try:
            self.inp = av.open(str(self.src), metadata_errors="ignore")
        except av.error.FFmpegError as exc:
            raise InvalidVideo(f"not a readable video: {_reason(exc)}") from None
        if not self.inp.streams.video:
            raise UnsupportedVideo("the file has no video track")
        self.video = self.inp.streams.video[0]
        self.video.thread_type = "AUTO"
        limit_decoder(self.video, self.limits)
        self.audio = self.inp.streams.audio[0] if self.inp.streams.audio else None
        rate = frame_rate(self.video)
        if rate is None:
            raise InvalidVideo("the video track has no frame rate")
        self.rate: Fraction = rate
        self.time_base: Fraction = self.video.time_base or 1 / rate
        self.format = output_format(self.requested, self.inp.format.name)
        duration = (self.inp.duration / av.time_base) if self.inp.duration else 0.0
        self.total = self.video.frames or max(1, round(duration * float(rate)))
        if self.audio is not None:
            self._plan_audio(self.audio)
        streams = [self.video] + ([self.audio] if self.audio is not None else [])
        self.items = self._items(streams)

    def _plan_audio(self, audio: av.audio.stream.AudioStream) -> None:
        """Copy, re-encode or (no decoder in this build) drop the audio track: decided before any packet."""
        name = audio.codec_context.name if audio.codec_context is not None else ""
        if name in COPIED_AUDIO[self.format]:
            self.audio_plan, self.audio_mode = "copy", f"copied {name}"
            return
        try:
            av.codec.Codec(name, "r")
        except (av.error.FFmpegError, ValueError):
            self.audio_plan, self.audio_mode = "drop", f"dropped {name or 'unknown'} (no decoder in this build)"
            return
        target = _REENCODE_AUDIO[self.format]
        self.audio_plan, self.audio_mode = "reencode", f"re-encoded {name} → {target.removeprefix('lib')}"

    def _items(self, streams: list[av.stream.Stream]) -> Iterator[_Item]:
        assert self.inp is not None
        for packet in self.inp.demux(*streams):
            if packet.stream.type == "audio":
                if packet.dts is not None:  # demux ends each stream with an empty flush packet
                    yield from self._audio(packet)
                continue
            try:
                frames = packet.decode()
            except av.error.ArgumentError:  # EINVAL: the decoder's max_pixels refused the frame
                raise oversize_frame(self.decoded + 1, self.limits) from None
            for frame in frames:
                self.decoded += 1
                self._check_frame(frame)
                yield _Item("video", image=frame.to_image(), pts=frame.pts)

    def _check_frame(self, frame: av.VideoFrame) -> None:
        """Every frame: the frame count, its size (the limits, then the first frame's) and its time."""
        n = self.decoded
        if n > self.max_frames:
            raise VideoTooLarge(f"the video has more than {self.max_frames} frames (the limit)")
        size = (frame.width, frame.height)
        if size != self.size:
            w, h = size
            if w * h > self.limits.max_frame_pixels:
                raise VideoTooLarge(f"frame {n} is {w}×{h}; the limit is {self.limits.max_frame_pixels} pixels "
                                    "per frame")
            if w * h * self.scale * self.scale > self.limits.max_output_pixels:
                raise VideoTooLarge(f"frame {n} is {w}×{h}: ×{self.scale} it would be {w * self.scale}×"
                                    f"{h * self.scale}; the limit is {self.limits.max_output_pixels} output pixels "
                                    "per frame")
            if self.size is not None:
                raise InvalidVideo(f"frame {n} is {w}×{h} but the video's frames are {self.size[0]}×{self.size[1]}: "
                                   "a frame size that changes mid-stream is not supported (re-encode it at one size)")
            if w < 1 or h < 1:
                raise InvalidVideo(f"frame {n} is {w}×{h}")
            self.size = size
            self.rotation = _rotation(frame)
        seconds = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else (n - 1) / self.rate
        self._check_time("video", seconds)

    def _check_time(self, kind: str, seconds: float) -> None:
        start = self.starts.setdefault(kind, seconds)
        if seconds - start > self.limits.max_duration_s:
            raise VideoTooLarge(f"the video lasts more than {self.limits.max_duration_s:g} s (the limit): its {kind} "
                                f"reaches {seconds - start:.1f} s")

    def _audio(self, packet: av.Packet) -> Iterator[_Item]:
        if packet.pts is not None and packet.time_base:
            self._check_time("audio", float(packet.pts * packet.time_base))
        if self.audio_plan == "copy":
            yield _Item("audio", packet=packet, size=packet.size + _PACKET_OVERHEAD)
        elif self.audio_plan == "reencode":
            try:
                frames = packet.decode()
            except av.error.FFmpegError:  # a corrupt audio packet is skipped, as FFmpeg's command line does
                self.audio_errors += 1
                return
            if frames:
                size = sum(p.buffer_size for f in frames for p in f.planes) + _PACKET_OVERHEAD
                yield _Item("audio", frames=frames, size=size)

    def next_item(self) -> _Item | None:
        try:
            return next(self.items, None)
        except av.error.DecoderNotFoundError:
            raise UnsupportedVideo(f"no decoder for the {self.video.codec_context.name} codec in this build") from None
        except av.error.FFmpegError as exc:
            raise InvalidVideo(f"the video is corrupt after frame {self.decoded}: {_reason(exc)}") from None

    def close_input(self) -> None:
        if self.inp is not None:
            self.inp.close()
            self.inp = None

    # -- encode thread ----------------------------------------------------------------------

    def choose_encoder(self, width: int, height: int) -> encoders.VideoEncoder:
        """The encoder for ``width``×``height`` output frames (may probe NVENC once: the encode thread's job)."""
        c = self.config
        self.encoder = encoders.choose(self.format, width - width % 2, height - height % 2, asked=c.video_encoder,
                                       x264_preset=c.x264_preset, x264_crf=c.x264_crf, vp9_crf=c.vp9_crf)
        return self.encoder

    def _open_output(self, width: int, height: int) -> None:
        muxer = VIDEO_FORMATS[self.format][0]
        encoder = self.encoder or self.choose_encoder(width, height)
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        out = av.open(str(self.dst), "w", format=muxer)
        self.out = out
        stream = out.add_stream(encoder.name, rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = width - width % 2, height - height % 2, "yuv420p"
        stream.codec_context.time_base = self.time_base
        stream.time_base = self.time_base
        stream.options = dict(encoder.options)
        if self.rotation:
            stream.set_display_rotation(self.rotation)
        self.out_video = stream
        if self.audio is not None and self.audio_plan == "copy":
            self.out_audio = out.add_stream_from_template(self.audio)
        elif self.audio is not None and self.audio_plan == "reencode":
            target = _REENCODE_AUDIO[self.format]
            rates = av.codec.Codec(target, "w").audio_rates or ()
            rate = self.audio.rate if self.audio.rate in rates else 48000
            self.out_audio = out.add_stream(target, rate=rate)
            self.out_audio.layout = "stereo" if (self.audio.channels or 2) >= 2 else "mono"
            self.resampler = av.AudioResampler(format=self.out_audio.codec_context.format or "fltp",
                                               layout=self.out_audio.layout, rate=rate)
        for item in self.pending_audio:
            self._write_audio(item)
        self.pending_audio.clear()

    def mux_audio(self, item: _Item) -> None:
        if self.out is None:
            self.pending_audio.append(item)  # the output opens with the first video frame
            return
        self._write_audio(item)

    def _write_audio(self, item: _Item) -> None:
        assert self.out is not None
        self.written_audio += item.size
        if item.packet is not None:
            item.packet.stream = self.out_audio
            self.out.mux(item.packet)
            return
        assert self.resampler is not None and item.frames is not None
        for frame in item.frames:
            frame.pts = None  # the encoder counts samples itself
            for resampled in self.resampler.resample(frame):
                self.out.mux(self.out_audio.encode(resampled))

    def take_written_audio(self) -> int:
        """Audio bytes muxed since the last call (the event loop reads it after each encode-thread call)."""
        written, self.written_audio = self.written_audio, 0
        return written

    def encode_frame(self, image: Image.Image, pts: int | None) -> None:
        if self.out is None:
            self._open_output(image.width, image.height)
        assert self.out is not None
        w, h = self.out_video.width, self.out_video.height
        pixels = np.asarray(image)
        if pixels.shape[0] != h or pixels.shape[1] != w:
            if pixels.shape[0] - h > 1 or pixels.shape[1] - w > 1 or pixels.shape[0] < h or pixels.shape[1] < w:
                raise AssertionError(f"frame {self.encoded + 1} is {pixels.shape[1]}×{pixels.shape[0]}, not {w}×{h}")
            pixels = np.ascontiguousarray(pixels[:h, :w])  # an odd side loses its last row or column (yuv420p)
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24" if pixels.ndim == 3 else "gray").reformat(
            format="yuv420p")
        if pts is None:
            pts = round(self.encoded / (self.rate * self.time_base))
        if self.last_pts is not None and pts <= self.last_pts:
            pts = self.last_pts + 1  # timestamps must increase; a duplicate is nudged, never dropped
        frame.pts, frame.time_base = pts, self.time_base
        self.last_pts = pts
        self._mux_video(self.out_video.encode(frame))
        self.encoded += 1

    def _mux_video(self, packets: list[av.Packet]) -> None:
        assert self.out is not None
        self.out.mux(packets)
        self.written += len(packets)  # one packet per frame (H.264, HEVC, VP9 superframes)

    def finish(self) -> None:
        """Flush the encoders and close the output (an empty video is an error, not an empty file)."""
        if self.out is None:
            raise InvalidVideo("the video track holds no decodable frame")
        self._mux_video(self.out_video.encode(None))
        self.written = self.encoded  # every frame is out once the encoder is flushed
        if self.resampler is not None:
            for resampled in self.resampler.resample(None):
                self.out.mux(self.out_audio.encode(resampled))
            self.out.mux(self.out_audio.encode(None))
        self.out.close()
        self.out = None
        if self.audio_errors:
            self.audio_mode += f" ({self.audio_errors} corrupt audio packets skipped)"

    def abort(self) -> None:
        if self.out is not None:
            with contextlib.suppress(Exception):
                self.out.close()
            self.out = None
        self.dst.unlink(missing_ok=True)


class _AudioRoom:
    """Audio bytes between demux and mux, held to a budget (on the event loop)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.held = limit, 0
        self.freed = asyncio.Event()

    async def take(self, size: int, seen_video: bool) -> None:
        """Wait until ``size`` more fits (one item always does); before any video frame, fail instead.

        Before the first video frame nothing can be written (the output opens
        with it), so waiting would wait for ever: pre-roll past the budget is
        the file's fault.
        """
        while self.held and self.held + size > self.limit:
            if not seen_video:
                raise VideoTooLarge(f"more than {self.limit // 1024} KiB of audio comes before the first video frame "
                                    "(the limit of audio held before it can be written)")
            self.freed.clear()
            await self.freed.wait()
        self.held += size

    def give(self, size: int) -> None:
        if size:
            self.held -= size
            self.freed.set()


async def upscale_video(
    pipeline: Pipeline,
    src_path: Path | str,
    dst_path: Path | str,
    scale: int,
    fmt: str = "mp4",
    progress: Progress | None = None,
    *,
    config: EncoderConfig | None = None,
) -> VideoResult:
    """Super-resolve the video at ``src_path`` ×``scale`` into ``dst_path`` (``fmt``: mp4, webm or same).

    ``progress(frames_done, frames_total)`` is called on the event loop after each
    encoded frame (``frames_total`` is the header's estimate; the last call has the
    true count for both). Raises :class:`~app.video.errors.VideoError` for a bad
    video or one past the limits of ``config`` (:class:`~app.video.errors.VideoTimeout`
    past ``config.timeout_s``), the engine's errors (``EngineClosed``,
    ``DeadlineExceeded``, ``TooManyTiles``) as they come; cancelling it stops the
    decode, drops the frames in flight and deletes the partial output.
    """
    config = config or EncoderConfig()
    pipeline.check_scale(scale)
    started = time.perf_counter()
    t = _Transcoder(Path(src_path), Path(dst_path), scale, fmt, config)
    try:
        async with asyncio.timeout(config.timeout_s) as deadline:
            slots = await _run(pipeline, t, scale, config, progress)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise VideoTimeout(f"the video job ran past its time limit of {config.timeout_s:g} s "
                           f"after {t.encoded} frames") from None
    fps, seconds = float(t.rate), time.perf_counter() - started
    return VideoResult(format=t.format, frames=t.encoded, width=t.out_video.width, height=t.out_video.height,
                       fps=fps, duration_s=t.encoded / fps, audio=t.audio_mode, seconds=seconds,
                       frames_in_flight=slots, encoder=t.encoder.describe() if t.encoder else "",
                       frames_per_s=round(t.encoded / seconds, 2) if seconds > 0 else 0.0)


async def _run(pipeline: Pipeline, t: _Transcoder, scale: int, config: EncoderConfig, progress: Progress | None) -> int:
    """Decode, super-resolve and encode ``t``'s video; the frames in flight allowed (see :func:`frames_in_flight`)."""
    decode_pool = ThreadPoolExecutor(1, thread_name_prefix="video-decode")
    encode_pool = ThreadPoolExecutor(1, thread_name_prefix="video-encode")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[_Item | None] = asyncio.Queue()
    tasks: set[asyncio.Task[Image.Image]] = set()
    audio = _AudioRoom(config.audio_buffer_bytes)
    in_flight: asyncio.Semaphore | None = None  # sized by the first frame (every frame has its size)
    slots = 0

    async def super_resolve(image: Image.Image) -> Image.Image:
        frame = DecodedImage(color=image, alpha=None, icc_profile=None, source_format="video", source_mode=image.mode)
        while True:
            try:
                return await pipeline.upscale_image(frame, scale, deadline=time.monotonic() + config.frame_timeout_s)
            except QueueFull:  # /upscale traffic filled the queue: this frame waits, the job goes on
                await asyncio.sleep(config.retry_s)
            except RESTARTING:  # the worker or the device process is coming back: so does this frame
                if pipeline.lost is not None:
                    raise  # this process's own device: only a restart of the process helps
                await asyncio.sleep(config.restart_retry_s)

    async def produce() -> None:
        nonlocal in_flight, slots
        while (item := await loop.run_in_executor(decode_pool, t.next_item)) is not None:
            if item.kind == "video":
                assert item.image is not None
                if in_flight is None:
                    w, h = item.image.width, item.image.height
                    encoder = await loop.run_in_executor(encode_pool, t.choose_encoder, w * scale, h * scale)
                    slots = frames_in_flight(w, h, scale, config, encoder.memory_bytes)
                    in_flight = asyncio.Semaphore(slots)
                await in_flight.acquire()  # this frame's bytes, reserved before its work
                item.task = asyncio.create_task(super_resolve(item.image))
                tasks.add(item.task)
                item.task.add_done_callback(tasks.discard)
                item.image = None
            else:
                await audio.take(item.size, in_flight is not None)
            queue.put_nowait(item)
        queue.put_nowait(None)

    async def consume() -> None:
        while (item := await queue.get()) is not None:
            if item.kind == "audio":
                await loop.run_in_executor(encode_pool, t.mux_audio, item)
                audio.give(t.take_written_audio())
                continue
            assert item.task is not None and in_flight is not None
            try:
                image = await item.task
            finally:
                in_flight.release()
            await loop.run_in_executor(encode_pool, t.encode_frame, image, item.pts)
            audio.give(t.take_written_audio())  # the first frame opens the output and writes the pre-roll
            if progress is not None:  # frames in the file: the job's frames/s is output frames per second
                progress(t.written, max(t.total, t.encoded))
        await loop.run_in_executor(encode_pool, t.finish)
        if progress is not None:
            progress(t.encoded, t.encoded)

    workers: list[asyncio.Task[None]] = []
    try:
        await loop.run_in_executor(decode_pool, t.open_input)
        workers = [asyncio.create_task(produce()), asyncio.create_task(consume())]
        done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        for worker in done:
            worker.result()  # raises the first failure
        await asyncio.gather(*workers)
    except BaseException:
        await _cancel_and_wait([*workers, *tasks])
        await loop.run_in_executor(encode_pool, t.abort)
        raise
    finally:
        await loop.run_in_executor(decode_pool, t.close_input)
        decode_pool.shutdown(wait=False)
        encode_pool.shutdown(wait=False)
    return slots


async def _cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that carried on.

    A cancellation can be lost on its way down (asyncio.wait_for of Python 3.11 returns an answer
    that meets it, python/cpython#86296); a consumer that carried on would wait for ever on a
    queue its cancelled producer no longer fills, and the job would never end.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
    await asyncio.gather(*tasks, return_exceptions=True)  # their exceptions retrieved: nothing logged as lost


def _rotation(frame: av.VideoFrame) -> int:
    try:
        angle = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return int(round(angle)) % 360 if angle else 0


def _reason(exc: av.error.FFmpegError) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
