"""The device process (``SR_DEVICE_PROCESS=on``), run on the CPU: what a GPU host runs, bar the kernels.

A real ``python -m app.serve`` with two HTTP workers and one device process: the
answers are the in-process CPU service's bytes, batches and metrics come from the
device process, a full queue refuses across processes, and the service survives a
worker or the device process being killed, and drains on SIGTERM. One test runs a
device server and two workers' connections in-process, to watch what a worker hears;
another runs a device process whose device fails for good (tests/test_faults.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from app.cli.benchlib import launch
from app.engine.channel import listen
from app.engine.device_server import DeviceServer
from app.engine.pixels import PixelEngine
from app.engine.remote import RemoteEngine
from app.main import create_app
from app.pipeline.build import build_engine
from tests.conftest import encoded, make_settings, natural, open_bytes

pytestmark = pytest.mark.slow  # a real server for the module: `make test` runs it, `make test-fast` does not

ROOT = Path(__file__).resolve().parents[1]
QUEUE_TILES = 100  # a 256² image is 64 tiles of 32: two cannot be queued at once
PLANES_FROM = 4096  # LR pixels from which the device process composes too; smaller images send their luma


@contextmanager
def serving(store: Path, log: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    settings = {"SR_MODEL_STORE": str(store), "SR_WORKERS": "2", "SR_DEVICE": "cpu",
                "SR_DEVICE_PROCESS": "on", "SR_TILE_SIZE": "32", "SR_MAX_BATCH": "8", "SR_MAX_DELAY_MS": "2",
                "SR_WHOLE_IMAGE_MAX_PIXELS": "0", "SR_MAX_QUEUE_TILES": str(QUEUE_TILES), "SR_DRAIN_TIMEOUT_S": "20",
                "SR_GPU_COMPOSE_MIN_PIXELS": str(PLANES_FROM),
                **env}
    with launch.serving(settings, log=log, timeout_s=120) as service:
        yield service.url, service.process


@pytest.fixture(scope="module")
def service(seeded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, subprocess.Popen]]:
    with serving(seeded_store, tmp_path_factory.mktemp("device") / "serve.log") as served:
        yield served


def device_pid(server: subprocess.Popen) -> int:
    pids = [p for p in launch.descendants(server.pid) if "app.device_process" in launch.cmdline(p)]
    assert len(pids) == 1, pids
    return pids[0]


def worker_pids(server: subprocess.Popen) -> list[int]:
    return [p for p in launch.descendants(server.pid) if "spawn_main" in launch.cmdline(p)]


def post(base: str, data: bytes, scale: int = 2, timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{base}/upscale", params={"scale": scale},
                      files={"file": ("x.png", data, "image/png")}, timeout=timeout)


@pytest.mark.parametrize("size", [(70, 45), (90, 60)], ids=["luma", "planes"])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_answers_are_the_in_process_services_bytes(service: tuple[str, subprocess.Popen], seeded_store: Path,
                                                   mode: str, size: tuple[int, int]) -> None:
    """Both calls: a small image's luma (composed by the worker), a larger one's planes (composed by the device
    process with the tensor compose), each through shared memory: the in-process CPU service's exact bytes."""
    base, _ = service
    assert (size[0] * size[1] >= PLANES_FROM) == (size == (90, 60))
    source = natural(size).convert("L" if mode == "L" else "RGB")
    if mode == "RGBA":
        source.putalpha(Image.linear_gradient("L").resize(source.size))
    data = encoded(source)
    answer = post(base, data, scale=3)
    assert answer.status_code == 200, answer.text
    with TestClient(create_app(make_settings(seeded_store, compose="pillow"))) as local:
        expected = local.post("/upscale", params={"scale": 3}, files={"file": ("x.png", data, "image/png")})
    got = open_bytes(answer.content)
    assert got.mode == mode and got.size == (size[0] * 3, size[1] * 3)
    assert np.array_equal(np.asarray(got), np.asarray(open_bytes(expected.content)))
    assert "device process" in httpx.get(f"{base}/readyz").json()["device"]


def test_every_workers_tiles_share_the_device_processes_batches(service: tuple[str, subprocess.Popen]) -> None:
    base, server = service
    assert len(worker_pids(server)) == 2
    data = encoded(natural((48, 40)))  # 4 tiles
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: post(base, data), range(32)))
    assert [a.status_code for a in answers] == [200] * 32
    assert len({a.content for a in answers}) == 1  # batched with whatever, the same bytes
    metrics = httpx.get(f"{base}/metrics").text
    batches = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("sr_batch_size_count"))
    tiles = sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("sr_batch_size_sum"))
    assert batches > 0, "the device process's batch metrics reach /metrics of a worker"
    assert tiles / batches > 4, "tiles of several requests shared model calls"


def test_every_process_reports_its_own_memory(service: tuple[str, subprocess.Popen]) -> None:
    """One resident-memory series per living process, by pid and role, each near what the kernel says of it."""
    base, server = service
    text = httpx.get(f"{base}/metrics").text
    exposed = {(s.labels["role"], int(s.labels["pid"])): s.value for family in text_string_to_metric_families(text)
               for s in family.samples if s.name == "sr_process_resident_bytes"}
    expected = {("device", device_pid(server))} | {("worker", pid) for pid in worker_pids(server)}
    assert set(exposed) == expected
    for (_, pid), value in exposed.items():
        rss = launch.rss_mb(pid) * (1 << 20)
        assert 0.5 * rss < value < 1.5 * rss, (pid, value, rss)  # sampled a few seconds ago
    assert "sr_device_memory_bytes{" not in text  # the CPU has no device memory series


def test_a_full_queue_refuses_across_processes(service: tuple[str, subprocess.Popen]) -> None:
    base, _ = service
    data = encoded(natural((256, 256)))  # 64 tiles of the 100 the device process queues
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: post(base, data, scale=2), range(8)))
    statuses = sorted(a.status_code for a in answers)
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.json()["code"] == "queue_full" and "retry-after" in refused.headers


def test_a_killed_worker_leaves_the_device_process_serving(service: tuple[str, subprocess.Popen]) -> None:
    base, server = service
    device = device_pid(server)
    data = encoded(natural((256, 200)))
    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(post, base, data) for _ in range(4)]
        time.sleep(0.5)
        victim = worker_pids(server)[0]
        os.kill(victim, signal.SIGKILL)
        answers = []
        for f in pending:
            try:
                answers.append(f.result().status_code)
            except httpx.TransportError:
                answers.append("reset")
    assert set(answers) <= {200, 503, "reset"}, answers
    assert device_pid(server) == device  # the device process never noticed more than a closed connection
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # uvicorn replaces the worker; the dead one's tiles were dropped
        if len(worker_pids(server)) == 2 and httpx.get(f"{base}/readyz").json().get("queue_depth") == 0:
            break
        time.sleep(0.2)
    assert len(worker_pids(server)) == 2
    assert post(base, encoded(natural((48, 40)))).status_code == 200


def test_a_killed_device_process_gives_503s_then_comes_back(service: tuple[str, subprocess.Popen]) -> None:
    base, server = service
    device = device_pid(server)
    data = encoded(natural((160, 160)))  # 25 tiles: three clients fit in the queue
    until = time.monotonic() + 4.0

    def keep_posting() -> list[httpx.Response]:
        answers = []
        while time.monotonic() < until:
            answers.append(post(base, data))
        return answers

    def readiness(deadline: float) -> list[int]:
        """/readyz from before the kill until it has said 503 and then 200 again (the restart can beat the clients)."""
        seen: list[int] = []
        while time.monotonic() < deadline and not (503 in seen and seen[-1] == 200):
            seen.append(httpx.get(f"{base}/readyz").status_code)
            time.sleep(0.02)
        return seen

    with ThreadPoolExecutor(4) as pool:
        clients = [pool.submit(keep_posting) for _ in range(3)]
        time.sleep(1.0)
        ready = pool.submit(readiness, time.monotonic() + 90)
        os.kill(device, signal.SIGKILL)
        answers = [a for c in clients for a in c.result()]
        seen = ready.result()
    assert {a.status_code for a in answers} <= {200, 503}
    refused = [a for a in answers if a.status_code == 503]
    wrong = [(a.json(), dict(a.headers)) for a in refused
             if a.json()["code"] != "worker_restarted" or "retry-after" not in a.headers]
    assert refused and not wrong, wrong
    assert 503 in seen and seen[-1] == 200, seen
    assert device_pid(server) != device
    assert post(base, encoded(natural((48, 40)))).status_code == 200


def test_a_quiet_worker_hears_the_queue_fill_and_drain(seeded_store: Path, tmp_path: Path) -> None:
    """A worker that sends nothing still admits against the device's depth of now, not of its last answer.

    Two workers on one device server; one sends a 1024-tile image, the other only listens. It sees the
    queue fill and drain within the announcer's period: without the ``depth`` messages it would keep
    the depth of its hello, and a worker that last heard of a full queue would refuse with 503 for ever.
    """
    settings = make_settings(seeded_store)
    socket_path = str(tmp_path / "device.sock")

    async def work() -> tuple[int, int]:
        _, engine = build_engine(settings, torch.device("cpu"))
        server = DeviceServer(PixelEngine(engine, torch.device("cpu"), ThreadPoolExecutor(1)), "cpu")
        await engine.start()
        accepting = asyncio.create_task(server.serve(listen(socket_path)))
        busy, quiet = RemoteEngine(socket_path), RemoteEngine(socket_path)
        await busy.start(10)
        await quiet.start(10)
        try:
            assert busy.ready and quiet.ready and quiet.queue_depth == 0
            sent = asyncio.create_task(busy.upscale(torch.rand(1, 1024, 1024), 2))
            peak, deadline = 0, time.monotonic() + 30
            while peak == 0 and not sent.done() and time.monotonic() < deadline:
                peak = max(peak, quiet.queue_depth)
                await asyncio.sleep(0.002)
            await sent
            deadline = time.monotonic() + 5
            while quiet.queue_depth and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            return peak, quiet.queue_depth
        finally:
            await busy.close(5)
            await quiet.close(5)
            accepting.cancel()
            await server.drain(5)

    peak, after = asyncio.run(work())
    assert peak > 0, "the quiet worker never heard of the busy one's tiles"
    assert after == 0, "the quiet worker never heard that the queue drained"


# app.device_process as the supervisor runs it, on a device an all-grey window breaks for good (tests/test_faults.py)
LOSING_DEVICE_PROCESS = """
import asyncio, sys
import app.pipeline.build as build
from tests.test_faults import LosingRunner
built = build.build_engine
def losing(settings, device, **kwargs):
    models, engine = built(settings, device, **kwargs)
    context = {"poisoned": False}
    engine.runners = {s: LosingRunner(m.model, device, backend="eager", tile=engine.tile, context=context)
                      for s, m in models.items()}
    return models, engine
build.build_engine = losing
from app import device_process
asyncio.run(device_process.serve(sys.argv[1], "cpu"))
"""


def test_a_device_process_whose_device_is_lost_answers_then_exits(seeded_store: Path, tmp_path: Path) -> None:
    """A sticky device error: the request that met it is answered ``DeviceLost`` (503 ``device_lost``), and the
    process exits with its own status, for the supervisor to start a fresh one (a live one would fail for ever)."""
    from app.device_process import EXIT_DEVICE_LOST
    from app.engine.errors import DeviceLost
    from tests.test_faults import GREY

    socket_path = str(tmp_path / "device.sock")
    env = {**os.environ, "SR_MODEL_STORE": str(seeded_store), "SR_TILE_SIZE": "32", "SR_MAX_BATCH": "8",
           "SR_WHOLE_IMAGE_MAX_PIXELS": "0",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen([sys.executable, "-c", LOSING_DEVICE_PROCESS, socket_path], cwd=ROOT, env=env)

    async def work() -> BaseException | None:
        worker = RemoteEngine(socket_path)
        await worker.start(60)
        try:
            assert worker.ready
            good = await worker.upscale(torch.rand(1, 40, 40), 2)
            assert good.shape == (1, 80, 80)
            try:
                await worker.upscale(torch.full((1, 40, 40), GREY), 3)
            except DeviceLost as exc:
                return exc
            return None
        finally:
            await worker.close(1)

    try:
        raised = asyncio.run(work())
        assert isinstance(raised, DeviceLost) and "illegal memory access" in str(raised)
        assert process.wait(30) == EXIT_DEVICE_LOST
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sigterm_drains_the_workers_through_the_device_process(seeded_store: Path, tmp_path: Path) -> None:
    with serving(seeded_store, tmp_path / "serve.log") as (base, server):
        device = device_pid(server)
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(post, base, encoded(natural((384, 256))), 4)
            time.sleep(1.0)
            server.send_signal(signal.SIGTERM)
            answer = slow.result()
        assert answer.status_code == 200
        assert server.wait(timeout=60) == 0
        assert not launch.alive(device)
