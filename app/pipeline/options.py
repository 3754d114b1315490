"""What a caller asks of the output — format, quality, lossless — checked before any pixel is touched."""

from __future__ import annotations

from dataclasses import dataclass

from app.imaging.encode import OUTPUT_FORMATS, format_like

SAME = "same"  # the input's format: JPEG → JPEG, WebP → WebP, anything else → PNG
OUTPUT_CHOICES = (*OUTPUT_FORMATS, SAME)


class InvalidOptions(ValueError):
    """Output options that cannot be honoured (the HTTP layer answers 422)."""


@dataclass(frozen=True)
class OutputOptions:
    format: str = "png"
    quality: int | None = None  # JPEG/WebP; None: the encoder's default
    lossless: bool = False  # WebP only (PNG is always lossless)

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_CHOICES:
            raise InvalidOptions(f"unknown output format {self.format!r}; choose one of {', '.join(OUTPUT_CHOICES)}")
        if self.quality is not None and not 1 <= self.quality <= 100:
            raise InvalidOptions(f"quality must be between 1 and 100, got {self.quality}")
        self._check(self.format)

    def _check(self, fmt: str) -> None:
        if self.lossless and fmt == "jpeg":
            raise InvalidOptions("JPEG cannot be lossless: ask for format=webp or png")
        if self.quality is not None and fmt == "png" and self.format == "png":  # a client's mistake: say so
            raise InvalidOptions("quality applies to JPEG and WebP; PNG is always lossless (its level is a "
                                 "server setting, SR_PNG_COMPRESS_LEVEL)")

    def resolve(self, source_format: str) -> str:
        """The concrete output format for an input of ``source_format`` (Pillow's name).

        With ``same``, ``quality`` applies where the answer is JPEG or WebP and is ignored for PNG answers
        (one query for a folder of mixed inputs).
        """
        fmt = format_like(source_format) if self.format == SAME else self.format
        self._check(fmt)
        return fmt
