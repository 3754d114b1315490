"""Cores shared by the worker processes of one host: a big model call borrows the cores no one else is using.

Why: on CPU hosts one process per core serves the most small requests (the
event loop and the GIL stop one process from filling two cores), but each
process then has a single inference thread, and a lone 640×360 request took
1.6× as long as in one process with two. So each process keeps two ONNX
Runtime sessions, one thread and all cores, and a whole-image call takes the
wide one only when it can lock every core's token; tile batches (small
requests) hold one token while they run, so under load nothing is
oversubscribed and a lone big request gets the whole machine.

The tokens are ``flock`` locks on files in one folder that
``python -m app.serve`` makes for its workers: taken without waiting,
released by the kernel if a process dies.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CoreTokens:
    """One lock file per core in ``folder``; :meth:`take` locks as many as it can without waiting."""

    def __init__(self, folder: Path, cores: int) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._fds = [os.open(folder / f"core{i}.lock", os.O_RDWR | os.O_CREAT, 0o600) for i in range(max(1, cores))]
        self.cores = len(self._fds)

    @contextmanager
    def take(self, most: int | None = None) -> Iterator[int]:
        """Lock up to ``most`` free cores (all by default) for the block; yields how many were locked (maybe 0)."""
        held: list[int] = []
        want = self.cores if most is None else most
        for fd in self._fds:  # the same order in every process: the first free ones
            if len(held) >= want:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            held.append(fd)
        try:
            yield len(held)
        finally:
            for fd in held:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
