"""Issue 28 item 3 and issue 32: which encoder a video job uses, its options by output size, its frames/s.

On a host without NVENC (every CPU host, and GPUs without the encoder) the
fallback to libx264 is taken, probed once, logged once and said in the result;
on a host where ``h264_nvenc`` opens, the NVENC branch is tested instead. Clips
are made here with PyAV.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import av
import pytest
from av.video.frame import PictureType

from app.cli.benchlib.synth_video import make_clip
from app.video import EncoderConfig, encoders, upscale_video
from tests.test_video import with_pipeline

NVENC_HERE = encoders.refusal("h264_nvenc") is None


def upscale(store: Path, src: Path, dst: Path, scale: int, fmt: str = "mp4", **config):
    async def work(pipeline):
        return await upscale_video(pipeline, src, dst, scale, fmt, config=EncoderConfig(**config))

    return asyncio.run(with_pipeline(store, work))


def pict_types(path: Path) -> list[str]:
    with av.open(str(path)) as c:
        return [PictureType(frame.pict_type).name for frame in c.decode(video=0)]


@pytest.mark.skipif(NVENC_HERE, reason="h264_nvenc opens on this host: the NVENC test below runs instead")
def test_without_nvenc_the_fallback_is_libx264_probed_once_and_said(caplog: pytest.LogCaptureFixture) -> None:
    reason = encoders.refusal("h264_nvenc")
    assert reason and encoders.refusal("h264_nvenc") is reason  # cached: the same answer, not a second probe
    assert encoders.refusal("no_such_encoder") == "not in this FFmpeg build"
    encoders._said.clear()
    with caplog.at_level(logging.INFO, logger="app.video.encoders"):
        first = encoders.choose("mp4", 1920, 1080)
        again = encoders.choose("mp4", 1920, 1080)
    assert first == again and first.name == "libx264"
    assert first.note == f"h264_nvenc unavailable: {reason}" and first.note in first.describe()
    assert [r.getMessage() for r in caplog.records].count(f"video jobs encode with libx264: {first.note}") == 1
    # asked by name, NVENC falls back too; asked for libx264, nothing is probed nor said
    assert encoders.choose("mp4", 640, 360, asked="hevc_nvenc").note.startswith("hevc_nvenc unavailable")
    assert encoders.choose("mp4", 640, 360, asked="libx264").note == ""


@pytest.mark.skipif(not NVENC_HERE, reason="h264_nvenc does not open here (no NVIDIA GPU with NVENC)")
def test_with_nvenc_a_job_encodes_h264_on_the_gpu(seeded_store: Path, tmp_path: Path) -> None:
    chosen = encoders.choose("mp4", 1920, 1080)
    assert chosen.name == "h264_nvenc" and chosen.note == ""
    src = make_clip(tmp_path / "c.mp4", 64, 36, 30, 0.5, audio=None)
    result = upscale(seeded_store, src, tmp_path / "o.mp4", 3)
    assert result.encoder.startswith("h264_nvenc") and result.frames == 15
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert c.streams.video[0].codec_context.name == "h264"


def test_the_probe_opens_the_encoder_with_its_options_and_encodes_a_frame() -> None:
    """What decides NVENC, tried on libx264 (at hand everywhere): options it refuses are a refusal, cached."""
    assert encoders.refusal("libx264", 320, 240, {"preset": "veryfast", "crf": "18"}) is None
    reason = encoders.refusal("libx264", 320, 240, {"preset": "no-such-preset"})
    assert reason and encoders.refusal("libx264", 320, 240, {"preset": "no-such-preset"}) is reason


def test_x264_options_follow_the_output_size() -> None:
    small = encoders.choose("mp4", 1920, 1080, asked="libx264")
    large = encoders.choose("mp4", 3840, 2160, asked="libx264")
    huge = encoders.choose("mp4", 7680, 4320, asked="libx264")
    assert small.options == {"preset": "veryfast", "crf": "18"}
    assert large.options == {"preset": "veryfast", "crf": "18", "tune": "zerolatency"}  # no B-frames, no lookahead
    assert huge.options == {**large.options, "x264-params": "subme=0"}  # and no half-pel planes
    # leaner options hold less per pixel: 4× (16×) the pixels cost the encoder less than 4× (16×) the bytes
    assert large.memory_bytes < 4 * small.memory_bytes and huge.memory_bytes < 4 * large.memory_bytes
    assert encoders.choose("webm", 3840, 2160).name == "libvpx-vp9"  # VP9 whatever is asked for mp4
    with pytest.raises(ValueError, match="unknown video encoder"):
        encoders.choose("mp4", 64, 64, asked="x265")
    with pytest.raises(ValueError, match="video_encoder"):
        EncoderConfig(video_encoder="x265")


@pytest.mark.slow  # several seconds here: `make test` runs it, `make test-fast` does not
def test_a_large_output_is_encoded_lean_and_a_small_one_with_b_frames(seeded_store: Path, tmp_path: Path) -> None:
    """Real jobs: 1000×560 at ×2 (2000×1120, over 1080p) without B-frames; 640×360 at ×3 (1080p) with them."""
    large = make_clip(tmp_path / "l.mp4", 1000, 560, 10, 0.6, audio=None)
    result = upscale(seeded_store, large, tmp_path / "lo.mp4", 2, video_encoder="libx264")
    assert (result.width, result.height, result.frames) == (2000, 1120, 6)
    assert "tune zerolatency" in result.encoder and "B" not in pict_types(tmp_path / "lo.mp4")
    small = make_clip(tmp_path / "s.mp4", 640, 360, 30, 0.5, audio=None)
    result = upscale(seeded_store, small, tmp_path / "so.mp4", 3, video_encoder="libx264")
    assert (result.width, result.height, result.frames) == (1920, 1080, 15)
    assert "zerolatency" not in result.encoder and "B" in pict_types(tmp_path / "so.mp4")
    # the job's figure: output frames per second of wall time, open to close
    assert result.frames_per_s == pytest.approx(result.frames / result.seconds, rel=0.02)


def test_a_job_reports_its_encoder_and_output_frames_per_second(seeded_store: Path, tmp_path: Path) -> None:
    """Through the API: ``fps`` is frames written per second since the job started, never above the transcode's."""
    from tests.test_jobs import app_for, post, wait

    clip = make_clip(tmp_path / "c.mp4", 64, 36, 30, 1.0, audio="aac")
    with app_for(seeded_store, tmp_path / "jobs", jobs_video_encoder="auto") as c:
        r = post(c, clip.read_bytes(), scale=2)
        assert r.status_code == 202, r.text
        status, seen = wait(c, r.json()["id"])
    assert status["state"] == "done", status
    output = status["info"]["output"]
    assert output["frames"] == status["frames_done"] == 30
    assert output["encoder"].startswith("h264_nvenc" if NVENC_HERE else "libx264 preset veryfast crf 18")
    assert 0 < status["fps"] <= output["frames_per_s"] * 1.05  # the job's clock starts first: never faster
    done = [s["frames_done"] for s in seen]
    assert done == sorted(done)  # frames out of the encoder only grow
