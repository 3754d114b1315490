"""ONNX Runtime's memory patterns on and off, on the shipped ×3 model: why :mod:`app.engine.onnx_backend` turns them off.

    python scripts/ort_memory_pattern.py

Prints, for each setting: the first calls on a whole 640×360 image (two threads), the steady
per-tile time in batches of 1, 7 and 32 (one thread), and the process's resident memory after
every batch size from 1 to 32 and a dozen whole-image sizes. Each setting runs in a fresh
process, since the memory is the process's.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np


def measure(mem_pattern: bool) -> None:
    from app.engine.onnx_backend import espcn_graph, session
    from app.store import DEFAULT_STORE
    from app.store.registry import discover

    model = discover(DEFAULT_STORE)[3].model
    pad = 2 * model.radius
    graph = espcn_graph(model)
    rng = np.random.default_rng(0)

    def run(s, x: np.ndarray) -> float:  # noqa: ANN001
        start = time.perf_counter()
        s.run(["y"], {"x": x})
        return (time.perf_counter() - start) * 1000

    wide = session(graph, 2, mem_pattern=mem_pattern)
    frame = rng.random((1, 1, 360 + pad, 640 + pad), dtype=np.float32)
    firsts = [run(wide, frame) for _ in range(4)]
    narrow = session(graph, 1, mem_pattern=mem_pattern)
    per_tile = []
    for n in (1, 7, 32):
        tiles = rng.random((n, 1, 96 + pad, 96 + pad), dtype=np.float32)
        run(narrow, tiles)
        per_tile.append(min(run(narrow, tiles) for _ in range(5)) / n)
    for n in range(1, 33):
        tiles = rng.random((n, 1, 96 + pad, 96 + pad), dtype=np.float32)
        run(narrow, tiles), run(narrow, tiles)
    for _ in range(12):
        h, w = rng.integers(100, 400), rng.integers(100, 700)
        image = rng.random((1, 1, h + pad, w + pad), dtype=np.float32)
        run(narrow, image), run(narrow, image)
    with open("/proc/self/statm") as f:
        rss_mb = int(f.read().split()[1]) * 4096 / 2**20
    print(f"memory patterns {'on ' if mem_pattern else 'off'}: 640x360 first calls "
          f"{' '.join(f'{t:.0f}' for t in firsts)} ms | per 96² tile, batches of 1/7/32: "
          f"{' '.join(f'{t:.2f}' for t in per_tile)} ms | resident {rss_mb:.0f} MB", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(sys.argv[1] == "on")
    else:
        for setting in ("on", "off", "on", "off"):  # interleaved: this machine drifts
            subprocess.run([sys.executable, __file__, setting], check=True)
