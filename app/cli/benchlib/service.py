"""The real service over loopback HTTP: one request end to end, codec costs, and throughput under load.

Each variant is its own server (``python -m app.serve``, the command the container runs, with the
variant's settings as ``SR_*`` environment variables, ``SR_WORKERS`` included) on ``127.0.0.1`` and
a free port, stopped before the next one starts. The clients run in this process, so client and
server do not share a GIL — but they do share the machine's cores, as a load generator on the same
host always does. CPU time is read for the server's whole process tree (every worker).
"""

from __future__ import annotations

import asyncio
import io
import os
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import torch
from PIL import Image

from app.cli.benchlib.common import frame, luma_of, measure, synchronizer
from app.cli.benchlib.launch import Service, serving, tree_cpu_s
from app.cli.benchlib.load import hammer
from app.cli.benchlib.model_paths import PathConfig, service_runner, time_path
from app.cli.benchlib.rows import CodecRow, RequestRow, ThroughputRow
from app.config import Settings
from app.core.espcn import ESPCN
from app.core.tiling import extract_tiles, pad_image, plan_tiles
from app.imaging.compose import compose
from app.imaging.decode import decode
from app.imaging.encode import encode


@dataclass(frozen=True)
class LoadConfig:
    clients: int
    duration_s: float
    image_side: int
    scale: int


@dataclass(frozen=True)
class Load:
    """One load: what each client posts, and how it is labelled in the tables."""

    label: str  # e.g. "32 × 96² PNG → PNG, ×3"
    bodies: list[bytes]  # one per client
    content_type: str
    path: str  # /upscale?scale=3&format=...
    duration_s: float


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a fresh process read exactly these settings.

    A setting left at ``None`` is left out (``str(None)`` would be read back as the text "None":
    ``SR_CORE_TOKENS_DIR=None`` made every benchmarked server lock files in ./None).
    """
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        key = f"SR_{name.upper()}"
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


@dataclass(frozen=True)
class BareRun:
    images_per_s: float
    cpu_ms_per_image: float | None  # CPU time of this process (all threads) per image; None on a GPU (not its work)


@contextmanager
def running_service(settings: Settings) -> Iterator[Service]:
    """``python -m app.serve`` on 127.0.0.1 with ``settings``; yields it (``url``, ``pid``) once /readyz is 200.

    With several workers a probe of /readyz reaches one of them; the warm-up requests that follow
    reach the others before anything is timed.
    """
    env = settings_env(settings)
    keys = {f"SR_{name.upper()}" for name in Settings.model_fields} - {"SR_HOST", "SR_PORT"}
    with serving({key: env.get(key) for key in keys}, log=None, stop_timeout_s=120) as service:
        yield service


def png_bytes(image: Image.Image, level: int = 1) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=level)
    return buffer.getvalue()


def _server_timing(header: str) -> dict[str, float]:
    """``decode;dur=1.2, model;dur=3.4`` → {"decode": 1.2, "model": 3.4}."""
    out = {}
    for part in header.split(","):
        name, _, rest = part.strip().partition(";dur=")
        if rest:
            out[name] = float(rest)
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


REQUEST_KINDS = {  # answer label → (input encoder, input content type, output format)
    "JPEG → JPEG": (jpeg_bytes, "image/jpeg", "jpeg"),
    "PNG → PNG (level 1)": (png_bytes, "image/png", "png"),
}


def single_requests(
    base: str, model: ESPCN, image: Image.Image, cfg: PathConfig, workers: int
) -> tuple[list[RequestRow], bytes]:
    """×r of ``image``, JPEG → JPEG and PNG → PNG, one request at a time; returns the rows and the PNG answer."""
    scale = model.scale
    x = luma_of(image)
    eager, reference = time_path("eager", model, x, cfg, None)
    tiled, _ = time_path("tiled", model, x, cfg, reference)
    rows, png_answer = [], b""
    with httpx.Client(base_url=base, timeout=300) as client:
        for label, (encoder, content_type, fmt) in REQUEST_KINDS.items():
            body = encoder(image)

            def post(body: bytes = body, content_type: str = content_type, fmt: str = fmt) -> httpx.Response:
                r = client.post("/upscale", params={"scale": scale, "format": fmt}, content=body,
                                headers={"content-type": content_type})
                r.raise_for_status()
                return r

            for _ in range(max(2, workers)):  # warm every worker's path for this format
                post()
            times, stages = [], []
            answer = b""
            for _ in range(max(1, cfg.repeats)):
                start = time.perf_counter()
                response = post()
                times.append((time.perf_counter() - start) * 1000.0)
                stages.append(_server_timing(response.headers.get("server-timing", "")))
                answer = response.content
            median = statistics.median(times)
            rows.append(RequestRow(
                format=label, scale=scale, width=image.width, height=image.height, median_ms=median,
                server_decode_ms=_median([s["decode"] for s in stages if "decode" in s]),
                server_model_ms=_median([s["model"] for s in stages if "model" in s]),
                server_encode_ms=_median([s.get("compose", 0.0) + s["encode"] for s in stages if "encode" in s]),
                model_eager_ms=eager.median_ms or float("nan"), model_tiled_ms=tiled.median_ms or float("nan"),
                ratio_to_eager=median / eager.median_ms if eager.median_ms else float("nan"),
                response_bytes=len(answer), workers=workers,
            ))
            if fmt == "png":
                png_answer = answer
    return rows, png_answer


def codec_rows(image: Image.Image, model: ESPCN, png_answer: bytes, repeats: int, warmup: int) -> list[CodecRow]:
    """The request's other stages, timed alone with the service's functions: decode, compose, four encodings."""
    scale = model.scale
    upload = png_bytes(image)
    decoded = decode(upload, scale)
    with torch.inference_mode():
        sr_luma = model(luma_of(image))[0].clamp(0.0, 1.0)
    output = Image.open(io.BytesIO(png_answer)).convert("RGB")
    ow, oh = output.size
    rows = []
    t = measure(lambda: decode(upload, scale), repeats=repeats, warmup=warmup)
    rows.append(CodecRow(f"decode input PNG ({image.width}×{image.height})", image.width, image.height, t.median_ms))
    t = measure(lambda: compose(decoded, sr_luma, scale), repeats=repeats, warmup=warmup)
    rows.append(CodecRow("compose (bicubic CbCr + Y swap)", ow, oh, t.median_ms))
    encodings = {
        "encode JPEG q90": {"fmt": "jpeg", "quality": 90},
        "encode PNG level 1": {"fmt": "png", "png_compress_level": 1},
        "encode PNG level 6": {"fmt": "png", "png_compress_level": 6},
        "encode WebP q90": {"fmt": "webp", "quality": 90},
    }
    for stage, params in encodings.items():
        size = len(encode(output, **params))
        t = measure(lambda p=params: encode(output, **p), repeats=repeats, warmup=warmup)
        rows.append(CodecRow(stage, ow, oh, t.median_ms, size))
    return rows


def load_images(source: Image.Image, load: LoadConfig) -> list[Image.Image]:
    """One distinct ``side²`` crop of the source texture per client."""
    side = load.image_side
    return [frame(source, side, side, offset=(7 * i, 13 * i)) for i in range(load.clients)]


def bare_runs(model: ESPCN, images: list[Image.Image], cfg: PathConfig, batches: list[int]) -> dict[int, BareRun]:
    """The model alone on the same tiles: one ModelRunner, the same windows, batches of each size in ``batches``;
    images/s and CPU per image for each."""
    runner = service_runner(model, cfg.device, cfg.tile)
    windows = torch.cat([
        extract_tiles(pad_image(luma_of(im)[0], runner.radius, cfg.tile),
                      plan_tiles(im.height, im.width, cfg.tile), cfg.tile, runner.radius)
        for im in images
    ])
    warmup = max(1, cfg.warmup)
    runs = {}
    for batch in batches:
        def run(batch: int = batch) -> None:
            for start in range(0, len(windows), batch):
                runner(windows[start : start + batch])

        cpu = time.process_time()
        t = measure(run, repeats=cfg.repeats, warmup=warmup)
        cpu = time.process_time() - cpu  # every call, warm-up included, on all of this process's threads
        per_image = cpu * 1000.0 / (len(images) * (warmup + t.repeats)) if cfg.device.type == "cpu" else None
        runs[batch] = BareRun(len(images) / (t.median_ms / 1000.0), per_image)
    return runs


class GpuSampler:
    """Mean GPU utilisation (%) while a load runs, sampled at 10 Hz (needs pynvml; None without a GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.samples = device, []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if self.device.type == "cuda":
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception:  # no pynvml, or no NVML on this machine
                return

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def small_load(source: Image.Image, clients: int, side: int, scale: int, duration_s: float) -> Load:
    """``clients`` distinct ``side``² crops as PNG, each posted back to back (→ PNG)."""
    bodies = [png_bytes(frame(source, side, side, offset=(7 * i, 13 * i))) for i in range(clients)]
    return Load(f"{clients} × {side}² PNG → PNG, ×{scale}", bodies, "image/png", f"/upscale?scale={scale}", duration_s)


def frame_load(image: Image.Image, clients: int, scale: int, duration_s: float) -> Load:
    """``clients`` copies of one JPEG frame (q90) posted → JPEG: frames per second through the service."""
    body = jpeg_bytes(image)
    return Load(f"{clients} × {image.width}×{image.height} JPEG → {image.width * scale}×{image.height * scale} JPEG",
                [body] * clients, "image/jpeg", f"/upscale?scale={scale}&format=jpeg", duration_s)


def bare_frame_run(model: ESPCN, image: Image.Image, cfg: PathConfig) -> BareRun:
    """The model alone on whole frames, as the service runs a frame of this size: frames/s at its best batch."""
    runner = service_runner(model, cfg.device, cfg.tile)
    padded = pad_image(luma_of(image)[0], runner.radius, cfg.tile)
    sync = synchronizer(cfg.device)
    best = BareRun(0.0, None)
    for batch in (1, 4, 16) if cfg.device.type == "cuda" else (1,):
        windows = padded[None].expand(batch, *padded.shape).contiguous().to(cfg.device)
        t = measure(lambda w=windows: runner(w), repeats=cfg.repeats, warmup=max(1, cfg.warmup), sync=sync)
        rate = batch / (t.median_ms / 1000.0)
        if rate > best.images_per_s:
            best = BareRun(rate, None)
    return best


def throughput_row(
    served: Service, variant: str, max_batch: int, workers: int, load: Load,
    bare_best: tuple[int, BareRun], bare_same: BareRun, device: torch.device,
) -> ThroughputRow:
    """The load run, and where its CPU went: the server's processes and this one (the load generator), per request."""
    asyncio.run(hammer(served.url, load.path, load.bodies, min(2.0, load.duration_s / 5), load.content_type))
    server_cpu, client_cpu = tree_cpu_s(served.pid), time.process_time()
    with GpuSampler(device) as gpu:
        result = asyncio.run(hammer(served.url, load.path, load.bodies, load.duration_s, load.content_type))
    server_after, client_cpu = tree_cpu_s(served.pid), time.process_time() - client_cpu
    ok, errors, latencies, wall = result.ok, result.errors, sorted(result.latencies_ms), result.wall_s
    rate = ok / wall if wall > 0 else 0.0
    server_ms = (server_after - server_cpu) * 1000.0 / ok if ok and None not in (server_cpu, server_after) else None
    client_ms = client_cpu * 1000.0 / ok if ok else None
    busy = (server_ms + client_ms) * ok / 1000.0 / wall if server_ms is not None and client_ms is not None else None
    best_batch, best = bare_best
    return ThroughputRow(
        variant=variant, max_batch=max_batch, clients=len(load.bodies), image_side=0, scale=0, load=load.label,
        workers=workers, duration_s=wall, ok=ok, errors=errors, req_per_s=rate,
        p50_ms=latencies[len(latencies) // 2] if latencies else None,
        p95_ms=latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else None,
        bare_batched_images_per_s=best.images_per_s, bare_best_batch=best_batch,
        bare_same_batch_images_per_s=bare_same.images_per_s,
        fraction_of_bare=rate / best.images_per_s if best.images_per_s > 0 else float("nan"),
        server_cpu_ms_per_request=server_ms, client_cpu_ms_per_request=client_ms, cores_busy=busy,
        bare_cpu_ms_per_image=best.cpu_ms_per_image, gpu_utilisation_pct=gpu.mean,
    )
