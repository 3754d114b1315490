"""Issue 32 (High 4): decoded pixels in /dev/shm belong to the parent, are bounded and counted, and fit the deployments.

A client hanging up while a decode worker writes its pixel file used to leave the
file behind (the worker named it and died before telling anyone). Now the parent
names it, counts it against the sandbox's budget and unlinks it however the decode
ends; without room, the pixels come through the socket. The compose and
Kubernetes files give /dev/shm what that budget needs per worker process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from app.engine.host import MAX_GPU_WORKERS
from app.imaging.sandbox import _SHM_PREFIX, DEFAULT_SHM_BYTES, DecodeSandbox, ShmBudget
from tests import hostile_corpus as H
from tests.k8s_render import render

ROOT = Path(__file__).resolve().parents[1]
SHM = Path("/dev/shm")
needs_shm = pytest.mark.skipif(not SHM.is_dir(), reason="no /dev/shm")


def _ours() -> set[Path]:
    return set(SHM.glob(f"{_SHM_PREFIX}*")) if SHM.is_dir() else set()


@pytest.fixture(scope="module")
def rgba_4096() -> bytes:
    """The issue's 4096² RGBA PNG (64 MiB decoded), smooth so that it is small and quick to generate."""
    return H.encoded(H.smooth(4096).convert("RGBA"), "PNG", compress_level=1)


@needs_shm
def test_clients_hanging_up_mid_write_leave_no_pixel_file(rgba_4096: bytes) -> None:
    async def main() -> tuple[int, set[Path], int]:
        sandbox = DecodeSandbox(max_workers=2, warm=1)
        sandbox.start()
        before, hits = _ours(), 0
        try:
            for _ in range(6):
                task = asyncio.ensure_future(sandbox.decode(rgba_4096, 2))
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not task.done() and not _ours() - before:
                    await asyncio.sleep(0.001)
                hits += not task.done()  # the file exists and the decode is not over: hang up now
                task.cancel()
                with pytest.raises((asyncio.CancelledError, Exception)):
                    await task
            deadline = time.monotonic() + 30  # the killed workers are reaped by their waiter threads
            while time.monotonic() < deadline and (sandbox.shm.used or _ours() - before):
                await asyncio.sleep(0.01)
            return hits, _ours() - before, sandbox.shm.used
        finally:
            sandbox.close()

    hits, leaked, used = asyncio.run(main())
    for path in leaked:
        path.unlink()
    assert hits >= 3  # most hang-ups did land while the file was being written
    assert not leaked and used == 0


@needs_shm
def test_the_budget_bounds_the_files_and_the_socket_takes_the_rest(rgba_4096: bytes) -> None:
    async def main() -> None:
        sandbox = DecodeSandbox(max_workers=2, warm=1, shm_bytes=64 << 20)  # room for one 4096² RGBA image
        sandbox.start()
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, sandbox.shm.used)
                await asyncio.sleep(0.002)

        watcher = asyncio.ensure_future(watch())
        try:
            images = await asyncio.gather(*(sandbox.decode(rgba_4096, 2) for _ in range(3)))
        finally:
            watcher.cancel()
            sandbox.close()
        assert all(im.mode == "RGBA" and im.width == 4096 for im in images)
        assert images[0].color.tobytes() == images[2].color.tobytes()
        assert 0 < peak <= 64 << 20 and sandbox.shm.used == 0

    asyncio.run(main())


def test_a_grant_is_refused_past_the_budget_and_released_once(tmp_path: Path) -> None:
    budget = ShmBudget(10 << 20, str(tmp_path))
    first = budget.grant(6 << 20)
    assert first is not None and first.startswith(str(tmp_path / _SHM_PREFIX))
    assert budget.grant(6 << 20) is None and budget.used == 6 << 20
    Path(first).write_bytes(b"x")
    budget.release(first)
    budget.release(first)
    assert budget.used == 0 and not Path(first).exists()


def test_files_of_a_dead_server_process_are_swept_at_start(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{_SHM_PREFIX}{int(dead.stdout)}-1"
    live = tmp_path / f"{_SHM_PREFIX}{os.getpid()}-99"
    other = tmp_path / "someone-else"
    for path in (stale, live, other):
        path.write_bytes(b"x")
    assert ShmBudget(1 << 20, str(tmp_path)).sweep() == 1
    assert not stale.exists() and live.exists() and other.exists()


# --- the deployments give /dev/shm what the budget needs -------------------------------------------

def _bytes(quantity: str) -> int:
    units = {"gb": 1 << 30, "mb": 1 << 20, "g": 1 << 30, "m": 1 << 20, "Gi": 1 << 30, "Mi": 1 << 20}
    for suffix, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(quantity)


def test_compose_gives_every_service_process_its_shm() -> None:
    base = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    gpu = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())["services"]
    for name in ("sr", "sr-replica"):
        # SR_WORKERS=auto: the figure holds 4 CPU processes (more: the excess pixels take the socket)
        assert _bytes(base[name]["shm_size"]) >= 4 * DEFAULT_SHM_BYTES, name
        merged = {**base[name], **gpu[name]}
        assert _bytes(merged["shm_size"]) >= MAX_GPU_WORKERS * DEFAULT_SHM_BYTES, name


@pytest.mark.parametrize("overlay", ["cpu", "gpu", "cpu-keda", "gpu-keda"])
def test_every_k8s_overlay_mounts_a_memory_shm_sized_for_its_workers(overlay: str) -> None:
    objects = render(ROOT / "deploy" / "k8s" / "overlays" / overlay)
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    pod = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "sr")
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert _bytes(volume["emptyDir"]["sizeLimit"]) >= int(config["SR_WORKERS"]) * DEFAULT_SHM_BYTES
    limit = container["resources"]["limits"]["memory"]
    assert _bytes(volume["emptyDir"]["sizeLimit"]) <= _bytes(limit) // 4  # memory-backed: it counts there
