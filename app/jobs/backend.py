"""What the jobs manager needs from where jobs live: one interface, two implementations.

:class:`app.jobs.store.JobStore` (the default) keeps everything in ``SR_JOBS_DIR`` on
one host: ``job.json`` records, ``flock`` ownership, ``cancel`` files, a quota under a
lock of the folder, and each process's own queue. :class:`app.jobs.redis_store.RedisJobStore`
(``SR_JOBS_REDIS_URL``) puts the records, the queue, ownership leases with heartbeats,
cancels and the quota's accounts on Redis, and keeps only the uploads and results as
files in ``SR_JOBS_DIR``, which every replica then mounts: any replica answers for any
job and runs queued work when it has room.

The manager (:mod:`app.jobs.manager`) talks to :class:`JobBackend` only, so the rules
(admission, running, cancels, expiry, takeover) are written once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.jobs.store import JobRecord

Lease = Any  # what lock() returns: an flock'd descriptor (folder) or (job id, token) (Redis)


class JobsUnavailable(Exception):
    """No new job now: ``status`` 503 (queue full, shutting down, backend away) or 507 (storage quota full)."""

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.retry_after_s = status, code, retry_after_s


class BackendUnavailable(JobsUnavailable):
    """The shared jobs backend (Redis) cannot be reached: every jobs route answers 503 with this."""

    def __init__(self, message: str = "the jobs backend is unavailable; retry shortly") -> None:
        super().__init__(503, "jobs_backend_unavailable", message, 5)


class LeaseLost(Exception):
    """A fenced write by an owner whose lease another replica has since taken: the job is no longer ours."""


class JobBackend(ABC):
    """Records, ownership, cancels, quota and queue of the jobs; the files are always under :attr:`root`."""

    root: Path
    heartbeat_s: float = 5.0  # how often the manager renews its leases and refreshes the backend gauges
    janitor_s: float | None = None  # at most this between janitor passes (a shared backend: a lease's quarter)
    shared_queue: bool = False  # any replica runs a queued job (requeue() hands work to another process)

    # -- files (both backends keep uploads and results as files under root) ---------------------
    @abstractmethod
    def folder(self, job_id: str) -> Path: ...
    @abstractmethod
    def create(self, job_id: str) -> Path: ...
    @abstractmethod
    def result_file(self, record: JobRecord) -> Path | None: ...
    @abstractmethod
    def drop_files(self, job_id: str, keep: tuple[str, ...] = ...) -> None: ...

    # -- records ---------------------------------------------------------------------------------
    @abstractmethod
    def write(self, record: JobRecord, lease: Lease = None) -> None:
        """Store the record; with ``lease``, only while it is still held (:class:`LeaseLost` if not)."""

    @abstractmethod
    def read(self, job_id: str) -> JobRecord | None: ...
    @abstractmethod
    def job_ids(self) -> list[str]:
        """Every job the janitor should look at: records, uploads in progress, stray folders."""

    @abstractmethod
    def remove(self, job_id: str) -> None:
        """Forget the job and delete its files; its owner, wherever it runs, sees a cancel."""

    @abstractmethod
    def expire(self, record: JobRecord, tombstone_until: float) -> None:
        """Delete the job's files; keep ``record`` (flagged expired) until ``tombstone_until`` so it answers 410."""

    # -- ownership -------------------------------------------------------------------------------
    @abstractmethod
    def lock(self, job_id: str) -> Lease:
        """Own a new job (its upload starts): held until :meth:`unlock`, or until this process dies."""

    @abstractmethod
    def unlock(self, lease: Lease) -> None: ...
    @abstractmethod
    def renew(self, leases: Sequence[Lease]) -> list[Lease]:
        """Heartbeat: extend the leases; those another replica has taken meanwhile are returned."""

    @abstractmethod
    def owner_alive(self, job_id: str) -> bool: ...
    @abstractmethod
    def claim_orphan(self, job_id: str) -> Lease | None:
        """Own an active job whose owner is gone, to take it over or fail it; ``None`` while it has one.

        A job waiting in a shared queue has no owner and is not an orphan.
        """

    def stray(self, job_id: str, now: float) -> bool:
        """A folder (or entry) with no record whose uploader is gone: the janitor removes it."""
        return False

    # -- cancels ---------------------------------------------------------------------------------
    @abstractmethod
    def request_cancel(self, job_id: str) -> None: ...
    @abstractmethod
    def cancel_requested(self, job_id: str) -> bool: ...

    # -- space -----------------------------------------------------------------------------------
    @abstractmethod
    def usage(self) -> int: ...
    @abstractmethod
    def reserve(self, job_id: str, need: int, limit: int, ahead: int = 0) -> int: ...
    @abstractmethod
    def settle(self, job_id: str) -> None:
        """The job's files as they are now are what it holds against the quota (its reservation ends)."""

    # -- the queue -------------------------------------------------------------------------------
    @abstractmethod
    def enqueue(self, job_id: str, lease: Lease) -> bool:
        """Queue an admitted job; ``True`` when the queue is shared: the lease is released with it and any
        replica may run it, so the caller forgets it; ``False``: this process keeps and runs it."""

    @abstractmethod
    async def next_job(self) -> tuple[str, Lease]:
        """Wait for a queued job to run; with a shared queue it comes owned (its lease taken), else ``None``."""

    def waiting(self) -> int:
        """Jobs waiting in a shared queue (0 for a per-process queue: the manager counts its own)."""
        return 0

    def requeue(self, record: JobRecord, lease: Lease) -> bool:
        """Put a job whose owner died back in the queue (``record`` already reset); ``False`` if this backend
        cannot hand work to another process, and the job is failed instead."""
        return False

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs queued and running in the whole backend (every process, every replica): ``/metrics``."""

    def close(self) -> None:  # noqa: B027 - only a networked backend has something to release
        """Release connections."""


__all__ = ["BackendUnavailable", "JobBackend", "JobsUnavailable", "Lease", "LeaseLost"]

