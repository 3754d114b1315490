"""Why the engine refused or abandoned work; the HTTP layer maps these to status codes."""

from __future__ import annotations


class EngineError(Exception):
    """Base class for engine refusals."""


class QueueFull(EngineError):
    """Admitting the request would exceed the queue bound: retry later (503/429)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManyTiles(EngineError):
    """One image needs more tiles than the whole queue holds: it can never be admitted (413)."""


class DeadlineExceeded(EngineError):
    """The request's deadline passed before its tiles were computed (504)."""


class ModelError(EngineError, RuntimeError):
    """The model call for the request's batch raised: only that batch's requests fail (500 ``model_error``).

    Also a ``RuntimeError``, as the model's own failures were before it wrapped them (its cause is kept).
    """


class WorkerRestarted(EngineError):
    """The batching worker died while the request's tiles were in its batch; it is being restarted (503)."""


class DeviceLost(EngineError):
    """The device failed with an error every later call would repeat (a sticky CUDA error): the process that
    holds it must restart, and does (the device process exits; in-process, ``/healthz`` says 503). Retry (503)."""


class EngineClosed(EngineError):
    """The engine is shutting down and admits no new work (503)."""


class UnknownScale(EngineError):
    """No model is loaded for the requested scale; ``served`` lists the scales that are."""

    def __init__(self, message: str, served: tuple[int, ...] = ()) -> None:
        super().__init__(message)
        self.served = served


# What the engine refuses while what computes is being restarted (the batching worker, the device process, or a
# lost device's process): work that can wait, such as a job, waits and offers it again instead of failing
# (unless the lost device is its own process's: ``Pipeline.lost``).
RESTARTING: tuple[type[EngineError], ...] = (WorkerRestarted, DeviceLost)
RESTART_RETRY_S = 0.5  # how long such work waits before it offers itself again
