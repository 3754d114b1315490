"""Timing, test frames and the machine description shared by every section of the benchmark."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from app.datasets import luma

SAMPLE = Path(__file__).resolve().parents[2] / "assets" / "sample.png"


@dataclass(frozen=True)
class Timing:
    median_ms: float
    min_ms: float
    repeats: int


def _no_sync() -> None:
    return None


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What to call after each timed call so asynchronous (CUDA) work is inside the measurement."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return _no_sync


def measure(
    fn: Callable[[], object], *, repeats: int, warmup: int, sync: Callable[[], None] = _no_sync
) -> Timing:
    """``warmup`` untimed calls, then the median and minimum of ``repeats`` timed calls (``time.perf_counter``)."""
    for _ in range(warmup):
        fn()
        sync()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000.0)
    return Timing(statistics.median(times), min(times), len(times))


def parse_size(text: str) -> tuple[int, int]:
    """``"640x360"`` → (width 640, height 360)."""
    try:
        width, height = (int(v) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"size must look like 640x360, got {text!r}") from None
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return width, height


def load_source(path: Path | None) -> Image.Image:
    return Image.open(path or SAMPLE).convert("RGB")


def frame(source: Image.Image, width: int, height: int, *, offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """An RGB ``width × height`` frame: ``source`` mirror-tiled at its native scale (real texture, no blur)."""
    src = np.asarray(source)
    dy, dx = offset
    need_y, need_x = max(0, height + dy - src.shape[0]), max(0, width + dx - src.shape[1])
    canvas = np.pad(src, ((0, need_y), (0, need_x), (0, 0)), mode="symmetric")
    return Image.fromarray(np.ascontiguousarray(canvas[dy : dy + height, dx : dx + width]), "RGB")


def luma_of(image: Image.Image) -> Tensor:
    """The model input, as the service computes it: (1, 1, H, W) studio-swing Y / 255, float32."""
    return luma(image)[None].contiguous()


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, object]:
    """What the numbers were taken on: CPU, cores, threads, load, library versions, GPU."""
    info: dict[str, object] = {
        "cpu": cpu_model_name(),
        "logical_cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }
    try:
        import cv2  # optional: only to record what the OpenCV peers ran on

        info["opencv"] = cv2.__version__
        info["opencv_threads"] = cv2.getNumThreads()
    except ImportError:
        info["opencv"] = None
    return info


def sgemm_gflops(device: torch.device, n: int, repeats: int = 5) -> float:
    """Measured float32 matmul rate, ``2·n³`` flops per call, median of ``repeats``."""
    a = torch.rand(n, n, device=device)
    b = torch.rand(n, n, device=device)
    timing = measure(lambda: torch.mm(a, b), repeats=repeats, warmup=2, sync=synchronizer(device))
    return 2.0 * n**3 / (timing.median_ms / 1000.0) / 1e9
