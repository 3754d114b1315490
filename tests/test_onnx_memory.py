"""ONNX Runtime's sessions in one process draw on one arena (app/engine/onnx_backend.py).

A worker holds a one-thread and an all-core session per served scale; with an arena each, every
one of them kept the largest activations it had seen (1.65 GB after a big image through six).
Measured in a fresh process, whose own memory is what the test reads.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.engine import onnx_backend

pytestmark = pytest.mark.skipif(not onnx_backend.available(), reason="onnxruntime is not installed")
ROOT = Path(__file__).resolve().parents[1]

GROWTH = """
import os
import torch
from app.cli.benchlib.launch import status_kib
from app.engine.onnx_backend import OrtModel
from app.store import DEFAULT_STORE
from app.store.registry import discover

def anon():
    return status_kib(os.getpid(), "RssAnon") / 1024

model = discover(DEFAULT_STORE)[3].model
ort_model = OrtModel(model, 1, 2)  # the narrow and the wide session of a worker
x = torch.rand(1, 1, 512 + 2 * model.radius, 768 + 2 * model.radius)
start = anon()
narrow = ort_model(x)
first = anon() - start
wide = ort_model(x, wide=True)
second = anon() - start - first
assert torch.equal(narrow, wide)
print(first, second)
"""


@pytest.mark.slow  # several seconds here: `make test` runs it, `make test-fast` does not
def test_a_workers_sessions_share_one_arena() -> None:
    out = subprocess.run([sys.executable, "-c", GROWTH], cwd=ROOT, capture_output=True, text=True, check=True)
    first, second = map(float, out.stdout.split())
    assert first > 100  # MB: the image's activations, in the arena
    assert second < 0.5 * first, (first, second)  # the second reuses them (it grew 52 of 178 MB; own arena: ~all)
