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

Nothing on disk is trusted: the root and every job folder are 0700 and must
belong to this process's user (a folder another local user pre-created is
refused, not used), a ``job.json`` that fails :func:`record_from` is no job,
and a result is served only as a regular file directly inside its job's folder.

The storage quota holds across processes: an upload reserves its bytes
(:meth:`JobStore.reserve`, a ``reserved`` file in its folder) under a
``flock`` of the root folder before it writes them, and :meth:`JobStore.usage` counts
each folder as the larger of its files and its reservation, so concurrent
uploads cannot each see the same free space.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from app.jobs.backend import JobBackend, Lease

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING)
FINISHED = (DONE, FAILED, CANCELLED)
TOMBSTONE_FACTOR = 7
_ID = re.compile(r"^[0-9a-f]{32}$")
RECORD = "job.json"
LOCK = "lock"
CANCEL = "cancel"
RESERVED = "reserved"  # bytes an upload in progress holds against the quota
KINDS = ("video", "image")
_INPUT_NAME = re.compile(r"^input\.[a-z0-9]{1,10}$")
_RESULT_NAME = re.compile(r"^result\.[a-z0-9]{1,10}$")
_FORMAT = re.compile(r"^[a-z0-9]{1,10}$")
_MEDIA_TYPE = re.compile(r"^[a-z]{1,20}/[a-z0-9.+-]{1,40}$")
_NUMBER = (int, float)

log = logging.getLogger(__name__)


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
    upload_name: str = ""  # the client's file name (multipart), for the result's download name
    result_bytes: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # what the probe found; after the run, what was written
    owner_pid: int = field(default_factory=os.getpid)
    attempts: int = 0  # times another replica took the job over after its owner died (shared backend)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def validate(self) -> None:
        """``ValueError`` unless every field has its type and range: ``job.json`` is read from disk, not trusted.

        The names are checked hardest: ``result_name`` picks the file a result answer sends.
        """
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"job record {what}")

        need(isinstance(self.id, str) and valid_id(self.id), "has no valid id")
        need(self.kind in KINDS, f"has kind {self.kind!r}")
        need(self.state in STATES, f"has state {self.state!r}")
        need(type(self.scale) is int and 1 <= self.scale <= 16, f"has scale {self.scale!r}")
        need(isinstance(self.format, str) and bool(_FORMAT.match(self.format)), "has a bad format")
        need(isinstance(self.media_type, str) and bool(_MEDIA_TYPE.match(self.media_type)), "has a bad media type")
        need(isinstance(self.input_name, str) and bool(_INPUT_NAME.match(self.input_name)), "has a bad input name")
        need(isinstance(self.result_name, str) and bool(_RESULT_NAME.match(self.result_name)),
             "has a bad result name")
        for name in ("created", "progress"):
            need(isinstance(getattr(self, name), _NUMBER) and not isinstance(getattr(self, name), bool),
                 f"has a bad {name}")
        for name in ("started", "finished", "expires", "fps"):
            value = getattr(self, name)
            need(value is None or (isinstance(value, _NUMBER) and not isinstance(value, bool)), f"has a bad {name}")
        for name in ("frames_done", "frames_total", "input_bytes", "result_bytes", "owner_pid", "attempts"):
            need(type(getattr(self, name)) is int and getattr(self, name) >= 0, f"has a bad {name}")
        need(type(self.expired) is bool, "has a bad expired flag")
        need(0.0 <= self.progress <= 1.0, "has progress out of 0..1")
        for name in ("error", "error_code", "upload_name"):
            need(getattr(self, name) is None or isinstance(getattr(self, name), str), f"has a bad {name}")
        need(isinstance(self.info, dict), "has a bad info")

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


def record_from(data: object, job_id: str) -> JobRecord:
    """The record ``data`` (parsed ``job.json``) holds for ``job_id``; ``ValueError`` if it is not a valid one."""
    if not isinstance(data, dict):
        raise ValueError("job record is not an object")
    try:
        record = JobRecord.from_dict(data)
    except TypeError as exc:  # a required field missing
        raise ValueError(f"job record is incomplete ({exc})") from None
    record.validate()
    if record.id != job_id:
        raise ValueError(f"job record is for {record.id}, found in {job_id}'s folder")
    return record


def own_private_folder(path: Path) -> None:
    """Make sure ``path`` is a real folder of this process's user, 0700; ``PermissionError`` if another's.

    A folder another local user created first (``/tmp/espcn-jobs`` is guessable) would let
    them read uploads or plant records and links, so it is refused rather than used.
    """
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):  # the root may be a link (a mounted volume); what it names must be ours
        info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a folder")
    if info.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to this service's uid {os.geteuid()}: "
                              "refusing to keep jobs there (choose another SR_JOBS_DIR)")
    if info.st_mode & 0o077:
        log.warning("tightening %s from %o to 700: job files are private", path, stat.S_IMODE(info.st_mode))
        os.chmod(path, 0o700)


class JobStore(JobBackend):
    """The jobs folder: records, files, locks, usage, and this process's queue (the single-host backend)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        own_private_folder(self.root)
        self._queue: asyncio.Queue[str] = asyncio.Queue()  # admitted here, run here

    def folder(self, job_id: str) -> Path:
        if not valid_id(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    # -- records ----------------------------------------------------------------------------

    def create(self, job_id: str) -> Path:
        folder = self.folder(job_id)
        folder.mkdir(mode=0o700)
        return folder

    def owned(self, job_id: str) -> bool:
        """Whether the job's folder is a real folder (not a link) of this user: only those are read or served."""
        try:
            info = self.folder(job_id).lstat()
        except (KeyError, OSError):
            return False
        return stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()

    def write(self, record: JobRecord, lease: Lease = None) -> None:
        """Atomically replace the record; ``FileNotFoundError`` when the job was deleted meanwhile.

        ``lease`` needs no check here: an ``flock`` cannot be lost while its process lives.
        """
        folder = self.folder(record.id)
        tmp = folder / f".{RECORD}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(asdict(record)))
        os.replace(tmp, folder / RECORD)

    def read(self, job_id: str) -> JobRecord | None:
        """The job's record, or ``None`` if there is none or it is not a valid record in a folder of ours."""
        if not self.owned(job_id):
            return None
        path = self.folder(job_id) / RECORD
        try:
            if not stat.S_ISREG(path.lstat().st_mode):
                raise ValueError(f"{RECORD} is not a regular file")
            return record_from(json.loads(path.read_bytes()), job_id)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
            log.warning("job %s: ignoring its record: %s", job_id, exc)
            return None

    def result_file(self, record: JobRecord) -> Path | None:
        """The result as a regular file directly inside the job's folder, or ``None`` (expired, missing, odd)."""
        if not _RESULT_NAME.match(record.result_name) or not self.owned(record.id):
            return None
        path = self.folder(record.id) / record.result_name
        try:
            info = path.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode) or path.parent != self.folder(record.id):
            return None
        return path

    def records(self) -> Iterator[JobRecord]:
        for entry in self.root.iterdir():
            if entry.is_dir() and valid_id(entry.name):
                record = self.read(entry.name)
                if record is not None:
                    yield record

    def job_ids(self) -> list[str]:
        return [entry.name for entry in self.root.iterdir() if valid_id(entry.name) and entry.is_dir()]

    def remove(self, job_id: str) -> None:
        shutil.rmtree(self.folder(job_id), ignore_errors=True)

    def expire(self, record: JobRecord, tombstone_until: float) -> None:
        """Delete the files, keep ``job.json`` flagged expired: the janitor removes it at ``tombstone_until``."""
        self.drop_files(record.id)
        self.write(record)

    # -- ownership and cancellation ---------------------------------------------------------

    def lock(self, job_id: str) -> int:
        """Take the job's owner lock for this process; the descriptor holds it until :meth:`unlock`."""
        fd = os.open(self.folder(job_id) / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def renew(self, leases: list[Lease]) -> list[Lease]:
        return []  # the kernel holds an flock for as long as its process lives

    def claim_orphan(self, job_id: str) -> Lease | None:
        """The job's lock, taken without waiting, or ``None`` while its owner lives."""
        try:
            fd = os.open(self.folder(job_id) / LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except (FileNotFoundError, NotADirectoryError, KeyError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def stray(self, job_id: str, now: float) -> bool:
        """An upload whose process died before the job was queued (or a folder with no record of ours)."""
        try:
            age = now - self.folder(job_id).lstat().st_mtime
        except (OSError, KeyError):
            return True
        return not self.owner_alive(job_id) and age > 60

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
        """Bytes held under the jobs folder: each job folder's files or its reservation, whichever is larger."""
        total = 0
        with os.scandir(self.root) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        total += self._held(Path(entry.path))
                    elif entry.is_file(follow_symlinks=False):
                        total += entry.stat(follow_symlinks=False).st_size
        return total

    @staticmethod
    def _held(folder: Path) -> int:
        written = 0
        for dirpath, _, files in os.walk(folder):
            for name in files:
                with contextlib.suppress(OSError):
                    written += os.lstat(os.path.join(dirpath, name)).st_size
        return max(written, _reserved(folder))

    @contextlib.contextmanager
    def _quota_lock(self) -> Iterator[None]:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)  # the root itself is the lock: no file to leave
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def reserve(self, job_id: str, need: int, limit: int, ahead: int = 0) -> int:
        """Hold at least ``need`` bytes (up to ``need + ahead`` if free) for the job; the bytes now held, or 0.

        0 means the quota ``limit`` has no room for ``need``: nothing changes. The check and the
        write happen under one lock on the root, so processes reserving at once cannot overbook.
        """
        folder = self.folder(job_id)
        with self._quota_lock():
            held = _reserved(folder)
            if need <= held:
                return held
            free = limit - (self.usage() - self._held(folder))
            if free < need:
                return 0
            grant = min(need + ahead, free)
            tmp = folder / f".{RESERVED}.{os.getpid()}.tmp"
            tmp.write_text(str(grant))
            os.replace(tmp, folder / RESERVED)
            return grant

    def release(self, job_id: str) -> None:
        """Drop the job's reservation: its files alone count from now on."""
        with contextlib.suppress(FileNotFoundError, KeyError):
            (self.folder(job_id) / RESERVED).unlink()

    def settle(self, job_id: str) -> None:
        self.release(job_id)  # usage() walks the files themselves

    # -- the queue (this process's) -----------------------------------------------------------

    def enqueue(self, job_id: str, lease: Lease) -> bool:
        self._queue.put_nowait(job_id)
        return False  # the process that admitted the job keeps its lock and runs it

    async def next_job(self) -> tuple[str, Lease]:
        return await self._queue.get(), None

    def counts(self) -> dict[str, int]:
        """Jobs queued and running in the folder, by every process of this host."""
        found = {QUEUED: 0, RUNNING: 0}
        for record in self.records():
            if record.state in found:
                found[record.state] += 1
        return found

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


def _reserved(folder: Path) -> int:
    try:
        return max(0, int((folder / RESERVED).read_text()[:20]))
    except (OSError, ValueError):
        return 0
