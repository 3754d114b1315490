"""Choosing the device and CPU threading once, at start-up."""

from __future__ import annotations

import logging
import math
import os
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


def codec_threads_for(setting: int = 0) -> int:
    """Codec pool size: ``setting`` when positive, else one thread per usable core (at least 2).

    On a GPU machine the model is rarely the bottleneck, the CPU side is: with 2
    codec threads an H200 machine served 235 small requests/s while its GPU could
    take 10,000 images/s (decode, chroma, compose and encode run here; the event
    loop and the GIL may cap it too). On a 2-core machine this is 2, as before.
    """
    if setting > 0:
        return setting
    return max(2, usable_cores())


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity (taskset) and its cgroup's CPU quota (a container's
    ``--cpus``, a Kubernetes CPU limit), whichever is smaller — not the machine's count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_cpu_quota(path: str = "/sys/fs/cgroup/cpu.max") -> float | None:
    """CPUs allowed by the cgroup v2 quota ("200000 100000" → 2.0); None when unlimited or unreadable."""
    try:
        quota, period = open(path).read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


CORES_PER_CPU_WORKER = 1  # a process per core, lending idle cores to big calls: README, "Benchmarks"
MAX_GPU_WORKERS = 8


def workers_for(setting: int | str, device: str = "auto") -> int:
    """Worker processes for ``python -m app.serve``: ``setting`` when a number, else what suits the host.

    One Python process cannot keep many cores busy: the event loop, the GIL and
    the codec threads queue behind each other. CPU hosts get one process per
    core (:data:`CORES_PER_CPU_WORKER`), each with one inference thread: on the
    2-core machine two processes served 0.62–0.66 of the bare model's rate
    against 0.49–0.59 for one. A lone whole-image request still gets every
    core: its model call borrows the cores the other processes leave idle
    (:mod:`app.engine.cores`; a ×3 640×360 request 134 ms against 197–210
    without borrowing and 113–120 in one process). On a GPU
    host the model is rarely the limit, the CPU side is, so every core pair
    gets a process feeding the same GPU (at most :data:`MAX_GPU_WORKERS`; each
    holds its own CUDA context and model copies) — a count not yet measured
    on a GPU machine.
    """
    if isinstance(setting, int) or str(setting).isdigit():
        return max(1, int(setting))
    cores = usable_cores()
    if on_gpu(device):
        return max(1, min(MAX_GPU_WORKERS, cores // 2))
    return max(1, cores // CORES_PER_CPU_WORKER)


def on_gpu(device: str = "auto") -> bool:
    """Whether the service will run its models on CUDA with this ``SR_DEVICE``."""
    return device != "cpu" and torch.cuda.is_available()


def share_cores(workers: int, settings: object) -> dict[str, int]:
    """Per-process thread counts for the settings left at 0 (auto), so ``workers`` processes share the cores.

    With one worker nothing changes (the in-process defaults hold). With more,
    each gets ``cores / workers`` inference threads (ONNX Runtime and PyTorch),
    at least two codec threads (a decode waiting on the GIL should not leave
    the pool idle), and every core for the bands of a big answer's compose,
    which run rarely and mostly alone.
    """
    if workers <= 1:
        return {}
    share = max(1, usable_cores() // workers)
    # compose bands run only for big answers, mostly alone: each process may use every core for them
    shares = {"threads": share, "codec_threads": max(2, share), "compose_threads": usable_cores()}
    return {name: value for name, value in shares.items() if not getattr(settings, name)}


def configure_threads(threads: int) -> int:
    """Set PyTorch's intra-op threads (0 keeps its default); returns the count in force."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
