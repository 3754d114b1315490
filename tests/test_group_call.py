"""GroupCall (app/engine/group_call.py): batches form from what arrives while one runs, and only then.

The batched function here is real work on real tensors (a sum per item), run in a real thread pool;
a gate inside it holds a batch running for as long as the test looks, so the arrivals behind it are
known, not timed.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from app.engine.group_call import GroupCall
from tests.gates import WAIT_S


class Summer:
    """Sums each item's tensor; records each batch's size; the batch after ``hold_after`` calls waits for ``gate``."""

    def __init__(self, hold_after: int | None = None) -> None:
        self.sizes: list[int] = []
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.hold_after = hold_after

    def __call__(self, items: list[torch.Tensor]) -> list[float]:
        self.sizes.append(len(items))
        if self.hold_after is not None and len(self.sizes) == self.hold_after + 1:
            self.entered.set()
            assert self.gate.wait(WAIT_S), "the test never opened the gate"
        if any(t.numel() == 0 for t in items):
            raise ValueError("an empty tensor")
        return [float(t.sum()) for t in items]


def run(coro):
    return asyncio.run(coro)


def tensors(n: int) -> list[torch.Tensor]:
    return [torch.arange(i + 2, dtype=torch.float32) for i in range(n)]


def test_an_idle_call_runs_alone_at_once() -> None:
    summer = Summer()

    async def work():
        with ThreadPoolExecutor(1) as pool:
            call = GroupCall(summer, pool)
            return [await call(t) for t in tensors(3)]

    assert run(work()) == [1.0, 3.0, 6.0]
    assert summer.sizes == [1, 1, 1]


@pytest.mark.parametrize(("arrivals", "max_batch", "sizes"), [(5, 16, [1, 5]), (7, 3, [1, 3, 3, 1])])
def test_what_arrives_while_a_batch_runs_goes_together_next(arrivals: int, max_batch: int, sizes: list[int]) -> None:
    summer = Summer(hold_after=0)
    items = tensors(arrivals + 1)

    async def work():
        with ThreadPoolExecutor(1) as pool:
            call = GroupCall(summer, pool, max_batch=max_batch)
            first = asyncio.ensure_future(call(items[0]))
            await asyncio.get_running_loop().run_in_executor(None, summer.entered.wait, WAIT_S)
            rest = [asyncio.ensure_future(call(t)) for t in items[1:]]
            await asyncio.sleep(0)  # every arrival is queued behind the running batch
            summer.gate.set()
            return await asyncio.gather(first, *rest), (call.batches, call.items)

    results, (batches, count) = run(work())
    assert results == [float(t.sum()) for t in items]  # each caller gets its own item's answer
    assert summer.sizes == sizes and (batches, count) == (len(sizes), arrivals + 1)


def test_a_failing_batch_fails_its_callers_only_and_a_cancelled_caller_is_skipped() -> None:
    summer = Summer(hold_after=0)
    good, empty = tensors(3), torch.empty(0)

    async def work():
        with ThreadPoolExecutor(1) as pool:
            call = GroupCall(summer, pool)
            first = asyncio.ensure_future(call(good[0]))
            await asyncio.get_running_loop().run_in_executor(None, summer.entered.wait, WAIT_S)
            doomed = [asyncio.ensure_future(call(t)) for t in (good[1], empty)]
            gone = asyncio.ensure_future(call(good[2]))
            await asyncio.sleep(0)
            gone.cancel()
            summer.gate.set()
            outcomes = await asyncio.gather(first, *doomed, return_exceptions=True)
            after = await call(good[2])  # the next batch runs as usual
            return outcomes, gone.cancelled(), after

    (first, *doomed), gone_cancelled, after = run(work())
    assert first == 1.0 and after == 6.0 and gone_cancelled
    assert all(isinstance(o, ValueError) for o in doomed)
    assert summer.sizes == [1, 2, 1]  # the cancelled caller's item never ran
