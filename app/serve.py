"""``python -m app.serve``: run the service with uvicorn, using the ``SR_HOST``/``SR_PORT``/``SR_WORKERS`` settings.

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

from app.api.settings import get_settings


def main() -> None:
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if settings.workers > 1:
        folder = Path(os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="sr-metrics-"))
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    uvicorn.run(
        "app.main:app",
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        timeout_graceful_shutdown=int(settings.drain_timeout_s) + 5,
    )


if __name__ == "__main__":
    main()
