"""ONNX Runtime's memory options on the shipped models: why :mod:`app.engine.onnx_backend` turns memory
patterns off and shares one arena between sessions.

    python scripts/ort_memory.py

For each variant — memory patterns on or off, an arena per session or the process's shared one —
in a fresh process (the memory is the process's, and the shared arena is registered once per
process), through :func:`app.engine.onnx_backend.session`, prints:

- the first calls on a whole 640×360 image at ×3 (two threads): a slow second call is a
  memory pattern being allocated;
- the steady ms per 96² tile in batches of 1, 7 and 32 (one thread);
- the process's own memory growth after every batch size from 1 to 32 and a dozen whole-image
  sizes (one thread), then after a 1024×512 whole image through each of the six sessions a
  worker process holds (a one-thread and an all-core session per scale, ×2, ×3, ×4).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

from app.cli.benchlib.launch import status_kib

VARIANTS = {"patterns on, own arenas": (True, False), "patterns off, own arenas": (False, False),
            "patterns off, shared arena (the service)": (False, True)}


def anon_mb() -> int:
    """This process's anonymous resident memory (its heap and arenas, not mapped files), MiB."""
    return (status_kib(os.getpid(), "RssAnon") or 0) // 1024


def measure(label: str) -> None:
    from app.engine.onnx_backend import espcn_graph, session
    from app.store import DEFAULT_STORE
    from app.store.registry import discover

    mem_pattern, shared = VARIANTS[label]
    models = discover(DEFAULT_STORE)
    rng = np.random.default_rng(0)

    def run(s, x: np.ndarray) -> float:  # noqa: ANN001
        start = time.perf_counter()
        s.run(["y"], {"x": x})
        return (time.perf_counter() - start) * 1000

    graphs = {scale: espcn_graph(m.model) for scale, m in models.items()}
    sessions = {(scale, threads): session(graphs[scale], threads, mem_pattern=mem_pattern, shared_arena=shared)
                for scale in graphs for threads in (1, 2)}
    base = anon_mb()
    pad = 2 * models[3].model.radius
    frame = rng.random((1, 1, 360 + pad, 640 + pad), dtype=np.float32)
    firsts = [run(sessions[(3, 2)], frame) for _ in range(4)]
    narrow = sessions[(3, 1)]
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
    after_shapes = anon_mb() - base
    for (scale, _), s in sessions.items():
        p = 2 * models[scale].model.radius
        run(s, rng.random((1, 1, 512 + p, 1024 + p), dtype=np.float32))
    print(f"{label}: 640x360 first calls {' '.join(f'{t:.0f}' for t in firsts)} ms | per 96² tile, batches of "
          f"1/7/32: {' '.join(f'{t:.2f}' for t in per_tile)} ms | memory +{after_shapes} MB after the batch sizes "
          f"and image sizes, +{anon_mb() - base} MB after 1024x512 in all six sessions", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        measure(sys.argv[1])
    else:
        for _ in range(2):  # interleaved: this machine drifts
            for label in VARIANTS:
                subprocess.run([sys.executable, __file__, label], check=True)
