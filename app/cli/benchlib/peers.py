"""The peers on the same frames: OpenCV ``dnn_superres`` (ESPCN, FSRCNN) and Pillow bicubic.

Peers take the whole RGB frame, not our Y plane: OpenCV's ``upsample`` is called on the BGR
frame and does its own colour conversion (BGR → YCrCb, network on Y, chroma bicubic, back),
so its time includes that; Pillow bicubic resizes all three RGB bands. Both run on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from app.cli.benchlib.common import measure
from app.cli.benchlib.rows import NOT_AVAILABLE, OK, FrameRow

OPENCV_ALGOS = ("espcn", "fsrcnn")
OPENCV_NOTE = "whole upsample() on the BGR frame: its colour conversion and chroma included; CPU"


def build_opencv(path: Path, algo: str, scale: int, image: Image.Image) -> Callable[[], object]:
    import cv2  # optional (opencv-contrib-python-headless, the `bench` extra)

    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(str(path))
    sr.setModel(algo, scale)
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    return lambda: sr.upsample(bgr)


def build_bicubic(scale: int, image: Image.Image) -> Callable[[], object]:
    size = (image.width * scale, image.height * scale)
    return lambda: image.resize(size, Image.Resampling.BICUBIC)


def opencv_available() -> bool:
    try:
        import cv2

        return hasattr(cv2, "dnn_superres")
    except ImportError:
        return False


def _timed(row: FrameRow, build: Callable[[], Callable[[], object]], repeats: int, warmup: int) -> FrameRow:
    try:
        fn = build()
        fn()  # first call: allocation, OpenCV's network set-up
        timing = measure(fn, repeats=repeats, warmup=warmup)
    except Exception as exc:
        row.status, row.note = NOT_AVAILABLE, f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        return row
    row.median_ms, row.min_ms = timing.median_ms, timing.min_ms
    return row


def peer_rows(
    image: Image.Image, scale: int, *, opencv_dir: Path | None, repeats: int, warmup: int
) -> list[FrameRow]:
    w, h = image.size
    rows: list[FrameRow] = []
    if opencv_dir is not None and opencv_available():
        for algo in OPENCV_ALGOS:
            path = opencv_dir / f"{algo.upper()}_x{scale}.pb"
            row = FrameRow(scale, w, h, f"opencv_{algo}", "peer", OK, note=OPENCV_NOTE)
            if not path.is_file():
                row.status, row.note = NOT_AVAILABLE, f"{path} not found"
                rows.append(row)
                continue
            rows.append(_timed(row, lambda p=path, a=algo: build_opencv(p, a, scale, image), repeats, warmup))
    bicubic = FrameRow(scale, w, h, "pillow_bicubic", "peer", OK, note="Pillow RGB resize(BICUBIC), 3 bands")
    rows.append(_timed(bicubic, lambda: build_bicubic(scale, image), repeats, warmup))
    return rows
