"""Worker processes lend idle cores to whole-image calls (app/engine/core_tokens.py), and the answer does not change."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import torch

from app.engine import onnx_backend
from app.engine.core_tokens import CoreTokens
from app.engine.runner import ModelRunner
from app.store import DEFAULT_STORE
from app.store.registry import discover


def _hold_one(folder: str, ready, release) -> None:
    tokens = CoreTokens(Path(folder), 2)
    with tokens.take(1) as taken:
        assert taken == 1
        ready.set()
        release.wait(10)


def test_a_call_takes_only_the_cores_other_processes_leave_free(tmp_path: Path) -> None:
    tokens = CoreTokens(tmp_path, 2)
    with tokens.take() as taken:
        assert taken == 2  # alone: every core
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    other = ctx.Process(target=_hold_one, args=(str(tmp_path), ready, release))
    other.start()
    try:
        assert ready.wait(30)
        with tokens.take() as taken:
            assert taken == 1  # the other process computes on one core
    finally:
        release.set()
        other.join(10)
    with tokens.take() as taken:
        assert taken == 2  # its locks went with it
    tokens.close()


@pytest.mark.skipif(not onnx_backend.available(), reason="onnxruntime is not installed")
def test_a_borrowed_wide_call_gives_the_same_numbers(tmp_path: Path) -> None:
    model = discover(DEFAULT_STORE)[3].model
    runner = ModelRunner(model, torch.device("cpu"), backend="onnxruntime", cores=CoreTokens(tmp_path, 8))
    assert runner.backend == "onnxruntime" and runner._cpu_fast.wide is not None
    x = torch.rand(1, 1, 120, 200, generator=torch.Generator().manual_seed(0))
    narrow, wide = runner(x), runner(x, borrow=True)
    assert torch.equal(narrow, wide)
    with torch.no_grad():
        assert float((wide - model.forward_valid(x).clamp(0, 1)).abs().max()) <= 1e-4
