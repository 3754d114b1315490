"""Why a video was refused or failed; the jobs route maps these to 400 / 413 / 415 (a running job: its error)."""

from __future__ import annotations


class VideoError(Exception):
    """Base class: anything wrong with an uploaded video. ``code`` is the JSON error code."""

    code = "invalid_video"


class InvalidVideo(VideoError):
    """Not a video, truncated or corrupt (HTTP 400; a job that meets it mid-stream fails with it)."""


class UnsupportedVideo(VideoError):
    """A real container or codec this build cannot decode, or no video track (HTTP 415)."""

    code = "unsupported_media_type"


class VideoTooLarge(VideoError):
    """Over the duration, frame-count or per-frame pixel limits (HTTP 413)."""

    code = "video_too_large"


class VideoTimeout(VideoError):
    """The job ran past its wall-time limit (``SR_JOBS_TIMEOUT_S``): a long or hostile video cannot hold a runner."""

    code = "timeout"
