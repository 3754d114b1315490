"""``python -m app.serve``: worker processes for the host, thread shares, one coherent /metrics across them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from app.cli.benchlib.launch import serving
from app.config import Settings
from app.engine.host import share_cores, usable_cores, workers_for
from tests.conftest import encoded, natural

ROOT = Path(__file__).resolve().parents[1]


def test_auto_workers_fit_the_host() -> None:
    assert workers_for(3) == 3 and workers_for("2") == 2
    assert workers_for("auto", "cpu") == usable_cores()  # one per core on CPU hosts (idle cores are lent)
    assert Settings().workers == "auto"
    with pytest.raises(ValueError):
        Settings(workers=0)


def test_processes_share_the_cores_instead_of_each_taking_all() -> None:
    assert share_cores(1, Settings()) == {}  # one process: the in-process defaults
    shares = share_cores(2, Settings())
    cores = max(1, usable_cores() // 2)
    assert shares == {"threads": cores, "codec_threads": max(2, cores), "compose_threads": usable_cores()}
    assert "threads" not in share_cores(2, Settings(threads=3))  # what is set stays set


def test_the_supervisor_chooses_its_workers_without_importing_pytorch() -> None:
    """``app.serve``'s process outlives its workers: importing PyTorch there held 0.15 GiB for nothing."""
    from app.engine.host import NVIDIA_DRIVER_PATHS

    device = "cpu" if any(Path(p).exists() for p in NVIDIA_DRIVER_PATHS) else "auto"  # auto must ask torch there
    code = ("import sys, app.serve\n"
            "from app.config import Settings\n"
            "from app.engine.host import on_gpu, share_cores, workers_for\n"
            f"workers = workers_for('auto', {device!r})\n"
            "share_cores(workers, Settings())\n"
            f"print(workers, on_gpu({device!r}), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(usable_cores()), "False", "False"]


@pytest.mark.slow
def test_two_workers_serve_and_metrics_count_every_process(seeded_store: Path, tmp_path: Path) -> None:
    env = {"SR_MODEL_STORE": str(seeded_store), "SR_WORKERS": "2", "SR_DEVICE": "cpu", "SR_TILE_SIZE": "32",
           "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with serving(env, log=tmp_path / "serve.log", timeout_s=180) as service:
        base = service.url
        body = encoded(natural((40, 30)))
        with httpx.Client(base_url=base, timeout=60) as client:
            for _ in range(12):  # new connections: the kernel spreads them over the workers
                r = httpx.post(f"{base}/upscale", params={"scale": 2}, content=body,
                               headers={"content-type": "image/png"}, timeout=60)
                assert r.status_code == 200 and r.headers["x-scale"] == "2"
            text = client.get("/metrics").text
        counted = re.search(r'sr_requests_total\{endpoint="/upscale",scale="2",status="200"\} (\S+)', text)
        assert counted and float(counted.group(1)) == 12.0  # the sum over both processes, whichever answered
        children = subprocess.run(["pgrep", "-P", str(service.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 2  # two worker processes (plus, possibly, uvicorn's helper)
    assert "2 worker process(es)" in (tmp_path / "serve.log").read_text()


def test_a_containers_cpu_quota_bounds_the_cores(tmp_path: Path) -> None:
    from app.engine.host import cgroup_cpu_quota

    limit = tmp_path / "cpu.max"
    limit.write_text("150000 100000\n")  # docker run --cpus 1.5 / a Kubernetes limit of 1500m
    assert cgroup_cpu_quota(str(limit)) == 1.5
    limit.write_text("max 100000\n")
    assert cgroup_cpu_quota(str(limit)) is None
    assert cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_benchmarked_servers_read_back_the_settings_they_were_given(tmp_path: Path, monkeypatch) -> None:
    """An unset setting stays unset in the server's environment: "None" would be read as a folder name."""
    from app.cli.benchlib.service import settings_env

    monkeypatch.setenv("SR_CORE_TOKENS_DIR", str(tmp_path))  # even when this process has one
    env = settings_env(Settings(workers=2, core_tokens_dir=None))
    assert "SR_CORE_TOKENS_DIR" not in env and env["SR_WORKERS"] == "2"
    assert settings_env(Settings(core_tokens_dir=tmp_path))["SR_CORE_TOKENS_DIR"] == str(tmp_path)
