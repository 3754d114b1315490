"""Synthetic clips made with PyAV: for tests, the benchmark and the probe script, so nothing is downloaded.

The picture moves (a drifting gradient over a moving checkerboard, plus a
still photograph's texture when one is given), so the encoder sees motion and
every frame differs; the audio is a 440 Hz tone.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

_ARGS = {"libx264": {"crf": "16", "preset": "ultrafast"}, "libvpx-vp9": {"deadline": "realtime", "cpu-used": "8"},
         "libvpx": {"deadline": "realtime", "cpu-used": "8"}}


def make_clip(
    path: Path | str,
    width: int = 64,
    height: int = 36,
    fps: int | Fraction = 30,
    seconds: float = 1.0,
    *,
    audio: str | None = "aac",
    rotation: int | None = None,
    video_codec: str = "libx264",
    texture: Image.Image | None = None,
) -> Path:
    """Write a ``width``×``height`` clip of ``seconds`` at ``fps`` (with a tone in ``audio`` codec, or none)."""
    path = Path(path)
    frames = round(seconds * fps)
    with av.open(str(path), "w") as out:
        video = out.add_stream(video_codec, rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = _ARGS.get(video_codec, {})
        if rotation:
            video.set_display_rotation(rotation)
        sound = None
        if audio:
            sound = out.add_stream(audio, rate=48000 if audio == "libopus" else 44100)
            sound.layout = "stereo"
        yy, xx = np.mgrid[0:height, 0:width]
        base = None
        if texture is not None:
            base = np.asarray(texture.convert("RGB").resize((width + 64, height), Image.Resampling.BICUBIC), np.int32)
        for i in range(frames):
            rgb = np.stack([(xx * 255 // max(width, 1) + 3 * i) % 256, yy * 255 // max(height, 1),
                            ((xx + yy + 5 * i) // 4) % 256], -1).astype(np.int32)
            if base is not None:
                shift = i % 64
                rgb = (base[:, shift:shift + width] * 3 + rgb) // 4
            rgb[((yy + i) // 12 + xx // 12) % 2 == 0] //= 2
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if sound is not None:
            rate, total, t = sound.rate, round(sound.rate * seconds), 0
            while t < total:
                n = min(1024, total - t)
                tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(t, t + n) / rate)).astype(np.float32)
                block = av.AudioFrame.from_ndarray(np.stack([tone, tone]), format="fltp", layout="stereo")
                block.sample_rate, block.pts = rate, t
                out.mux(sound.encode(block))
                t += n
            out.mux(sound.encode(None))
    return path


def make_resizing_avi(path: Path | str, sizes: list[tuple[int, int]], fps: int = 10) -> Path:
    """An MJPEG AVI whose frames have the given sizes (each frame a JPEG of its own size), flat grey, tiny.

    AVI declares the first frame's size and holds any JPEG after it: what a
    client sends to slip a 6000×6000 frame behind 64×64 ones (issue 32).
    """
    path = Path(path)
    with av.open(str(path), "w", format="avi") as out:
        stream = out.add_stream("mjpeg", rate=fps)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for i, (width, height) in enumerate(sizes):
            codec = av.CodecContext.create("mjpeg", "w")
            codec.width, codec.height, codec.pix_fmt = width, height, "yuvj420p"
            codec.time_base = Fraction(1, fps)
            grey = np.full((height, width, 3), 64 + 8 * (i % 16), np.uint8)
            frame = av.VideoFrame.from_ndarray(grey, format="rgb24").reformat(format="yuvj420p")
            frame.pts = i
            for packet in [*codec.encode(frame), *codec.encode(None)]:
                packet.stream = stream
                packet.pts = packet.dts = i
                out.mux(packet)
    return path
