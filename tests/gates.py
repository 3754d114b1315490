"""A gate on the batching worker: its model calls wait until the test opens it.

Tests of a full queue, a dropped request or a wall-time limit need tiles that stay queued (or a
call that stays unfinished) for as long as the test looks. A batching window (``max_delay_ms``)
gives that only for a while, and a loaded machine can outlast it; a gate holds the one worker at a
real model call until the test says so, so what is queued behind it stays queued. The runner is the
engine's own: the gate only waits before calling it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

GATE_TIMEOUT_S = 120.0  # a gate left shut fails its model call rather than hang the run
WAIT_S = 30.0  # how long a test waits for a condition it expects at once


class GatedRunner:
    """A runner whose calls wait for :attr:`opened`; :attr:`entered` is set once a call is waiting or past it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.calls = 0

    def __getattr__(self, name: str) -> Any:  # device, radius, scale, backend…: the engine's runner's
        return getattr(self.inner, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.entered.set()
        if not self.opened.wait(GATE_TIMEOUT_S):
            raise RuntimeError(f"the test's gate stayed shut for {GATE_TIMEOUT_S:.0f} s")
        return self.inner(*args, **kwargs)

    def open(self) -> None:
        self.opened.set()


@contextmanager
def gated(engine: Any, scale: int) -> Iterator[GatedRunner]:
    """Put a shut gate before ``engine``'s ×``scale`` runner; it is opened (and the runner put back) at the end."""
    inner = engine.runners[scale]
    gate = engine.runners[scale] = GatedRunner(inner)
    try:
        yield gate
    finally:
        gate.open()
        engine.runners[scale] = inner


def wait_until(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S, poll_s: float = 0.01) -> None:
    """Poll ``condition`` until it is true; ``AssertionError`` naming ``what`` if ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:.0f} s"
        time.sleep(poll_s)
