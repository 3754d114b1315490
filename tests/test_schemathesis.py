"""Schemathesis over the live ``/openapi.json`` (issue 15): no 5xx; statuses, content types, headers and bodies as documented.

The app runs under a real uvicorn on 127.0.0.1 with the seeded models (a few
seconds to start); schemathesis loads the schema from it and calls every
operation with generated valid and invalid inputs, a bounded number of
examples each, so the file runs in well under a minute.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from app.cli.benchlib.launch import serving_app
from app.main import create_app
from tests.conftest import make_settings

pytestmark = pytest.mark.slow  # a real server for the module: `make test` runs it, `make test-fast` does not

MAX_EXAMPLES = 25


@pytest.fixture(scope="module")
def live_url(seeded_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    app = create_app(make_settings(seeded_store, jobs_dir=tmp_path_factory.mktemp("jobs"), max_body_bytes=256 * 1024,
                                   request_timeout_s=10))
    with serving_app(app, lifespan="on") as url:
        yield url


def _local_schema() -> dict:
    """The schema as the live app serves it with the seeded store (×2, ×3, ×4); checked against the live one."""
    schema = create_app(make_settings(Path("."))).openapi()
    for item in schema["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param["name"] == "scale":
                    param["schema"]["enum"] = [2, 3, 4]
    return schema


SCHEMA = schemathesis.openapi.from_dict(_local_schema())
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


def test_the_live_schema_is_the_one_fuzzed(live_url: str) -> None:
    assert httpx.get(f"{live_url}/openapi.json").json() == SCHEMA.raw_schema


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_the_api_honours_its_schema(label: str, live_url: str) -> None:
    """Generated requests per operation (schemathesis' default checks: no 5xx, documented statuses,
    content types, headers and response schemas, invalid data refused, valid data accepted)."""

    # An upload's validity (a decodable image, the output format fitting the input, quality only for lossy
    # formats) cannot be said in OpenAPI, where any bytes are a valid `format: binary` body: for uploads the
    # "schema-valid data is accepted" check is off; every other check, and the documented 4xx, still apply.
    excluded = [positive_data_acceptance] if label.startswith("POST ") else []

    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)
    def check(case: schemathesis.Case) -> None:
        case.call_and_validate(base_url=live_url, timeout=30, excluded_checks=excluded)

    check()


@pytest.mark.parametrize("path", sorted(SCHEMA.raw_schema["paths"]))
def test_an_undocumented_method_is_405_with_the_documented_allow(path: str, live_url: str) -> None:
    """``Allow`` names every method the schema documents on the path (Starlette's named only the first route's)."""
    documented = {m.upper() for m in SCHEMA.raw_schema["paths"][path]}
    allow = documented | ({"HEAD"} if "GET" in documented else set())  # HEAD is served wherever GET is
    url = live_url + path.replace("{job_id}", "0123456789abcdef")
    for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented):
        r = httpx.request(method, url, timeout=10)
        assert r.status_code == 405 and r.json()["code"] == "method_not_allowed", (method, path, r.text)
        assert {m.strip() for m in r.headers["allow"].split(",")} == allow, (method, path, r.headers["allow"])
