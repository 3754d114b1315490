"""``python -m app.serve``: run the service with uvicorn, using the ``SR_HOST``/``SR_PORT``/``SR_WORKERS`` settings.

``SR_WORKERS=auto`` (the default) picks the process count for the host
(:func:`app.engine.host.workers_for`), and each process gets its share of the
cores for inference, codec and compose threads (:func:`app.engine.host.share_cores`)
unless those are set, so processes never oversubscribe the machine.

With several workers every process keeps its own metrics, so Prometheus'
multiprocess mode is switched on: ``PROMETHEUS_MULTIPROC_DIR`` is set (to a
fresh temporary folder unless given) and wiped before the workers start.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import uvicorn

from app.config import Settings, get_settings
from app.device_process import DeviceProcesses
from app.engine.host import on_gpu, share_cores, workers_for

log = logging.getLogger("app.serve")


def uses_device_process(settings: Settings) -> bool:
    """``SR_DEVICE_PROCESS``: ``on``/``off``, or ``auto``: on GPU hosts, where one owner per GPU batches every
    worker's tiles; CPU hosts keep a model per worker, lending idle cores (:mod:`app.engine.core_tokens`)."""
    return settings.device_process == "on" or (settings.device_process == "auto" and on_gpu(settings.device))


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workers = workers_for(settings.workers, settings.device)
    shares = share_cores(workers, settings)
    for name, value in shares.items():  # read by every worker's own Settings()
        os.environ[f"SR_{name.upper()}"] = str(value)
    log.info("%d worker process(es); per process: %s", workers,
             {k: getattr(settings, k) or "auto" for k in ("threads", "codec_threads", "compose_threads")} | shares)
    devices = DeviceProcesses(settings.device, settings.drain_timeout_s) if uses_device_process(settings) else None
    if devices is not None:  # every worker hands its pixels to a device process (app/device_process.py)
        os.environ["SR_DEVICE_SOCKET"] = ",".join(devices.sockets)
    tokens = None
    if workers > 1 and devices is None and not on_gpu(settings.device) and not settings.core_tokens_dir:
        tokens = os.environ["SR_CORE_TOKENS_DIR"] = tempfile.mkdtemp(prefix="sr-cores-")
    made_metrics = None  # the metrics folder this process made (not one it was given) goes at exit
    if workers > 1 or devices is not None:  # several processes write metrics: one folder gathers them
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            made_metrics = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sr-metrics-")
        folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    if devices is not None:
        devices.start()
    try:
        uvicorn.run(
            "app.main:app",
            host=settings.host,
            port=settings.port,
            workers=workers,
            access_log=settings.access_log,
            timeout_graceful_shutdown=int(settings.drain_timeout_s) + 5,
            limit_concurrency=settings.limit_concurrency,
            timeout_keep_alive=settings.keep_alive_s,
            http="app.api.http_protocol:TimedHttpToolsProtocol",  # header and body read timeouts
        )
    finally:
        if devices is not None:  # last: the workers drained through it
            devices.stop()
        if tokens:  # the lock files outlive no one: every worker has exited
            shutil.rmtree(tokens, ignore_errors=True)
        if made_metrics:
            shutil.rmtree(made_metrics, ignore_errors=True)


if __name__ == "__main__":
    main()
