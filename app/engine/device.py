"""Choosing the device, the batch size and PyTorch's CPU threads once, at start-up (the host's cores and
processes: :mod:`app.engine.host`)."""

from __future__ import annotations

import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

DeviceSetting = Literal["auto", "cpu", "cuda"]


def resolve_device(setting: DeviceSetting) -> torch.device:
    """``auto`` takes CUDA when present; ``cuda`` without a GPU is a configuration error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("SR_DEVICE=cuda but no CUDA device is available")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


AUTO_MAX_BATCH = {"cuda": 64, "onnxruntime": 8, "torchscript": 8, "eager": 8}


def max_batch_for(device: torch.device, setting: int = 0, backend: str = "torchscript") -> int:
    """Tiles per model call: ``setting`` when positive, else what suits the device and CPU backend.

    CPU: 8, for either backend, since bigger batches no longer buy speed and cost memory. ×3, 104²
    windows, ms per tile at batches of 1 / 4 / 8 / 16 / 32 / 64 on the 2-core bench machine
    (``python scripts/ort_batch.py``, 2026-12-03): ONNX Runtime with one thread (a worker process's
    share on a CPU host) 5.64 / 5.66 / 5.66 / 5.66 / 5.65 / –, flat; with two 3.3 / 2.95 / 2.94 /
    2.93 / 2.94 / –, flat from 4 (on an older ORT it was 5.7 / – / 3.2 / 2.8 / 2.65 / 2.5, when 32
    was chosen). Its arena keeps the largest batch's activations: 46 MB per model at 8 against
    170 at 32, so under 32 clients of 96² PNGs a worker held 415 MB instead of 720–800 at the same
    throughput (2 workers, three interleaved rounds: 147–162 against 132–152 requests/s).
    TorchScript: 2.7 up to 8, 4.1 at 32 (a batch's 64-channel activations, 2.8 MB per window, spill
    the cache). CUDA: 64, where batching is what keeps the GPU busy.
    """
    if setting > 0:
        return setting
    return AUTO_MAX_BATCH["cuda"] if device.type == "cuda" else AUTO_MAX_BATCH.get(backend, 8)


def configure_threads(threads: int) -> int:
    """Set PyTorch's intra-op threads (0 keeps its default); returns the count in force."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
