"""The GPU marks (issues 27 and 28), measured from outside the real service on this host.

For each layout of ``python -m app.serve`` (default settings otherwise):

- ``default``: what ``SR_DEVICE_PROCESS=auto`` picks (on a GPU host: one device process);
- ``off``: a model per HTTP worker, each with its own CUDA context;
- ``off+mps``: the same under CUDA MPS (``nvidia-cuda-mps-control -d``), which merges the contexts;
- ``on``: a device process forced (on a CPU host too);
- ``+cpujpeg`` after any of them: JPEG decoded and encoded by Pillow (``SR_DEVICE_JPEG=off``), to
  compare with nvJPEG on the request path (on where torchvision is, by default);

it measures one ×3 640×360 JPEG→JPEG request (p50 of 40 after 8 warm-ups, with its
``Server-Timing``), then with wrk: 16 clients posting such frames, and 64 clients posting
96² PNGs at ×3, ``--load-s`` seconds each, with GPU busy (nvidia-smi every 250 ms), CPU
busy (/proc/stat) and the server's core-ms per request beside each, then the memory it holds
(RSS of every process, GPU memory reserved and used: the memory gauges of ``/metrics``). With ``--video-s N``, in the
``--video-layouts`` (default: ``default`` only), it also posts an N-second 640×360 30 fps clip (made
here with PyAV) as a ×3 job and reports output frames/s (issue 28's ≥ 60 of 1080p): the job's own
``fps`` (output frames per second of wall time since it started) and the frames over the time from
the upload's start to ``done``, with the encoder the job used.

    python scripts/gpu_probe.py --layouts default,default+cpujpeg,off+mps --load-s 8 --video-s 10 --out device_out/probe

``WRK`` names the wrk binary (``make device-wheels`` carries Debian's in ``.whl/bin``);
without one the loads are skipped and only the lone request is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.cli.benchlib.launch import serving, tree_cpu_s  # noqa: E402
from app.cli.benchlib.synth_video import make_clip  # noqa: E402
from app.observability.memory import exposed_totals  # noqa: E402

WRK_SCRIPT = """
local f = io.open(os.getenv("SR_BODY"), "rb"); wrk.body = f:read("*a"); f:close()
wrk.method = "POST"
wrk.headers["Content-Type"] = os.getenv("SR_CTYPE")
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d %d %.3f %.3f\\n", summary.requests, summary.errors.status,
    summary.duration, latency:percentile(50) / 1000, latency:percentile(99) / 1000))
end
"""


def sample_images() -> tuple[bytes, bytes]:
    """A 640×360 JPEG frame and a 96² PNG cut from the shipped sample photo."""
    photo = Image.open(ROOT / "app/assets/sample.png").convert("RGB")
    frame, small = io.BytesIO(), io.BytesIO()
    photo.resize((640, 360), Image.Resampling.BICUBIC).save(frame, "JPEG", quality=90)
    photo.crop((0, 0, 96, 96)).save(small, "PNG")
    return frame.getvalue(), small.getvalue()


class Busy:
    """GPU busy (nvidia-smi, every 250 ms) and CPU busy (/proc/stat) over a ``with`` block."""

    def __enter__(self) -> Busy:
        self._gpu: list[float] = []
        self._cpu0 = self._cpu()
        self._stop = threading.Event()
        self._proc = None
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                           "-lms", "250"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(ValueError):
                self._gpu.append(float(line.split(",")[0]))

    @staticmethod
    def _cpu() -> tuple[float, float]:
        values = [float(x) for x in open("/proc/stat").readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    def __exit__(self, *_: object) -> None:
        busy, total = self._cpu()
        self.cpu = 100 * (busy - self._cpu0[0]) / max(1e-9, total - self._cpu0[1])
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()
        self.gpu = statistics.mean(self._gpu) if self._gpu else None


@contextlib.contextmanager
def served(layout: str, log: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    env = {}
    base, *flags = layout.split("+")
    if base in ("on", "off"):
        env["SR_DEVICE_PROCESS"] = base
    if "cpujpeg" in flags:
        env["SR_DEVICE_JPEG"] = "off"
    mps = "mps" in flags
    if mps and subprocess.run(["nvidia-cuda-mps-control", "-d"], check=False).returncode != 0:
        raise RuntimeError("nvidia-cuda-mps-control -d failed: MPS is not available here")
    try:
        with serving(env, log=log, timeout_s=180) as service:
            yield service.url, service.process
    finally:
        if mps:
            subprocess.run(["nvidia-cuda-mps-control"], input=b"quit\n", check=False)


def lone(base: str, frame: bytes) -> dict[str, object]:
    times, timing = [], ""
    with httpx.Client(timeout=60) as client:
        for i in range(48):
            started = time.perf_counter()
            r = client.post(f"{base}/upscale?scale=3&format=jpeg", content=frame, headers={"content-type": "image/jpeg"})
            elapsed = (time.perf_counter() - started) * 1000
            if r.status_code != 200:
                return {"error": f"{r.status_code} {r.text[:200]}"}
            if i >= 8:
                times.append(elapsed)
                timing = r.headers.get("server-timing", "")
    return {"p50_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2), "server_timing": timing}


def load(base: str, server: subprocess.Popen, wrk: str, body: bytes, ctype: str, path: str, clients: int,
         seconds: float) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "body").write_bytes(body)
        (Path(tmp) / "post.lua").write_text(WRK_SCRIPT)
        env = {**os.environ, "SR_BODY": str(Path(tmp) / "body"), "SR_CTYPE": ctype}
        cpu0 = tree_cpu_s(server.pid) or 0.0
        with Busy() as busy:
            out = subprocess.run([wrk, "-t", str(min(clients, 8)), "-c", str(clients), "-d", f"{seconds:.0f}s", "--timeout", "30s",
                                  "-s", str(Path(tmp) / "post.lua"), base + path], env=env, capture_output=True,
                                 text=True, timeout=seconds + 60)
        cpu = (tree_cpu_s(server.pid) or 0.0) - cpu0
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        return {"error": (out.stdout + out.stderr)[-300:]}
    requests, bad, duration_us, p50, p99 = line.split()[1:]
    ok = int(requests) - int(bad)
    return {"req_per_s": round(ok / (int(duration_us) / 1e6), 1), "non_2xx": int(bad), "p50_ms": float(p50),
            "p99_ms": float(p99), "gpu_busy_pct": busy.gpu, "cpu_busy_pct": round(busy.cpu, 1),
            "server_core_ms_per_request": round(1000 * cpu / max(1, ok), 2)}


def video_clip(seconds: float, out: Path) -> Path:
    """A ``seconds``-long 640×360 30 fps H.264 clip with an AAC tone, the sample photo's texture drifting in it."""
    return make_clip(out / f"clip_640x360_{seconds:g}s.mp4", 640, 360, 30, seconds, audio="aac",
                     texture=Image.open(ROOT / "app/assets/sample.png"))


def video_job(base: str, clip: Path, timeout_s: float) -> dict[str, object]:
    """``clip`` as a ×3 job (640×360 → 1920×1080 MP4): output frames/s, the job's and end to end."""
    with httpx.Client(base_url=base, timeout=60) as client:
        started = time.perf_counter()
        r = client.post("/jobs", params={"scale": 3}, content=clip.read_bytes(), headers={"content-type": "video/mp4"})
        if r.status_code != 202:
            return {"error": f"{r.status_code} {r.text[:200]}"}
        status_url = r.json()["status_url"]
        while (job := client.get(status_url).json())["state"] in ("queued", "running"):
            if time.perf_counter() - started > timeout_s:
                client.delete(status_url)
                return {"error": f"not done after {timeout_s:g} s ({job.get('frames_done')} frames, fps {job.get('fps')})"}
            time.sleep(0.1)
        wall = time.perf_counter() - started
    output = (job.get("info") or {}).get("output") or {}
    if job["state"] != "done":
        return {"error": f"{job['state']}: {job.get('error')}"}
    return {"frames": job["frames_done"], "job_fps": job.get("fps"), "end_to_end_fps": round(job["frames_done"] / wall, 2),
            "size": f"{output.get('width')}x{output.get('height')}", "encoder": output.get("encoder")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layouts", default="default,default+cpujpeg,off+mps")
    parser.add_argument("--load-s", type=float, default=8.0)
    parser.add_argument("--out", type=Path, default=Path("probe_out"))
    parser.add_argument("--video-s", type=float, default=0.0, help="seconds of 640×360 video as a ×3 job (0: none)")
    parser.add_argument("--video-layouts", default="default", help="the layouts that run the video job")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wrk = os.environ.get("WRK") or shutil.which("wrk")
    frame, small = sample_images()
    clip = video_clip(args.video_s, args.out) if args.video_s > 0 else None
    results = []
    for layout in args.layouts.split(","):
        if "mps" in layout.split("+")[1:] and not shutil.which("nvidia-cuda-mps-control"):
            continue
        row: dict[str, object] = {"layout": layout}
        try:
            with served(layout, args.out / f"serve-{layout}.log") as (base, server):
                row["device"] = httpx.get(f"{base}/readyz").json().get("device")
                row["lone"] = lone(base, frame)
                if wrk:
                    row["frames_16"] = load(base, server, wrk, frame, "image/jpeg", "/upscale?scale=3&format=jpeg",
                                            16, args.load_s)
                    row["small_64"] = load(base, server, wrk, small, "image/png", "/upscale?scale=3", 64, args.load_s)
                row["memory"] = exposed_totals(httpx.get(f"{base}/metrics").text)  # after the loads
                if clip is not None and layout in args.video_layouts.split(","):
                    row["video"] = video_job(base, clip, timeout_s=max(60.0, 6 * args.video_s))
        except (RuntimeError, httpx.HTTPError) as exc:  # one layout failing must not cost the others' figures
            row["error"] = str(exc)
        print(json.dumps(row), flush=True)
        results.append(row)
    (args.out / "probe.json").write_text(json.dumps(results, indent=2))
    print("\n| layout | lone ×3 640×360 JPEG p50 | 16 clients frames/s (GPU, CPU busy) | 64 clients 96² req/s "
          "(GPU, CPU busy) | server core-ms / 96² request | video ×3 → 1080p output frames/s (job, end to end) "
          "| MiB after the loads: RSS of workers + device process, GPU reserved, GPU used |\n|---|---|---|---|---|---|---|")
    for r in results:
        f, s, v = r.get("frames_16", {}), r.get("small_64", {}), r.get("video", {})
        video = v.get("error") or (f"{v['job_fps']}, {v['end_to_end_fps']} ({v['frames']} frames, {v['encoder']})"
                                   if v else "")
        print(f"| {r['layout']} | {_cell(r.get('lone', {}).get('p50_ms'), ' ms')} | {_cell(f.get('req_per_s'))} "
              f"({_cell(f.get('gpu_busy_pct'), ' %')}, {_cell(f.get('cpu_busy_pct'), ' %')}) | {_cell(s.get('req_per_s'))} "
              f"({_cell(s.get('gpu_busy_pct'), ' %')}, {_cell(s.get('cpu_busy_pct'), ' %')}) "
              f"| {_cell(s.get('server_core_ms_per_request'))} | {video} | {_memory(r.get('memory', {}))} |")


def _memory(m: dict[str, float]) -> str:
    rss = [m[k] for k in ("rss_worker_mib", "rss_device_mib") if k in m]
    return ", ".join([" + ".join(f"{v:.0f}" for v in rss) or "—",
                      *(_cell(None if k not in m else round(m[k])) for k in ("gpu_reserved_mib", "gpu_used_mib"))])


def _cell(value: object, unit: str = "") -> str:
    """A table cell: the value with its unit, or — where it was not measured (no GPU, no wrk, a failed step)."""
    return "—" if value is None else f"{value}{unit}"


if __name__ == "__main__":
    main()
