"""The device process: one per GPU, the only owner of its models, batcher and pixel work.

``python -m app.serve`` starts one per device (:class:`DeviceProcesses`) before its
HTTP workers and tells them the sockets (``SR_DEVICE_SOCKET``). Why a process of its
own: with a model per HTTP worker, eight CUDA contexts took turns on one H200 (the GPU
reported busy while serving few requests; docs/benchmarks.md), and each worker batched only its own tiles. Here
every worker's tiles share one batcher, and one context owns the GPU.

Its life:

- it listens only once its models are loaded and warmed up, so a worker that is
  connected is a worker that may serve;
- it is restarted by the supervisor when it dies (requests in flight get 503, the
  workers reconnect and say ready again);
- on SIGTERM or SIGINT it keeps serving the workers it has until they have all gone
  (they drain first) or ``SR_DRAIN_TIMEOUT_S`` passes; it runs in a session of its own,
  so a Ctrl-C at the terminal reaches the workers, which drain, and not it;
- it exits with its supervisor (``PR_SET_PDEATHSIG``): no orphan holds the GPU;
- it exits by itself when its device is lost (a sticky CUDA error, after which every
  call of its context fails: :meth:`app.engine.batcher.Engine.lose`), once the requests
  it held have had their 503 ``device_lost``: the supervisor starts a fresh one.

Run by hand: ``python -m app.device_process --socket /tmp/sr.sock [--device cuda:1]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

log = logging.getLogger("app.device_process")
RESTART_DELAY_S = (0.5, 10.0)  # first and longest wait before restarting a device process that died
EXIT_DEVICE_LOST = 70  # the exit status of a device process whose device failed for good (EX_SOFTWARE)
LOST_FLUSH_S = 2.0  # how long a lost device's process waits for its requests' answers to go out before it exits


def device_count(device: str) -> int:
    """How many device processes ``SR_DEVICE`` asks for: one per visible GPU, or one for the CPU."""
    from app.engine.host import on_gpu

    if not on_gpu(device):
        return 1
    if device.startswith("cuda:"):
        return 1
    import torch

    return max(1, torch.cuda.device_count())


class DeviceProcesses:
    """The supervisor's side: start one device process per device, restart any that dies, stop them last."""

    def __init__(self, device: str, drain_timeout_s: float) -> None:
        count = device_count(device)
        self.devices = [device] if count == 1 else [f"cuda:{i}" for i in range(count)]
        self.folder = Path(tempfile.mkdtemp(prefix="sr-device-"))
        self.sockets = [str(self.folder / f"{i}.sock") for i in range(len(self.devices))]
        self.drain_timeout_s = drain_timeout_s
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * len(self.devices)
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="device-processes", daemon=True)

    def start(self) -> None:
        for i in range(len(self.devices)):
            self._spawn(i)
        self._watcher.start()

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None]

    def _spawn(self, i: int) -> None:
        self._procs[i] = subprocess.Popen(
            [sys.executable, "-m", "app.device_process", "--socket", self.sockets[i], "--device", self.devices[i]],
            start_new_session=True,  # a terminal's Ctrl-C goes to the workers, which drain while this serves them
        )
        log.info("device process %d (pid %d) on %s at %s", i, self._procs[i].pid, self.devices[i], self.sockets[i])

    def _watch(self) -> None:
        delays = [RESTART_DELAY_S[0]] * len(self.devices)
        while not self._stopping.wait(0.2):
            for i, proc in enumerate(self._procs):
                if proc is None or proc.poll() is None:
                    continue
                log.error("device process %d (pid %d) exited with %s; restarting in %.1f s",
                          i, proc.pid, proc.returncode, delays[i])
                _mark_dead(proc.pid)
                if self._stopping.wait(delays[i]):
                    return
                delays[i] = min(2 * delays[i], RESTART_DELAY_S[1])
                self._spawn(i)

    def stop(self) -> None:
        """After the workers have exited: ask each device process to finish, then make sure it has."""
        self._stopping.set()
        for proc in self._procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            if proc is None:
                continue
            try:
                proc.wait(self.drain_timeout_s + 5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _mark_dead(proc.pid)
        for path in self.sockets:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        with contextlib.suppress(OSError):
            self.folder.rmdir()


def _mark_dead(pid: int) -> None:
    """Drop a dead process's live gauges from the multiprocess metrics (they would read as current)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def _die_with_parent() -> None:
    """Linux: SIGTERM this process when its supervisor dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def serve(socket_path: str, device_setting: str) -> None:
    """Build the engine on the device, warm it up, then serve workers until SIGTERM/SIGINT and their drain."""
    from app.config import get_settings
    from app.engine import channel, jpeg
    from app.engine.device import configure_threads, describe, resolve_device
    from app.engine.device_server import DeviceServer
    from app.engine.pixels import PixelEngine
    from app.observability import memory
    from app.observability.adapters import PrometheusObserver
    from app.pipeline.build import build_engine

    settings = get_settings()
    configure_threads(settings.threads)
    device = resolve_device(device_setting)
    started = time.perf_counter()
    models, engine = build_engine(settings, device, engine_observer=PrometheusObserver())
    pixels = PixelEngine(engine, device, ThreadPoolExecutor(max(2, settings.codec_threads), thread_name_prefix="pixels"),
                         jpeg=jpeg.enabled(settings.device_jpeg, device))
    await engine.start()
    server = DeviceServer(pixels, describe(device), pid=os.getpid())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sock = channel.listen(socket_path)
    accepting = asyncio.create_task(server.serve(sock), name="device-accept")
    sampler = asyncio.create_task(memory.sample_forever("device", device), name="memory-gauges")
    log.info("device process ready in %.1f s: scales %s on %s at %s", time.perf_counter() - started,
             sorted(models), describe(device), socket_path)
    stopping, lost = asyncio.create_task(stop.wait()), asyncio.create_task(engine.wait_lost())
    await asyncio.wait({stopping, lost}, return_when=asyncio.FIRST_COMPLETED)
    if lost.done():
        accepting.cancel()
        await server.settled(LOST_FLUSH_S)
        log.critical("device process: the device is lost (%s); exiting for the supervisor to start a fresh one",
                     lost.result())
        logging.shutdown()
        os._exit(EXIT_DEVICE_LOST)  # no clean-up: it would make CUDA calls on the broken context, which may hang
    lost.cancel()
    accepting.cancel()
    sampler.cancel()
    sock.close()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    log.info("device process: stopping; serving %d worker(s) until they have gone", server.connections)
    await server.drain(settings.drain_timeout_s)
    pixels.executor.shutdown(wait=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m app.device_process", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", required=True, help="Unix socket path to listen on")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _die_with_parent()
    asyncio.run(serve(args.socket, args.device))


if __name__ == "__main__":
    main()
