"""Metrics and the deployment files that read them: names, targets and paths must agree.

Docker is not needed: compose, Prometheus, Grafana and nginx files are parsed, and every
metric a dashboard query names must be one that app/observability/metrics.py defines.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from app.observability import metrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "sr.json"
MIB = 1024 * 1024
SERVICE_BODY_LIMIT = 32 * MIB  # the service's default byte limit
SERVICE_DEADLINE_S = 60  # the service's default request deadline
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
CONTRACT = {
    "sr_requests_total",
    "sr_request_duration_seconds",
    "sr_queue_wait_seconds",
    "sr_inference_duration_seconds",
    "sr_batch_size",
    "sr_batch_fill_ratio",
    "sr_queue_depth",
    "sr_input_pixels_total",
    "sr_output_pixels_total",
    "sr_rejected_total",
    "sr_model_info",
    "sr_model_parameters",
    "sr_stage_duration_seconds",
}


def _load_yaml(path: Path) -> dict:
    with path.open() as fh:
        return yaml.safe_load(fh)


def _collectors() -> list[MetricWrapperBase]:
    return [value for value in vars(metrics).values() if isinstance(value, MetricWrapperBase)]


def _families() -> dict[str, str]:
    """Family name (counters without ``_total``, as the parser reports them) -> type."""
    return {family.name: family.type for c in _collectors() for family in c.describe()}


def _exposed_names() -> set[str]:
    """Names as written in PromQL: counters carry ``_total``, histograms their base name."""
    return {name + "_total" if kind == "counter" else name for name, kind in _families().items()}


def _compose() -> dict:
    return _load_yaml(ROOT / "docker-compose.yml")


def _bind_sources(service: dict) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append((ROOT / source, target))
    return mounts


# --- metrics module -----------------------------------------------------------------------


def test_every_metric_is_documented_and_named_by_convention() -> None:
    names = _exposed_names()
    assert len(names) == len(_collectors())
    assert CONTRACT <= names  # clients rely on these; more may be added, none renamed
    assert set(metrics.METRIC_DOCS) == names
    assert set(metrics.ALL_METRICS) == set(_collectors())
    for name, kind in _families().items():
        assert name.startswith("sr_")
        if kind == "histogram" and name not in {"sr_batch_size", "sr_batch_fill_ratio"}:
            assert name.endswith("_seconds"), name


def test_every_metric_has_a_row_in_the_operations_guide() -> None:
    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    first_cells = [line.split("|")[1] for line in guide.splitlines() if line.startswith("| `sr_")]
    assert {name for cell in first_cells for name in re.findall(r"`(sr_[a-z_]+)", cell)} == set(metrics.METRIC_DOCS)


def test_labels_and_bucket_boundaries_are_the_contract() -> None:
    assert metrics.REQUESTS._labelnames == ("endpoint", "scale", "status")
    assert metrics.INFERENCE_DURATION._labelnames == ("scale", "device")
    assert metrics.MODEL_INFO._labelnames == ("name", "scale", "device", "psnr", "ssim", "dataset")
    assert metrics.STAGES == ("decode", "compose", "encode", "queue", "inference")
    assert metrics.REJECT_REASONS == ("queue_full", "too_large", "timeout", "bad_input", "client_gone")
    for objective in (0.1, 0.25, 0.5, 1.0, 2.5, 60.0):
        assert objective in metrics.REQUEST_BUCKETS
    assert metrics.BATCH_SIZE_BUCKETS == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert metrics.power_of_two_buckets(100)[-1] == 128
    assert metrics.FILL_RATIO_BUCKETS[0] == 0.1 and metrics.FILL_RATIO_BUCKETS[-1] == 1.0


def test_label_values_stay_bounded() -> None:
    assert [metrics.scale_label(s) for s in (2, "3", 4, None, 9, "x", "")] == ["2", "3", "4", "", "", "", ""]
    with pytest.raises(ValueError):
        metrics.reject("because")
    with pytest.raises(ValueError):
        metrics.observe_stage("resize", 0.1)


def test_importing_again_reuses_the_registered_metrics() -> None:
    reloaded = importlib.reload(metrics)
    assert reloaded.REQUESTS is metrics.REQUESTS


def test_render_exposes_every_family() -> None:
    metrics.observe_request("/v1/upscale", 2, 200, 0.2)
    metrics.observe_queue_wait(0.003)
    metrics.observe_batch(scale=2, device="cpu", tiles=3, max_batch=8, seconds=0.02)
    metrics.count_pixels(2, 100, 400)
    metrics.reject(metrics.QUEUE_FULL)
    metrics.set_model_loaded(
        name="espcn-x2", scale=2, device="cpu", parameters=20_099, psnr=36.5, ssim=0.95, dataset="set5"
    )
    metrics.QUEUE_DEPTH.set(0)
    with metrics.time_stage(metrics.STAGE_DECODE):
        pass
    metrics.set_process_memory("worker", 100 << 20)
    metrics.set_device_memory("cuda:0", {"allocated": 1 << 20})  # what a GPU process samples

    body, content_type = metrics.render()
    metrics.DEVICE_MEMORY.remove("cuda:0", "allocated")  # this process holds no GPU memory
    assert content_type.startswith("text/plain")
    parsed = {family.name: family for family in text_string_to_metric_families(body.decode())}
    for name, kind in _families().items():
        assert name in parsed, name
        assert parsed[name].type == kind
        assert parsed[name].samples, name

    _, openmetrics_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert openmetrics_type.startswith("application/openmetrics-text")


def test_multiprocess_mode_merges_files_of_other_processes(tmp_path: Path) -> None:
    """A live worker's counters and gauges are merged; once it is gone, a scrape drops its live gauges only."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    writer = textwrap.dedent(
        """
        import os, sys
        from app.observability import metrics as m
        m.REQUESTS.labels("/v1/upscale", "3", "200").inc(3)
        m.QUEUE_WAIT.observe(0.002)
        m.QUEUE_DEPTH.set(5)
        print(os.getpid(), flush=True)
        sys.stdin.readline()  # alive until told
        """
    )
    worker = subprocess.Popen([sys.executable, "-c", writer], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None and int(worker.stdout.readline())
        assert list(tmp_path.glob("*.db"))
        reader = "import sys\nfrom app.observability import metrics as m\nsys.stdout.write(m.render()[0].decode())"

        def scrape() -> str:
            return subprocess.run([sys.executable, "-c", reader], cwd=ROOT, env=env, capture_output=True, text=True,
                                  check=True, timeout=60).stdout

        before = scrape()
    finally:
        worker.communicate("\n", timeout=60)
    after = scrape()  # the writer has exited: render() forgets its live gauges by itself

    def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    first, second = samples(before), samples(after)
    request = ("sr_requests_total", (("endpoint", "/v1/upscale"), ("scale", "3"), ("status", "200")))
    assert first[request] == 3.0
    assert first[("sr_queue_wait_seconds_count", ())] == 1.0
    assert first[("sr_queue_depth", ())] == 5.0
    # A dead worker's live gauge is forgotten; its counters and histograms are kept.
    assert second.get(("sr_queue_depth", ()), 0.0) == 0.0
    assert second[request] == 3.0


# --- Prometheus ------------------------------------------------------------------------------


def test_prometheus_scrapes_the_service_and_every_replica() -> None:
    config = _load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["sr"]["metrics_path"] == "/metrics"
    assert [t for c in jobs["sr"]["static_configs"] for t in c["targets"]] == ["sr:8000"]
    replicas = jobs["sr-replicas"]
    assert replicas["metrics_path"] == "/metrics"
    (dns,) = replicas["dns_sd_configs"]
    assert dns["names"] == ["sr-replica"] and dns["type"] == "A" and dns["port"] == 8000
    services = _compose()["services"]
    assert "sr" in services and "sr-replica" in services


# --- compose ---------------------------------------------------------------------------------


def test_compose_services_ports_and_profile() -> None:
    services = _compose()["services"]
    assert {"sr", "sr-replica", "nginx", "prometheus", "grafana"} <= set(services)
    ports = {name: service.get("ports", []) for name, service in services.items()}
    assert "8000:8000" in ports["sr"]
    assert "9090:9090" in ports["prometheus"]
    assert "3000:3000" in ports["grafana"]
    assert ports["sr-replica"] == []  # replicas are reached through nginx only
    assert services["sr"]["build"]["context"] == "."
    assert (ROOT / services["sr"]["build"]["dockerfile"]).is_file()
    assert all(key.startswith("SR_") for key in services["sr"]["environment"])
    assert "/readyz" in " ".join(services["sr"]["healthcheck"]["test"])  # nginx waits for replicas that can serve

    for name in ("sr-replica", "nginx"):
        assert services[name]["profiles"] == ["scaled"]
    for name in ("sr", "prometheus", "grafana"):
        assert "profiles" not in services[name]
    assert services["sr-replica"]["deploy"]["replicas"] >= 2
    assert services["sr-replica"]["image"] == services["sr"]["image"]

    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana_env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"


def test_every_mounted_config_exists() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for source, _ in _bind_sources(service):
            assert source.exists(), f"{name}: {source} is missing"
    targets = {target: source for service in services.values() for source, target in _bind_sources(service)}
    assert targets["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"
    assert targets["/etc/nginx/nginx.conf"] == DEPLOY / "nginx" / "nginx.conf"
    assert (targets["/var/lib/grafana/dashboards"] / "sr.json").resolve() == DASHBOARD.resolve()

    # Grafana's dashboard provider reads the folder the dashboards are mounted at.
    provider_dir = targets["/etc/grafana/provisioning/dashboards"]
    (provider_file,) = provider_dir.glob("*.yml")
    (provider,) = _load_yaml(provider_file)["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == "/var/lib/grafana/dashboards/" + DASHBOARD.name


def test_compose_environment_names_real_settings_with_their_defaults() -> None:
    from app.config import Settings

    defaults = Settings.model_construct()
    for key, value in _compose()["services"]["sr"]["environment"].items():
        field = key.removeprefix("SR_").lower()
        assert field in Settings.model_fields, f"{key} is not a setting"
        if field not in {"device", "half", "jobs_redis_url", "jobs_dir"}:  # deliberately differ (jobs: issue 29)
            assert str(getattr(defaults, field)) in {value, value + ".0"}, key
    assert defaults.max_body_bytes == SERVICE_BODY_LIMIT
    assert defaults.request_timeout_s == SERVICE_DEADLINE_S


def test_gpu_override_reserves_an_nvidia_gpu() -> None:
    override = _load_yaml(ROOT / "docker-compose.gpu.yml")["services"]
    base = _compose()["services"]
    assert set(override) <= set(base)
    for service in override.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert service["environment"]["SR_DEVICE"] == "cuda"
        assert service["environment"]["SR_HALF"] == "true"
        assert "download.pytorch.org/whl/cu" in service["build"]["args"]["TORCH_INDEX"]


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert re.search(r"^ARG TORCH_INDEX=https://download\.pytorch\.org/whl/cpu$", dockerfile, re.M)
    assert '--index-url "${TORCH_INDEX}"' in dockerfile
    assert re.search(r"^USER (?!root)\w+$", dockerfile, re.M)
    assert re.search(r"^EXPOSE 8000$", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/healthz" in dockerfile
    assert 'CMD ["python", "-m", "app.serve"]' in dockerfile  # workers, thread shares, multiprocess metrics
    assert re.search(r"SR_HOST=0\.0\.0\.0", dockerfile) and re.search(r"SR_PORT=8000", dockerfile)
    for copied in ("app/", "model_store/", "pyproject.toml README.md"):
        assert f"COPY {copied}" in dockerfile

    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".venv", ".git", "runs", ".pytest_cache", ".ruff_cache", ".hypothesis"} <= ignored
    assert not {"app", "model_store", "pyproject.toml", "README.md"} & ignored  # the build needs them


# --- nginx -----------------------------------------------------------------------------------


def _size_bytes(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()
    return int(number) * {"": 1, "k": 1024, "m": MIB, "g": 1024 * MIB}[unit.lower()]


def test_nginx_balances_replicas_within_the_service_limits() -> None:
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    upstream = re.search(r"upstream\s+(\w+)\s*\{([^}]*)\}", conf)
    assert upstream, "no upstream block"
    assert re.search(r"server\s+sr-replica:8000\b", upstream.group(2))
    assert f"proxy_pass http://{upstream.group(1)};" in conf
    assert "resolver 127.0.0.11" in conf  # Docker's DNS, so new replicas are found

    body_limit = re.findall(r"client_max_body_size\s+(\w+);", conf)[0]  # the server's; /jobs has its own
    assert SERVICE_BODY_LIMIT <= _size_bytes(body_limit) <= SERVICE_BODY_LIMIT + 2 * MIB
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        (seconds,) = re.findall(rf"{directive}\s+(\d+)s;", conf)
        assert int(seconds) >= SERVICE_DEADLINE_S
    listen = re.search(r"listen\s+(\d+);", conf).group(1)
    assert f"{listen}:{listen}" in _compose()["services"]["nginx"]["ports"]


# --- Grafana ---------------------------------------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _query_panels() -> list[dict]:
    return [panel for panel in _dashboard()["panels"] if panel.get("targets")]


def test_dashboard_uses_the_provisioned_datasource() -> None:
    (datasource,) = _load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    dashboard = _dashboard()
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _query_panels():
        assert panel["description"].strip(), panel["title"]
        for ref in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert ref == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]


def test_dashboard_queries_only_metrics_that_exist() -> None:
    histograms = {name for name, kind in _families().items() if kind == "histogram"}
    defined = _exposed_names()
    used: set[str] = set()
    for panel in _query_panels():
        for target in panel["targets"]:
            for name in re.findall(r"\bsr_[a-z_]+", target["expr"]):
                base = next((name[: -len(s)] for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
                if base != name:
                    assert base in histograms, f"{panel['title']}: {name} is not a histogram series"
                assert base in defined, f"{panel['title']}: unknown metric {name}"
                used.add(base)
    assert used == defined, f"metrics missing from the dashboard: {sorted(defined - used)}"


def test_dashboard_has_the_documented_panels() -> None:
    exprs = {panel["title"]: " ".join(t["expr"] for t in panel["targets"]) for panel in _query_panels()}
    assert "sum by (status) (rate(sr_requests_total[1m]))" in exprs["Request rate by status"]
    latency = exprs["Request latency p50 / p90 / p99"]
    for q in ("0.5", "0.9", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(sr_request_duration_seconds_bucket" in latency
    assert "rate(sr_batch_size_sum" in exprs["Batch size"] and "rate(sr_batch_size_count" in exprs["Batch size"]
    assert 'status=~"5.."' in exprs["Error ratio"]
    assert "by (le, scale" in exprs["Inference time per scale p50 / p99"]
    assert "by (reason)" in exprs["Rejections by reason"]
