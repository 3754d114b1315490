"""How much one video job grows the real service's process tree (issue 32: the 1.5 GB bound per job).

Starts ``python -m app.serve`` on 127.0.0.1 with the launcher's defaults (plus any ``--env K=V``),
makes a legitimate H.264 clip with PyAV, posts it as a job, and samples the whole process tree's RSS
every 50 ms while it runs: the figure is the peak less the idle tree before the upload.

    .venv/bin/python scripts/video_memory_probe.py --size 1920x1080 --scale 4 --frames 12
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.cli.benchlib.launch import serving, tree_rss_mb  # noqa: E402
from app.cli.benchlib.synth_video import make_clip  # noqa: E402


def measure(size: tuple[int, int], scale: int, frames: int, env: dict[str, str], log: Path) -> dict[str, object]:
    """One fresh service, one job: idle tree, peak tree during the job, tree after it, and the job's record."""
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "clip.mp4", *size, fps=10, seconds=frames / 10, audio="aac",
                         texture=_texture())
        with serving(env, log=log, timeout_s=180) as service, httpx.Client(base_url=service.url, timeout=60) as c:
            time.sleep(2.0)  # workers settle after readiness
            idle = tree_rss_mb(service.pid)
            peak, stop = [idle], threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    peak[0] = max(peak[0], tree_rss_mb(service.pid))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            started = time.perf_counter()
            r = c.post("/jobs", params={"scale": scale}, content=clip.read_bytes(),
                       headers={"content-type": "video/mp4"})
            r.raise_for_status()
            status_url = r.json()["status_url"]
            while (job := c.get(status_url).json())["state"] in ("queued", "running"):
                time.sleep(0.2)
            wall = time.perf_counter() - started
            stop.set()
            sampler.join()
            after = tree_rss_mb(service.pid)
    return {"size": f"{size[0]}x{size[1]}", "scale": scale, "frames": frames, "env": env,
            "idle_mb": round(idle), "peak_growth_mb": round(peak[0] - idle), "after_growth_mb": round(after - idle),
            "state": job["state"], "error": job.get("error"), "job_fps": job.get("fps"),
            "wall_s": round(wall, 1), "output": (job.get("info") or {}).get("output")}


def _texture():  # type: ignore[no-untyped-def]
    from PIL import Image
    return Image.open(ROOT / "app/assets/sample.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--env", action="append", default=[], help="K=V for the service (repeatable)")
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "video_memory_probe.log")
    args = parser.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    env = dict(item.split("=", 1) for item in args.env)
    print(json.dumps(measure((w, h), args.scale, args.frames, env, args.log)), flush=True)


if __name__ == "__main__":
    main()
