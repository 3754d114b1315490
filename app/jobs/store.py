"""Jobs on disk: one folder per job under ``SR_JOBS_DIR``, its ``job.json`` the truth every process reads.

Several worker processes (``SR_WORKERS``) share the folder: any of them answers
``GET /jobs/{id}`` from the file, the one that accepted the job runs it. The
owner holds an exclusive ``flock`` on the job's ``lock`` file from submission
to the end, so "is the owner still alive?" has an exact answer that needs no
pid bookkeeping: the kernel drops the lock when the process dies. A job found
queued or running whose lock can be taken was interrupted (crash, kill,
restart) and is marked failed with that reason, never left "running".

A cancel from another process is a ``cancel`` file in the job's folder (or the
folder gone); the owner looks for it as it goes. Writes of ``job.json`` are
atomic (temporary file + rename), so a reader never sees half a record.

Expiry keeps a tombstone: the result and input files are deleted, ``job.json``
stays with ``expired`` set, so the result answers 410 rather than 404 until
the tombstone itself goes (after :data:`TOMBSTONE_FACTOR` × the TTL, at least a day).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)
TOMBSTONE_FACTOR = 7
_ID = re.compile(r"^[0-9a-f]{32}$")
RECORD = "job.json"
LOCK = "lock"
CANCEL = "cancel"


@dataclass
class JobRecord:
    """What ``GET /jobs/{id}`` tells, and what the owner needs to run and serve the job."""

    id: str
    kind: str  # "video" or "image"
    scale: int
    format: str  # the output format: mp4, webm, png, jpeg, webp
    media_type: str
    input_name: str  # file name of the upload inside the job folder
    result_name: str  # file name of the result once done
    state: str = QUEUED
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    expires: float | None = None  # set when the job finishes: finished + TTL
    expired: bool = False
    frames_done: int = 0
    frames_total: int = 0
    progress: float = 0.0
    fps: float | None = None  # frames per second so far (video)
    error: str | None = None
    error_code: str | None = None
    input_bytes: int = 0
    result_bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # what the probe found; after the run, what was written
    owner_pid: int = field(default_factory=os.getpid)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def eta_s(self, now: float | None = None) -> float | None:
        """Seconds left, from the rate so far; ``None`` until there is a rate (and once finished: 0)."""
        if self.state in FINISHED:
            return 0.0
        if self.state != RUNNING or self.started is None or self.progress <= 0:
            return None
        elapsed = (now or time.time()) - self.started
        return max(0.0, elapsed * (1 - self.progress) / self.progress)


def valid_id(job_id: str) -> bool:
    return bool(_ID.match(job_id))


def new_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """The jobs folder: records, files, locks, usage."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def folder(self, job_id: str) -> Path:
        if not valid_id(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    # -- records ----------------------------------------------------------------------------

    def create(self, job_id: str) -> Path:
        folder = self.folder(job_id)
        folder.mkdir()
        return folder

    def write(self, record: JobRecord) -> None:
        """Atomically replace the record; ``FileNotFoundError`` when the job was deleted meanwhile."""
        folder = self.folder(record.id)
        tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, folder / RECORD)

    def read(self, job_id: str) -> JobRecord | None:
        try:
            return JobRecord.from_dict(json.loads((self.folder(job_id) / RECORD).read_text()))
        except (KeyError, FileNotFoundError, NotADirectoryError, json.JSONDecodeError, TypeError):
            return None

    def records(self) -> Iterator[JobRecord]:
        for entry in self.root.iterdir():
            if entry.is_dir() and valid_id(entry.name):
                record = self.read(entry.name)
                if record is not None:
                    yield record

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    # -- ownership and cancellation ---------------------------------------------------------

    def lock(self, job_id: str) -> int:
        """Take the job's owner lock for this process; the descriptor holds it until :meth:`unlock`."""
        fd = os.open(self.folder(job_id) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def owner_alive(self, job_id: str) -> bool:
        """Whether some live process holds the job's lock (tried without blocking, released at once)."""
        try:
            fd = os.open(self.folder(job_id) / LOCK, os.O_RDWR)
        except (FileNotFoundError, KeyError):
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the lock if we got it
        return False

    def request_cancel(self, job_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.folder(job_id) / CANCEL).touch()

    def cancel_requested(self, job_id: str) -> bool:
        folder = self.folder(job_id)
        return (folder / CANCEL).exists() or not (folder / RECORD).exists()

    # -- space ------------------------------------------------------------------------------

    def usage(self) -> int:
        """Bytes of every file under the jobs folder (uploads in progress included)."""
        total = 0
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total

    def drop_files(self, job_id: str, keep: tuple[str, ...] = (RECORD, LOCK)) -> None:
        """Delete a job's files except ``keep`` (the record and lock, by default)."""
        folder = self.folder(job_id)
        with contextlib.suppress(FileNotFoundError):
            for entry in folder.iterdir():
                if entry.name not in keep:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
