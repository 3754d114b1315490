"""Issue 29's deployment rules, read from the files themselves: compose, nginx, the image, the extras.

Docker is not needed (none on the development machines): the files are parsed and checked against
the service's own settings, so a limit or a backend URL cannot drift from what the code does.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()
    return int(number) * {"": 1, "k": 1024, "m": MIB, "g": 1024 * MIB}[unit.lower()]


def _block(conf: str, header: str) -> str:
    """The body of the first ``header { ... }`` block (nested braces counted)."""
    start = conf.index(header)
    depth, i = 0, conf.index("{", start)
    for j in range(i, len(conf)):
        depth += {"{": 1, "}": -1}.get(conf[j], 0)
        if depth == 0:
            return conf[i + 1:j]
    raise AssertionError(f"unclosed block {header}")


def test_compose_wires_every_service_container_to_one_redis_and_one_jobs_volume() -> None:
    compose = _compose()
    services = compose["services"]
    redis = [name for name, s in services.items() if str(s.get("image", "")).startswith("redis:")]
    assert len(redis) == 1, redis
    (name,) = redis
    assert "--appendonly" in services[name]["command"]  # a restart keeps the job records
    for service in ("sr", "sr-replica"):
        env = services[service]["environment"]
        settings = Settings(**{k.removeprefix("SR_").lower(): v for k, v in env.items()})
        assert re.fullmatch(rf"redis://{name}:6379/\d+", settings.jobs_redis_url)
        mounts = dict(m.split(":")[::-1] for m in services[service]["volumes"])
        (mount,) = [target for target in mounts if Path(settings.jobs_dir).is_relative_to(target)]
        assert mounts[mount] in compose["volumes"]  # a named volume, the same for both
        assert name in services[service]["depends_on"]
    assert services["sr"]["volumes"] == services["sr-replica"]["volumes"]


def test_nginx_body_limits_per_location_and_no_retry_of_non_idempotent_requests() -> None:
    conf = re.sub(r"#.*", "", (ROOT / "deploy" / "nginx" / "nginx.conf").read_text())
    defaults = Settings.model_construct()
    server = _block(conf, "server {")
    jobs = _block(server, "location /jobs {")
    images = re.sub(r"location[^{]*\{[^}]*\}", "", server)  # the server level: every other location inherits it
    (image_limit,) = re.findall(r"client_max_body_size\s+(\w+);", images)
    (jobs_limit,) = re.findall(r"client_max_body_size\s+(\w+);", jobs)
    assert defaults.max_body_bytes == 32 * MIB
    assert defaults.max_body_bytes < _size(image_limit) <= defaults.max_body_bytes + 2 * MIB
    compose_upload = int(_compose()["services"]["sr"]["environment"]["SR_JOBS_MAX_UPLOAD_BYTES"])
    assert compose_upload == defaults.jobs_max_upload_bytes
    assert compose_upload < _size(jobs_limit) <= compose_upload + 2 * MIB  # the service's JSON 413, not nginx's
    assert "proxy_request_buffering off;" in jobs  # streamed to the replica, which reserves the quota as it goes
    assert "proxy_pass http://sr_replicas;" in jobs
    assert "non_idempotent" not in conf  # a POST /jobs is never sent twice
    retries = re.findall(r"proxy_next_upstream\s+([^;]+);", conf)
    assert retries and all("non_idempotent" not in r for r in retries)


def test_the_image_has_the_redis_client_and_the_single_host_install_does_not() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not [d for d in project["dependencies"] if d.startswith("redis")]  # `make serve` needs nothing new
    assert [d for d in project["optional-dependencies"]["redis"] if d.startswith("redis")]
    assert [d for d in project["optional-dependencies"]["dev"] if d.startswith("redis")]  # make install-dev
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'pip install ".[redis]"' in dockerfile
    assert re.search(r"mkdir -m 0700 /jobs && chown sr /jobs", dockerfile)  # the named volume is the user's


def test_ci_installs_redis_server_before_the_tests() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("apt-get install -y -qq redis-server") < ci.index("make test")


def test_readme_gives_the_container_commands_right_after_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    sections = re.split(r"^## ", readme, flags=re.M)
    titles = [section.split("\n", 1)[0] for section in sections]
    docker = sections[titles.index("Two commands") + 1]
    assert docker.startswith("Docker and compose")
    assert "docker build -t espcn-sr:cpu ." in docker
    assert re.search(r"docker run .*-p 8000:8000 .*espcn-sr:cpu", docker)
    assert "docker compose up --build" in docker
    assert "docs/operations.md#jobs-on-several-replicas" in docker
    assert "\n## Jobs on several replicas\n" in (ROOT / "docs" / "operations.md").read_text()
