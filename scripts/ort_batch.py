"""ONNX Runtime's time per tile and its memory arena against the batch size: why ``SR_MAX_BATCH`` auto is 8 on CPU.

    python scripts/ort_batch.py

The shipped ×3 model on 104² windows (96² tiles and their halo), for sessions of one and two
intra-op threads as the service builds them (:func:`app.engine.onnx_backend.session`): the median
ms per tile over five interleaved rounds, and how much the process's own memory grew once each
batch size had run (ORT's arena keeps the largest activations it has seen).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from ort_memory import anon_mb  # scripts/: this script's own folder

from app.engine.onnx_backend import espcn_graph, session
from app.store import DEFAULT_STORE
from app.store.registry import discover

BATCHES = (1, 4, 8, 16, 32, 64)


def main() -> None:
    model = discover(DEFAULT_STORE)[3].model
    side = 96 + 2 * model.radius
    graph = espcn_graph(model)
    rng = np.random.default_rng(0)
    windows = {n: rng.random((n, 1, side, side), dtype=np.float32) for n in BATCHES}
    sessions = {threads: session(graph, threads) for threads in (1, 2)}
    base, growth = anon_mb(), {}
    for n, x in windows.items():  # growth of the first session's arena, smallest batch first
        sessions[1].run(["y"], {"x": x})
        growth[n] = anon_mb() - base
    for s in sessions.values():
        for x in windows.values():
            s.run(["y"], {"x": x})
    times: dict[tuple[int, int], list[float]] = {(t, n): [] for t in sessions for n in BATCHES}
    for _ in range(5):
        for threads, s in sessions.items():
            for n, x in windows.items():
                repeats = max(1, 64 // n)
                start = time.perf_counter()
                for _ in range(repeats):
                    s.run(["y"], {"x": x})
                times[(threads, n)].append((time.perf_counter() - start) * 1000 / (repeats * n))
    print("batch:           " + " ".join(f"{n:>6}" for n in BATCHES))
    for threads in sessions:
        print(f"{threads} thread(s), ms: " + " ".join(f"{statistics.median(times[(threads, n)]):6.2f}" for n in BATCHES))
    print("arena growth, MB: " + " ".join(f"{growth[n]:6d}" for n in BATCHES))


if __name__ == "__main__":
    main()
