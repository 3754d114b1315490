"""Memory gauges: each process's resident memory, and the GPU memory of a process that holds models there.

Why: a leak is how a GPU service dies slowly (torchvision's nvJPEG decode leaked to
out-of-memory on CUDA < 11.6, its CPU decoder on malformed JPEGs: pytorch/vision#4378,
#5103, #9383), and with several processes behind one port it has to show in the process
that has it, before the out-of-memory killer names it. The multiprocess gauges are files each process writes for
itself, so each process samples itself: the HTTP workers from the app's lifespan, the
device process from its own loop, every :data:`SAMPLE_S` seconds (a scrape interval is
typically 15 s). A sample reads ``/proc/self/statm`` and, on a GPU, the caching
allocator's counters and ``cudaMemGetInfo``: microseconds, on the event loop.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import torch
from prometheus_client.parser import text_string_to_metric_families

from app.engine.device import memory_stats
from app.observability import metrics

SAMPLE_S = 5.0
_MIB = 1 << 20
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(statm: Path = Path("/proc/self/statm")) -> int | None:
    """This process's resident set in bytes (its second ``statm`` field, in pages); ``None`` without procfs."""
    try:
        return int(statm.read_text().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


def sample(role: str, device: torch.device | None = None) -> None:
    """Set this process's memory gauges now: its resident memory as ``role``, and ``device``'s memory on a GPU."""
    rss = resident_bytes()
    if rss is not None:
        metrics.set_process_memory(role, rss)
    if device is not None:
        metrics.set_device_memory(str(device), memory_stats(device))


async def sample_forever(role: str, device: torch.device | None = None, every_s: float = SAMPLE_S) -> None:
    """:func:`sample` now and every ``every_s`` seconds until cancelled."""
    while True:
        sample(role, device)
        await asyncio.sleep(every_s)


def exposed_totals(text: str) -> dict[str, float]:
    """The memory gauges of a ``/metrics`` body, in MiB, for tools that watch a live service (soak, GPU probe).

    ``rss_worker_mib`` and ``rss_device_mib``: resident memory summed over the processes of each role;
    ``gpu_reserved_mib``: what every process's caching allocator holds; ``gpu_used_mib``: total − free of
    each GPU, summed over GPUs (CUDA contexts and other processes included). Only the keys exposed.
    """
    totals: dict[str, float] = {}
    free_total: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "sr_process_resident_bytes":
                key = f"rss_{s.labels.get('role')}_mib"
                totals[key] = totals.get(key, 0.0) + s.value / _MIB
            elif s.name == "sr_device_memory_bytes" and s.labels.get("kind") == "reserved":
                totals["gpu_reserved_mib"] = totals.get("gpu_reserved_mib", 0.0) + s.value / _MIB
            elif s.name == "sr_device_memory_bytes" and s.labels.get("kind") in ("free", "total"):
                pair = free_total.setdefault(s.labels.get("device", ""), [0.0, 0.0])
                pair[s.labels["kind"] == "total"] = s.value  # every process sees the same device-wide figures
    if free_total:
        totals["gpu_used_mib"] = sum(total - free for free, total in free_total.values()) / _MIB
    return totals
