"""The device, resolved once, and the one copy between host and device; batch size and PyTorch's CPU threads.

Devices are compared only after :func:`concrete`: a tensor on the first GPU reports
``cuda:0``, which is not equal to ``torch.device("cuda")``, and that one mismatch
once made every GPU request pin GPU memory and fail. Everything that holds a
device holds a concrete one, so ``==`` means "the same memory".

The host's cores and processes are in :mod:`app.engine.host`.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from torch import Tensor

from app.config import AUTO_MAX_BATCH

log = logging.getLogger(__name__)

DeviceSetting = Literal["auto", "cpu", "cuda"]


def concrete(device: torch.device | str) -> torch.device:
    """``cuda`` → ``cuda:N`` (the current GPU), any other device as it is: the form tensors report."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def resolve_device(setting: DeviceSetting | str) -> torch.device:
    """The concrete device for ``SR_DEVICE``: ``auto`` takes the current GPU when present, else the CPU.

    ``cuda`` (or ``cuda:N``) without a GPU is a configuration error.
    """
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"SR_DEVICE={setting} but no CUDA device is available")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return concrete("cuda" if setting == "auto" else setting)


def transfer(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device`` (concrete): itself when it is there already, else one copy.

    Host memory headed for a GPU is pinned first, so the copy is asynchronous and may
    overlap other work; that one line is the only CUDA-specific step.
    """
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        return t.contiguous().pin_memory().to(device, non_blocking=True)
    return t.to(device)


def healthy(device: torch.device) -> bool:
    """Whether ``device`` still computes after a failure. The CPU always does.

    Some CUDA errors (an illegal memory access, a device-side assert) are sticky: every later
    call of this process's CUDA context fails the same way, and only a new process recovers.
    Their messages do not say which they are, so ask the device: a synchronize and one small
    kernel. These are the only CUDA-specific lines of the engine's device-lost handling.
    """
    if device.type != "cuda":
        return True
    try:
        torch.cuda.synchronize(device)
        return torch.ones(1, device=device).add_(1).item() == 2.0
    except Exception:  # torch.AcceleratorError (a RuntimeError): the context is gone
        return False


def max_batch_for(device: torch.device, setting: int = 0, backend: str = "torchscript") -> int:
    """Tiles per model call: ``setting`` when positive, else what suits the device and CPU backend.

    CPU: 8 for either backend, since bigger batches no longer buy speed and cost memory
    (ONNX Runtime's arena keeps the largest batch's activations; figures and command in
    ``docs/benchmarks.md``). CUDA: 64, where batching is what keeps the GPU busy.
    """
    if setting > 0:
        return setting
    return AUTO_MAX_BATCH["cuda"] if device.type == "cuda" else AUTO_MAX_BATCH.get(backend, 8)


def configure_threads(threads: int) -> int:
    """Set PyTorch's intra-op threads (0 keeps its default); returns the count in force."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def memory_stats(device: torch.device) -> dict[str, int]:
    """Bytes of device memory: this process's tensors (``allocated``), what its caching allocator holds
    (``reserved``), and the device's ``free`` and ``total`` (every process's use); empty on the CPU,
    where the process's resident memory says it all. The only CUDA-specific lines of the memory gauges.
    """
    if device.type != "cuda":
        return {}
    free, total = torch.cuda.mem_get_info(device)
    return {"allocated": torch.cuda.memory_allocated(device), "reserved": torch.cuda.memory_reserved(device),
            "free": free, "total": total}


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
