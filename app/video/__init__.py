"""Video through the super-resolution pipeline with PyAV: probe with limits, then decode → SR → encode, streaming.

:func:`upscale_video` is the one entry point (the jobs manager and the command-line
upscaler both call it); :func:`probe_video` checks an upload before a job is queued.
"""

from app.video import encoders
from app.video.errors import InvalidVideo, UnsupportedVideo, VideoError, VideoTimeout, VideoTooLarge
from app.video.probe import VideoInfo, VideoLimits, probe_video
from app.video.transcode import VIDEO_FORMATS, EncoderConfig, VideoResult, output_format, upscale_video

__all__ = [
    "VIDEO_FORMATS", "EncoderConfig", "encoders", "InvalidVideo", "UnsupportedVideo", "VideoError", "VideoInfo", "VideoLimits",
    "VideoResult", "VideoTimeout", "VideoTooLarge", "output_format", "probe_video", "upscale_video",
]
