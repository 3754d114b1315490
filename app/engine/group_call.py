"""Group commit for batchable calls: what arrives while one batch runs goes together in the next.

Some device calls cost little more for many items than for one (nvJPEG decodes a batch
of 16 frames for about the price of one: docs/benchmarks.md). :class:`GroupCall` batches
them across requests without a timer: an idle caller's item runs at once, alone, and
the items that arrive while a batch is running wait for it to finish and then run
together, up to ``max_batch``. Under load the batches grow by themselves; at rest
nobody waits for company that is not coming.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class GroupCall(Generic[A, R]):
    """``await call(item)`` → ``fn([item, …])[i]``, with ``fn`` run in ``executor`` on the items gathered so far.

    ``fn`` maps a list of items to a list of results in the same order. When it raises,
    every caller of that batch gets the exception and the next batch runs as usual; a
    caller that is cancelled while waiting simply does not take its result.
    """

    def __init__(self, fn: Callable[[list[A]], Sequence[R]], executor: Executor, *, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.batches = 0  # calls of fn so far
        self.items = 0  # items they took
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # the batches' runner, held so it cannot be collected

    async def __call__(self, item: A) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._running:
            self._running = True
            self._task = asyncio.get_running_loop().create_task(self._run(), name="group-call")
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch = [(item, f) for item, f in self._waiting[: self.max_batch] if not f.done()]
                del self._waiting[: self.max_batch]
                if not batch:
                    continue
                self.batches += 1
                self.items += len(batch)
                try:
                    results = await loop.run_in_executor(self.executor, self.fn, [item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                except BaseException:  # this task cancelled (the loop closing): nobody gets an answer
                    for _, future in batch:
                        future.cancel()
                    raise
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._running = False
            for _, future in self._waiting:  # only if this task itself was cancelled (loop closing)
                if not future.done():
                    future.cancel()
            self._waiting.clear()
