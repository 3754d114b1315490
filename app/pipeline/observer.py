"""What the pipeline reports (stage times, pixels): a no-op here, Prometheus in the service."""

from __future__ import annotations


class PipelineObserver:
    def stage(self, name: str, seconds: float) -> None:
        """One stage of one request finished (``decode``, ``compose``, ``encode``)."""

    def pixels(self, scale: int, input_pixels: int, output_pixels: int) -> None:
        """A request was answered."""

    def jpeg_codec(self, codec: str) -> None:
        """A JPEG → JPEG request, with device JPEG on, was answered by ``device`` or ``pillow`` (the fallback)."""
