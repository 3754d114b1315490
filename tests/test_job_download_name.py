"""Issue 31: a finished job downloads under the upload's own name (``clip_x3.mp4``), not ``<job id>_x3.mp4``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.routes.jobs import download_stem
from app.cli.benchlib.synth_video import make_clip
from app.jobs import JobRecord
from app.main import create_app
from tests.conftest import make_settings


def finished(c: TestClient, created: dict, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while (state := c.get(created["status_url"]).json()["state"]) not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.1)
    assert state == "done"


def test_a_video_result_is_named_after_the_upload(seeded_store: Path, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", 48, 32, 10, 0.3, audio=None)
    with TestClient(create_app(make_settings(seeded_store, jobs_dir=tmp_path / "jobs"))) as c:
        r = c.post("/jobs", params={"scale": 3}, files={"file": ("holiday clip.mp4", clip.read_bytes(), "video/mp4")})
        assert r.status_code == 202, r.text
        finished(c, r.json())
        result = c.get(r.json()["result_url"])
        assert result.status_code == 200
        assert result.headers["content-disposition"] == "attachment; filename*=utf-8''holiday%20clip_x3.mp4"
        clean = c.post("/jobs", params={"scale": 3}, files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
        finished(c, clean.json())
        assert c.get(clean.json()["result_url"]).headers["content-disposition"] == 'attachment; filename="clip_x3.mp4"'

        raw = c.post("/jobs", params={"scale": 2}, content=clip.read_bytes(), headers={"content-type": "video/mp4"})
        finished(c, raw.json())
        named = c.get(raw.json()["result_url"]).headers["content-disposition"]
        assert named == f'attachment; filename="{raw.json()["id"]}_x2.mp4"'  # a raw body has no name


@pytest.mark.parametrize(("given", "stem"), [
    ("clip.mp4", "clip"), ("C:\\videos\\clip.final.mov", "clip.final"), ("../../etc/x.webm", "x"),
    ('say "hi".mp4', "say hi"), ("", "0123456789abcdef0123456789abcdef"), (".mp4", "0123456789abcdef0123456789abcdef"),
])
def test_download_stem_keeps_only_a_printable_base_name(given: str, stem: str) -> None:
    record = JobRecord("0123456789abcdef0123456789abcdef", "video", 3, "mp4", "video/mp4", "input.video", "result.mp4",
                       upload_name=given)
    assert download_stem(record) == stem
