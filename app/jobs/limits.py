"""The jobs' bounds and settings in one frozen object, built from ``SR_JOBS_*`` (:func:`from_settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from app.video.probe import VideoLimits
from app.video.transcode import EncoderConfig

if TYPE_CHECKING:
    from app.config import Settings


@dataclass(frozen=True)
class JobLimits:
    root: Path
    ttl_s: float = 24 * 3600.0  # finished jobs' results are kept this long, then answer 410
    max_bytes: int = 4 << 30  # all files under root together (uploads, results)
    max_upload_bytes: int = 1 << 30  # one upload
    max_image_bytes: int = 128 << 20  # one still image (it is decoded from memory)
    max_queued: int = 16  # jobs waiting in this process; beyond it: 503 + Retry-After
    concurrency: int = 1  # jobs running at once in this process
    image_timeout_s: float = 600.0  # one still image job in the engine
    video: VideoLimits = field(default_factory=VideoLimits)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    redis_url: str = ""  # set: records, queue, leases, cancels and quota on Redis; root a shared volume
    redis_prefix: str = "sr:jobs:"
    lease_s: float = 30.0  # a shared backend's hold on a job, renewed every third of it

    def __post_init__(self) -> None:
        for name in ("ttl_s", "max_bytes", "max_upload_bytes", "max_image_bytes", "max_queued", "concurrency", "lease_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")


def from_settings(settings: Settings) -> JobLimits:
    """The service's job bounds: ``SR_JOBS_*`` plus the still pipeline's output-pixel limit."""
    video = VideoLimits(max_duration_s=settings.jobs_max_duration_s, max_frames=settings.jobs_max_frames,
                        max_frame_pixels=settings.jobs_max_frame_pixels, max_output_pixels=settings.max_output_pixels)
    return JobLimits(
        root=settings.jobs_dir,
        ttl_s=settings.jobs_ttl_s,
        max_bytes=settings.jobs_max_bytes,
        max_upload_bytes=settings.jobs_max_upload_bytes,
        max_queued=settings.jobs_max_queued,
        concurrency=settings.jobs_concurrency,
        redis_url=settings.jobs_redis_url,
        redis_prefix=settings.jobs_redis_prefix,
        lease_s=settings.jobs_lease_s,
        image_timeout_s=min(max(settings.request_timeout_s, 600.0), settings.jobs_timeout_s),
        video=video,
        encoder=EncoderConfig(x264_crf=settings.jobs_x264_crf, x264_preset=settings.jobs_x264_preset,
                              vp9_crf=settings.jobs_vp9_crf, frames_in_flight=settings.jobs_frames_in_flight,
                              max_frames=settings.jobs_max_frames, limits=video,  # every frame, while decoding
                              memory_bytes=settings.jobs_video_memory_mb << 20,
                              audio_buffer_bytes=settings.jobs_audio_buffer_mb << 20,
                              timeout_s=settings.jobs_timeout_s, video_encoder=settings.jobs_video_encoder),
    )
