"""The engine's, the pipeline's and the jobs' events as Prometheus metrics: their observers, plugged in by whoever builds them.

The engine and the pipeline report through plain observer interfaces and know no
metrics library; the HTTP app and the device process plug these in.
"""

from __future__ import annotations

from contextvars import ContextVar

from app.engine.observer import EngineObserver
from app.jobs.observer import JobsObserver
from app.observability import metrics
from app.pipeline.observer import PipelineObserver

# The rejection reasons already counted for the request being served (the engine counts
# ``client_gone`` itself when it drops a cancelled request's tiles). A mutable set, so the
# tasks a route spawns (they run in copies of its context) add to the request's own set.
COUNTED: ContextVar[set[str] | None] = ContextVar("sr_counted_rejections", default=None)


class PrometheusObserver(EngineObserver):
    """Engine events → ``sr_*`` metrics."""

    def queue_depth(self, tiles: int) -> None:
        metrics.QUEUE_DEPTH.set(tiles)

    def queue_wait(self, seconds: float) -> None:
        metrics.observe_queue_wait(seconds)

    def batch(self, scale: int, device: str, size: int, max_batch: int, seconds: float) -> None:
        metrics.observe_batch(scale=scale, device=device, tiles=size, max_batch=max_batch, seconds=seconds)

    def worker_restarted(self) -> None:
        metrics.WORKER_RESTARTS.inc()

    def device_lost(self) -> None:
        metrics.DEVICE_LOST.inc()

    def fallback(self, reason: str) -> None:
        metrics.count_fallback(reason)

    def rejected(self, reason: str) -> None:
        metrics.reject(reason)
        counted = COUNTED.get()
        if counted is not None:
            counted.add(reason)


class PipelineMetrics(PipelineObserver):
    """Pipeline events → ``sr_stage_duration_seconds`` and the pixel counters."""

    def stage(self, name: str, seconds: float) -> None:
        metrics.observe_stage(name, seconds)

    def pixels(self, scale: int, input_pixels: int, output_pixels: int) -> None:
        metrics.count_pixels(scale, input_pixels, output_pixels)

    def jpeg_codec(self, codec: str) -> None:
        metrics.count_jpeg_codec(codec)


class JobsMetrics(JobsObserver):
    """Job events → ``sr_jobs_*`` and ``sr_video_frames_total``."""

    def entered(self, kind: str, state: str) -> None:
        metrics.job_entered(kind, state)

    def active(self, state: str, count: int) -> None:
        metrics.set_jobs_active(state, count)

    def backend(self, state: str, count: int) -> None:
        metrics.set_jobs_backend(state, count)

    def video_frames(self, scale: int, frames: int) -> None:
        metrics.count_video_frames(scale, frames)
