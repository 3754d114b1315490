"""Where a request's time went, stage by stage: for ``Server-Timing``, metrics and the benchmark."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class Timings:
    """Seconds per stage; ``model`` includes the wait in the engine's queue."""

    decode: float = 0.0
    model: float = 0.0
    compose: float = 0.0
    encode: float = 0.0

    @property
    def total(self) -> float:
        return self.decode + self.model + self.compose + self.encode

    def server_timing(self) -> str:
        """The ``Server-Timing`` header value, in milliseconds."""
        return ", ".join(f"{f.name};dur={getattr(self, f.name) * 1000:.1f}" for f in fields(self))
