"""Soak a live service with mixed traffic and check it comes back to its warm baseline (issue 15).

Starts ``python -m app.serve`` (one worker) on 127.0.0.1 (or uses ``--url``/``--pid``), warms it up
with a round of the same mix, records the server's RSS, thread count and open files, then sends
``--requests`` requests from ``--concurrency`` clients: good uploads (PNG and JPEG, ×2/×3/×4), bad ones
(not an image, unknown scale, wrong media type, quality with PNG, an over-limit body), GETs (models,
kernels, the debug figure), uploads cancelled mid-body, and clients that send a whole image and hang
up before the answer (their tiles are mid-batch). After a short settle it measures again and checks

* no 5xx and no unexpected status (good → 200, bad → its 4xx);
* RSS within ``--rss-margin-mb`` (default 96 MB) of the warm baseline, threads within 4, open files within 8;
* on a GPU host, from ``/metrics``: the device process's RSS within the same margin, and the GPU memory the
  service holds (``sr_device_memory_bytes{kind="reserved"}``, every process) within ``--gpu-margin-mb``;
* ``/readyz`` still 200.

    .venv/bin/python scripts/soak.py --requests 5000 --concurrency 24
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import random
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.cli.benchlib.launch import open_files, rss_mb, serving, status_kib  # noqa: E402
from app.observability.memory import SAMPLE_S, exposed_totals  # noqa: E402

SERVER_ENV = {"SR_WORKERS": "1", "SR_MAX_BODY_BYTES": str(256 * 1024)}  # one process; "too_large" is 300 KB


def _image(w: int, h: int, fmt: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([np.sin(x / 7 + seed), np.cos(y / 5), np.sin((x + y) / 11)], -1) * 80 + 128
    pixels = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


SMALL_PNG = _image(64, 48, "PNG", 1)
MEDIUM_JPEG = _image(256, 192, "JPEG", 2)
BIG_PNG = _image(320, 256, "PNG", 3)


def proc_figures(pid: int) -> dict[str, float]:
    """RSS (MB), threads and open files of one process, from /proc (``RuntimeError`` if it is gone)."""
    threads, files = status_kib(pid, "Threads"), open_files(pid)
    if threads is None or files is None:
        raise RuntimeError(f"the server process {pid} is gone")
    return {"rss_mb": rss_mb(pid), "threads": threads, "open_files": files}


@dataclass
class Tally:
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    unexpected: list[str] = field(default_factory=list)

    def record(self, kind: str, status: int | str, expected: set[int | str]) -> None:
        self.by_kind[f"{kind}:{status}"] += 1
        if status not in expected:
            self.unexpected.append(f"{kind} -> {status}")


async def _raw(host: str, port: int, head: bytes, body: bytes, *, send: int, read: bool) -> None:
    """Send ``head`` and the first ``send`` bytes of ``body`` on a fresh connection, then hang up."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(head + body[:send])
        await writer.drain()
        if read:
            await asyncio.sleep(0.01)
    finally:
        writer.transport.abort()  # RST, as a client that dies would


async def one(client: httpx.AsyncClient, host: str, port: int, kind: str, rng: random.Random, tally: Tally) -> None:
    scale = rng.choice((2, 3, 4))
    png = {"content-type": "image/png"}
    try:
        if kind == "good_png":
            r = await client.post(f"/upscale?scale={scale}", content=SMALL_PNG, headers=png)
            tally.record(kind, r.status_code, {200})
        elif kind == "good_jpeg":
            r = await client.post(f"/upscale?scale={scale}&format=jpeg&quality=80", files={"file": ("a.jpg", MEDIUM_JPEG, "image/jpeg")})
            tally.record(kind, r.status_code, {200})
        elif kind == "bad":
            case = rng.randrange(6)
            if case == 0:
                r = await client.post("/upscale?scale=2", content=b"not an image at all", headers=png)
                tally.record("bad_data", r.status_code, {400})
            elif case == 1:
                r = await client.post("/upscale?scale=7", content=SMALL_PNG, headers=png)
                tally.record("bad_scale", r.status_code, {422})
            elif case == 2:
                r = await client.post("/upscale?scale=2", content=SMALL_PNG, headers={"content-type": "text/plain"})
                tally.record("bad_type", r.status_code, {415})
            elif case == 3:
                r = await client.post("/upscale?scale=2&format=png&quality=5", content=SMALL_PNG, headers=png)
                tally.record("bad_quality", r.status_code, {422})
            elif case == 4:
                r = await client.post("/upscale?scale=2", content=b"\0" * (300 * 1024), headers=png)
                tally.record("too_large", r.status_code, {413})
            else:
                r = await client.post("/upscale?scale=2", content=SMALL_PNG[: len(SMALL_PNG) // 2], headers=png)
                tally.record("truncated", r.status_code, {400})
        elif kind == "get":
            path = rng.choice(["/models", "/healthz", f"/kernels/deconv.png?scale={scale}", "/readyz",
                               f"/debug/channels?scale={scale}&format=json", "/no/such/path"])
            r = await client.get(path)
            tally.record("get", r.status_code, {404} if path == "/no/such/path" else {200})
        elif kind == "cancel_upload":  # Content-Length promises more than is ever sent
            head = (f"POST /upscale?scale={scale} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    f"Content-Length: {len(BIG_PNG)}\r\n\r\n").encode()
            await _raw(host, port, head, BIG_PNG, send=rng.randrange(1, len(BIG_PNG) // 2), read=False)
            tally.record(kind, "hung_up", {"hung_up"})
        elif kind == "disconnect_mid_batch":  # the whole image, then gone while its tiles are queued or running
            head = (f"POST /upscale?scale={scale} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    f"Content-Length: {len(BIG_PNG)}\r\n\r\n").encode()
            await _raw(host, port, head, BIG_PNG, send=len(BIG_PNG), read=True)
            tally.record(kind, "hung_up", {"hung_up"})
    except httpx.HTTPError as exc:
        tally.record(kind, type(exc).__name__, set())


MIX = [("good_png", 40), ("good_jpeg", 8), ("bad", 20), ("get", 8), ("cancel_upload", 12), ("disconnect_mid_batch", 12)]


async def traffic(url: str, total: int, concurrency: int, seed: int) -> Tally:
    host, port = url.removeprefix("http://").split(":")
    rng = random.Random(seed)
    kinds = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX], k=total)
    tally = Tally()
    queue: asyncio.Queue[str] = asyncio.Queue()
    for k in kinds:
        queue.put_nowait(k)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def worker(n: int) -> None:
            local = random.Random(seed * 1000 + n)
            while not queue.empty():
                await one(client, host, int(port), queue.get_nowait(), local, tally)

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return tally


def gauged_memory(url: str) -> dict[str, float]:
    """From ``/metrics``, after the processes' next sample: the device process's RSS and the GPU memory reserved
    by every process, in MiB; empty where neither exists (one CPU worker: :func:`proc_figures` has it all)."""
    def read() -> dict[str, float]:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as r:
            totals = exposed_totals(r.read().decode())
        return {k: totals[k] for k in ("rss_device_mib", "gpu_reserved_mib") if k in totals}

    if not read():
        return {}
    time.sleep(SAMPLE_S + 0.5)  # a sample taken after the traffic
    return read()


def soak(url: str, pid: int, total: int, concurrency: int, *, warm: int = 300, settle_s: float = 3.0,
         rss_margin_mb: float = 96, gpu_margin_mb: float = 256, seed: int = 0) -> dict:
    """Warm up, take the baseline, soak, settle, compare; returns the figures and ``ok``."""
    asyncio.run(traffic(url, warm, concurrency, seed + 1))
    time.sleep(settle_s)
    before = proc_figures(pid) | gauged_memory(url)
    started = time.perf_counter()
    tally = asyncio.run(traffic(url, total, concurrency, seed))
    elapsed = time.perf_counter() - started
    deadline = time.monotonic() + 4 * settle_s  # let abandoned connections and tasks wind down
    while True:
        time.sleep(settle_s)
        after = proc_figures(pid)
        settled = (after["threads"] <= before["threads"] + 4 and after["open_files"] <= before["open_files"] + 8)
        if settled or time.monotonic() > deadline:
            break
    after |= gauged_memory(url)
    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
        ready = r.status
    figures = {
        "requests": total, "concurrency": concurrency, "seconds": round(elapsed, 1),
        "requests_per_s": round(total / elapsed, 1),
        "baseline": {k: round(v, 1) for k, v in before.items()}, "after": {k: round(v, 1) for k, v in after.items()},
        "rss_growth_mb": round(after["rss_mb"] - before["rss_mb"], 1),
        **{f"{k.removesuffix('_mib')}_growth_mb": round(after[k] - before[k], 1)
           for k in ("rss_device_mib", "gpu_reserved_mib") if k in before and k in after},
        "by_kind": dict(sorted(tally.by_kind.items())), "unexpected": tally.unexpected[:20],
        "readyz": ready,
    }
    figures["ok"] = (not tally.unexpected and ready == 200 and figures["rss_growth_mb"] <= rss_margin_mb
                     and figures.get("rss_device_growth_mb", 0) <= rss_margin_mb
                     and figures.get("gpu_reserved_growth_mb", 0) <= gpu_margin_mb
                     and after["threads"] <= before["threads"] + 4 and after["open_files"] <= before["open_files"] + 8)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=24)
    ap.add_argument("--rss-margin-mb", type=float, default=96)
    ap.add_argument("--gpu-margin-mb", type=float, default=256,
                    help="growth allowed in the GPU memory the service's processes reserve")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1,
                    help="soak the same server this many times: a cache that fills in round 1 (ONNX Runtime's "
                    "memory arena, allocator pools) shows as growth there and not in the rounds after; a leak "
                    "grows every round")
    args = ap.parse_args()
    rounds = []
    with serving(SERVER_ENV, timeout_s=120) as server:
        for n in range(args.rounds):
            rounds.append(soak(server.url, server.pid, args.requests, args.concurrency,
                               rss_margin_mb=args.rss_margin_mb, gpu_margin_mb=args.gpu_margin_mb,
                               seed=args.seed + n))
    print(json.dumps(rounds[0] if args.rounds == 1 else rounds, indent=1))
    if args.rounds > 1:
        print("RSS growth per round (MB):", [r["rss_growth_mb"] for r in rounds])
    raise SystemExit(0 if all(r["ok"] for r in rounds[1:] or rounds) else 1)


if __name__ == "__main__":
    main()
