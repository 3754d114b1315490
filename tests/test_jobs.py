"""The jobs API end to end (app/jobs, app/api/routes/jobs.py): real uploads, real clips, the real service.

Every refusal is a JSON 4xx/5xx with a code, never a 500; a job always ends
done, failed (with a reason) or cancelled, also across a restart.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import av
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.cli.benchlib.synth_video import make_clip
from app.jobs.store import JobStore
from app.main import create_app
from tests.conftest import encoded, make_settings, natural
from tests.gates import wait_until


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("job-clips")
    return {
        "short": make_clip(folder / "short.mp4", 64, 36, 30, 1.0, audio="aac"),
        "long": make_clip(folder / "long.mp4", 96, 54, 30, 4.0, audio="aac"),
    }


def app_for(store: Path, jobs: Path, **overrides: object) -> TestClient:
    return TestClient(create_app(make_settings(store, jobs_dir=jobs, **overrides)))


def post(c: TestClient, data: bytes, scale: int = 2, media: str = "video/mp4", **params: object):
    return c.post("/jobs", params={"scale": scale, **params}, content=data, headers={"content-type": media})


def wait(c: TestClient, job_id: str, until: tuple[str, ...] = ("done", "failed", "cancelled"), timeout: float = 60):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = c.get(f"/jobs/{job_id}").json()
        seen.append(status)
        if status["state"] in until:
            return status, seen
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {seen[-1]['state']} after {timeout} s")


def _sample(text: str, name: str) -> float:
    """One sample's value in a /metrics page (0 when absent)."""
    line = next((x for x in text.splitlines() if x.startswith(name + " ")), None)
    return float(line.split()[-1]) if line else 0.0


def test_a_video_job_from_upload_to_result(seeded_store: Path, tmp_path: Path, clips: dict[str, Path]) -> None:
    with app_for(seeded_store, tmp_path / "jobs") as c:
        done_metric, frames_metric = 'sr_jobs_total{kind="video",state="done"}', 'sr_video_frames_total{scale="3"}'
        before = c.get("/metrics").text  # counters are per process: other tests' jobs counted before this one
        r = c.post("/jobs", params={"scale": 3}, files={"file": ("clip.mp4", clips["long"].read_bytes(), "video/mp4")})
        assert r.status_code == 202, r.text
        body = r.json()
        assert r.headers["location"] == body["status_url"] == f"/jobs/{body['id']}"
        assert body["result_url"] == f"/jobs/{body['id']}/result"
        status, seen = wait(c, body["id"])
        assert status["state"] == "done", status
        progress = [s["progress"] for s in seen]
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert any(0 < p < 1 for p in progress)  # it was seen moving
        assert any(s["eta_s"] is not None and s["state"] == "running" for s in seen)
        assert (status["frames_done"], status["frames_total"], status["eta_s"]) == (120, 120, 0.0)
        assert status["info"]["output"]["audio"] == "copied aac"
        result = c.get(body["result_url"])
        assert result.status_code == 200 and result.headers["content-type"] == "video/mp4"
        assert status["result_bytes"] == len(result.content)
        with av.open(io.BytesIO(result.content)) as out:
            v = out.streams.video[0]
            assert (v.width, v.height, v.average_rate) == (288, 162, 30)
            assert sum(1 for _ in out.decode(video=0)) == 120
        metrics = c.get("/metrics").text
        assert _sample(metrics, done_metric) - _sample(before, done_metric) == 1.0
        assert _sample(metrics, frames_metric) - _sample(before, frames_metric) == 120.0
        assert 'sr_jobs_active{state="running"} 0.0' in metrics
        assert c.delete(body["status_url"]).status_code == 204
        assert c.get(body["status_url"]).status_code == 404
        assert c.get(body["result_url"]).status_code == 404
        assert not (tmp_path / "jobs" / body["id"]).exists()


def test_an_image_job_equals_the_upscale_answer(seeded_store: Path, tmp_path: Path) -> None:
    png = encoded(natural((60, 44)))
    with app_for(seeded_store, tmp_path / "jobs") as c:
        r = post(c, png, 3, "image/png")
        assert r.status_code == 202, r.text
        status, _ = wait(c, r.json()["id"])
        assert (status["state"], status["kind"], status["format"]) == ("done", "image", "png")
        result = c.get(r.json()["result_url"])
        assert result.headers["content-type"] == "image/png"
        direct = c.post("/upscale", params={"scale": 3}, files={"file": ("x.png", png, "image/png")})
        assert result.content == direct.content
        jpeg = post(c, png, 2, "image/png", format="jpeg")
        status, _ = wait(c, jpeg.json()["id"])
        assert Image.open(io.BytesIO(c.get(jpeg.json()["result_url"]).content)).format == "JPEG"


def test_an_animated_gif_job_is_answered_as_a_gif_like_upscale(seeded_store: Path, tmp_path: Path) -> None:
    frames = [natural((40, 30)).rotate(10 * i).convert("P", palette=Image.Palette.ADAPTIVE) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    gif = buf.getvalue()
    with app_for(seeded_store, tmp_path / "jobs") as c:
        r = post(c, gif, 2, "image/gif", format="same")
        assert r.status_code == 202, r.text
        status, _ = wait(c, r.json()["id"])
        assert (status["state"], status["format"]) == ("done", "gif")
        result = c.get(r.json()["result_url"])
        assert result.headers["content-type"] == "image/gif"
        direct = c.post("/upscale", params={"scale": 2, "format": "same"}, content=gif, headers={"content-type": "image/gif"})
        assert result.content == direct.content and Image.open(io.BytesIO(result.content)).n_frames == 3
        refused = post(c, gif, 2, "image/gif", format="jpeg")
        assert refused.status_code == 422 and "animation" in refused.json()["detail"]


def test_result_before_done_is_409_and_cancel_frees_the_files(seeded_store: Path, tmp_path: Path,
                                                              clips: dict[str, Path]) -> None:
    jobs = tmp_path / "jobs"
    with app_for(seeded_store, jobs, jobs_concurrency=1) as c:
        running = post(c, clips["long"].read_bytes()).json()["id"]
        queued = post(c, clips["short"].read_bytes()).json()["id"]
        assert c.get(f"/jobs/{queued}").json()["state"] == "queued"
        r = c.get(f"/jobs/{queued}/result")
        assert r.status_code == 409 and r.json()["code"] == "not_done"
        assert c.delete(f"/jobs/{queued}").status_code == 204  # cancelled before it ran
        wait(c, running, until=("running",))
        wait_until(lambda: c.get(f"/jobs/{running}").json()["frames_done"] > 0, "the first frame done")
        assert c.delete(f"/jobs/{running}").status_code == 204  # cancelled mid-job
        assert c.get(f"/jobs/{running}").status_code == 404
        assert c.delete(f"/jobs/{running}").status_code == 404
        assert sorted(p.name for p in jobs.iterdir()) == []  # both folders, upload and partial output, gone
        metrics = c.get("/metrics").text
        assert 'sr_jobs_total{kind="video",state="cancelled"} 2.0' in metrics


@pytest.mark.parametrize(("overrides", "status", "code"), [
    ({"jobs_max_duration_s": 0.5}, 413, "video_too_large"),
    ({"jobs_max_frames": 10}, 413, "video_too_large"),
    ({"jobs_max_frame_pixels": 1000}, 413, "video_too_large"),
    ({"jobs_max_upload_bytes": 2048}, 413, "body_too_large"),
])
def test_videos_over_the_limits_are_413(seeded_store: Path, tmp_path: Path, clips: dict[str, Path],
                                        overrides: dict, status: int, code: str) -> None:
    jobs = tmp_path / "jobs"
    with app_for(seeded_store, jobs, **overrides) as c:
        r = post(c, clips["short"].read_bytes())
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert list(jobs.iterdir()) == []  # nothing left behind


def test_bad_uploads_get_clear_4xx(seeded_store: Path, tmp_path: Path, clips: dict[str, Path]) -> None:
    jobs = tmp_path / "jobs"
    clip = clips["short"].read_bytes()
    sound = tmp_path / "sound.m4a"
    with av.open(str(sound), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=44100)
        frame = av.AudioFrame(format="fltp", layout="mono", samples=2048)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = 44100
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    with app_for(seeded_store, jobs) as c:
        cases = [
            (post(c, b"\x00garbage" * 100), 400, "invalid_video"),
            (post(c, clip[: len(clip) // 2]), 400, "invalid_video"),  # truncated MP4: its index is gone
            (post(c, sound.read_bytes(), media="audio/mp4"), 415, "unsupported_media_type"),
            (post(c, sound.read_bytes()), 415, "unsupported_media_type"),  # audio only
            (post(c, clip, media="text/plain"), 415, "unsupported_media_type"),
            (post(c, b""), 422, "missing_file"),
            (post(c, clip, 7), 422, "unknown_scale"),
            (post(c, clip, format="png"), 422, "invalid_parameters"),
            (post(c, encoded(natural()), media="image/png", format="mp4"), 422, "invalid_parameters"),
            (post(c, clip, format="avi"), 422, "invalid_parameters"),
            (c.post("/jobs", params={"scale": 2}, files={"other": ("x", b"abc")}), 422, "missing_file"),
            (c.post("/jobs", params={"scale": 2}, content=b"--x\r\nbroken",
                    headers={"content-type": "multipart/form-data; boundary=x"}), 422, "missing_file"),
            (c.get("/jobs/0123456789abcdef0123456789abcdef"), 404, "not_found"),
            (c.get("/jobs/not-an-id/result"), 404, "not_found"),
            (c.delete("/jobs/../../etc"), 404, "not_found"),
        ]
        for r, status, code in cases:
            assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert list(jobs.iterdir()) == []
        assert c.get("/readyz").status_code == 200


def test_quota_and_queue_bounds(seeded_store: Path, tmp_path: Path, clips: dict[str, Path]) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    clip = clips["short"].read_bytes()
    with app_for(seeded_store, jobs, jobs_max_bytes=1 << 20, jobs_max_queued=1, jobs_concurrency=1) as c:
        (jobs / "filler").write_bytes(bytes((1 << 20) - len(clip) // 2))  # the quota is nearly used up
        r = post(c, clip)
        assert (r.status_code, r.json()["code"]) == (507, "storage_full")
        assert "retry-after" in r.headers
        (jobs / "filler").unlink()
        first = post(c, clips["long"].read_bytes())
        second = post(c, clip)
        assert first.status_code == second.status_code == 202
        third = post(c, clip)  # the first runs, the second waits: the queue (1) is full
        if c.get(f"/jobs/{first.json()['id']}").json()["state"] == "running":
            assert (third.status_code, third.json()["code"]) == (503, "jobs_queue_full")
            assert "retry-after" in third.headers
        for job in (first, second):
            assert wait(c, job.json()["id"])[0]["state"] == "done"


def test_a_corrupt_stream_ends_the_job_not_the_service(seeded_store: Path, tmp_path: Path) -> None:
    src = make_clip(tmp_path / "c.mkv", 64, 36, 30, 2.0, audio=None)  # Matroska: readable up to where it breaks
    data = bytearray(src.read_bytes())
    for i in range(len(data) // 3, len(data), 97):
        data[i] ^= 0xFF
    with app_for(seeded_store, tmp_path / "jobs") as c:
        r = post(c, bytes(data), media="video/x-matroska")
        if r.status_code != 202:
            assert r.status_code == 400 and r.json()["code"] == "invalid_video"
            return
        status, _ = wait(c, r.json()["id"])
        assert status["state"] in ("done", "failed")
        if status["state"] == "failed":
            assert status["error"] and status["error_code"]
        assert c.get("/readyz").status_code == 200


def test_restart_keeps_results_fails_interrupted_jobs_and_expires(seeded_store: Path, tmp_path: Path,
                                                                  clips: dict[str, Path]) -> None:
    jobs = tmp_path / "jobs"
    with app_for(seeded_store, jobs, drain_timeout_s=0, jobs_ttl_s=3600) as c:
        done = post(c, clips["short"].read_bytes()).json()["id"]
        wait(c, done)
        cut = post(c, clips["long"].read_bytes()).json()["id"]
        wait(c, cut, until=("running",))
    # the shutdown drained for 0 s: the running job failed with a reason, its files gone
    record = json.loads((jobs / cut / "job.json").read_text())
    assert record["state"] == "failed" and "shut down" in record["error"]
    assert sorted(p.name for p in (jobs / cut).iterdir()) == ["job.json", "lock"]
    # a job a killed process left "running" (nobody holds its lock)
    killed = JobStore(jobs).read(done)
    assert killed is not None
    killed.id, killed.state, killed.finished = "f" * 32, "running", None
    (jobs / killed.id).mkdir()
    JobStore(jobs).write(killed)
    with app_for(seeded_store, jobs, jobs_ttl_s=3600) as c:
        status = c.get(f"/jobs/{killed.id}").json()
        assert (status["state"], status["error_code"]) == ("failed", "interrupted")
        assert "interrupted" in status["error"]
        assert c.get(f"/jobs/{cut}").json()["state"] == "failed"
        assert c.get(f"/jobs/{done}/result").status_code == 200  # kept across the restart
        r = c.get(f"/jobs/{cut}/result")
        assert r.status_code == 409 and "shut down" in r.json()["detail"]
        c.app.state.jobs.sweep(now=time.time() + 3601)  # past the time to live
        assert c.get(f"/jobs/{done}/result").status_code == 410
        assert c.get(f"/jobs/{done}").status_code == 410
        assert not (jobs / done / "result.mp4").exists()
        c.app.state.jobs.sweep(now=time.time() + 3601 + 86400)  # tombstones go too (after a day at least)
        assert c.get(f"/jobs/{done}").status_code == 404
