"""What the host offers, read without PyTorch: usable cores, worker processes and their thread shares.

``python -m app.serve`` decides here how many worker processes to start and
what each may use, before any of them exists. It imports nothing heavy, so the
supervisor process that outlives them all holds a fraction of the memory PyTorch would
cost it, and workers become ready sooner (figures in docs/benchmarks.md, "Figures behind the
code"); only ``SR_DEVICE=auto`` on a host with an NVIDIA driver asks PyTorch whether CUDA works.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

NVIDIA_DRIVER_PATHS = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/dxg")  # dxg: WSL 2's GPU


def codec_threads_for(setting: int = 0) -> int:
    """Codec pool size: ``setting`` when positive, else one thread per usable core (at least 2).

    On a GPU machine the model is rarely the bottleneck, the CPU side is: with 2
    codec threads an H200 machine served a small fraction of the requests its GPU
    could take (decode, chroma, compose and encode run here; the event loop and the
    GIL may cap it too; docs/benchmarks.md). On a 2-core machine this is 2.
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


CORES_PER_CPU_WORKER = 1  # a process per core, lending idle cores to big calls: docs/benchmarks.md
MAX_GPU_WORKERS = 8


def workers_for(setting: int | str, device: str = "auto") -> int:
    """Worker processes for ``python -m app.serve``: ``setting`` when a number, else what suits the host.

    One Python process cannot keep many cores busy: the event loop, the GIL and
    the codec threads queue behind each other. CPU hosts get one process per
    core (:data:`CORES_PER_CPU_WORKER`), each with one inference thread: on the
    2-core machine two processes came closer to the bare model's rate than one,
    over interleaved rounds (docs/benchmarks.md). A lone whole-image request still
    gets every core: its model call borrows the cores the other processes leave
    idle (:mod:`app.engine.core_tokens`), which made it markedly faster. On a GPU
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
    """Whether the service will run its models on CUDA with this ``SR_DEVICE``.

    Without an NVIDIA driver (none of :data:`NVIDIA_DRIVER_PATHS`) CUDA cannot work, so
    PyTorch is not even imported to say so.
    """
    if device == "cpu" or not any(Path(p).exists() for p in NVIDIA_DRIVER_PATHS):
        return False
    import torch

    return torch.cuda.is_available()


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
