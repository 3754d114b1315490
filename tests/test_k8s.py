"""deploy/k8s: every overlay renders, validates against the Kubernetes schemas, and agrees with the app.

No cluster and no network: overlays are rendered by tests/k8s_render.py (checked against
``kubectl kustomize`` where installed), built-in objects are validated with kubernetes-validate's
bundled OpenAPI schemas (strict: unknown fields fail), the two custom resources against
tests/k8s_crd_schemas.py. The rest reads the application itself (settings fields, routes,
metrics, ``app.serve``'s uvicorn call) so the manifests cannot drift from the code.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import app.serve
from app.cli.benchlib.launch import READY_TIMEOUT_S
from app.config import Settings, get_settings
from app.main import create_app
from app.observability import metrics
from tests.k8s_crd_schemas import CRD_SCHEMAS
from tests.k8s_render import object_id, render

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("cpu", "gpu", "cpu-keda", "gpu-keda", "cpu-redis", "cpu-redis-keda")
BARE = ("cpu", "gpu")  # overlays that need nothing but a cluster: no custom resources, no storage class, no registry
# The oldest release the manifests target, and the newest whose schemas the package ships.
K8S_VERSIONS = ("1.30", ".".join(kubernetes_validate.latest_version().split(".")[:2]))
SETTING_ENV = {f"SR_{name.upper()}" for name in Settings.model_fields}
# Wired ahead of its setting (issue 15); it joins SETTING_ENV once Settings has `api_keys`.
PENDING_ENV = {"SR_API_KEYS"}
EXPECTED_KINDS = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                  "NetworkPolicy"}
REDIS_NAME = "espcn-sr-redis"  # the jobs backend's own objects (deploy/k8s/redis), checked apart

Obj = dict[str, Any]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Obj]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="module")
def monitored(tmp_path_factory: pytest.TempPathFactory) -> list[Obj]:
    """The cpu overlay with the Prometheus Operator component added, as its README says to."""
    folder = tmp_path_factory.mktemp("monitored")
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": "espcn-sr",
        "resources": [os.path.relpath(K8S / "overlays" / "cpu", folder)],
        "components": [os.path.relpath(K8S / "components" / "servicemonitor", folder)]}))
    return render(folder)


def _redis_part(obj: Obj) -> bool:
    return obj["metadata"].get("labels", {}).get("app.kubernetes.io/name") == REDIS_NAME


def only(objects: list[Obj], kind: str, redis: bool = False) -> Obj:
    """The one object of ``kind``: the service's own, or with ``redis`` the jobs backend's."""
    found = [o for o in objects if o["kind"] == kind and _redis_part(o) == redis]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def container(objects: list[Obj]) -> Obj:
    (c,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def config(objects: list[Obj]) -> dict[str, str]:
    return only(objects, "ConfigMap")["data"]


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def named_port(c: Obj, name: str | int) -> int:
    if isinstance(name, int):
        return name
    (port,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return port


def autoscaling(objects: list[Obj]) -> Obj:
    """The overlay's scaling rules in one shape, from its HPA or its ScaledObject."""
    kinds = {o["kind"] for o in objects}
    assert len(kinds & {"HorizontalPodAutoscaler", "ScaledObject"}) == 1, "exactly one autoscaler per overlay"
    if "HorizontalPodAutoscaler" in kinds:
        spec = only(objects, "HorizontalPodAutoscaler")["spec"]
        pods = [m["pods"] for m in spec["metrics"] if m["type"] == "Pods"]
        cpu = [m["resource"] for m in spec["metrics"] if m["type"] == "Resource"]
        return {"target": spec["scaleTargetRef"], "min": spec["minReplicas"], "max": spec["maxReplicas"],
                "behavior": spec["behavior"],
                "queue": {p["metric"]["name"]: float(p["target"]["averageValue"]) for p in pods},
                "cpu": [r["target"]["averageUtilization"] for r in cpu if r["name"] == "cpu"]}
    spec = only(objects, "ScaledObject")["spec"]
    prom = [t for t in spec["triggers"] if t["type"] == "prometheus"]
    cpu = [t for t in spec["triggers"] if t["type"] == "cpu"]
    queue = {}
    for trigger in prom:
        assert trigger.get("metricType", "AverageValue") == "AverageValue"  # threshold per pod
        (name,) = set(re.findall(r"\bsr_[a-z_]+", trigger["metadata"]["query"]))
        queue[name] = float(trigger["metadata"]["threshold"])
    return {"target": spec["scaleTargetRef"], "min": spec["minReplicaCount"], "max": spec["maxReplicaCount"],
            "behavior": spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"], "queue": queue,
            "cpu": [int(t["metadata"]["value"]) for t in cpu if t["metricType"] == "Utilization"]}


# --- rendering and schemas -------------------------------------------------------------------------------


def test_every_overlay_renders_the_expected_objects(rendered):
    for name, objects in rendered.items():
        kinds = {o["kind"] for o in objects}
        assert EXPECTED_KINDS <= kinds, (name, EXPECTED_KINDS - kinds)
        assert len({object_id(o) for o in objects}) == len(objects)
    assert sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir()) == sorted(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_renderer_agrees_with_kustomize(overlay, rendered):
    """The Python renderer is a stand-in; where a real kustomize exists it must give the same objects."""
    if shutil.which("kustomize"):
        command = ["kustomize", "build"]
    elif shutil.which("kubectl"):
        command = ["kubectl", "kustomize"]
    else:
        pytest.skip("neither kustomize nor kubectl installed")
    out = subprocess.run([*command, str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = {object_id(o): o for o in yaml.safe_load_all(out.stdout) if o}
    ours = {object_id(o): o for o in rendered[overlay]}
    assert ours.keys() == theirs.keys()
    for key, obj in ours.items():
        assert obj == theirs[key], key


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_builtin_objects_validate_against_the_kubernetes_schemas(overlay, version, rendered):
    for obj in rendered[overlay]:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        # raises ValidationError on a bad field and SchemaNotFoundError on an unknown kind/apiVersion
        checked = kubernetes_validate.validate(obj, version, strict=True)
        assert checked == version, (object_id(obj), checked)


def test_schema_validation_catches_the_mistakes_it_is_there_for(rendered):
    """Strict schemas: a misspelt field and a wrongly typed one both fail (so the test above can fail)."""
    deployment = only(rendered["cpu"], "Deployment")
    typo = copy.deepcopy(deployment)
    c = typo["spec"]["template"]["spec"]["containers"][0]
    c["readynessProbe"] = c.pop("readinessProbe")
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = "90"
    for bad in (typo, wrong_type):
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate(overlay, rendered):
    customs = [o for o in rendered[overlay] if (o["apiVersion"], o["kind"]) in CRD_SCHEMAS]
    assert {o["kind"] for o in customs} == ({"ScaledObject"} if "keda" in overlay else set())
    for obj in customs:
        jsonschema.Draft202012Validator(CRD_SCHEMAS[obj["apiVersion"], obj["kind"]]).validate(obj)
        if obj["kind"] == "ScaledObject":
            # KEDA hands `behavior` to the HPA it creates: it must be a valid autoscaling/v2 behavior
            hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "x"},
                   "spec": {"scaleTargetRef": obj["spec"]["scaleTargetRef"], "maxReplicas": 1,
                            "behavior": obj["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]}}
            kubernetes_validate.validate(hpa, K8S_VERSIONS[-1], strict=True)


def test_custom_resource_schemas_reject_misplaced_fields(rendered, monitored):
    scaled = copy.deepcopy(only(rendered["cpu-keda"], "ScaledObject"))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")  # the HPA's name, not KEDA's
    monitor = copy.deepcopy(only(monitored, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    for bad in (scaled, monitor):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(CRD_SCHEMAS[bad["apiVersion"], bad["kind"]]).validate(bad)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_namespace_enforcing_restricted_pod_security(overlay, rendered):
    objects = rendered[overlay]
    namespace = only(objects, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace["metadata"]["name"], object_id(obj)


# --- agreement with the application ------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_real_settings_and_parse(overlay, rendered, monkeypatch):
    """Settings ignores unknown SR_* names (extra="ignore"), so a typo would silently keep a default."""
    objects = rendered[overlay]
    data = config(objects)
    assert set(data) <= SETTING_ENV, set(data) - SETTING_ENV
    env_names = {e["name"] for e in container(objects).get("env", [])}
    assert {n for n in env_names if n.startswith("SR_")} <= SETTING_ENV | PENDING_ENV
    for name in SETTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises on a value the service would refuse at start-up
    assert settings.device == ("cuda" if overlay.startswith("gpu") else "cpu")
    # explicit thread counts within the CPU limit: the defaults would follow the node's cores
    limit = cpu_cores(container(objects)["resources"]["limits"]["cpu"])
    for name in ("threads", "codec_threads", "compose_threads"):
        assert 1 <= getattr(settings, name) <= limit, name
    # "auto" workers count the node's cores too: the pod states its process count
    assert str(settings.workers).isdigit()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_keys_come_from_an_optional_secret(overlay, rendered):
    objects = rendered[overlay]
    (env,) = [e for e in container(objects)["env"] if e["name"] == "SR_API_KEYS"]
    ref = env["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True  # pods start before anyone creates the Secret
    assert "SR_API_KEYS" not in config(objects)
    assert not [o for o in objects if o["kind"] == "Secret"], "keys are never committed"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_listens_where_the_probes_look_and_drains_within_the_grace_period(overlay, rendered, monkeypatch,
                                                                                 tmp_path):
    """Run app.serve's real start-up with the pod's settings (uvicorn.run captured, not started)."""
    objects = rendered[overlay]
    c = container(objects)
    pod = only(objects, "Deployment")["spec"]["template"]
    assert c["command"] == ["python", "-m", "app.serve"]  # the entry point whose shutdown is bounded
    for name in SETTING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in config(objects).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "multiproc"))
    captured: dict[str, Any] = {}
    monkeypatch.setattr(app.serve.uvicorn, "run", lambda target, **kwargs: captured.update(kwargs, target=target))
    get_settings.cache_clear()
    before = dict(os.environ)  # main() writes per-process thread counts into os.environ itself
    try:
        app.serve.main()
        settings = get_settings()
    finally:
        get_settings.cache_clear()
        os.environ.clear()
        os.environ.update(before)

    assert captured["target"] == "app.main:app"
    assert captured["host"] == "0.0.0.0"  # 127.0.0.1 would pass nothing but the kubelet's own loopback: nothing
    port = captured["port"]
    assert [p["containerPort"] for p in c["ports"]] == [port]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert named_port(c, c[probe]["httpGet"]["port"]) == port, probe
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)

    # SIGTERM → uvicorn finishes in-flight requests (≤ timeout_graceful_shutdown), then the engine
    # drains what it admitted (≤ drain_timeout_s); the preStop sleep runs before SIGTERM.
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    sleep_s = float(pre_stop[1])
    assert sleep_s >= 5  # endpoint removal propagates to kube-proxy and ingresses in a few seconds
    needed = sleep_s + captured["timeout_graceful_shutdown"] + settings.drain_timeout_s
    assert pod["spec"]["terminationGracePeriodSeconds"] >= needed


def test_probe_paths_answer_as_the_probes_expect(rendered, client):
    """Liveness must not wait for the models; readiness must, and does (the real routes)."""
    c = container(rendered["cpu"])
    live, ready, startup = (c[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe", "startupProbe"))
    assert startup == live
    cold = TestClient(create_app(Settings(model_store=ROOT / "model_store", device="cpu")))  # lifespan not run
    assert cold.get(live).status_code == 200
    assert cold.get(ready).status_code == 503
    assert client.get(ready).status_code == 200  # conftest's app, models loaded and warmed up
    assert client.get(live).status_code == 200
    budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert budget >= READY_TIMEOUT_S  # the project's own bound on load + warm-up
    path = only(rendered["cpu"], "Deployment")["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    scraped = client.get(path)
    assert scraped.status_code == 200 and "sr_queue_depth" in scraped.text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_reads_the_exported_queue_gauge(overlay, rendered):
    objects = rendered[overlay]
    rules = autoscaling(objects)
    deployment = only(objects, "Deployment")
    assert rules["target"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert "replicas" not in deployment["spec"], "an apply would reset the autoscaler's count"
    assert list(rules["queue"])[0] == "sr_queue_depth" and set(rules["queue"]) <= {"sr_queue_depth", "sr_jobs_backend"}
    assert rules["queue"]["sr_queue_depth"] > 0
    body, _ = metrics.render()
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    assert families["sr_queue_depth"] == "gauge"  # a per-pod level, so an average over pods means something
    assert "sr_queue_depth" in metrics.METRIC_DOCS
    assert rules["cpu"] and cpu_cores(container(objects)["resources"]["requests"]["cpu"]) > 0  # Utilization needs requests
    pdb = only(objects, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] < rules["min"] <= rules["max"]


@pytest.mark.parametrize("overlay", ["cpu-keda", "gpu-keda", "cpu-redis-keda"])
def test_keda_alternative_matches_its_hpa_overlay(overlay, rendered):
    """Both autoscalers of one overlay pair scale on the same signals, targets and bounds (KEDA on the jobs
    backlog too where jobs are shared: the next test)."""
    keda, hpa = autoscaling(rendered[overlay]), autoscaling(rendered[overlay.removesuffix("-keda")])
    keda["queue"].pop("sr_jobs_backend", None)
    assert keda == hpa
    (so,) = [o for o in rendered[overlay] if o["kind"] == "ScaledObject"]
    (query,) = [t["metadata"]["query"] for t in so["spec"]["triggers"] if t.get("name") == "queue-depth"]
    namespace = so["metadata"]["namespace"]
    assert f'namespace="{namespace}"' in query  # kustomize's namespace does not reach into a query string
    pod_pattern = re.search(r'pod=~"([^"]+)"', query).group(1)
    assert re.fullmatch(pod_pattern, only(rendered[overlay], "Deployment")["metadata"]["name"] + "-5d8f7c9b6-x2x4q")


@pytest.mark.parametrize("overlay", [o for o in OVERLAYS if "keda" in o])
def test_keda_scales_on_the_jobs_backlog_where_jobs_are_shared(overlay, rendered, monkeypatch):
    """Shared jobs (Redis): one pod per SR_WORKERS × SR_JOBS_CONCURRENCY jobs queued or running in the whole
    backend, a figure every pod exports alike (hence max, not sum). Per-pod jobs: no such trigger."""
    objects = rendered[overlay]
    for name in SETTING_ENV:
        monkeypatch.delenv(name, raising=False)
    settings = Settings(**{k.removeprefix("SR_").lower(): v for k, v in config(objects).items()})
    (so,) = [o for o in objects if o["kind"] == "ScaledObject"]
    jobs = [t for t in so["spec"]["triggers"] if "sr_jobs_backend" in t.get("metadata", {}).get("query", "")]
    assert bool(jobs) == bool(settings.jobs_redis_url)
    for trigger in jobs:
        query = trigger["metadata"]["query"]
        assert query.count("max(sr_jobs_backend{") == 2 and "sum" not in query
        assert {f'state="{s}"' for s in metrics.JOB_ACTIVE_STATES} <= set(re.findall(r'state="[a-z]+"', query))
        assert query.count(f'namespace="{so["metadata"]["namespace"]}"') == 2
        assert float(trigger["metadata"]["threshold"]) == int(settings.workers) * settings.jobs_concurrency


def test_prometheus_adapter_serves_the_metric_the_hpa_asks_for(rendered):
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    wanted = {name for o in OVERLAYS if "keda" not in o for name in autoscaling(rendered[o])["queue"]}
    served = set()
    for rule in values["rules"]["custom"]:
        series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"]).group(1)
        assert series in metrics.METRIC_DOCS
        served.add(re.sub(rule["name"]["matches"], rule["name"]["as"], series))
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
            assert placeholder in rule["metricsQuery"]
    assert wanted <= served


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_ports_and_policies_agree(overlay, rendered, client):
    objects = rendered[overlay]
    deployment = only(objects, "Deployment")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    c = container(objects)
    service = only(objects, "Service")

    def selects(selector: dict[str, str], target: dict[str, str]) -> bool:
        return bool(selector) and selector.items() <= target.items()

    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert selects(service["spec"]["selector"], labels)
    assert selects(only(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    policy = only(objects, "NetworkPolicy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], labels)
    for spread in pod["spec"]["topologySpreadConstraints"]:
        assert selects(spread["labelSelector"]["matchLabels"], labels)
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    for port in service_ports.values():
        named_port(c, port["targetPort"])  # resolves to a container port
    # ingress: exactly the container's ports; egress: nothing (the service calls nothing), or with the
    # jobs on Redis, Redis's pods on its port and DNS to find them
    allowed = {(p["port"], p.get("protocol", "TCP")) for rule in policy["ingress"] for p in rule["ports"]}
    assert allowed == {(p["containerPort"], p["protocol"]) for p in c["ports"]}
    assert all("from" not in rule for rule in policy["ingress"])
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    if "SR_JOBS_REDIS_URL" not in config(objects):
        assert policy["egress"] == []
        return
    redis_pods = only(objects, "StatefulSet", redis=True)["spec"]["template"]["metadata"]["labels"]
    for rule in policy["egress"]:
        ports = {(p["port"], p["protocol"]) for p in rule["ports"]}
        if "to" in rule:
            (peer,) = rule["to"]
            assert selects(peer["podSelector"]["matchLabels"], redis_pods) and ports == {(6379, "TCP")}
        else:
            assert ports == {(53, "UDP"), (53, "TCP")}


def test_servicemonitor_is_a_component_to_add(monitored, client):
    """Left out of every overlay (a bare cluster has no such CRD); added, it scrapes the service's pods."""
    service = only(monitored, "Service")
    monitor = only(monitored, "ServiceMonitor")
    jsonschema.Draft202012Validator(CRD_SCHEMAS[monitor["apiVersion"], monitor["kind"]]).validate(monitor)
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports
        assert client.get(endpoint["path"]).status_code == 200  # conftest's app: the real route


@pytest.mark.parametrize("overlay", BARE)
def test_bare_overlays_apply_on_a_bare_cluster_with_a_local_image(overlay, rendered):
    """No custom resources, no claim needing a storage class, an image used as built (no registry, no pull)."""
    objects = rendered[overlay]
    assert not [o for o in objects if (o["apiVersion"], o["kind"]) in CRD_SCHEMAS]
    assert not [o for o in objects if o["kind"] in ("PersistentVolumeClaim", "StatefulSet")]
    c = container(objects)
    assert "/" not in c["image"] and c["imagePullPolicy"] == "IfNotPresent"
    for path in ("kustomization.yaml",):
        text = (K8S / "overlays" / overlay / path).read_text()
        assert not re.search(r"^\s*-\s*\.\./\.\./components/servicemonitor", text, re.M)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_jobs_storage_is_sized_to_the_quota(overlay, rendered, monkeypatch):
    """SR_JOBS_DIR is on a volume of its own that holds the quota and then some: a full jobs folder fails
    the job (storage_full), it never gets the pod evicted (a /tmp emptyDir of 256 MiB did)."""
    objects = rendered[overlay]
    data = config(objects)
    for name in SETTING_ENV:
        monkeypatch.delenv(name, raising=False)
    settings = Settings(**{k.removeprefix("SR_").lower(): v for k, v in data.items()})
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    (mount,) = [m for m in container(objects)["volumeMounts"] if settings.jobs_dir.is_relative_to(m["mountPath"])]
    assert mount["mountPath"] != "/tmp"
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    if "persistentVolumeClaim" in volume:
        assert "emptyDir" not in volume
        claim = [o for o in objects if o["kind"] == "PersistentVolumeClaim"
                 and o["metadata"]["name"] == volume["persistentVolumeClaim"]["claimName"]]
        (claim,) = claim
        assert "ReadWriteMany" in claim["spec"]["accessModes"]  # every pod mounts it
        size = claim["spec"]["resources"]["requests"]["storage"]
        assert settings.jobs_redis_url, "a shared claim without the shared backend would mix pods' jobs"
    else:
        size = volume["emptyDir"]["sizeLimit"]
        assert not settings.jobs_redis_url
    assert _bytes(size) >= settings.jobs_max_bytes + settings.jobs_max_upload_bytes
    assert settings.jobs_max_upload_bytes < settings.jobs_max_bytes
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]  # the claim is writable


def test_redis_is_a_documented_dependency_of_the_redis_overlay_only(rendered):
    for name in OVERLAYS:
        parts = [o for o in rendered[name] if _redis_part(o)]
        assert bool(parts) == name.startswith("cpu-redis"), name
    objects = rendered["cpu-redis"]
    service = only(objects, "Service", redis=True)
    url = config(objects)["SR_JOBS_REDIS_URL"]
    host, port = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/\d+", url).groups()
    assert host == service["metadata"]["name"] and int(port) == service["spec"]["ports"][0]["port"]
    pod = only(objects, "StatefulSet", redis=True)["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert "--appendonly" in c["args"]  # a restart keeps the job records
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["seccompProfile"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    policy = only(objects, "NetworkPolicy", redis=True)["spec"]
    (rule,) = policy["ingress"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"].items() <= only(objects, "Deployment")["spec"]["template"][
        "metadata"]["labels"].items()
    assert policy["egress"] == []
    readme = (K8S / "README.md").read_text()
    assert "overlays/cpu-redis" in readme and "components/redis-jobs" in readme and "ReadWriteMany" in readme


def _bytes(quantity: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", quantity).groups()
    return int(number) << {None: 0, "Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40}[unit]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_meets_the_restricted_pod_security_standard(overlay, rendered):
    objects = rendered[overlay]
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    c = container(objects)
    uid = int(re.search(r"--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid  # the image's own user, so its files are readable
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc.get("privileged") is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert all("hostPath" not in v for v in pod["volumes"])
    assert pod["automountServiceAccountToken"] is False
    # the only writable path: temp files and the Prometheus multiprocess folder (tempfile → /tmp)
    (tmp,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp["name"]]
    assert "emptyDir" in volume


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_differ_where_they_should(overlay, rendered):
    objects = rendered[overlay]
    c = container(objects)
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    gpu = overlay.startswith("gpu")
    assert c["image"].endswith(":cuda" if gpu else ":cpu")
    assert limits.get("nvidia.com/gpu") == (1 if gpu else None)
    tolerations = only(objects, "Deployment")["spec"]["template"]["spec"].get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations) == gpu
    # Guaranteed QoS in whole cores: requests = limits
    assert requests["cpu"] == limits["cpu"] and requests["memory"] == limits["memory"]
    assert cpu_cores(limits["cpu"]).is_integer()


# --- docs/scaling.md ---------------------------------------------------------------------------------------


def _table(text: str, header_start: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header_start}"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _number(cell: str) -> float:
    return float(cell.replace(",", "").strip("*~ "))


def test_scaling_doc_measured_figures_are_the_readmes():
    """Every figure the capacity model calls measured is one the benchmark write-ups state (README, docs/benchmarks.md)."""
    readme = "".join((ROOT / p).read_text() for p in ("README.md", "docs/benchmarks.md", "docs/settings.md"))
    rows = _table((ROOT / "docs" / "scaling.md").read_text(), "figure | value")
    assert len(rows) >= 8
    for figure, value, _source in rows:
        for token in re.findall(r"\d[\d,]*(?:\.\d+)?", value):
            assert re.search(rf"(?<![\d.,]){re.escape(token)}(?![\d,]|\.\d)", readme), (figure, token)


def test_scaling_doc_replica_counts_follow_from_its_inputs_and_the_overlays(rendered):
    """Recompute the doc's table from its stated inputs and the overlays' cores and codec threads."""
    doc = (ROOT / "docs" / "scaling.md").read_text()
    inputs = {row[0].strip("`"): _number(row[1]) for row in _table(doc, "symbol | value")}
    assert math.isclose(inputs["load_efficiency"], round(0.475 / 0.52, 2))
    cpu_pod_cores = cpu_cores(container(rendered["cpu"])["resources"]["limits"]["cpu"])
    gpu_codec_threads = int(config(rendered["gpu"])["SR_CODEC_THREADS"])
    core_ms = inputs["model_core_ms"] + inputs["other_core_ms"]
    cpu_ceiling = cpu_pod_cores * 1000 / core_ms * inputs["load_efficiency"]
    gpu_ceiling = min(gpu_codec_threads * 1000 / inputs["other_core_ms"] * inputs["load_efficiency"],
                      inputs["process_cap_rps"])
    target = inputs["target_utilization"]
    assert target * 100 == autoscaling(rendered["cpu"])["cpu"][0]  # the HPA's CPU target is the model's
    assert f"{cpu_ceiling:.1f} requests/s" in doc and f"{gpu_ceiling:.1f} requests/s" in doc
    rows = _table(doc, "requests/s (640×360")
    assert [_number(r[0]) for r in rows] == [100, 1000, 10000]
    for load, cpu_replicas, gpu_replicas, shared_gpus in rows:
        minimum = autoscaling(rendered["cpu"])["min"]
        cpu_needed = max(minimum, math.ceil(_number(load) / (cpu_ceiling * target)))
        gpu_needed = max(autoscaling(rendered["gpu"])["min"], math.ceil(_number(load) / (gpu_ceiling * target)))
        assert _number(cpu_replicas) == cpu_needed, load
        assert _number(gpu_replicas) == gpu_needed, load
        assert _number(shared_gpus) == math.ceil(gpu_needed / 7), load
