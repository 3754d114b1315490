"""Issue 32: a video job is bounded while it decodes, not only by what its header and first frame said.

Every frame is checked (per-frame pixel limits, the first frame's size,
count, timestamps), the frames in flight fit a memory budget, audio held
before it can be written is bounded, any decodable audio reaches the output
(re-encoded when the container cannot take it as is), and a job's wall time
is limited. The clips are made here with PyAV: tiny, and generated per test.
"""

from __future__ import annotations

import asyncio
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from app.cli.benchlib.synth_video import make_clip, make_resizing_avi
from app.video import (
    EncoderConfig,
    InvalidVideo,
    VideoLimits,
    VideoTimeout,
    VideoTooLarge,
    probe_video,
    transcode,
    upscale_video,
)
from app.video.encoders import x264_bytes
from app.video.transcode import frame_bytes, frames_in_flight
from tests.conftest import make_settings
from tests.gates import gated
from tests.test_video import with_pipeline


def run(coro):
    return asyncio.run(coro)


def upscale(store: Path, src: Path, dst: Path, scale: int = 2, fmt: str = "mp4", **config):
    """One ``upscale_video`` on a fresh pipeline of the seeded models."""

    async def work(pipeline):
        return await upscale_video(pipeline, src, dst, scale, fmt, config=EncoderConfig(**config))

    return run(with_pipeline(store, work))


# -- every frame is checked ---------------------------------------------------------------------


def test_a_frame_over_the_pixel_limit_mid_stream_fails_the_job(seeded_store: Path, tmp_path: Path) -> None:
    """The issue's attack, scaled down: 64×64 frames then one over the limit; it ran 'done', cropped, before."""
    src = make_resizing_avi(tmp_path / "bomb.avi", [(64, 64)] * 5 + [(128, 128)])
    limits = VideoLimits(max_frame_pixels=64 * 64 * 2)
    assert probe_video(src, 2, limits).width == 64  # the header and the first frame pass: only the decode can tell
    out = tmp_path / "o.mp4"
    with pytest.raises(VideoTooLarge, match=r"frame 6 .*8192 pixels per frame"):
        upscale(seeded_store, src, out, limits=limits)
    assert not out.exists()


def test_the_default_limits_hold_on_every_frame(seeded_store: Path, tmp_path: Path) -> None:
    """A default EncoderConfig carries the default limits (1920×1080 per frame): a 2000×1100 frame fails."""
    src = make_resizing_avi(tmp_path / "big.avi", [(64, 64)] * 3 + [(2000, 1100)])
    out = tmp_path / "o.mp4"
    with pytest.raises(VideoTooLarge, match="frame 4"):
        upscale(seeded_store, src, out)
    assert not out.exists()


def test_a_frame_whose_output_is_over_the_limit_fails(seeded_store: Path, tmp_path: Path) -> None:
    src = make_resizing_avi(tmp_path / "wide.avi", [(64, 64)] * 2 + [(96, 96)])
    with pytest.raises(VideoTooLarge, match=r"frame 3 is 96×96: ×2 it would be 192×192; the limit is 16384 output"):
        upscale(seeded_store, src, tmp_path / "o.mp4", limits=VideoLimits(max_output_pixels=128 * 128))


def test_a_frame_of_another_size_fails_with_its_size_never_cropped(seeded_store: Path, tmp_path: Path) -> None:
    """Within the limits, a size change mid-stream fails clearly: the output has one size, and scaling the frame
    would distort it (cropping lost it silently before)."""
    for sizes in ([(64, 64)] * 3 + [(96, 80)], [(64, 64)] * 3 + [(32, 48)]):
        src = make_resizing_avi(tmp_path / "change.avi", sizes)
        out = tmp_path / "o.mp4"
        w, h = sizes[-1]
        with pytest.raises(InvalidVideo, match=f"frame 4 is {w}×{h} but the video's frames are 64×64"):
            upscale(seeded_store, src, out)
        assert not out.exists()
    steady = make_resizing_avi(tmp_path / "steady.avi", [(64, 64)] * 4)  # the same maker, one size: fine
    result = upscale(seeded_store, steady, tmp_path / "s.mp4")
    assert (result.frames, result.width, result.height) == (4, 128, 128)


# -- memory: the frames in flight fit a budget, reserved before each frame's work -------------------------------


def test_frames_in_flight_fit_the_memory_budget(seeded_store: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "c.mp4", 64, 36, 30, 1.0, audio=None)
    encoder = x264_bytes(192, 108)  # the encoder's own bytes come off the budget first
    budget = 64 * 36 * 3 + 2 * frame_bytes(64, 36, 3) + encoder  # two such frames, the one decoded ahead, x264
    assert frames_in_flight(64, 36, 3, EncoderConfig(memory_bytes=budget), encoder) == 2
    assert frames_in_flight(64, 36, 3, EncoderConfig(memory_bytes=budget)) > 2  # without the encoder: more
    assert frames_in_flight(64, 36, 3, EncoderConfig(memory_bytes=1)) == 1  # one frame always goes
    assert frames_in_flight(64, 36, 3, EncoderConfig(frames_in_flight=3)) == 3  # the count bounds it too
    # the default budget at the default limits, x264 counted: 1080p at ×3 and ×4 goes one frame at a time, ×2 four
    assert frames_in_flight(1920, 1080, 4, EncoderConfig(), x264_bytes(7680, 4320)) == 1
    assert frames_in_flight(1920, 1080, 3, EncoderConfig(), x264_bytes(5760, 3240)) == 1
    assert frames_in_flight(1920, 1080, 2, EncoderConfig(), x264_bytes(3840, 2160)) == 4
    assert 4 * frame_bytes(1920, 1080, 2) + 1920 * 1080 * 3 + x264_bytes(3840, 2160) <= EncoderConfig().memory_bytes
    # the ×3 640×360 → 1080p case (real time on a GPU) keeps four frames in flight
    assert frames_in_flight(640, 360, 3, EncoderConfig(), x264_bytes(1920, 1080)) == 4

    async def work(pipeline):
        engine = pipeline.engine
        frames_waiting: list[int] = []
        admit = engine._admit

        def observed(*args, **kwargs):  # the real admission, observed: how many frames wait in the engine at once
            job = admit(*args, **kwargs)
            frames_waiting.append(len(engine._pending[3]))
            return job

        engine._admit = observed
        result = await upscale_video(pipeline, src, tmp_path / "o.mp4", 3, "mp4",
                                     config=EncoderConfig(memory_bytes=budget))
        return result, frames_waiting

    result, frames_waiting = run(with_pipeline(seeded_store, work))
    assert result.frames == 30 and result.frames_in_flight == 2
    assert len(frames_waiting) == 30 and max(frames_waiting) <= 2


# -- time: the duration while decoding, the job's wall time -------------------------------------------------


def test_the_duration_limit_holds_while_decoding(seeded_store: Path, tmp_path: Path) -> None:
    """Whatever the header said (probe_video checks it at upload), the frames' timestamps are held to the limit."""
    src = make_clip(tmp_path / "c.mkv", 32, 18, 10, 2.0, audio=None)
    out = tmp_path / "o.mp4"
    with pytest.raises(VideoTooLarge, match=r"lasts more than 1 s .*video reaches 1\.1 s"):
        upscale(seeded_store, src, out, limits=VideoLimits(max_duration_s=1.0))
    assert not out.exists()
    assert upscale(seeded_store, src, out, limits=VideoLimits(max_duration_s=2.0)).frames == 20


def test_a_job_past_its_wall_time_fails_and_leaves_no_output(seeded_store: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "long.mp4", 64, 36, 30, 1.0, audio="aac")  # long enough: the gate never lets it end
    out = tmp_path / "o.mp4"

    async def work(pipeline):
        # the model calls wait at a gate that stays shut: the job cannot end but by its time limit, on any
        # machine (the outer 60 s only stops a limit that never fires from hanging the test)
        with gated(pipeline.engine, 2) as gate, pytest.raises(VideoTimeout, match="time limit of 0.5 s") as caught:
            await asyncio.wait_for(upscale_video(pipeline, src, out, 2, "mp4", config=EncoderConfig(timeout_s=0.5)), 60)
        assert gate.calls >= 1  # it was stopped while frames were in the model
        assert pipeline.engine.queue_depth == 0  # the frames in flight were dropped
        return caught.value

    error = run(with_pipeline(seeded_store, work))
    assert error.code == "timeout"
    assert not out.exists()


# -- audio -------------------------------------------------------------------------------------------------------


def audio_of(path: Path) -> tuple[str, float]:
    """The output's audio codec and the seconds of sound it decodes to."""
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        samples = sum(f.samples for f in c.decode(stream))
        return stream.codec_context.name, samples / stream.rate


@pytest.mark.parametrize(("container", "codec", "fmt", "expected"), [
    ("mov", "pcm_s16le", "mp4", "re-encoded pcm_s16le → aac"),  # "internal error (ArgumentError)" before
    ("mkv", "pcm_s16le", "mp4", "re-encoded pcm_s16le → aac"),
    ("mkv", "pcm_s16le", "webm", "re-encoded pcm_s16le → opus"),
    ("mkv", "mp2", "mp4", "re-encoded mp2 → aac"),
    ("mkv", "flac", "mp4", "copied flac"),
    ("mkv", "ac3", "webm", "re-encoded ac3 → opus"),
])
def test_any_decodable_audio_reaches_the_output(
    seeded_store: Path, tmp_path: Path, container: str, codec: str, fmt: str, expected: str
) -> None:
    src = make_clip(tmp_path / f"in.{container}", 32, 18, 10, 1.0, audio=codec)
    out = tmp_path / f"o.{fmt}"
    result = upscale(seeded_store, src, out, fmt=fmt)
    assert result.audio == expected and result.frames == 10
    name, seconds = audio_of(out)
    assert name == expected.split()[-1]
    assert abs(seconds - 1.0) < 0.1, seconds


def late_video(path: Path, video_start_s: float, seconds: float = 1.0, fps: int = 10) -> Path:
    """PCM sound from 0 s, a 32×18 picture from ``video_start_s``: every packet before it is audio (pre-roll)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 32, 18, "yuv420p"
        video.options = {"preset": "ultrafast"}
        sound = out.add_stream("pcm_s16le", rate=44100)
        sound.layout = "stereo"
        first = round(video_start_s * fps)
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.full((18, 32, 3), 40 + 10 * i, np.uint8), format="rgb24")
            frame.pts = first + i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        total = round(44100 * (video_start_s + seconds))
        for t in range(0, total, 1024):
            n = min(1024, total - t)
            block = av.AudioFrame.from_ndarray(np.zeros((1, 2 * n), np.int16), format="s16", layout="stereo")
            block.sample_rate, block.pts, block.time_base = 44100, t, Fraction(1, 44100)
            out.mux(sound.encode(block))
        out.mux(sound.encode(None))
    return path


def test_audio_before_the_first_frame_is_bounded(seeded_store: Path, tmp_path: Path) -> None:
    src = late_video(tmp_path / "late.mkv", video_start_s=2.0)  # 2 s of PCM (≈ 350 KB) before any frame
    with av.open(str(src)) as c:
        assert next(iter(c.demux())).stream.type == "audio"
    out = tmp_path / "o.mp4"
    with pytest.raises(VideoTooLarge, match="more than 64 KiB of audio comes before the first video frame"):
        upscale(seeded_store, src, out, audio_buffer_bytes=64 << 10)
    assert not out.exists()
    result = upscale(seeded_store, src, out)  # the default budget (16 MiB) holds it: all of the sound is kept
    assert result.audio == "re-encoded pcm_s16le → aac"
    assert abs(audio_of(out)[1] - 3.0) < 0.1


class RecordedRoom(transcode._AudioRoom):
    """The real audio budget, recording what it held: before the first frame, at its peak, and how often it waited."""

    last: RecordedRoom | None = None

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.preroll = self.peak = self.waits = 0
        RecordedRoom.last = self

    async def take(self, size: int, seen_video: bool) -> None:
        if not seen_video:
            self.preroll = self.held + size
        if self.held and self.held + size > self.limit:
            self.waits += 1
        await super().take(size, seen_video)
        self.peak = max(self.peak, self.held)


def test_a_small_audio_budget_paces_the_decode_without_failing(
    seeded_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In step with the video, audio over the budget waits for the encoder: no pre-roll error, no deadlock.

    What an ordinary file holds before its first frame (a few packets, and the decoder's frame delay, which
    grows with the cores) is measured first; the budget is then set between that and what the decode held
    running ahead of the encoder. In the paced run the model is held shut until the audio has had to wait
    (the decode then runs as far ahead as its frames in flight let it, past the budget), so the wait does
    not depend on how the threads happened to be scheduled.
    """
    monkeypatch.setattr(transcode, "_AudioRoom", RecordedRoom)
    for codec in ("pcm_s16le", "aac"):
        src = make_clip(tmp_path / f"c_{codec}.mkv", 32, 18, 10, 3.0, audio=codec)
        assert upscale(seeded_store, src, tmp_path / "o.mp4").frames == 30
        free = RecordedRoom.last
        assert free is not None and free.peak > free.preroll, (free.peak, free.preroll)
        budget = (free.preroll + free.peak) // 2
        RecordedRoom.last = None

        async def paced_run(pipeline, budget=budget, src=src):
            with gated(pipeline.engine, 2) as gate:
                task = asyncio.create_task(upscale_video(pipeline, src, tmp_path / "o.mp4", 2, "mp4",
                                                         config=EncoderConfig(audio_buffer_bytes=budget)))
                deadline = asyncio.get_running_loop().time() + 30
                while not (RecordedRoom.last and RecordedRoom.last.waits) and not task.done():
                    assert asyncio.get_running_loop().time() < deadline, "the audio never had to wait"
                    await asyncio.sleep(0.005)
                gate.open()  # the encoder goes on, gives the audio room back: no deadlock
                return await asyncio.wait_for(task, 60)

        result = run(with_pipeline(seeded_store, paced_run))
        paced = RecordedRoom.last
        assert result.frames == 30 and paced is not None and paced is not free
        assert paced.waits > 0 and paced.peak <= budget
        assert abs(audio_of(tmp_path / "o.mp4")[1] - 3.0) < 0.1


def test_the_job_settings_reach_the_video(tmp_path: Path) -> None:
    from app.jobs.limits import from_settings

    settings = make_settings(tmp_path, jobs_timeout_s=120.0, jobs_video_memory_mb=256, jobs_audio_buffer_mb=4,
                             jobs_max_frame_pixels=640 * 480, jobs_max_duration_s=30.0,
                             jobs_video_encoder="libx264", jobs_x264_preset="ultrafast")
    encoder = from_settings(settings).encoder
    assert (encoder.timeout_s, encoder.memory_bytes, encoder.audio_buffer_bytes) == (120.0, 256 << 20, 4 << 20)
    assert (encoder.video_encoder, encoder.x264_preset) == ("libx264", "ultrafast")
    assert from_settings(make_settings(tmp_path)).encoder.video_encoder == "auto"
    assert (encoder.limits.max_frame_pixels, encoder.limits.max_duration_s) == (640 * 480, 30.0)
    assert encoder.limits == from_settings(settings).video
