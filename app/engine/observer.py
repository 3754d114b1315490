"""Hooks through which the engine reports what it does, without depending on a metrics library.

The HTTP layer plugs Prometheus metrics in (``app.observability``); tests can
plug in a recorder. Every method has a no-op default.
"""

from __future__ import annotations

HALF_NONFINITE = "half_nonfinite"  # fp16 gave inf/NaN: the batch is recomputed in fp32
CUDA_OOM = "cuda_oom"  # the GPU ran out of memory: the batch is split in halves, a lone tile runs on the CPU
FALLBACK_REASONS = (HALF_NONFINITE, CUDA_OOM)


class EngineObserver:
    """Receives one call per event; override what you need."""

    def queue_depth(self, tiles: int) -> None:
        """Tiles waiting now (after every change)."""

    def queue_wait(self, seconds: float) -> None:
        """One tile's wait from admission to the start of its batch."""

    def batch(self, scale: int, device: str, size: int, max_batch: int, seconds: float) -> None:
        """One model call over ``size`` tiles."""

    def rejected(self, reason: str) -> None:
        """Work refused or dropped for load reasons: ``queue_full``, ``timeout`` or ``client_gone``."""

    def fallback(self, reason: str) -> None:
        """The runner left its fast path, for one of :data:`FALLBACK_REASONS`."""

    def worker_restarted(self) -> None:
        """The batching worker died and its supervisor is restarting it."""

    def device_lost(self) -> None:
        """The device failed for good (:class:`~app.engine.errors.DeviceLost`): its process must restart."""
