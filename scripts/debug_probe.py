"""Issue 15's debug-view figure: a 4096² JPEG to ``/debug/channels?scale=2`` against a live service.

Starts ``python -m app.serve`` (one worker) on 127.0.0.1, waits for ``/readyz``, then posts the JPEG
with ``format=json`` and ``format=png`` and reports, per request, the status, the wall time and the
peak RSS growth over the warm baseline of the server process alone and of its process tree (the
decode sandbox's workers included), sampled every 10 ms from ``/proc``. Linux only.

    .venv/bin/python scripts/debug_probe.py [--side 4096] [--scale 2] [--port 0]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.cli.benchlib.launch import rss_mb, serving, tree_rss_mb  # noqa: E402


class Sampler:
    """Peak RSS (MiB) of one process and of its tree while a request runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_main, self.peak_tree = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            main, tree = rss_mb(self.pid), tree_rss_mb(self.pid)
            self.peak_main, self.peak_tree = max(self.peak_main, main), max(self.peak_tree, tree)
            time.sleep(0.01)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def photo_jpeg(side: int) -> bytes:
    """A photograph-like JPEG (smooth gradients plus texture), encoded at quality 90."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    base = np.stack([np.sin(6 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(9 * x * y)], -1) * 90 + 128
    image = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--side", type=int, default=4096)
    ap.add_argument("--scale", type=int, default=2)
    args = ap.parse_args()
    with serving({"SR_WORKERS": "1"}, timeout_s=120) as service:
        server, base = service.process, service.url
        data = photo_jpeg(args.side)
        print(f"{args.side}x{args.side} JPEG, {len(data) / 1e6:.1f} MB; server pid {server.pid}")
        results = []
        for fmt in ("json", "png", "json"):
            time.sleep(0.5)
            baseline_main, baseline_tree = rss_mb(server.pid), tree_rss_mb(server.pid)
            request = urllib.request.Request(f"{base}/debug/channels?scale={args.scale}&format={fmt}", data=data,
                                             headers={"Content-Type": "image/jpeg"}, method="POST")
            with Sampler(server.pid) as sampler:
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(request, timeout=120) as r:
                        status, body, analysed = r.status, r.read(), r.headers.get("X-Debug-Analysed")
                except urllib.error.HTTPError as e:
                    status, body, analysed = e.code, e.read(), None
                elapsed = time.perf_counter() - started
            row = {"format": fmt, "status": status, "seconds": round(elapsed, 2), "bytes": len(body),
                   "analysed": analysed,
                   "peak_rss_growth_mb_server": round(sampler.peak_main - baseline_main, 1),
                   "peak_rss_growth_mb_tree": round(sampler.peak_tree - baseline_tree, 1),
                   "baseline_rss_mb_server": round(baseline_main, 1)}
            results.append(row)
            print(json.dumps(row))
        ok = all(r["status"] in (200, 413) and r["seconds"] < 15 and r["peak_rss_growth_mb_tree"] < 1536
                 for r in results)
        print("done-when (answered or 413, < 15 s, < 1.5 GB growth):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
