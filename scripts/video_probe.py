"""The issue-16 done-when figures, measured through the real service on 127.0.0.1 (``python -m app.serve``).

    .venv/bin/python scripts/video_probe.py [--store model_store] [--opencv ../shared/peers/opencv] [--long 60]

1. A 5-s 640×360 30 fps clip with an AAC track (made here with PyAV) → ``POST /jobs?scale=3`` →
   the MP4: frames, rate, duration, audio codec; progress samples; every frame's Y-PSNR against
   the still pipeline (``POST /upscale`` of the same decoded frame as PNG).
2. ``/upscale`` latency (640×360 JPEG, ×3) alone and while the job runs.
3. Peak RSS (VmHWM) of a fresh service after the 5-s clip and after a ``--long``-s clip.
4. The job's frames/s beside the OpenCV ``dnn_superres`` ESPCN per-frame loop (same decode and encode).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.cli.benchlib.common import SAMPLE  # noqa: E402
from app.cli.benchlib.launch import tree_rss_mb  # noqa: E402
from app.cli.benchlib.service import running_service  # noqa: E402
from app.cli.benchlib.synth_video import make_clip  # noqa: E402
from app.cli.benchlib.video import opencv_loop  # noqa: E402
from app.config import Settings  # noqa: E402
from app.video import EncoderConfig  # noqa: E402


def y_of(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def run_job(base: str, clip: Path, scale: int = 3) -> tuple[dict, list[dict], bytes]:
    with httpx.Client(base_url=base, timeout=60) as c:
        r = c.post("/jobs", params={"scale": scale}, content=clip.read_bytes(), headers={"content-type": "video/mp4"})
        r.raise_for_status()
        job = r.json()
        seen = []
        while True:
            s = c.get(job["status_url"]).json()
            seen.append(s)
            if s["state"] not in ("queued", "running"):
                break
            time.sleep(0.25)
        result = c.get(job["result_url"]).content if s["state"] == "done" else b""
    return s, seen, result


def upscale_latency(base: str, jpeg: bytes, n: int) -> list[float]:
    times = []
    with httpx.Client(base_url=base, timeout=60) as c:
        for _ in range(n):
            t = time.perf_counter()
            c.post("/upscale", params={"scale": 3, "format": "jpeg"}, content=jpeg,
                   headers={"content-type": "image/jpeg"}).raise_for_status()
            times.append((time.perf_counter() - t) * 1000)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=ROOT / "model_store")
    p.add_argument("--opencv", type=Path, default=ROOT.parent / "shared" / "peers" / "opencv")
    p.add_argument("--long", type=float, default=60.0, help="seconds of the long clip (memory check)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="video-probe-"))
    texture = Image.open(SAMPLE)
    print("making clips …", flush=True)
    short = make_clip(tmp / "short.mp4", 640, 360, 30, 5.0, audio="aac", texture=texture)
    long = make_clip(tmp / "long.mp4", 640, 360, 30, args.long, audio="aac", texture=texture)
    settings = dict(model_store=args.store, device=args.device, workers=1)

    # 1 + 2: the 5-s clip, its figures, and /upscale beside it
    with running_service(Settings(**settings, jobs_dir=tmp / "jobs1")) as served:
        frame0 = next(av.open(str(short)).decode(video=0)).to_image()
        jpeg = io.BytesIO()
        frame0.save(jpeg, "JPEG", quality=90)
        alone = upscale_latency(served.url, jpeg.getvalue(), 5)
        busy: list[float] = []
        worker = threading.Thread(target=lambda: (time.sleep(3), busy.extend(upscale_latency(served.url, jpeg.getvalue(), 5))))
        worker.start()
        status, seen, result = run_job(served.url, short)
        worker.join()
        rss_short = tree_rss_mb(served.pid, "VmHWM")
        (tmp / "short_x3.mp4").write_bytes(result)
        print(f"job: {status['state']} {status['frames_done']}/{status['frames_total']} frames, "
              f"{status['fps']} frames/s, {status['finished'] - status['started']:.1f} s; audio {status['info']['output']['audio']}")
        print("progress samples:", " ".join(f"{s['progress']:.2f}" for s in seen[:: max(1, len(seen) // 12)]),
              f"… {seen[-1]['progress']:.2f}; eta samples:", [s["eta_s"] for s in seen[1:6]])
        with av.open(str(tmp / "short_x3.mp4")) as out, av.open(str(short)) as src:
            v = out.streams.video[0]
            print(f"output: {v.codec_context.name} {v.width}x{v.height}, {v.average_rate} fps, "
                  f"{out.duration / 1e6:.3f} s (source {src.duration / 1e6:.3f} s), "
                  f"streams {[s.codec_context.name for s in out.streams]}")
            out_frames = [f.to_ndarray(format="rgb24") for f in out.decode(video=0)]
        print(f"frames in the MP4: {len(out_frames)}")
        db = []
        with httpx.Client(base_url=served.url, timeout=60) as c, av.open(str(short)) as src:
            for frame, got in zip(src.decode(video=0), out_frames, strict=True):
                png = io.BytesIO()
                frame.to_image().save(png, "PNG", compress_level=1)
                still = c.post("/upscale", params={"scale": 3}, content=png.getvalue(),
                               headers={"content-type": "image/png"}).content
                db.append(psnr(y_of(got), y_of(np.asarray(Image.open(io.BytesIO(still)).convert("RGB")))))
        print(f"Y-PSNR vs the still pipeline: min {min(db):.2f} dB, mean {statistics.mean(db):.2f} dB over {len(db)} frames")
        print(f"/upscale 640x360 → JPEG ×3 latency: alone median {statistics.median(alone):.0f} ms, "
              f"during the job median {statistics.median(busy):.0f} ms (max {max(busy):.0f})")
    job_fps = status["frames_done"] / (status["finished"] - status["started"])

    # 3: memory of the long clip in a fresh service
    with running_service(Settings(**settings, jobs_dir=tmp / "jobs2")) as served:
        status_long, _, _ = run_job(served.url, long)
        rss_long = tree_rss_mb(served.pid, "VmHWM")
    print(f"peak RSS: {args.long:g}-s clip {rss_long:.0f} MiB ({status_long['frames_done']} frames, "
          f"{status_long['fps']} frames/s) vs 5-s clip {rss_short:.0f} MiB: {100 * (rss_long / rss_short - 1):+.1f} %")

    # 4: the OpenCV per-frame loop, same decode and encode, service stopped
    model = args.opencv / "ESPCN_x3.pb"
    try:
        started = time.perf_counter()
        frames, _ = opencv_loop(short, tmp / "opencv.mp4", model, 3, EncoderConfig())
        cv_fps = frames / (time.perf_counter() - started)
        print(f"frames/s: service job {job_fps:.2f} (end to end: decode + SR + encode), "
              f"OpenCV ESPCN loop {cv_fps:.2f}: {job_fps / cv_fps:.2f}×")
    except ImportError:
        print("cv2 not importable: no OpenCV loop (pip install opencv-contrib-python-headless)")


if __name__ == "__main__":
    main()
