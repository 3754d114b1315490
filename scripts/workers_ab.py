"""Interleaved A/B of worker layouts: a lone ×3 640×360 JPEG request and 32 clients of 96² PNGs, beside
OpenCV's ESPCN and the bare model, round after round. This machine drifts by ±20 % within minutes, so
each layout's lone request is timed right after OpenCV, and its load is bracketed by two bare-model runs
(the server up and idle meanwhile), whose mean is the ratio's denominator.

    python scripts/workers_ab.py 1x0,2x0 2 8      # layouts WORKERSxTHREADS[xMAX_BATCH] (0: auto), rounds, seconds
    python scripts/workers_ab.py 1x0,2x0 2 8 15   # and 16 clients of that 640×360 frame → ×3 JPEG for 15 s
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch

from app.cli.benchlib import service
from app.cli.benchlib.common import frame, load_source
from app.cli.benchlib.launch import tree_cpu_s
from app.cli.benchlib.load import hammer
from app.cli.benchlib.model_paths import PathConfig
from app.cli.benchlib.peers import build_opencv
from app.config import Settings
from app.store import DEFAULT_STORE
from app.store.registry import discover


def main() -> None:
    layouts = [(*map(int, c.split("x")), 0)[:3] for c in sys.argv[1].split(",")]
    rounds, seconds = int(sys.argv[2]), float(sys.argv[3])
    frame_seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    source, model = load_source(None), discover(DEFAULT_STORE)[3].model
    image = frame(source, 640, 360)
    jpeg = service.jpeg_bytes(image)
    frames = service.frame_load(image, 16, 3, frame_seconds)
    load = service.small_load(source, 32, 96, 3, seconds)
    cfg = PathConfig(device=torch.device("cpu"), tile=96, max_batch=32, repeats=5, warmup=1, compile=False)
    images = service.load_images(source, service.LoadConfig(32, seconds, 96, 3))
    opencv = build_opencv(Path("../shared/peers/opencv/ESPCN_x3.pb"), "espcn", 3, image)
    def bare() -> float:
        return service.bare_runs(model, images, cfg, [32])[32].images_per_s

    opencv()
    for rnd in range(rounds):
        for workers, threads, max_batch in layouts:
            settings = Settings(model_store=DEFAULT_STORE, workers=workers, threads=threads, max_batch=max_batch)
            with service.running_service(settings) as served, httpx.Client(base_url=served.url, timeout=60) as c:
                def post() -> None:
                    c.post("/upscale", params={"scale": 3, "format": "jpeg"}, content=jpeg,
                           headers={"content-type": "image/jpeg"}).raise_for_status()
                for _ in range(3):
                    post()
                opencv_ms = statistics.median(_timed(opencv) for _ in range(7))
                lone = statistics.median(_timed(post) for _ in range(9))
                asyncio.run(hammer(served.url, load.path, load.bodies, 2.0, load.content_type))
                before = bare()
                result = asyncio.run(hammer(served.url, load.path, load.bodies, seconds, load.content_type))
                after = bare()
                framed = ""
                if frame_seconds:
                    asyncio.run(hammer(served.url, frames.path, frames.bodies, 3.0, frames.content_type))
                    cpu = tree_cpu_s(served.pid)
                    run = asyncio.run(hammer(served.url, frames.path, frames.bodies, frame_seconds, frames.content_type))
                    cpu = (tree_cpu_s(served.pid) or 0.0) - (cpu or 0.0)
                    framed = (f" | 16 clients of the frame {run.ok / run.wall_s:.2f} frames/s, "
                              f"{cpu * 1000 / max(1, run.ok):.0f} core-ms each, {run.errors} errors")
            rate, bare_mean = result.ok / result.wall_s, (before + after) / 2
            print(f"round {rnd} {workers}w x{threads}t x{max_batch}b: lone {lone:.1f} ms (OpenCV {opencv_ms:.1f}, "
                  f"{opencv_ms / lone:.2f}x) | 32 clients {rate:.1f} req/s, bare {before:.1f}/{after:.1f} -> "
                  f"{rate / bare_mean:.3f}{framed}", flush=True)


def _timed(fn) -> float:  # noqa: ANN001
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


if __name__ == "__main__":
    main()
