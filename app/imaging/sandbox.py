"""Decoding in killable worker processes, each decode within a time and a memory budget.

The structural checks of :mod:`app.imaging.guards` refuse the costly files
anyone has thought of; this bounds the rest. A codec stuck in C cannot be
interrupted from another thread, and memory it took cannot be taken back,
so the decode runs in a separate process:

- **time**: the parent waits at most ``budget.timeout_s`` (or what is left of the
  request's deadline) for the answer, then SIGKILLs the worker;
- **memory**: before each job the worker sets its ``RLIMIT_AS`` to the address
  space it had when idle plus ``budget.memory_bytes``, so an allocation past it
  fails inside the codec (a ``MemoryError`` or a codec error) instead of
  growing the server; the worker's RSS can only grow by less than that;
- **cancellation**: cancelling the awaiting task (the client went away) kills
  the worker too, so an abandoned bomb stops using a core at once;
- **shared memory is the parent's**: a large decoded image comes back through a
  ``/dev/shm`` file that the parent names and grants (within ``shm_bytes`` for the
  whole sandbox and the free space of ``/dev/shm``) before the worker writes it,
  and unlinks however the decode ends: answered, refused, killed mid-write, or
  abandoned by its client. Without a grant (the budget or ``/dev/shm`` is full:
  Docker gives 64 MiB by default) the pixels go through the socket instead, slower
  but never "No space left on device". Files of a server process that died are
  swept when a sandbox starts.

Workers are fresh interpreters (``python -m app.imaging.sandbox``) that import
only the decoder (Pillow, NumPy; never PyTorch): ~0.3 s to start, ~40 MB each.
Not ``multiprocessing``: its spawn and forkserver children re-import the
parent's ``__main__`` (for ``python -m app.serve`` that is uvicorn, the settings
and PyTorch), and forking the server itself would copy its threads' locks. They
talk over a socketpair with ``multiprocessing.connection`` framing. They are
reused across jobs; a killed one is replaced in the background, and one whose
address space has grown by over a quarter of the budget is retired after its
job, so fragmentation never eats a later budget.

Measured on the 2-core development machine: see ``scripts/hostile_probe.py``
(per small request the round trip adds about a millisecond; the figures are
in the issue-19 report).
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from PIL import Image

from app.imaging.decode import OUT_OF_MEMORY, DecodedImage, decode
from app.imaging.errors import ImageError, ImageTooComplex, InvalidImage
from app.imaging.limits import DEFAULT_LIMITS, ImageLimits

_SHM = "/dev/shm"
_INLINE_BYTES = 256 * 1024  # smaller images are pickled with the reply
_SHM_PREFIX = "sr-decode-"
_SHM_SPARE = 4 * 1024 * 1024  # left free in /dev/shm for everyone else
# At most this many bytes of decoded pixels in /dev/shm per sandbox (per server process): four
# 4096² RGBA images (64 MiB each, the largest the default limits admit). The deployment files give
# /dev/shm this much per worker process (tests/test_shm.py reads them).
DEFAULT_SHM_BYTES = 256 * 1024 * 1024
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# a decode is single-threaded: no BLAS/OpenMP thread pools (and their address space) in workers
_WORKER_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_RETIRE_GROWTH = 4  # retire a worker whose idle address space grew by budget / this


@dataclass(frozen=True)
class DecodeBudget:
    """What one decode may spend: wall time (seconds) and address-space growth (bytes)."""

    timeout_s: float = 10.0
    memory_bytes: int = 768 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.memory_bytes < 64 * 1024 * 1024:
            raise ValueError(f"memory_bytes must be at least 64 MiB, got {self.memory_bytes}")


DEFAULT_BUDGET = DecodeBudget()


def _vm_size() -> int:
    """This process's address space in bytes (``VmSize``), 0 where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _worker_main(conn: Connection) -> None:
    """A worker's life: jobs in, ``(status, value, vm_growth)`` out, until the pipe closes."""
    import resource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    baseline = _vm_size()
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    while True:
        try:
            data, scale, limits, memory_bytes = conn.recv()
        except (EOFError, OSError):
            return
        if baseline:
            ceiling = baseline + memory_bytes
            resource.setrlimit(resource.RLIMIT_AS, (ceiling if hard < 0 else min(ceiling, hard), hard))
        try:
            reply: tuple[str, Any] = ("ok", _pack(decode(data, scale, limits), conn))
        except ImageError as e:
            reply = ("error", _over_memory(memory_bytes) if str(e) == OUT_OF_MEMORY else e)
        except MemoryError:
            reply = ("error", _over_memory(memory_bytes))
        except Exception as e:  # a codec failing for want of memory, or a bug: never kill the worker
            reply = ("error", _over_memory(memory_bytes) if "memory" in str(e).lower() else
                     InvalidImage(f"the image could not be decoded: {type(e).__name__}: {e}"))
        del data
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        try:
            conn.send((*reply, _vm_size() - baseline))
        except MemoryError:
            conn.send(("error", _over_memory(memory_bytes), _vm_size() - baseline))
        except (OSError, ValueError):
            return


def _pack(image: DecodedImage, conn: Connection) -> DecodedImage | tuple[str, dict[str, Any]]:
    """A large decoded image travels as raw pixels in a ``/dev/shm`` file, not pickled through the socket.

    Pickling megabytes of pixels through a socketpair costs a context switch per socket buffer;
    a tmpfs file costs two memory copies (docs/benchmarks.md has the figures). The file is the
    parent's: it names it (or refuses, and the pixels are pickled) and unlinks it.
    """
    planes = [image.color] + ([image.alpha] if image.alpha is not None else [])
    size = sum(len(p.getbands()) * p.width * p.height for p in planes)
    if size < _INLINE_BYTES:
        return image
    conn.send(("shm", size))
    path = conn.recv()
    if path is None:
        return image
    try:
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            for plane in planes:
                f.write(plane.tobytes())
    except OSError:  # /dev/shm filled up meanwhile: the socket it is (the parent unlinks the file)
        return image
    meta = {"planes": [(p.mode, p.size) for p in planes], "icc_profile": image.icc_profile,
            "source_format": image.source_format, "source_mode": image.source_mode}
    return (path, meta)


def _unpack(value: DecodedImage | tuple[str, dict[str, Any]], shm: ShmBudget) -> DecodedImage:
    if isinstance(value, DecodedImage):
        return value
    path, meta = value
    planes, at = [], 0
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            for mode, size in meta["planes"]:
                n = len(mode) * size[0] * size[1]
                planes.append(Image.frombytes(mode, size, view[at : at + n]))  # the one copy
                at += n
            view.release()
    finally:
        shm.release(path)
    return DecodedImage(color=planes[0], alpha=planes[1] if len(planes) > 1 else None,
                        icc_profile=meta["icc_profile"], source_format=meta["source_format"],
                        source_mode=meta["source_mode"])


def _discard(done: Future[tuple[str, Any, int]], shm: ShmBudget) -> None:
    """Remove the pixel file of an answer nobody waits for any more."""
    if done.cancelled() or done.exception() is not None:
        return
    status, value, _ = done.result()
    if status == "ok" and isinstance(value, tuple):
        shm.release(value[0])


class ShmBudget:
    """The ``/dev/shm`` files of one sandbox: named and granted by the parent, counted, and unlinked by it.

    A grant is refused (``None``: the pixels then go through the socket) when it would
    take the files together past ``capacity`` or leave less than a few MiB free in
    ``/dev/shm``. Thread-safe: grants come from the waiter threads.
    """

    def __init__(self, capacity: int = DEFAULT_SHM_BYTES, folder: str = _SHM) -> None:
        self.capacity = capacity
        self.folder = folder if os.path.isdir(folder) else tempfile.gettempdir()
        self._granted: dict[str, int] = {}
        self._lock = threading.Lock()
        self._serial = 0

    @property
    def used(self) -> int:
        """Bytes granted and not yet released (what this sandbox may hold in ``/dev/shm`` now)."""
        with self._lock:
            return sum(self._granted.values())

    @property
    def files(self) -> int:
        with self._lock:
            return len(self._granted)

    def grant(self, size: int) -> str | None:
        """A fresh path for ``size`` bytes of pixels, or ``None`` when they do not fit."""
        try:
            stat = os.statvfs(self.folder)
            free = stat.f_bavail * stat.f_frsize
        except OSError:
            return None
        with self._lock:
            if sum(self._granted.values()) + size > self.capacity or size + _SHM_SPARE > free:
                return None
            self._serial += 1
            path = os.path.join(self.folder, f"{_SHM_PREFIX}{os.getpid()}-{self._serial}")
            self._granted[path] = size
        with contextlib.suppress(OSError):  # a leftover of an earlier process with our pid
            os.unlink(path)
        return path

    def release(self, path: str | None) -> None:
        """Unlink a granted file (written or not) and give its bytes back; idempotent."""
        if path is None:
            return
        with self._lock:
            if self._granted.pop(path, None) is None:
                return
        with contextlib.suppress(OSError):
            os.unlink(path)

    def sweep(self) -> int:
        """Unlink the files of server processes that no longer run (SIGKILLed before they could); returns how many."""
        removed = 0
        try:
            names = os.listdir(self.folder)
        except OSError:
            return 0
        for name in names:
            pid = name.removeprefix(_SHM_PREFIX).split("-", 1)[0]
            if not name.startswith(_SHM_PREFIX) or not pid.isdigit() or _alive(int(pid)):
                continue
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self.folder, name))
                removed += 1
        return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _over_memory(memory_bytes: int) -> ImageTooComplex:
    return ImageTooComplex(f"decoding the image needs more than its memory budget of {memory_bytes >> 20} MiB")


class _Worker:
    """One worker process and the parent's end of its socket.

    The socket is used and closed only by the waiter thread running :meth:`run` (or, once
    that is done, by :meth:`reap`); the event loop only ever signals the process
    (:meth:`stop`), so no descriptor is closed under a thread still polling it.
    """

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, **_WORKER_ENV}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.imaging.sandbox", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, env=env, close_fds=True,
            )
        finally:
            theirs.close()
        self.conn = Connection(ours.detach())
        self.dead = False

    def run(self, job: tuple[Any, ...], timeout: float, shm: ShmBudget) -> tuple[str, Any, int]:
        """Send one job and wait for its answer (in a waiter thread); kill the worker past ``timeout``.

        A worker with a large image asks for a ``/dev/shm`` file first: granted here, and
        unlinked here unless an answer carrying it comes back (then by whoever reads it).
        """
        deadline = time.monotonic() + timeout
        granted: str | None = None
        try:
            self.conn.send(job)
            while self.conn.poll(max(deadline - time.monotonic(), 0)):
                reply = self.conn.recv()
                if reply[0] == "shm":
                    granted = shm.grant(reply[1])
                    self.conn.send(granted)
                    continue
                if not (reply[0] == "ok" and isinstance(reply[1], tuple)):
                    shm.release(granted)
                if reply[2] > job[3] // _RETIRE_GROWTH:  # grown too much to keep its budget honest
                    self.reap()
                return reply
            status = "timeout"
        except (EOFError, OSError, ValueError):
            status = "died"
        self.reap()
        shm.release(granted)  # killed, timed out or gone mid-write: the file is the parent's to remove
        return (status, self.process.returncode, 0)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """SIGKILL the worker (from any thread); what it allocated goes back to the system with it."""
        self.dead = True
        if self.alive:
            self.process.kill()

    def reap(self) -> None:
        """Stop the worker if it runs, wait for it and close the socket (idempotent)."""
        self.stop()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.conn.close()

    def close(self) -> None:
        """Let an idle worker exit on its own (EOF on its socket), killing it if it lingers."""
        self.dead = True
        self.conn.close()
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.reap()


class DecodeSandbox:
    """A pool of at most ``max_workers`` decode processes; ``decode`` awaits one within a budget.

    ``warm`` workers are started by :meth:`start` and kept that many (one killed by a budget
    is replaced in the background); more are started on demand when all are busy, so a small
    upload does not queue behind bombs while fewer than ``max_workers`` decodes run.
    """

    def __init__(self, max_workers: int = 4, warm: int = 2, shm_bytes: int = DEFAULT_SHM_BYTES) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.max_workers, self.warm = max_workers, min(warm, max_workers)
        self.shm = ShmBudget(shm_bytes)
        self._idle: list[_Worker] = []
        self._live = 0
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_workers)
        # one thread waits for a free worker and one for each running decode
        self._waiters = ThreadPoolExecutor(2 * max_workers, thread_name_prefix="sr-decode-wait")
        self._closed = False

    def start(self) -> None:
        """Start the warm workers (blocking, ~0.3 s: each imports Pillow and NumPy); sweep dead servers' files."""
        self.shm.sweep()
        with self._lock:
            missing = self.warm - len(self._idle)
        started = [_Worker() for _ in range(max(missing, 0))]
        with self._lock:
            self._idle.extend(started)
            self._live += len(started)

    async def decode(
        self, data: bytes, scale: int, limits: ImageLimits = DEFAULT_LIMITS,
        budget: DecodeBudget = DEFAULT_BUDGET, *, deadline: float | None = None,
    ) -> DecodedImage:
        """:func:`app.imaging.decode.decode` in a worker process, within ``budget`` (and ``deadline``).

        ``deadline`` is a ``time.monotonic()`` instant; the decode gets the smaller of the
        budget's time and what is left of it. Raises what ``decode`` raises, and
        :class:`ImageTooComplex` past the time or memory budget. Cancelling the awaiting
        task kills the decode.
        """
        if self._closed:
            raise RuntimeError("the decode sandbox is closed")
        timeout = budget.timeout_s
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), 0.001))
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        worker = await loop.run_in_executor(self._waiters, self._take, timeout)
        if worker is None:
            raise ImageTooComplex(f"no decoder became free within the {timeout:.1f} s decode budget")
        left = max(timeout - (time.monotonic() - started), 0.001)
        job = (data, scale, limits, budget.memory_bytes)
        running = self._waiters.submit(worker.run, job, left, self.shm)
        try:
            status, value, _ = await asyncio.wrap_future(running)
        except BaseException:  # cancelled (client gone) or the loop is going away: stop the decode now
            worker.stop()
            running.add_done_callback(
                lambda done: (_discard(done, self.shm), worker.reap(), self._give_back(worker)))
            raise
        self._give_back(worker)
        if status == "ok":
            return _unpack(value, self.shm)
        if status == "error":
            raise value
        if status == "timeout":
            raise ImageTooComplex(f"decoding the image took longer than its {timeout:.1f} s budget; it was stopped")
        if value == -signal.SIGKILL:  # the kernel's OOM killer, most likely
            raise _over_memory(budget.memory_bytes)
        raise InvalidImage(f"the decoder stopped on this image (exit status {value})")

    def _take(self, timeout: float) -> _Worker | None:
        """An idle worker, or a new one while fewer than ``max_workers`` run (in a waiter thread)."""
        if not self._slots.acquire(timeout=timeout):
            return None
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
                self._live -= 1
            self._live += 1
        try:
            return _Worker()
        except BaseException:
            with self._lock:
                self._live -= 1
            self._slots.release()
            raise

    def _give_back(self, worker: _Worker) -> None:
        replace = False
        with self._lock:
            if worker.dead or self._closed:
                self._live -= 1
                replace = not self._closed and self._live < self.warm
                if replace:
                    self._live += 1  # reserved for the replacement
            else:
                self._idle.append(worker)
        self._slots.release()
        if self._closed and not worker.dead:
            worker.close()
        if replace:
            self._waiters.submit(self._replace)

    def _replace(self) -> None:
        """Start a worker to stand in for one that was killed (in a waiter thread)."""
        try:
            worker = _Worker()
        except BaseException:
            with self._lock:
                self._live -= 1
            raise
        with self._lock:
            if not self._closed:
                self._idle.append(worker)
                return
            self._live -= 1
        worker.close()

    def close(self) -> None:
        """Stop every idle worker; busy ones are killed as their decodes end."""
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.close()
        self._waiters.shutdown(wait=False, cancel_futures=True)  # a busy decode's run() unlinks its own file

    @property
    def workers(self) -> int:
        """Worker processes alive now (idle or busy)."""
        with self._lock:
            return self._live


_default: DecodeSandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> DecodeSandbox:
    """The process's shared sandbox: 2 warm workers, at most 2 × usable cores (≥ 4) in all."""
    global _default
    with _default_lock:
        if _default is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2
            _default = DecodeSandbox(max_workers=max(4, 2 * cores), warm=2)
        return _default


async def decode_bounded(
    data: bytes, scale: int, limits: ImageLimits = DEFAULT_LIMITS, budget: DecodeBudget = DEFAULT_BUDGET,
    *, deadline: float | None = None,
) -> DecodedImage:
    """:func:`app.imaging.decode.decode` in the shared sandbox, stopped past ``budget`` or when cancelled."""
    return await default_sandbox().decode(data, scale, limits, budget, deadline=deadline)


if __name__ == "__main__":  # a worker: python -m app.imaging.sandbox FD
    _worker_main(Connection(int(sys.argv[1])))
