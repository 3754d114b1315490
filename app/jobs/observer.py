"""Hooks through which the jobs report what they do, without depending on a metrics library.

As the engine's and the pipeline's observers: the HTTP app plugs Prometheus in
(:class:`app.observability.adapters.JobsMetrics`); every method is a no-op here.
"""

from __future__ import annotations


class JobsObserver:
    """Receives one call per event; override what you need."""

    def entered(self, kind: str, state: str) -> None:
        """A job of ``kind`` (video, image) entered ``state``."""

    def active(self, state: str, count: int) -> None:
        """This process's jobs now ``state`` (queued or running)."""

    def backend(self, state: str, count: int) -> None:
        """Jobs now ``state`` in the whole backend (every replica), as the heartbeat counted them."""

    def video_frames(self, scale: int, frames: int) -> None:
        """Video frames super-resolved and written."""
