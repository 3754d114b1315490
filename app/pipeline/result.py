"""What the pipeline answers: the encoded image and what the caller reports about it."""

from __future__ import annotations

from dataclasses import dataclass

from app.imaging.encode import OUTPUT_FORMATS
from app.pipeline.timings import Timings


@dataclass(frozen=True)
class UpscaleResult:
    body: bytes
    format: str  # png, jpeg or webp
    model: str  # the manifest name of the model that ran
    scale: int
    input_size: tuple[int, int]  # (width, height)
    output_size: tuple[int, int]
    timings: Timings

    @property
    def media_type(self) -> str:
        return OUTPUT_FORMATS[self.format]
