"""Issue 32's image findings measured against ``python -m app.serve`` with its defaults, on 127.0.0.1 only.

For each attack, several clients at once for a few seconds while /healthz is probed
every 50 ms: the statuses, the peak growth of the server's process tree RSS, and
/healthz latency (max and p95). Then 30 clients hanging up mid-decode of a 4096²
RGBA PNG, and the decode files left in /dev/shm.

    .venv/bin/python scripts/image_attack_probe.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.cli.benchlib.launch import serving  # noqa: E402
from scripts.hostile_probe import PeakRss, raw_post  # noqa: E402
from tests import hostile_corpus as H  # noqa: E402


def _healthz(base: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            start = time.perf_counter()
            c.get(f"{base}/healthz")
            out.append(time.perf_counter() - start)
            time.sleep(0.05)


def attack(base: str, pid: int, name: str, path: str, body: bytes, ctype: str, clients: int, seconds: float) -> None:
    peak = PeakRss(pid)
    before = peak.reset()
    stop, latencies, statuses = threading.Event(), [], Counter()
    prober = threading.Thread(target=_healthz, args=(base, stop, latencies))
    prober.start()
    end = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=120) as c:
            while time.monotonic() < end:
                statuses[c.post(f"{base}{path}", content=body, headers={"content-type": ctype}).status_code] += 1

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(client) for _ in range(clients)]:
            f.result()
    stop.set()
    prober.join()
    peak.stop()
    p95 = statistics.quantiles(latencies, n=20)[-1] if len(latencies) > 1 else latencies[0]
    print(f"{name}: {len(body) / 1024:.0f} KB x {clients} clients for {seconds:.0f} s: statuses {dict(statuses)}; "
          f"tree RSS +{peak.peak - before:.0f} MB peak; /healthz max {max(latencies) * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms over {len(latencies)} probes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    log = tempfile.NamedTemporaryFile("w+", prefix="sr-attack-", suffix=".log", delete=False)
    with serving(log=Path(log.name), stop_timeout_s=90) as service:
        base, port, server = service.url, service.port, service.process
        gif, tiff = H.gif_one_pixel_frames(1000, 90), H.tiff_directory_chain(20_000)
        attack(base, server.pid, "TIFF 20,000 directories /upscale", "/upscale?scale=2", tiff, "image/tiff", 4,
               args.seconds)
        attack(base, server.pid, "TIFF 20,000 directories /jobs", "/jobs?scale=2", tiff, "image/tiff", 4, args.seconds)
        attack(base, server.pid, "PNG 200,000-chunk flood /jobs", "/jobs?scale=2", H.png_chunk_flood(200_000),
               "image/png", 4, args.seconds)
        attack(base, server.pid, "GIF 1,000 one-pixel frames x4", "/upscale?scale=4&format=same", gif, "image/gif", 4,
               args.seconds)
        attack(base, server.pid, "GIF 1,000 one-pixel frames x2", "/upscale?scale=2&format=same", gif, "image/gif", 4,
               args.seconds * 3)
        shm = Path("/dev/shm")
        before = set(shm.glob("sr-decode-*"))
        png = H.encoded(H.smooth(4096).convert("RGBA"), "PNG", compress_level=1)
        for i in range(30):
            sock = raw_post(port, png, "image/png")
            time.sleep(0.4 + 0.03 * (i % 10))
            sock.close()
        time.sleep(5)
        left = set(shm.glob("sr-decode-*")) - before
        print(f"30 hang-ups mid-decode of a 4096² RGBA PNG: {len(left)} files left in /dev/shm "
              f"({sum(p.stat().st_size for p in left) / 2**20:.0f} MB)")
        print(f"5xx in the log: {sum(' 50' in line and 'POST' in line for line in open(log.name))}; log: {log.name}")


if __name__ == "__main__":
    main()
