"""Video through the pipeline (app/video): real PyAV clips made here, the real engine and seeded models.

What a job promises: every frame through the same path as a still image, frame
count, rate, timestamps, rotation and audio kept, bounded frames in flight (so
concurrent requests are not starved), cancellation that leaves no file, and a
clear error for what is not a video or is over the limits.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
import traceback
from pathlib import Path

import av
import numpy as np
import pytest

from app.cli.benchlib.synth_video import make_clip
from app.imaging.decode import DecodedImage
from app.pipeline.build import build_pipeline
from app.video import (
    EncoderConfig,
    InvalidVideo,
    UnsupportedVideo,
    VideoLimits,
    VideoTooLarge,
    output_format,
    probe_video,
    upscale_video,
)
from tests.conftest import make_settings, natural


def run(coro):
    return asyncio.run(coro)


async def with_pipeline(store: Path, work, **overrides):
    pipeline = build_pipeline(make_settings(store, **overrides))
    await pipeline.start()
    try:
        return await work(pipeline)
    finally:
        await pipeline.close(5)


def stacks(task: asyncio.Task) -> str:
    """Where ``task``, every other task of the loop and every thread are waiting (for a hang's failure message)."""
    out = io.StringIO()
    for t in [task, *(t for t in asyncio.all_tasks() if t is not task)]:
        t.print_stack(file=out)
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame))}")
    return out.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def y_of(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    return 16 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255


def frames_of(path: Path) -> tuple[list[np.ndarray], list[int]]:
    with av.open(str(path)) as c:
        decoded = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in decoded], [f.pts for f in decoded]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", 64, 36, 30, 1.0, audio="aac", rotation=90,
                     texture=natural((96, 36)))


def test_a_clip_keeps_frames_rate_timestamps_rotation_and_audio(seeded_store: Path, clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mp4"
    seen: list[tuple[int, int]] = []

    async def work(pipeline):
        result = await upscale_video(pipeline, clip, out, 3, "mp4", lambda d, t: seen.append((d, t)))
        # the still path on the same decoded frames: what each video frame must match
        stills = []
        with av.open(str(clip)) as c:
            for frame in c.decode(video=0):
                image = frame.to_image()
                decoded = DecodedImage(image, None, None, "PNG", "RGB")
                stills.append(np.asarray(await pipeline.upscale_image(decoded, 3)))
        return result, stills

    result, stills = run(with_pipeline(seeded_store, work))
    assert (result.format, result.frames, result.width, result.height) == ("mp4", 30, 192, 108)
    assert result.audio == "copied aac"
    # progress counts frames out of the encoder (its delay: B-frames, frame threads), one call per frame in
    done = [d for d, _ in seen]
    assert len(seen) == 31 and done == sorted(done) and done[-2] < 30 and seen[-1] == (30, 30)
    assert result.encoder.startswith("libx264 preset veryfast crf 18") and result.frames_per_s > 0

    frames, pts = frames_of(out)
    _, src_pts = frames_of(clip)
    assert len(frames) == 30 and pts == src_pts  # every timestamp kept, none dropped or duplicated
    with av.open(str(out)) as c, av.open(str(clip)) as s:
        v = c.streams.video[0]
        assert v.codec_context.name == "h264" and v.average_rate == 30
        assert abs(c.duration - s.duration) <= 1e6 / 30
        assert next(c.decode(video=0)).rotation == 90
        assert c.streams.audio[0].codec_context.name == "aac"

    def packets(path: Path) -> list[tuple[int, bytes]]:
        with av.open(str(path)) as c:
            return [(p.pts, bytes(p)) for p in c.demux(audio=0) if p.size]

    assert packets(out) == packets(clip)  # the source's audio packets, timestamps and bytes: copied, not re-encoded
    db = [psnr(y_of(f), y_of(s)) for f, s in zip(frames, stills, strict=True)]
    assert min(db) >= 35.0, db


def test_webm_output_and_audio_the_container_cannot_hold(seeded_store: Path, clip: Path, tmp_path: Path) -> None:
    opus = make_clip(tmp_path / "opus.mkv", 32, 18, 25, 0.4, audio="libopus")

    async def work(pipeline):
        webm = await upscale_video(pipeline, clip, tmp_path / "a.webm", 2, "webm")  # AAC cannot go into WebM
        same = await upscale_video(pipeline, opus, tmp_path / "b.webm", 2, output_format("same", "matroska,webm"))
        mp4 = await upscale_video(pipeline, opus, tmp_path / "c.mp4", 4, "mp4")  # Opus can go into MP4
        return webm, same, mp4

    webm, same, mp4 = run(with_pipeline(seeded_store, work))
    assert webm.audio == "re-encoded aac → opus" and same.audio == "copied opus" and mp4.audio == "copied opus"
    with av.open(str(tmp_path / "a.webm")) as c:
        assert [s.codec_context.name for s in c.streams] == ["vp9", "opus"]
        assert sum(1 for _ in c.decode(video=0)) == 30
    with av.open(str(tmp_path / "c.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (128, 72)
        assert c.streams.video[0].average_rate == 25
    assert output_format("same", "mov,mp4,m4a,3gp,3g2,mj2") == "mp4"


def test_frames_in_flight_are_bounded_and_a_concurrent_request_is_not_starved(seeded_store: Path, tmp_path: Path) -> None:
    """The engine serves the oldest admission first: a still admitted mid-video waits for a few frames, not the video."""
    long_clip = make_clip(tmp_path / "long.mp4", 64, 36, 30, 3.0, audio=None)  # 90 frames
    in_flight = 2
    still = DecodedImage(natural((64, 36)), None, None, "PNG", "RGB")

    async def work(pipeline):
        engine = pipeline.engine
        depth_seen: list[int] = []
        original = engine._admit

        def admit(*args, **kwargs):  # the real admission, observed: how many video frames wait at once
            job = original(*args, **kwargs)
            depth_seen.append(len(engine._pending[3]))
            return job

        engine._admit = admit
        done: list[int] = []
        task = asyncio.create_task(upscale_video(pipeline, long_clip, tmp_path / "o.mp4", 3, "mp4",
                                                 lambda d, t: done.append(d),
                                                 config=EncoderConfig(frames_in_flight=in_flight)))
        while len(done) < 10:
            await asyncio.sleep(0.005)
        before = done[-1]
        started = time.perf_counter()
        await pipeline.upscale_image(still, 3)
        waited = time.perf_counter() - started
        after = done[-1]
        await task
        return depth_seen, before, after, len(done), waited

    depth_seen, before, after, total, _ = run(with_pipeline(seeded_store, work))
    assert total >= 90
    assert max(depth_seen) <= in_flight + 1  # the video never queued more than its frames in flight (+ the still)
    # while the still waited, only the frames already admitted (in flight, then encoded) went ahead of it
    assert after - before <= 2 * in_flight + 2, (before, after)


def test_cancel_mid_video_leaves_no_output(seeded_store: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "c.mp4", 64, 36, 30, 3.0, audio="aac")
    out = tmp_path / "cancelled.mp4"

    async def work(pipeline):
        done: list[int] = []
        task = asyncio.create_task(upscale_video(pipeline, src, out, 2, "mp4", lambda d, t: done.append(d)))
        deadline = time.monotonic() + 120  # a hang fails here, with where everything waits, not at CI's time limit
        while len(done) < 5:
            assert not task.done(), task  # a job that failed early would otherwise keep this loop waiting
            assert time.monotonic() < deadline, f"stuck after {len(done)} frames: {stacks(task)}"
            await asyncio.sleep(0.005)
        task.cancel()
        ended, _ = await asyncio.wait({task}, timeout=60)
        assert ended, f"the cancelled job had not ended after 60 s: {stacks(task)}"
        assert task.cancelled()
        assert pipeline.engine.queue_depth == 0  # its frames' tiles were dropped
        return len(done)

    assert run(with_pipeline(seeded_store, work)) < 90
    assert not out.exists()


def test_probe_refuses_what_is_not_a_video_or_over_the_limits(tmp_path: Path, clip: Path) -> None:
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 definitely not a video " * 100)
    with pytest.raises(InvalidVideo):
        probe_video(junk, 3)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip.read_bytes()[: clip.stat().st_size // 3])  # mp4 index at the end: unreadable
    with pytest.raises(InvalidVideo):
        probe_video(truncated, 3)
    sound_only = tmp_path / "sound.m4a"
    with av.open(str(sound_only), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=44100)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 2048), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 44100
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with pytest.raises(UnsupportedVideo, match="no video track"):
        probe_video(sound_only, 3)
    info = probe_video(clip, 3)
    assert (info.width, info.height, info.fps, info.frames, info.rotation, info.audio_codec) == (64, 36, 30.0, 30, 90, "aac")
    with pytest.raises(VideoTooLarge, match="lasts"):
        probe_video(clip, 3, VideoLimits(max_duration_s=0.5))
    with pytest.raises(VideoTooLarge, match="frames"):
        probe_video(clip, 3, VideoLimits(max_frames=10))
    with pytest.raises(VideoTooLarge, match="pixels per frame"):
        probe_video(clip, 3, VideoLimits(max_frame_pixels=1000))
    with pytest.raises(VideoTooLarge, match="output pixels"):
        probe_video(clip, 4, VideoLimits(max_output_pixels=192 * 108))


def test_the_frame_limit_holds_while_decoding(seeded_store: Path, clip: Path, tmp_path: Path) -> None:
    """Headers can lie: the decode itself stops at the limit, and the partial output is removed."""
    out = tmp_path / "o.mp4"

    async def work(pipeline):
        with pytest.raises(VideoTooLarge, match="more than 10 frames"):
            await upscale_video(pipeline, clip, out, 2, "mp4", config=EncoderConfig(max_frames=10))

    run(with_pipeline(seeded_store, work))
    assert not out.exists()


def test_odd_output_sides_are_cropped_to_even(seeded_store: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "odd.mkv", 21, 13, 10, 0.3, audio=None, video_codec="libvpx-vp9")

    async def work(pipeline):
        return await upscale_video(pipeline, src, tmp_path / "odd.mp4", 3, "mp4")

    result = run(with_pipeline(seeded_store, work))
    assert (result.width, result.height, result.frames) == (62, 38, 3)  # 63×39 loses a column and a row
