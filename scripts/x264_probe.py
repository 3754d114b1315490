"""x264 on this machine, measured through PyAV: the figures behind the video jobs' encoder choices.

Two sections, each configuration in a fresh child process (so its peak RSS is the encoder's own):

- ``presets``: 1080p frames (the shipped photograph's texture drifting under a moving gradient, as
  the service's output looks) at CRF 18 through each preset: frames/s of wall time, CPU ms per frame
  (what it takes from the model on a CPU host), bytes, Y-PSNR against the frames sent. Picks the video jobs' default preset (``SR_JOBS_X264_PRESET``).
- ``large``: 7680×4320 frames (1080p at ×4) through the jobs' x264 options and the lean ones
  :func:`app.video.encoders.x264_options` uses for large frames (issue 32): the encoder's peak RSS,
  frames/s, bytes and Y-PSNR at the same CRF.

    .venv/bin/python scripts/x264_probe.py presets --frames 60
    .venv/bin/python scripts/x264_probe.py large --frames 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from app.cli.benchlib.launch import status_kib  # noqa: E402

PRESETS = ["ultrafast", "superfast", "veryfast", "faster", "fast", "medium"]
# name → libx264 options beyond crf; "jobs" is what the jobs pipeline uses below the large-frame threshold
LARGE = {
    "superfast (jobs, small frames)": {"preset": "superfast"},
    "superfast threads=2": {"preset": "superfast", "threads": "2"},
    "superfast no sync-lookahead, bframes 0": {"preset": "superfast", "x264-params": "sync-lookahead=0:bframes=0"},
    "superfast zerolatency": {"preset": "superfast", "tune": "zerolatency"},
    "superfast zerolatency threads=2": {"preset": "superfast", "tune": "zerolatency", "threads": "2"},
    "superfast zerolatency threads=1": {"preset": "superfast", "tune": "zerolatency", "threads": "1"},
}
SHIFT = 64  # the texture is this much wider than the frame and drifts across it


class Frames:
    """Deterministic moving yuv420p frames, made from planes built once (a frame costs one copy)."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        photo = Image.open(ROOT / "app/assets/sample.png").convert("RGB").resize((width + SHIFT, height),
                                                                                 Image.Resampling.BICUBIC)
        rgb = np.asarray(photo).astype(np.int32)
        yy, xx = np.mgrid[0:height, 0:width + SHIFT]
        grid = ((yy // 24 + xx // 24) % 2 == 0)[..., None]
        rgb = np.where(grid, rgb * 3 // 4, rgb).astype(np.uint8)
        del yy, xx, grid
        planes = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
        self.y = np.ascontiguousarray(planes[:height])
        chroma = planes[height:].reshape(2, height // 2, (width + SHIFT) // 2)
        self.u, self.v = chroma[0].copy(), chroma[1].copy()

    def luma(self, i: int) -> np.ndarray:
        s = (i * 2) % SHIFT
        return self.y[:, s:s + self.width]

    def frame(self, i: int) -> av.VideoFrame:
        s, h, w = (i * 2) % SHIFT, self.height, self.width
        packed = np.concatenate([self.luma(i), self.u[:, s // 2:s // 2 + w // 2].reshape(h // 4, w),
                                 self.v[:, s // 2:s // 2 + w // 2].reshape(h // 4, w)])
        frame = av.VideoFrame.from_ndarray(packed, format="yuv420p")
        frame.pts = i
        return frame


def one(width: int, height: int, frames: int, crf: int, options: dict[str, str], out: Path) -> dict[str, object]:
    """Encode ``frames`` frames with ``options``: peak RSS over the set-up, frames/s, bytes, Y-PSNR."""
    source = Frames(width, height)
    source.frame(0)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from here: what follows is the encoder's
    base = status_kib(os.getpid(), "VmRSS") or 0
    started, cpu = time.perf_counter(), time.process_time()
    with av.open(str(out), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 30)
        stream.options = {"crf": str(crf), **options}
        for i in range(frames):
            container.mux(stream.encode(source.frame(i)))
        container.mux(stream.encode(None))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = (status_kib(os.getpid(), "VmHWM") or 0) - base
    mse, n = 0.0, 0
    with av.open(str(out)) as container:
        for i, decoded in enumerate(container.decode(video=0)):
            y = decoded.to_ndarray(format="yuv420p")[:height].astype(np.float64)
            mse += float(np.mean((y - source.luma(i)) ** 2))
            n += 1
    return {"frames": n, "fps": round(frames / seconds, 2), "cpu_ms_per_frame": round(1000 * cpu / frames, 1),
            "bytes": out.stat().st_size,
            "kbytes_per_frame": round(out.stat().st_size / 1024 / max(n, 1), 1),
            "psnr_y": round(10 * np.log10(255**2 / max(mse / max(n, 1), 1e-12)), 2), "encoder_peak_mb": round(peak / 1024)}


def run_child(width: int, height: int, frames: int, crf: int, options: dict[str, str]) -> dict[str, object]:
    out = subprocess.run([sys.executable, __file__, "one", "--size", f"{width}x{height}", "--frames", str(frames),
                          "--crf", str(crf), "--options", json.dumps(options)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("section", choices=["presets", "large", "one"])
    parser.add_argument("--frames", type=int, default=0, help="frames per run (presets 60, large 8)")
    parser.add_argument("--crf", type=int, default=18)
    parser.add_argument("--size", default="")
    parser.add_argument("--options", default="{}")
    args = parser.parse_args()
    if args.section == "one":
        import tempfile
        w, h = (int(x) for x in args.size.split("x"))
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(one(w, h, args.frames, args.crf, json.loads(args.options), Path(tmp) / "out.mp4")))
        return
    if args.section == "presets":
        runs = {p: {"preset": p} for p in PRESETS}
        size, frames = (1920, 1080), args.frames or 60
    else:
        runs, size, frames = LARGE, (7680, 4320), args.frames or 8
    print(f"| {size[0]}×{size[1]}, {frames} frames, CRF {args.crf} | frames/s | CPU ms/frame | KiB/frame | Y-PSNR dB "
          "| encoder peak RSS MB |\n| --- | --- | --- | --- | --- | --- |", flush=True)
    for name, options in runs.items():
        r = run_child(*size, frames, args.crf, options)
        print(f"| {name} | {r['fps']} | {r['cpu_ms_per_frame']} | {r['kbytes_per_frame']} | {r['psnr_y']} "
              f"| {r['encoder_peak_mb']} |", flush=True)


if __name__ == "__main__":
    main()
