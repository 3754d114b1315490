"""Where a small request's CPU goes: core-ms per 96² ×3 PNG request, by thread and by stage.

Starts ``python -m app.serve`` (``--workers``, default 1, so every thread is one process's), loads it
with ``--clients`` keep-alive connections posting distinct 96² crops of a real photograph (the
benchmark's own load generator), and reads each thread's CPU time from ``/proc`` before and after.
Threads are named from ``py-spy dump`` when py-spy is installed (a threads' native id is all
``/proc`` knows); a thread without a Python name is the model runtime's own pool. Then the
pipeline's pixel stages alone, in this process, on the same crop: what the codec threads would
cost without the GIL, the hand-offs and the other threads around them.

    .venv/bin/python scripts/core_ms_probe.py --image ../shared/datasets/val/set5/img_001.png

Figures and their date go in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import io
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.cli.benchlib.launch import descendants, serving
from app.cli.benchlib.load import hammer
from app.imaging.compose import compose, luma_tensor
from app.imaging.decode import decode
from app.imaging.encode import encode
from app.imaging.limits import ImageLimits

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(pids: list[int]) -> dict[int, int]:
    """Native thread id → CPU ticks (user + system) for every thread of ``pids``."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except FileNotFoundError:
            continue
        for tid in tids:
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            out[int(tid)] = int(fields[11]) + int(fields[12])
    return out


def python_names(pids: list[int]) -> dict[int, str]:
    """Native thread id → Python thread name, from ``py-spy dump`` (empty without py-spy)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    names: dict[int, str] = {}
    if not Path(spy).exists():
        return names
    for pid in pids:
        dump = subprocess.run([spy, "dump", "-p", str(pid), "--nonblocking"], capture_output=True, text=True)
        for tid, name in re.findall(r'^Thread (?:0x[0-9A-Fa-f]+ )?(\d+) \([^)]*\): "([^"]+)"', dump.stdout, re.M):
            names[int(tid)] = re.sub(r"_\d+$", "", name)  # codec_0, codec_1 → codec
    return names


def crops(image: Image.Image, n: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    bodies = []
    for _ in range(n):
        x, y = (int(v) for v in rng.integers(0, [image.width - side, image.height - side]))
        buffer = io.BytesIO()
        image.crop((x, y, x + side, y + side)).save(buffer, "PNG")
        bodies.append(buffer.getvalue())
    return bodies


def stage_costs(body: bytes, scale: int, repeats: int = 300) -> dict[str, float]:
    """core-ms of each pixel stage alone, one thread, on one request's bytes."""
    torch.set_num_threads(1)
    limits = ImageLimits()
    image = decode(body, scale, limits)
    luma = luma_tensor(image)
    sr = torch.nn.functional.interpolate(luma[None], scale_factor=scale, mode="bicubic").clamp(0, 1)[0]
    answer = compose(image, sr, scale)
    stages = {"decode": lambda: decode(body, scale, limits), "luma": lambda: luma_tensor(image),
              "compose": lambda: compose(image, sr, scale), "encode PNG": lambda: encode(answer, "png")}
    costs = {}
    for name, stage in stages.items():
        stage()
        start = time.thread_time()
        for _ in range(repeats):
            stage()
        costs[name] = (time.thread_time() - start) * 1000 / repeats
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, required=True, help="a photograph to crop requests from")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--scale", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args()
    bodies = crops(Image.open(args.image).convert("RGB"), args.clients, args.side)
    path = f"/upscale?scale={args.scale}"
    with serving({"SR_WORKERS": str(args.workers)}) as service:
        asyncio.run(hammer(service.url, path, bodies, 3.0))  # warm: arenas, caches, compiled kernels
        pids = [service.pid, *descendants(service.pid)]
        names = python_names(pids)
        before = thread_cpu(pids)
        result = asyncio.run(hammer(service.url, path, bodies, args.seconds))
        after = thread_cpu(pids)
    per_thread: collections.Counter[str] = collections.Counter()
    for tid, ticks in after.items():
        name = names.get(tid, "model runtime (native)" if names else f"thread {tid}")
        per_thread[name] += ticks - before.get(tid, 0)
    requests = max(result.ok, 1)
    total = sum(per_thread.values()) * 1000 / TICK / requests
    print(f"{result.ok} requests ({result.errors} errors) in {result.wall_s:.1f} s: "
          f"{result.ok / result.wall_s:.1f} req/s, server {total:.2f} core-ms per request")
    print("\n| thread | core-ms / request |\n| --- | --- |")
    for name, ticks in per_thread.most_common():
        if ticks:
            print(f"| {name} | {ticks * 1000 / TICK / requests:.2f} |")
    print("\n| stage alone (this process, one thread) | core-ms |\n| --- | --- |")
    for name, ms in stage_costs(bodies[0], args.scale).items():
        print(f"| {name} | {ms:.3f} |")


if __name__ == "__main__":
    main()
