"""Files the service ships: the sample photograph the page and ``GET /debug/channels`` start from (README.md here)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_IMAGE = Path(__file__).resolve().with_name("sample.png")
