"""Compute threads yield the CPU to the event loop: per-thread ``nice`` on Linux.

On a busy host the event loop is what answers — admissions, refusals, health
checks, the bytes of uploads still arriving — while the model, the codecs and
compose only need the cores it leaves. With every thread at the same priority
the scheduler shares a core between the event loop and two compute threads
evenly, so a refusal waits behind batches it has nothing to do with. Raising
the compute threads' niceness (allowed without privileges; lowering it back
is not, so it is only ever raised) lets the loop run first and costs the
compute nothing when the loop is idle. Threads inherit it from their
creator, so ONNX Runtime's and OpenMP's worker threads started from a
lowered thread are lowered too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def lower_this_thread(niceness: int) -> None:
    """Run the calling thread ``niceness`` below the main thread's (0: nothing; not on Linux: nothing).

    Relative to the main thread, not to the caller: a pool started from a lowered thread is not lowered twice.
    """
    if niceness <= 0 or not hasattr(os, "setpriority"):
        return
    tid = threading.get_native_id()
    try:
        target = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + niceness)  # the main thread's, + niceness
        if os.getpriority(os.PRIO_PROCESS, tid) < target:
            os.setpriority(os.PRIO_PROCESS, tid, target)
    except OSError as exc:  # a sandbox that forbids it: run at the same priority
        log.debug("could not lower thread %d's priority: %s", tid, exc)


def lowered_pool(workers: int, name: str, niceness: int) -> ThreadPoolExecutor:
    """A thread pool whose threads run ``niceness`` below the thread that uses it."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name, initializer=lower_this_thread, initargs=(niceness,))


def in_lowered_thread(fn: Callable[[], T], niceness: int) -> T:
    """``fn()`` in a fresh lowered thread: the threads it starts (a runtime's worker pool) inherit its priority."""
    if niceness <= 0:
        return fn()
    with lowered_pool(1, "lowered-start", niceness) as pool:
        return pool.submit(fn).result()
