"""Memory gauges: each process's resident memory, read from procfs, and the GPU's where models live there.

The device-process layout (several processes, each with its pid) is in tests/test_device_process.py,
the real GPU counters in tests/test_cuda.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.engine.device import memory_stats
from app.main import create_app
from app.observability import memory, metrics
from tests.conftest import make_settings

MB = 1 << 20


def vm_rss() -> int:
    """The kernel's own account of this process's resident memory, in bytes (``VmRSS`` of ``status``)."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def test_resident_bytes_is_the_kernels_figure_and_follows_an_allocation() -> None:
    assert abs(memory.resident_bytes() - vm_rss()) < 8 * MB
    before = memory.resident_bytes()
    block = np.ones(200 * MB // 8)  # 200 MB, every page touched
    grown = memory.resident_bytes() - before
    assert 180 * MB < grown < 260 * MB, grown
    del block


def test_the_sampler_keeps_the_gauge_current() -> None:
    def exposed() -> float:
        (_, value), = samples(metrics.render()[0].decode(), "sr_process_resident_bytes")
        return value

    async def run() -> tuple[float, float]:
        sampler = asyncio.create_task(memory.sample_forever("worker", torch.device("cpu"), every_s=0.01))
        await asyncio.sleep(0.05)
        first = exposed()
        block = np.ones(200 * MB // 8)
        await asyncio.sleep(0.05)
        second = exposed()
        del block
        sampler.cancel()
        return first, second

    first, second = asyncio.run(run())
    assert 180 * MB < second - first < 260 * MB


def test_without_procfs_there_is_no_figure(tmp_path: Path) -> None:
    assert memory.resident_bytes(tmp_path / "statm") is None


def test_the_cpu_has_no_device_memory_series() -> None:
    assert memory_stats(torch.device("cpu")) == {}


def test_device_memory_is_exposed_per_device_and_kind() -> None:
    """The publishing half of what a GPU process samples (its counters: tests/test_cuda.py)."""
    stats = {"allocated": 3 * MB, "reserved": 8 * MB, "free": 70_000 * MB, "total": 80_000 * MB}
    metrics.set_device_memory("cuda:7", stats)
    try:
        exposed = {labels["kind"]: value for labels, value in samples(metrics.render()[0].decode(), "sr_device_memory_bytes")
                   if labels["device"] == "cuda:7"}
        assert exposed == stats
        totals = memory.exposed_totals(metrics.render()[0].decode())  # what the soak and the GPU probe read
        assert totals["gpu_reserved_mib"] == 8 and totals["gpu_used_mib"] == 10_000
    finally:
        for kind in stats:
            metrics.DEVICE_MEMORY.remove("cuda:7", kind)


def test_unknown_roles_and_kinds_mint_no_series() -> None:
    with pytest.raises(ValueError, match="role"):
        metrics.set_process_memory("sidecar", 1)
    with pytest.raises(ValueError, match="kinds"):
        metrics.set_device_memory("cuda:0", {"allocated": 1, "peak": 2})


def test_a_served_app_reports_its_resident_memory(seeded_store: Path) -> None:
    with TestClient(create_app(make_settings(seeded_store))) as client:
        text = client.get("/metrics").text
    (labels, value), = samples(text, "sr_process_resident_bytes")
    assert labels == {"role": "worker"}
    assert abs(value - vm_rss()) < 64 * MB  # sampled at start-up, a few requests ago
    assert not [s for s in samples(text, "sr_device_memory_bytes") if s[0]["device"] == "cpu"]
    assert memory.exposed_totals(text)["rss_worker_mib"] == value / MB

