"""A burst of large uploads against a full queue (issue 15): how fast does each refusal come?

Starts ``python -m app.serve`` (one worker, defaults) on 127.0.0.1, then sends ``--uploads`` 1024² JPEG
uploads at once, each from its own connection. The queue holds 4096 tiles and one such image needs
121, so most are refused with 503 from their header while the first ones are admitted and decoded.
Prints the slowest and median time from sending a request to its refusal arriving, and the statuses.

    .venv/bin/python scripts/burst_probe.py --uploads 160
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.cli.benchlib.launch import serving


async def burst(url: str, n: int, body: bytes) -> list[tuple[int, float]]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one() -> tuple[int, float]:
            started = time.perf_counter()
            r = await client.post("/upscale?scale=2&format=jpeg", content=body, headers={"content-type": "image/jpeg"})
            return r.status_code, time.perf_counter() - started

        return await asyncio.gather(*(one() for _ in range(n)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--uploads", type=int, default=160)
    args = ap.parse_args()
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    with serving({"SR_WORKERS": "1", "SR_MAX_BODY_BYTES": str(32 << 20)}, timeout_s=120) as server:
        results = asyncio.run(burst(server.url, args.uploads, buf.getvalue()))
    refused = sorted(t for s, t in results if s in (429, 503))
    statuses: dict[int, int] = {}
    for s, _ in results:
        statuses[s] = statuses.get(s, 0) + 1
    print(f"{len(buf.getvalue()):,}-byte JPEG × {args.uploads}: statuses {dict(sorted(statuses.items()))}")
    if refused:
        print(f"refusals: median {statistics.median(refused) * 1000:.0f} ms, slowest {refused[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main()
