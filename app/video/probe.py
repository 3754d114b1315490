"""What an uploaded video is, checked against the job limits before a job is queued.

Only the container header and the first frame are read: enough to refuse a
file that is not a video, a codec this FFmpeg build cannot decode, or a clip
over the duration, frame-count or pixel limits, with a 4xx at upload time
instead of a job that fails later. Headers can lie (a frame count is only an
estimate, and any frame may differ from the first), so
:func:`app.video.transcode.upscale_video` checks every frame again, and the
decoder itself is told the pixel limit (:func:`limit_decoder`) so that a frame
over it is refused before FFmpeg allocates it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import av.error

from app.video.errors import InvalidVideo, UnsupportedVideo, VideoTooLarge


@dataclass(frozen=True)
class VideoLimits:
    max_duration_s: float = 600.0
    max_frames: int = 36_000
    max_frame_pixels: int = 1920 * 1080  # input frame (width × height)
    max_output_pixels: int = 8192 * 8192  # output frame, as the still pipeline's limit


@dataclass(frozen=True)
class VideoInfo:
    container: str  # FFmpeg's demuxer name, e.g. "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"
    video_codec: str
    audio_codec: str | None
    width: int  # as coded (rotation is metadata, kept as such)
    height: int
    fps: float
    duration_s: float
    frames: int  # the header's count, else duration × fps: an estimate for progress
    rotation: int  # display rotation in degrees (counter-clockwise), 0 when none

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def frame_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    """The stream's average frame rate, else FFmpeg's guess; ``None`` when neither is known."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def probe_video(path: Path, scale: int, limits: VideoLimits = VideoLimits()) -> VideoInfo:
    """Open ``path``, decode its first frame, and check it for a ×``scale`` job (raises a :class:`VideoError`)."""
    try:
        container = av.open(str(path), metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"not a readable video: {_reason(exc)}") from None
    with container:
        if not container.streams.video:
            raise UnsupportedVideo("the file has no video track")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        ctx = video.codec_context
        if ctx is None or not ctx.name:
            raise UnsupportedVideo("the video codec is not supported by this build")
        width, height = ctx.width, ctx.height
        if width < 1 or height < 1:
            raise InvalidVideo(f"the video track declares a {width}×{height} frame")
        check_frame_size(width, height, scale, limits)
        rate = frame_rate(video)
        if rate is None:
            raise InvalidVideo("the video track has no frame rate")
        duration = _duration(container, video)
        frames = video.frames or (round(duration * float(rate)) if duration else 0)
        if duration > limits.max_duration_s:
            raise VideoTooLarge(f"the video lasts {duration:.1f} s; the limit is {limits.max_duration_s:g} s")
        if frames > limits.max_frames:
            raise VideoTooLarge(f"the video has {frames} frames; the limit is {limits.max_frames}")
        first = _first_frame(container, video, limits)
        if (first.width, first.height) != (width, height):
            check_frame_size(first.width, first.height, scale, limits)
        return VideoInfo(
            container=container.format.name, video_codec=ctx.name, audio_codec=audio.codec_context.name if audio else None,
            width=first.width, height=first.height, fps=float(rate), duration_s=duration,
            frames=max(frames, 1), rotation=_rotation(first),
        )


def check_frame_size(width: int, height: int, scale: int, limits: VideoLimits) -> None:
    """Raise :class:`VideoTooLarge` when a frame, or its ×``scale`` output, is over the limits."""
    if width * height > limits.max_frame_pixels:
        raise VideoTooLarge(f"frames are {width}×{height}; the limit is {limits.max_frame_pixels} pixels per frame")
    out = width * scale * height * scale
    if out > limits.max_output_pixels:
        raise VideoTooLarge(f"×{scale} frames would be {width * scale}×{height * scale}; "
                            f"the limit is {limits.max_output_pixels} output pixels per frame")


def limit_decoder(stream: av.video.stream.VideoStream, limits: VideoLimits) -> None:
    """Make FFmpeg refuse, before allocating it, any frame over ``limits.max_frame_pixels``.

    Python sees a frame only once FFmpeg has decoded it; a 6000×6000 frame in a
    64×64 stream would already cost its buffers (times the decoder's frame
    threads). With ``max_pixels`` the decoder fails that packet with EINVAL
    (PyAV's ``ArgumentError``) instead: see :func:`oversize_frame`.
    """
    stream.codec_context.options = {**stream.codec_context.options, "max_pixels": str(limits.max_frame_pixels)}


def oversize_frame(number: int, limits: VideoLimits) -> VideoTooLarge:
    """The error for a frame the pixel-limited decoder refused (EINVAL: FFmpeg's image size check)."""
    return VideoTooLarge(f"frame {number} could not be decoded within the limit of {limits.max_frame_pixels} "
                         "pixels per frame: it is larger, or invalid")


def _duration(container: av.container.InputContainer, video: av.video.stream.VideoStream) -> float:
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    if video.duration is not None and video.time_base is not None:
        return float(video.duration * video.time_base)
    return 0.0


def _first_frame(
    container: av.container.InputContainer, video: av.video.stream.VideoStream, limits: VideoLimits
) -> av.VideoFrame:
    limit_decoder(video, limits)
    try:
        for frame in container.decode(video):
            return frame
    except av.error.ArgumentError:
        raise oversize_frame(1, limits) from None
    except av.error.DecoderNotFoundError:
        raise UnsupportedVideo(f"no decoder for the {video.codec_context.name} codec in this build") from None
    except av.error.FFmpegError as exc:
        raise InvalidVideo(f"the video could not be decoded: {_reason(exc)}") from None
    raise InvalidVideo("the video track holds no decodable frame")


def _rotation(frame: av.VideoFrame) -> int:
    try:
        angle = frame.rotation
    except (AttributeError, ValueError):
        return 0
    return int(round(angle)) % 360 if angle and math.isfinite(angle) else 0


def _reason(exc: av.error.FFmpegError) -> str:
    """FFmpeg's message without the file path (the client never needs our paths)."""
    return getattr(exc, "strerror", None) or type(exc).__name__
