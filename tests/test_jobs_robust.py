"""The jobs runner cannot be killed by what happens to a job, and job files on disk are not trusted (issue 32).

Two apps on one jobs folder stand for two worker processes (each has its own
:class:`JobManager`; the owner locks are per open file, so they exclude each
other as two processes would). Jobs are cancelled and broken from every angle
— deleted by the other worker while queued, cancelled while running by their
owner and by the other worker, their folder removed under them, their record
unwritable — and the runner must carry on: later jobs run, nothing is left
"running", and the gauges say so.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.cli.benchlib.synth_video import make_clip
from app.jobs.store import JobStore
from tests.conftest import encoded, natural
from tests.test_jobs import app_for, post, wait


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A clip that keeps a runner busy for seconds (it is always cancelled before it ends)."""
    return make_clip(tmp_path_factory.mktemp("robust") / "long.mp4", 96, 54, 30, 10.0, audio=None).read_bytes()


def _gauge(c: TestClient, state: str) -> float:
    line = next(x for x in c.get("/metrics").text.splitlines() if x.startswith(f'sr_jobs_active{{state="{state}"}}'))
    return float(line.split()[-1])


def _jobs_total(c: TestClient, kind: str, state: str) -> float:
    """The counter's value (the registry is the test process's: compare before and after)."""
    series = f'sr_jobs_total{{kind="{kind}",state="{state}"}}'
    return float(next(x for x in c.get("/metrics").text.splitlines() if x.startswith(series)).split()[-1])


def _until_frames(c: TestClient, job_id: str) -> None:
    """Wait until the job is running and has written frames (so a cancel lands mid-work)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = c.get(f"/jobs/{job_id}").json()
        if status["state"] == "running" and status["frames_done"] > 0:
            return
        assert status["state"] in ("queued", "running"), status
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never got going")


def test_the_runner_survives_every_way_a_job_can_be_cancelled_or_broken(
        seeded_store: Path, tmp_path: Path, long_clip: bytes) -> None:
    jobs = tmp_path / "jobs"
    png = encoded(natural((40, 30)))
    with app_for(seeded_store, jobs, jobs_concurrency=1) as a, app_for(seeded_store, jobs) as b:
        manager = a.app.state.jobs
        failed, cancelled = _jobs_total(a, "image", "failed"), _jobs_total(a, "video", "cancelled")
        busy = post(a, long_clip).json()["id"]  # keeps A's only runner busy while the rest queue behind it
        wait(a, busy, until=("running",))
        queued = [post(a, png, media="image/png").json()["id"] for _ in range(2)]
        write_fails_once = post(a, png, media="image/png").json()["id"]
        unwritable = post(a, png, media="image/png").json()["id"]
        owner_cancels = post(a, long_clip).json()["id"]
        folder_goes = post(a, long_clip).json()["id"]
        later = post(a, png, media="image/png").json()["id"]
        assert all(b.get(f"/jobs/{j}").json()["state"] == "queued" for j in (*queued, later))

        # 1. cancelled while queued, by the worker that does not own them: B removes their folders
        for job_id in queued:
            assert b.delete(f"/jobs/{job_id}").status_code == 204
            assert b.get(f"/jobs/{job_id}").status_code == 404
        # 2. its record cannot be written when it starts: a folder where the temporary record goes
        (jobs / write_fails_once / f".job.json.{os.getpid()}.tmp").mkdir()
        # ... nor when it ends: its record is a folder
        (jobs / unwritable / "job.json").unlink()
        (jobs / unwritable / "job.json" / "x").mkdir(parents=True)
        # 3. cancelled while running, by the other worker
        _until_frames(a, busy)
        assert b.delete(f"/jobs/{busy}").status_code == 204
        # 4. cancelled while running, by its owner
        _until_frames(a, owner_cancels)
        assert a.delete(f"/jobs/{owner_cancels}").status_code == 204
        # 5. its folder deleted under it while it runs
        _until_frames(a, folder_goes)
        shutil.rmtree(jobs / folder_goes)

        # the runner carried on: the job queued behind all that runs, and so does a new one
        assert wait(a, later, timeout=90)[0]["state"] == "done"  # before issue 32: queued for good
        fresh = post(a, png, media="image/png")
        assert fresh.status_code == 202, fresh.text
        assert wait(a, fresh.json()["id"])[0]["state"] == "done"
        assert manager.runner_restarts == 0  # no runner had to be replaced: none died
        assert all(not task.done() for task in manager._workers)
        for job_id in (busy, owner_cancels, folder_goes, *queued):
            assert a.get(f"/jobs/{job_id}").status_code == 404
            assert not (jobs / job_id).exists()
        assert _gauge(a, "running") == 0 and _gauge(a, "queued") == 0 and not manager._active
        assert _jobs_total(a, "image", "failed") - failed == 2  # the two unwritable ones, and only they
        assert _jobs_total(a, "video", "cancelled") - cancelled == 3

        # the record that failed once could be written at the end: the job says why it failed
        status = b.get(f"/jobs/{write_fails_once}").json()
        assert (status["state"], status["error_code"]) == ("failed", "internal_error")
        # the one that never could is no job (no valid record), and a janitor pass clears it away later
        assert b.get(f"/jobs/{unwritable}").status_code == 404
        b.app.state.jobs.sweep(now=time.time() + 61)
        assert not (jobs / unwritable).exists()


def test_a_queued_job_cancelled_elsewhere_frees_its_queue_place(seeded_store: Path, tmp_path: Path,
                                                                 long_clip: bytes) -> None:
    """With one queue place, a job B deleted must not keep A answering 503 jobs_queue_full."""
    jobs = tmp_path / "jobs"
    png = encoded(natural((40, 30)))
    with app_for(seeded_store, jobs, jobs_concurrency=1, jobs_max_queued=1) as a, app_for(seeded_store, jobs) as b:
        busy = post(a, long_clip).json()["id"]
        wait(a, busy, until=("running",))
        waiting = post(a, png, media="image/png").json()["id"]
        full = post(a, png, media="image/png")
        assert (full.status_code, full.json()["code"]) == (503, "jobs_queue_full")
        assert b.delete(f"/jobs/{waiting}").status_code == 204
        again = post(a, png, media="image/png")
        assert again.status_code == 202, again.text
        assert a.delete(f"/jobs/{busy}").status_code == 204
        assert wait(a, again.json()["id"])[0]["state"] == "done"


# -- job files are not trusted --------------------------------------------------------------


def _done_image_job(c: TestClient) -> str:
    job_id = post(c, encoded(natural((40, 30))), media="image/png").json()["id"]
    assert wait(c, job_id)[0]["state"] == "done"
    return job_id


def test_a_crafted_record_or_a_linked_result_serves_no_other_file(seeded_store: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    secret = tmp_path / "secret.txt"
    secret.write_text("not for clients")
    with app_for(seeded_store, jobs) as c:
        crafted = _done_image_job(c)
        record_path = jobs / crafted / "job.json"
        record = json.loads(record_path.read_text())
        for name in ("../../secret.txt", str(secret), "result.png/../../../secret.txt"):
            record_path.write_text(json.dumps({**record, "result_name": name}))
            r = c.get(f"/jobs/{crafted}/result")
            assert r.status_code == 404 and b"not for clients" not in r.content, (name, r.status_code)
            assert c.get(f"/jobs/{crafted}").status_code == 404  # an invalid record is no job
        for field, value in (("scale", "2; rm -rf"), ("state", "owned"), ("id", "f" * 32), ("info", [1]),
                             ("progress", 7), ("media_type", "text/html\r\nX: y")):
            record_path.write_text(json.dumps({**record, field: value}))
            assert c.get(f"/jobs/{crafted}").status_code == 404, field
        record_path.write_text("[1, 2")
        assert c.get(f"/jobs/{crafted}").status_code == 404
        record_path.write_text(json.dumps(record))
        assert c.get(f"/jobs/{crafted}/result").status_code == 200  # the genuine record still serves

        linked = _done_image_job(c)
        result = jobs / linked / "result.png"
        result.unlink()
        result.symlink_to(secret)
        r = c.get(f"/jobs/{linked}/result")
        assert r.status_code == 410 and b"not for clients" not in r.content


def test_job_folders_are_private(seeded_store: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    with app_for(seeded_store, jobs) as c:
        job_id = _done_image_job(c)
        assert (jobs.stat().st_mode & 0o777, (jobs / job_id).stat().st_mode & 0o777) == (0o700, 0o700)
        assert (jobs / job_id / "lock").stat().st_mode & 0o077 == 0
        assert Image.open(io.BytesIO(c.get(f"/jobs/{job_id}/result").content)).size == (80, 60)
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    JobStore(loose)  # ours but readable by all: tightened
    assert loose.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="making a folder another user owns needs root")
def test_a_jobs_folder_another_user_made_first_is_refused(seeded_store: Path, tmp_path: Path) -> None:
    planted = tmp_path / "espcn-jobs"
    planted.mkdir(mode=0o777)
    os.chown(planted, 12345, 12345)
    with pytest.raises(PermissionError, match="uid 12345"):
        JobStore(planted)
    with pytest.raises(PermissionError), app_for(seeded_store, planted):
        pass
    assert list(planted.iterdir()) == []  # nothing was written there


def test_a_runner_task_that_ends_anyway_is_replaced(seeded_store: Path, tmp_path: Path) -> None:
    """The net under the net: whatever ends a runner task outside close() (here: a stray cancel), a new one runs."""
    with app_for(seeded_store, tmp_path / "jobs", jobs_concurrency=1) as c:
        manager = c.app.state.jobs
        first = manager._workers[0]
        c.portal.call(_cancel_soon, first)
        deadline = time.monotonic() + 10
        while manager._workers[0] is first:
            assert time.monotonic() < deadline, "the runner was not replaced"
            time.sleep(0.01)
        assert manager.runner_restarts == 1 and first.cancelled()
        assert _done_image_job(c)


async def _cancel_soon(task: asyncio.Task[None]) -> None:
    task.cancel()
