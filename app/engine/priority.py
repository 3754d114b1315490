"""The model runtime's worker threads yield the CPU to the event loop: per-thread ``nice`` on Linux.

On a busy host the event loop is what answers — admissions, refusals, health
checks, the bytes of uploads still arriving — while the model only needs the
cores it leaves. With every thread at the same priority the scheduler shares
the cores evenly between the event loop and the model's threads, so a refusal
waits behind batches it has nothing to do with.

Only ONNX Runtime's own worker threads are lowered: they are native threads
that never hold the GIL. Lowering Python threads too (the inference thread,
the codec pools) was tried and cost throughput (docs/benchmarks.md): a lowered
thread preempted while holding the GIL stalls the very event loop it yields
to. Raising a thread's niceness needs no privilege (lowering it back does, so
it is only ever raised); threads inherit it from their creator, so building
the runtime's sessions in a lowered thread (:func:`in_lowered_thread`) lowers
the pool threads they start, while the thread that calls the model, itself one
of the runtime's parallel workers, keeps the loop's priority.
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
