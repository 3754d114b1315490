"""Jobs behind a load balancer (issue 29): two real ``python -m app.serve`` replicas share a real Redis.

Each replica has its own temporary folder and metrics; they share only the jobs backend:
a real ``redis-server`` (Debian's package: ``.ci/run`` and ``make test`` install and start it
where they can) and the jobs folder, the shared volume. Nothing is mocked: the replicas are
killed with SIGKILL, Redis is stopped and started again on the same append-only file.

Where ``redis-server`` or the ``redis`` client is missing these tests skip, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.cli.benchlib.launch import Service, descendants, free_port, start_service, stop_service
from app.cli.benchlib.synth_video import make_clip
from app.jobs.store import JobRecord
from tests.gates import wait_until

redis = pytest.importorskip("redis", reason="the redis client is missing: pip install -e '.[redis]' (make install-dev)")

REDIS_SERVER = shutil.which("redis-server") or next(
    (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None)
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server is not installed (apt-get install redis-server; "
                       ".ci/run installs it as root)"),
]
PREFIX = "sr:jobs:"
LEASE_S = 4.0  # heartbeats every 1.3 s; an orphan is claimed within 4 + 1 s of its owner's death
TTL_S = 40.0
DRAIN_S = 1.0  # a SIGTERM'd replica hands back the jobs it has not finished by then
QUOTA = 4 << 20


class RedisServer:
    """A ``redis-server`` on 127.0.0.1 with an append-only file, so a stop and a start keep its data."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.folder), "--protected-mode", "no"],
            stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            assert self.process.poll() is None, (self.folder / "redis.log").read_text()
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer within 20 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # a clean shutdown: the append-only file is complete
            self.process.wait(timeout=30)

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=2)


class Cluster:
    """Two replicas (``a``, ``b``) of the service; each can be killed and started again."""

    def __init__(self, root: Path, store: Path, redis_server: RedisServer) -> None:
        self.root, self.store, self.redis = root, store, redis_server
        self.jobs = root / "shared-jobs"  # the shared volume: the only folder the replicas have in common
        self.replicas: dict[str, Service] = {}

    def env(self, name: str) -> dict[str, str]:
        tmp = self.root / f"tmp-{name}"
        tmp.mkdir(exist_ok=True)
        return {"SR_MODEL_STORE": str(self.store), "SR_WORKERS": "1", "SR_DEVICE": "cpu", "SR_TILE_SIZE": "32",
                "SR_JOBS_DIR": str(self.jobs), "SR_JOBS_REDIS_URL": self.redis.url, "SR_JOBS_LEASE_S": str(LEASE_S),
                "SR_JOBS_TTL_S": str(TTL_S), "SR_JOBS_MAX_BYTES": str(QUOTA), "SR_JOBS_CONCURRENCY": "1",
                "SR_DRAIN_TIMEOUT_S": str(DRAIN_S), "TMPDIR": str(tmp)}

    def start(self, name: str) -> Service:
        self.replicas[name] = start_service(self.env(name), log=self.root / f"{name}.log", timeout_s=240)
        return self.replicas[name]

    def kill(self, name: str) -> None:
        """SIGKILL the replica and everything it started: no shutdown code runs."""
        service = self.replicas.pop(name)
        for pid in [*descendants(service.pid), service.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        service.process.wait(timeout=30)

    def url(self, name: str) -> str:
        return self.replicas[name].url

    def stop(self) -> None:
        for service in self.replicas.values():
            stop_service(service, timeout_s=30)
        self.replicas.clear()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(seeded_store: Path, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"), seeded_store, redis_server)
    try:
        c.start("a")
        c.start("b")
        yield c
    finally:
        c.stop()


@pytest.fixture(autouse=True)
def both_replicas(request: pytest.FixtureRequest) -> None:
    """Each test starts with both replicas up, whatever a failed test before it left killed."""
    if "cluster" in request.fixturenames:
        cluster = request.getfixturevalue("cluster")
        for name in ("a", "b"):
            if name not in cluster.replicas:
                cluster.start(name)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("redis-clips")
    return {
        "short": make_clip(folder / "short.mp4", 64, 36, 30, 1.0, audio="aac").read_bytes(),
        "long": make_clip(folder / "long.mp4", 160, 90, 30, 12.0).read_bytes(),
    }


def post(base: str, data: bytes, scale: int = 2) -> httpx.Response:
    return httpx.post(f"{base}/jobs", params={"scale": scale}, files={"file": ("clip.mp4", data, "video/mp4")},
                      timeout=60)


def status(base: str, job_id: str) -> dict:
    r = httpx.get(f"{base}/jobs/{job_id}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(base: str, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    seen = None
    while time.monotonic() < deadline:
        seen = status(base, job_id)
        if seen["state"] in states:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {seen and seen['state']} after {timeout} s")


def owner_pid(r: redis.Redis, job_id: str) -> int | None:
    """The pid in the lease token (node:pid:random) of the replica that holds the job, if any."""
    token = r.get(f"{PREFIX}lease:{job_id}")
    return int(token.decode().split(":")[1]) if token else None


def metric(base: str, name: str, labels: str) -> float:
    for line in httpx.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not exported")


# --- the backend on its own ------------------------------------------------------------------------------


def test_two_stores_share_the_quota_the_queue_and_the_leases(redis_server: RedisServer, tmp_path: Path) -> None:
    from app.jobs.redis_store import RedisJobStore

    prefix = "unit:"
    one = RedisJobStore(tmp_path / "shared", redis_server.url, prefix, lease_s=2.0)
    two = RedisJobStore(tmp_path / "shared", redis_server.url, prefix, lease_s=2.0)
    ids = [f"{i:032x}" for i in (1, 2)]
    for job_id in ids:
        one.create(job_id)
    leases = [one.lock(job_id) for job_id in ids]
    assert one.reserve(ids[0], 600, 1000) == 600
    assert two.reserve(ids[1], 600, 1000) == 0  # the other store's reservation counts: no overbooking
    assert two.reserve(ids[1], 400, 1000) == 400 and one.usage() == two.usage() == 1000
    record = JobRecord(ids[0], "video", 2, "mp4", "video/mp4", "input.video", "result.mp4")
    one.write(record, leases[0])
    with pytest.raises(Exception, match=ids[0]):  # LeaseLost: a write with another's lease is refused
        two.write(record, (ids[0], "not-the-owner"))
    assert one.claim_orphan(ids[0]) is None  # its owner holds it
    assert one.enqueue(ids[0], leases[0]) is True  # queued and let go in one step
    assert two.claim_orphan(ids[0]) is None  # waiting in the queue is not orphaned
    assert two.waiting() == 1 and two.counts() == {"queued": 1, "running": 0}

    import asyncio

    taken, lease = asyncio.run(two.next_job())
    assert taken == ids[0] and two.owner_alive(ids[0]) and two.counts()["queued"] == 0
    assert one.renew([lease]) == [] and one.renew([(ids[0], "stale")]) == [(ids[0], "stale")]
    wait_until(lambda: not one.owner_alive(ids[0]), "the lease lapsed without a heartbeat", 2.0 + 10)
    orphan = one.claim_orphan(ids[0])
    assert orphan is not None and two.renew([lease]) == [lease]  # the old owner learns it lost the job
    one.unlock(orphan)
    one.remove(ids[0])
    one.remove(ids[1])
    one.unlock(leases[1])
    assert one.cancel_requested(ids[0]) and not (tmp_path / "shared" / ids[0]).exists()
    left = [k for k in one.keys() if not k.startswith(f"{prefix}cancel:")]
    assert left == [f"{prefix}running"] or left == [], left
    r = redis_server.client()
    assert all(r.pttl(k) > 0 for k in one.keys() if k.startswith(f"{prefix}cancel:"))  # cancels expire by themselves
    for key in one.keys():
        r.delete(key)


# --- two replicas ---------------------------------------------------------------------------------------------


def test_a_job_made_on_one_replica_is_followed_downloaded_and_cancelled_on_the_other(cluster: Cluster,
                                                                                    clips: dict[str, bytes]) -> None:
    a, b = cluster.url("a"), cluster.url("b")
    r = post(a, clips["short"])
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    done = wait_for(b, job_id, ("done", "failed"))
    assert done["state"] == "done", done
    assert status(a, job_id) == status(b, job_id)
    full = httpx.get(f"{b}/jobs/{job_id}/result", timeout=30)
    assert full.status_code == 200 and full.headers["content-type"] == "video/mp4"
    assert full.content == httpx.get(f"{a}/jobs/{job_id}/result", timeout=30).content
    assert len(full.content) == done["result_bytes"] > 1000
    part = httpx.get(f"{b}/jobs/{job_id}/result", headers={"Range": "bytes=100-1099"}, timeout=30)
    assert part.status_code == 206 and part.content == full.content[100:1100]
    assert part.headers["content-range"] == f"bytes 100-1099/{len(full.content)}"

    # Two long jobs posted to a: a runs one, b (idle, with room) takes the other from the shared queue.
    ran_b = metric(b, "sr_jobs_total", 'kind="video",state="running"')
    first, second = (post(a, clips["long"]).json()["id"] for _ in range(2))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and {status(a, i)["state"] for i in (first, second)} != {"running"}:
        time.sleep(0.05)
    assert {status(b, i)["state"] for i in (first, second)} == {"running"}
    assert metric(b, "sr_jobs_total", 'kind="video",state="running"') == ran_b + 1
    for base in (a, b):  # a heartbeat (every LEASE_S / 3) counts them
        wait_until(lambda base=base: metric(base, "sr_jobs_backend", 'state="running"') == 2,
                   f"{base} counting both running jobs", LEASE_S + 10, 0.05)
    # Cancelled on the other replica from the one that admitted them, whoever runs them.
    for job_id in (first, second):
        assert httpx.delete(f"{b}/jobs/{job_id}", timeout=30).status_code == 204
    for job_id in (first, second):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(f"{a}/jobs/{job_id}", timeout=10).status_code != 404:
            time.sleep(0.05)
        assert httpx.get(f"{a}/jobs/{job_id}", timeout=10).status_code == 404
        assert httpx.delete(f"{a}/jobs/{job_id}", timeout=10).status_code == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any((cluster.jobs / i).exists() for i in (first, second)):
        time.sleep(0.05)
    assert not any((cluster.jobs / i).exists() for i in (first, second))  # the runners stopped and cleaned up
    keys = {k.decode() for k in cluster.redis.client().keys(f"{PREFIX}*{first}*")}
    assert keys == {f"{PREFIX}cancel:{first}"}


def test_the_quota_holds_across_replicas(cluster: Cluster) -> None:
    """An upload arriving on a holds its declared bytes; a second on b finds the quota full (507)."""
    a, b = cluster.replicas["a"], cluster.replicas["b"]
    r = cluster.redis.client()

    def held() -> int:
        return sum(int(v) for v in r.hvals(f"{PREFIX}bytes"))

    size, before = QUOTA - (1 << 20), held()
    assert before < 1 << 20
    with socket.create_connection(("127.0.0.1", a.port), timeout=30) as slow:
        slow.sendall(f"POST /jobs?scale=2 HTTP/1.1\r\nHost: x\r\nContent-Type: video/mp4\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode() + b"\0" * 1024)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and held() < before + size:
            time.sleep(0.05)
        assert held() >= before + size
        refused = httpx.post(f"{b.url}/jobs", params={"scale": 2}, content=b"\0" * size,
                             headers={"content-type": "video/mp4"}, timeout=30)
        assert refused.status_code == 507 and refused.json()["code"] == "storage_full", refused.text
    deadline = time.monotonic() + 10  # the unfinished upload is discarded with its reservation
    while time.monotonic() < deadline and held() > before:
        time.sleep(0.05)
    assert held() == before
    again = httpx.post(f"{b.url}/jobs", params={"scale": 2}, content=b"\0" * size,
                       headers={"content-type": "video/mp4"}, timeout=30)
    assert again.status_code == 400, again.text  # within the quota now; refused as no video
    assert held() == before


def running_job(cluster: Cluster, r: redis.Redis, clip: bytes) -> tuple[str, int, str, str]:
    """A job posted to ``a`` and running: its id, its owner's pid, the owner's name and the other replica's."""
    job_id = post(cluster.url("a"), clip).json()["id"]
    wait_for(cluster.url("a"), job_id, ("running",), timeout=60)
    pid = owner_pid(r, job_id)
    (owner,) = [name for name, s in cluster.replicas.items() if s.pid == pid]
    return job_id, pid, owner, "b" if owner == "a" else "a"


def test_a_killed_owners_job_is_taken_over_then_failed_with_the_reason(cluster: Cluster,
                                                                       clips: dict[str, bytes]) -> None:
    r = cluster.redis.client()
    job_id, pid, owner, other = running_job(cluster, r, clips["long"])
    cluster.kill(owner)
    killed = time.monotonic()
    # Taken over: the other replica runs it again from the start, within the lease (+ one janitor pass).
    deadline = killed + LEASE_S + 10
    while time.monotonic() < deadline and owner_pid(r, job_id) in (None, pid):
        time.sleep(0.02)
    took = time.monotonic() - killed
    assert owner_pid(r, job_id) == cluster.replicas[other].pid, status(cluster.url(other), job_id)
    assert took <= LEASE_S + LEASE_S / 4 + 1.5, took
    assert status(cluster.url(other), job_id)["state"] in ("queued", "running")
    # The lease seen first may be the janitor's, held only while it puts the job back in the queue: wait until
    # the other replica really runs it (frames done), or a kill now would leave a queued job for anyone to run.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = status(cluster.url(other), job_id)
        if now["state"] == "running" and now["frames_done"] > 0 and owner_pid(r, job_id) == cluster.replicas[other].pid:
            break
        time.sleep(0.02)
    assert now["state"] == "running" and now["frames_done"] > 0, now

    # Its second owner dies too: the job fails with the reason, never left "running".
    cluster.kill(other)
    cluster.start(owner)
    failed = wait_for(cluster.url(owner), job_id, ("failed", "done"), timeout=LEASE_S + 15)
    assert failed["state"] == "failed" and failed["error_code"] == "interrupted", failed
    assert "stopped 2 times" in failed["error"]
    assert not list((cluster.jobs / job_id).iterdir())  # input and partial results gone; the record says why
    assert not r.sismember(f"{PREFIX}running", job_id) and owner_pid(r, job_id) is None
    cluster.start(other)


def test_a_job_running_at_a_graceful_stop_goes_back_to_the_queue_and_finishes_elsewhere(
        cluster: Cluster, clips: dict[str, bytes]) -> None:
    """SIGTERM (a rolling update): the owner drains for SR_DRAIN_TIMEOUT_S, then hands the job it could not
    finish back to the shared queue, at once and not as a failure; the other replica runs it to the end."""
    r = cluster.redis.client()
    job_id, _, owner, other = running_job(cluster, r, clips["long"])
    stopping = time.monotonic()
    stop_service(cluster.replicas.pop(owner), timeout_s=60)  # uvicorn drains, then exits by the signal
    stopped = time.monotonic() - stopping
    deadline = time.monotonic() + LEASE_S / 2  # handed back: no lease to wait out, no janitor pass
    while time.monotonic() < deadline and owner_pid(r, job_id) != cluster.replicas[other].pid:
        time.sleep(0.02)
    assert owner_pid(r, job_id) == cluster.replicas[other].pid, (stopped, status(cluster.url(other), job_id))
    record = JobRecord.from_dict(json.loads(r.get(f"{PREFIX}job:{job_id}")))
    assert record.attempts == 0  # not a takeover: a job whose replica is killed twice fails, this one may go on
    done = wait_for(cluster.url(other), job_id, ("done", "failed", "cancelled"), timeout=240)
    assert done["state"] == "done", done
    assert httpx.get(f"{cluster.url(other)}/jobs/{job_id}/result", timeout=30).status_code == 200
    cluster.start(owner)


def test_redis_going_away_gives_503s_and_loses_no_finished_result(cluster: Cluster,
                                                                  clips: dict[str, bytes]) -> None:
    a, b = cluster.url("a"), cluster.url("b")
    job_id = post(a, clips["short"]).json()["id"]
    assert wait_for(b, job_id, ("done", "failed"))["state"] == "done"
    before = httpx.get(f"{a}/jobs/{job_id}/result", timeout=30).content
    running = post(b, clips["long"]).json()["id"]
    wait_for(a, running, ("running",), timeout=60)

    cluster.redis.stop()
    try:
        for base in (a, b):
            for method, path in (("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/result"),
                                 ("DELETE", f"/jobs/{job_id}")):
                answer = httpx.request(method, f"{base}{path}", timeout=10)
                assert answer.status_code == 503, (method, path, answer.text)
                assert answer.json()["code"] == "jobs_backend_unavailable"
                assert answer.headers["retry-after"]
            refused = post(base, clips["short"])
            assert refused.status_code == 503 and refused.json()["code"] == "jobs_backend_unavailable"
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200  # the rest of the service goes on
        time.sleep(1.0)  # shorter than the lease: the running job goes on without its heartbeats
    finally:
        cluster.redis.start()

    assert status(b, job_id)["state"] == "done"
    assert httpx.get(f"{b}/jobs/{job_id}/result", timeout=30).content == before
    finished = wait_for(b, running, ("done", "failed"), timeout=120)
    assert finished["state"] == "done", finished
    assert not list(cluster.jobs.glob("*/upload"))  # no refused upload left on the shared volume


def test_nothing_is_left_behind_after_expiry(cluster: Cluster, clips: dict[str, bytes]) -> None:
    r = cluster.redis.client()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and int(r.llen(f"{PREFIX}queue")) + int(r.scard(f"{PREFIX}running")):
        time.sleep(0.2)
    job_id = post(cluster.url("b"), clips["short"]).json()["id"]
    done = wait_for(cluster.url("a"), job_id, ("done",))
    deadline = time.monotonic() + TTL_S + 30
    while time.monotonic() < deadline and (list(cluster.jobs.iterdir()) or r.hlen(f"{PREFIX}bytes")):
        time.sleep(0.5)
    assert time.time() >= done["expires"]
    assert list(cluster.jobs.iterdir()) == []  # no job folder, upload or result on the shared volume
    gone = httpx.get(f"{cluster.url('b')}/jobs/{job_id}", timeout=10)
    assert gone.status_code == 410 and gone.json()["code"] == "expired"
    keys = {k.decode() for k in r.keys(f"{PREFIX}*")}
    assert not keys & {f"{PREFIX}{name}" for name in ("queue", "bytes", "ids")}
    assert not [k for k in keys if k.startswith(f"{PREFIX}lease:")]
    assert all(r.pttl(k) > 0 for k in keys if k != f"{PREFIX}running"), keys  # tombstones and cancels expire
    for name in ("a", "b"):  # and nothing of the jobs in either replica's own temporary folder
        assert not [p for p in (cluster.root / f"tmp-{name}").rglob("*") if p.name.startswith(("upload", "partial"))]
