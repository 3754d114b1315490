"""Video benchmark: ×3 of a 640×360 clip → 1080p H.264, frames/s end to end (decode + SR + encode), in-process.

Three loops over the same clip (made with PyAV from ``app/assets/sample.png``'s
texture, moving, with an AAC track), each with the same decode (PyAV) and
the same encode (libx264, the jobs' CRF and preset, yuv420p):

- **ours**: :func:`app.video.upscale_video` through the real pipeline
  (``Pipeline.upscale_image`` per frame: luma, batching engine, compose), as a
  job runs it: decode, frames in flight and encode overlap, audio copied;
- **OpenCV ESPCN loop**: the per-frame loop people write today — decode a
  frame, ``cv2.dnn_superres`` ``upsample`` (ESPCN_x3.pb from ``--opencv``,
  only when ``cv2`` imports: the ``bench`` extra), encode it — one frame at a time;
- **bicubic loop**: the same loop with Pillow's bicubic instead of a network,
  the floor that decode + resize + encode alone set.

Frames/s = frames / wall time of the whole loop (open to close). On two CPU
cores the model and x264 compete for the same cores, so these figures are
lower than the model-only table's; compare within one run.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image

from app.cli.benchlib.common import SAMPLE
from app.cli.benchlib.synth_video import make_clip
from app.config import Settings
from app.pipeline.build import build_pipeline
from app.video import EncoderConfig, upscale_video


@dataclass(frozen=True)
class VideoRow:
    method: str
    frames: int
    seconds: float
    fps: float
    output: str  # WxH of the written frames
    note: str = ""


@dataclass
class VideoBench:
    clip: str  # "640x360, 5 s, 30 fps, AAC"
    scale: int
    device: str
    encoder: str
    rows: list[VideoRow]
    notes: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows": [asdict(r) for r in self.rows]}

    def ratio(self, method: str = "opencv_espcn_loop") -> float | None:
        ours = next((r for r in self.rows if r.method == "ours"), None)
        peer = next((r for r in self.rows if r.method == method), None)
        return ours.fps / peer.fps if ours and peer and peer.fps else None


def _loop(src: Path, dst: Path, upscale: Callable[[np.ndarray], np.ndarray], config: EncoderConfig) -> tuple[int, str]:
    """Decode → ``upscale`` (RGB in, RGB out) → libx264, one frame at a time; frames and output size."""
    frames, size = 0, ""
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        video = inp.streams.video[0]
        stream = None
        for frame in inp.decode(video):
            rgb = upscale(frame.to_ndarray(format="rgb24"))
            if stream is None:
                stream = out.add_stream("libx264", rate=video.average_rate)
                stream.height, stream.width = rgb.shape[0] - rgb.shape[0] % 2, rgb.shape[1] - rgb.shape[1] % 2
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(config.x264_crf), "preset": config.x264_preset}
                size = f"{stream.width}x{stream.height}"
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[: stream.height, : stream.width]),
                                                 format="rgb24").reformat(format="yuv420p")
            picture.pts = frames
            out.mux(stream.encode(picture))
            frames += 1
        if stream is not None:
            out.mux(stream.encode(None))
    return frames, size


def opencv_loop(src: Path, dst: Path, model: Path, scale: int, config: EncoderConfig) -> tuple[int, str]:
    import cv2  # optional: opencv-contrib-python-headless (the `bench` extra)

    sr = cv2.dnn_superres.DnnSuperResImpl_create()
    sr.readModel(str(model))
    sr.setModel("espcn", scale)
    return _loop(src, dst, lambda rgb: sr.upsample(rgb[:, :, ::-1].copy())[:, :, ::-1], config)


def bicubic_loop(src: Path, dst: Path, scale: int, config: EncoderConfig) -> tuple[int, str]:
    def up(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        return np.asarray(Image.fromarray(rgb).resize((w * scale, h * scale), Image.Resampling.BICUBIC))

    return _loop(src, dst, up, config)


async def _ours(settings: Settings, src: Path, dst: Path, scale: int, config: EncoderConfig,
                warmup: Path) -> tuple[int, float, str, str]:
    pipeline = build_pipeline(settings)
    await pipeline.start()
    try:
        await upscale_video(pipeline, warmup, dst, scale, "mp4", config=config)  # first-call costs out of the timing
        started = time.perf_counter()
        result = await upscale_video(pipeline, src, dst, scale, "mp4", config=config)
        return result.frames, time.perf_counter() - started, f"{result.width}x{result.height}", pipeline.device.type
    finally:
        await pipeline.close(5)


def measure_video(
    store: Path,
    *,
    opencv_dir: Path | None = None,
    seconds: float = 5.0,
    size: tuple[int, int] = (640, 360),
    fps: int = 30,
    scale: int = 3,
    device: str = "auto",
    config: EncoderConfig | None = None,
    workdir: Path | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> VideoBench:
    """Time the three loops on one synthetic clip; ``ours`` through the real in-process pipeline."""
    config = config or EncoderConfig()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="sr-video-bench-", dir=workdir) as tmp:
        folder = Path(tmp)
        width, height = size
        texture = Image.open(SAMPLE)
        log(f"video: making a {width}x{height} {seconds:g} s clip …")
        src = make_clip(folder / "clip.mp4", width, height, fps, seconds, audio="aac", texture=texture)
        warmup = make_clip(folder / "warmup.mp4", width, height, fps, 0.2, audio=None, texture=texture)
        rows: list[VideoRow] = []
        log("video: ours (upscale_video through the pipeline) …")
        frames, wall, out_size, dev = asyncio.run(
            _ours(Settings(model_store=store, device=device), src, folder / "ours.mp4", scale, config, warmup))
        rows.append(VideoRow("ours", frames, wall, frames / wall, out_size,
                             f"Pipeline.upscale_image per frame, {config.frames_in_flight} in flight, {dev}"))
        model = opencv_dir / f"ESPCN_x{scale}.pb" if opencv_dir is not None else None
        if model is None:
            notes.append("no --opencv folder: OpenCV loop skipped")
        elif not _cv2_available():
            notes.append("cv2 with dnn_superres is not importable (pip install opencv-contrib-python-headless): "
                         "OpenCV loop skipped")
        elif not model.is_file():
            notes.append(f"{model} not found: OpenCV loop skipped")
        else:
            log("video: OpenCV ESPCN per-frame loop …")
            started = time.perf_counter()
            frames, out_size = opencv_loop(src, folder / "opencv.mp4", model, scale, config)
            wall = time.perf_counter() - started
            rows.append(VideoRow("opencv_espcn_loop", frames, wall, frames / wall, out_size,
                                 "cv2.dnn_superres upsample per frame (CPU), same decode and encode"))
        log("video: bicubic per-frame loop …")
        started = time.perf_counter()
        frames, out_size = bicubic_loop(src, folder / "bicubic.mp4", scale, config)
        wall = time.perf_counter() - started
        rows.append(VideoRow("bicubic_loop", frames, wall, frames / wall, out_size,
                             "Pillow bicubic per frame: the decode + resize + encode floor"))
    return VideoBench(clip=f"{width}x{height}, {seconds:g} s, {fps} fps, AAC", scale=scale, device=dev,
                      encoder=f"libx264 crf {config.x264_crf} preset {config.x264_preset}, yuv420p",
                      rows=rows, notes=notes)


def markdown(bench: VideoBench) -> str:
    lines = [f"### Video: ×{bench.scale} of {bench.clip} → H.264 ({bench.encoder}), device {bench.device}", "",
             "| loop | frames | seconds | frames/s | output | note |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r.method} | {r.frames} | {r.seconds:.2f} | {r.fps:.2f} | {r.output} | {r.note} |" for r in bench.rows]
    ratio = bench.ratio()
    if ratio is not None:
        lines += ["", f"ours ÷ OpenCV loop: {ratio:.2f}×"]
    lines += [f"- {n}" for n in bench.notes]
    return "\n".join(lines) + "\n"


def _cv2_available() -> bool:
    try:
        import cv2

        return hasattr(cv2, "dnn_superres")
    except ImportError:
        return False


def run_section(args: Any) -> None:
    """``python -m app.cli.bench --video-only``: run :func:`measure_video`, print it, write video.md/video.json."""
    import json
    import os
    import sys

    import torch

    if getattr(args, "threads", 0) > 0:
        torch.set_num_threads(args.threads)
    bench = measure_video(args.store, opencv_dir=args.opencv, seconds=args.video_seconds, device=args.device,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    cores = os.cpu_count() or 1
    if load > 0.5 * cores:
        bench.notes.append(f"the machine was busy (load average {load:.2f} on {cores} logical cores)")
    text = markdown(bench)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "video.md").write_text(text)
    (out / "video.json").write_text(json.dumps(bench.as_dict(), indent=2))
    print(text)
