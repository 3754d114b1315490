"""Jobs and gauges across real worker processes (issue 32): quotas that hold, gauges from the living.

``python -m app.serve`` with two workers on one jobs folder: six uploads at once
cannot put more into the quota than it holds (reserved before written, across
processes, multipart bodies counted from their first byte instead of spooled to
the temporary folder); a SIGKILLed worker's ``sr_jobs_active`` and
``sr_queue_depth`` stop counting; and the ``sr-metrics-*`` folder the launcher
made is gone when it exits. The gauge rule is also checked on its own, with
real processes writing real prometheus_client files.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli.benchlib.launch import serving
from app.cli.benchlib.synth_video import make_clip
from app.observability import metrics
from tests.test_drain import _answer

ROOT = Path(__file__).resolve().parents[1]
QUOTA = 4 << 20
UPLOAD = 1200 * 1024  # three fit in the quota, four do not


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    assert match, f"{series} not in the exposition"
    return float(match.group(1))


# -- the rule, with real processes ----------------------------------------------------------

_WRITER = """
import sys, time
from app.observability import metrics
metrics.QUEUE_DEPTH.set(int(sys.argv[1]))
metrics.set_jobs_active("running", int(sys.argv[2]))
metrics.job_entered("video", "done")
print("ready", flush=True)
time.sleep(600)
"""


def test_a_killed_processes_gauges_stop_counting_and_its_counters_stay(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = {**os.environ, metrics.MULTIPROC_ENV: str(folder)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, depth, running], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True) for depth, running in (("24", "1"), ("3", "0"))]
    try:
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        monkeypatch.setenv(metrics.MULTIPROC_ENV, str(folder))
        text = metrics.render()[0].decode()
        assert _value(text, "sr_queue_depth") == 27 and _value(text, 'sr_jobs_active{state="running"}') == 1
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait()
        text = metrics.render()[0].decode()
        assert _value(text, "sr_queue_depth") == 3  # the living one's only
        assert _value(text, 'sr_jobs_active{state="running"}') == 0
        assert _value(text, 'sr_jobs_total{kind="video",state="done"}') == 2  # what the dead counted stays
        assert not list(folder.glob(f"gauge_live*_{procs[0].pid}.db"))
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_an_unreaped_child_is_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while metrics.process_alive(child.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not metrics.process_alive(child.pid)  # a zombie until the wait below
    child.wait()
    assert metrics.process_alive(os.getpid())


# -- the real launcher, two workers -------------------------------------------------------


@pytest.fixture(scope="module")
def served(seeded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("workers")
    (tmp / "tmp").mkdir()
    env = {"SR_MODEL_STORE": str(seeded_store), "SR_WORKERS": "2", "SR_DEVICE": "cpu", "SR_TILE_SIZE": "32",
           "SR_JOBS_DIR": str(tmp / "jobs"), "SR_JOBS_MAX_BYTES": str(QUOTA), "SR_JOBS_TTL_S": "40",
           "TMPDIR": str(tmp / "tmp")}
    with serving(env, log=tmp / "server.log", timeout_s=240, stop_timeout_s=90) as service:
        yield {"base": service.url, "port": service.port, "server": service.process, "tmp": tmp, "jobs": tmp / "jobs"}


def _upload(port: int, data: bytes, multipart: bool) -> tuple[socket.socket, bytes, int]:
    """A raw POST /jobs whose headers and first half are sent; the socket, the rest, and the file bytes sent."""
    if multipart:
        head = (b'--BOUNDARY\r\nContent-Disposition: form-data; name="file"; filename="clip.mp4"\r\n'
                b"Content-Type: video/mp4\r\n\r\n")
        body, ctype = head + data + b"\r\n--BOUNDARY--\r\n", "multipart/form-data; boundary=BOUNDARY"
    else:
        head, body, ctype = b"", data, "video/mp4"
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    half = len(body) // 2
    conn.sendall(f"POST /jobs?scale=2 HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:half])
    return conn, body[half:], half - len(head)


def _bytes_under(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "reserved")


@pytest.mark.slow
def test_concurrent_uploads_cannot_overbook_the_quota(served: dict) -> None:
    """Six 1.2 MB uploads at once into a 4 MiB quota: three are refused with 507 before their bodies arrive."""
    conns = [_upload(served["port"], os.urandom(UPLOAD), multipart=i % 2 == 1) for i in range(6)]
    refused: dict[int, tuple[int, bytes]] = {}
    deadline = time.monotonic() + 20
    while len(refused) < 3 and time.monotonic() < deadline:
        readable, _, _ = select.select([c for i, (c, _, _) in enumerate(conns) if i not in refused], [], [], 0.5)
        for conn in readable:
            refused[next(i for i, (c, _, _) in enumerate(conns) if c is conn)] = _answer(conn)
    # no fourth refusal: none now, and a late one would be read below where each accepted upload must get its 400
    readable, _, _ = select.select([c for i, (c, _, _) in enumerate(conns) if i not in refused], [], [], 0)
    assert not readable and len(refused) == 3, refused
    assert all(status == 507 and b"storage_full" in body for status, body in refused.values()), refused
    accepted = [conns[i] for i in range(6) if i not in refused]
    # the half-sent bodies, multipart ones too, are in the jobs folder (counted), never more than the quota
    expected = sum(sent for _, _, sent in accepted) - 3 * 1024  # the parser may hold back a boundary's worth
    deadline = time.monotonic() + 20
    while _bytes_under(served["jobs"]) < expected and time.monotonic() < deadline:
        time.sleep(0.1)
    assert expected <= _bytes_under(served["jobs"]) <= QUOTA
    for conn, rest, _ in accepted:
        conn.sendall(rest)
    for conn, _, _ in accepted:
        status, body = _answer(conn)  # random bytes: neither image nor video, refused once whole
        assert status == 400 and b"invalid_video" in body, (status, body)
    for conn, _, _ in conns:
        conn.close()
    assert _bytes_under(served["jobs"]) == 0


def _get(base: str, path: str) -> httpx.Response:
    """A GET on a new connection (a kept-alive one may lead to the killed worker), retried while none answers."""
    for _ in range(50):
        try:
            return httpx.get(base + path, timeout=30)
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"no worker answered {path}")


@pytest.mark.slow
def test_a_killed_workers_gauges_stop_counting(served: dict, tmp_path: Path) -> None:
    base, jobs = served["base"], served["jobs"]
    clip = make_clip(tmp_path / "long.mp4", 96, 54, 30, 10.0, audio=None).read_bytes()
    job_id = httpx.post(f"{base}/jobs", params={"scale": 2}, content=clip, headers={"content-type": "video/mp4"},
                        timeout=60).json()["id"]
    deadline = time.monotonic() + 60
    while _get(base, f"/jobs/{job_id}").json()["state"] != "running":
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    while _value(_get(base, "/metrics").text, 'sr_jobs_active{state="running"}') != 1:
        assert time.monotonic() < deadline, "the running gauge never went up"
        time.sleep(0.05)
    owner = json.loads((jobs / job_id / "job.json").read_text())["owner_pid"]
    os.kill(owner, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        text = _get(base, "/metrics").text
        gauges = (_value(text, 'sr_jobs_active{state="running"}'), _value(text, 'sr_jobs_active{state="queued"}'),
                  _value(text, "sr_queue_depth"))
        if gauges == (0, 0, 0):
            break
        assert time.monotonic() < deadline, f"gauges still {gauges} after the worker died"
        time.sleep(0.2)
    ready = _get(base, "/readyz")
    assert ready.status_code == 200 and ready.json()["queue_depth"] == 0
    while (status := _get(base, f"/jobs/{job_id}").json())["state"] != "failed":  # a sibling's janitor marks it
        assert status["state"] == "running" and time.monotonic() < deadline + 30, status
        time.sleep(0.2)
    assert status["error_code"] == "interrupted"


@pytest.mark.slow
def test_the_launcher_leaves_no_metrics_folder(served: dict) -> None:
    tmp = served["tmp"] / "tmp"
    assert list(tmp.glob("sr-metrics-*"))  # made for the two workers, in $TMPDIR
    server = served["server"]
    server.terminate()
    assert server.wait(timeout=90) == 0
    assert not list(tmp.glob("sr-metrics-*")) and not list(tmp.glob("sr-cores-*"))
