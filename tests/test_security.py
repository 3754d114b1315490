"""Access control, CORS and security headers (app/api/security.py, issue 15), on the real app and seeded models."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.security import API_CSP, DOCS_CSP, PAGE_CSP, KeyChecker, hash_key
from app.main import create_app
from app.web import STATIC_DIR
from tests.conftest import encoded, make_settings, natural

KEY, OTHER = "s3cret-key-one", "another-key-2"
IMAGE = encoded(natural((40, 32)))
KEYED = [("post", "/upscale?scale=2"), ("post", "/debug/channels?scale=2"), ("get", "/debug/channels?scale=2"),
         ("get", "/kernels/deconv?scale=2"), ("get", "/kernels/deconv.png?scale=2"), ("get", "/web/config"),
         ("get", "/models"), ("post", "/jobs?scale=2"), ("get", "/jobs/abc"), ("delete", "/jobs/abc"),
         ("get", "/no/such/route")]
OPEN = ["/healthz", "/readyz", "/", "/static/app.js", "/static/style.css", "/docs", "/redoc", "/openapi.json",
        "/metrics", "/web/sample.png"]


def _call(c: TestClient, method: str, path: str, headers: dict[str, str] | None = None):
    if method == "post":
        return c.post(path, content=IMAGE, headers={"content-type": "image/png", **(headers or {})})
    return getattr(c, method)(path, headers=headers)


@pytest.fixture(scope="module")
def keyed(seeded_store: Path) -> Iterator[TestClient]:
    settings = make_settings(seeded_store, api_keys=f"{KEY}, sha256:{hashlib.sha256(OTHER.encode()).hexdigest()}",
                             cors_origins="https://app.example, https://other.example")
    with TestClient(create_app(settings)) as c:
        yield c


def assert_unauthorized(r) -> None:
    assert r.status_code == 401, (r.request.url, r.status_code, r.text)
    assert r.json()["code"] == "unauthorized" and "key" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(("method", "path"), KEYED)
def test_keyed_routes_refuse_without_a_valid_key(keyed: TestClient, method: str, path: str) -> None:
    assert_unauthorized(_call(keyed, method, path))
    assert_unauthorized(_call(keyed, method, path, {"Authorization": "Bearer wrong"}))
    assert_unauthorized(_call(keyed, method, path, {"X-API-Key": KEY + "x"}))
    assert_unauthorized(_call(keyed, method, path, {"Authorization": f"Basic {KEY}"}))
    # the stored hash itself is not a key
    assert_unauthorized(_call(keyed, method, path, {"X-API-Key": hash_key(KEY)}))


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"authorization": f"bearer {KEY}"},
                                     {"X-API-Key": KEY}, {"X-API-Key": OTHER}])
def test_a_valid_key_is_served(keyed: TestClient, headers: dict[str, str]) -> None:
    up = _call(keyed, "post", "/upscale?scale=2", headers)
    assert up.status_code == 200 and up.headers["content-type"] == "image/png"
    assert keyed.get("/kernels/deconv?scale=2", headers=headers).status_code == 200
    assert keyed.get("/web/config", headers=headers).status_code == 200
    assert keyed.get("/jobs/abc", headers=headers).status_code == 404  # past the key: the route's own answer


@pytest.mark.parametrize("path", OPEN)
def test_probes_page_and_docs_stay_open(keyed: TestClient, path: str) -> None:
    r = keyed.get(path)
    assert r.status_code == 200, (path, r.text[:200])


def test_metrics_can_require_the_key(seeded_store: Path) -> None:
    with TestClient(create_app(make_settings(seeded_store, api_keys=KEY, metrics_require_key=True))) as c:
        assert_unauthorized(c.get("/metrics"))
        assert c.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_only_hashes_are_kept(seeded_store: Path) -> None:
    settings = make_settings(seeded_store, api_keys=KEY)
    assert KEY not in settings.api_keys and KEY not in repr(settings) and KEY not in str(settings.model_dump())
    assert settings.api_keys == "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()
    checker = KeyChecker(settings.api_keys.split(","))
    assert checker.allows(KEY) and not checker.allows(None) and not checker.allows(settings.api_keys)


def test_cors_preflight_and_exposed_headers(keyed: TestClient) -> None:
    pre = keyed.options("/upscale", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                                             "Access-Control-Request-Headers": "authorization, content-type"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in pre.headers["access-control-allow-headers"].lower()
    bad = keyed.options("/upscale", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    up = keyed.post("/upscale?scale=2", content=IMAGE, headers={"content-type": "image/png", "X-API-Key": KEY,
                                                                "Origin": "https://other.example"})
    assert up.status_code == 200 and up.headers["access-control-allow-origin"] == "https://other.example"
    exposed = {h.strip().lower() for h in up.headers["access-control-expose-headers"].split(",")}
    assert {"x-model", "x-scale", "x-process-time-ms", "server-timing"} <= exposed
    # a refusal is readable by the browser too
    denied = keyed.post("/upscale?scale=2", content=IMAGE, headers={"Origin": "https://app.example"})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == "https://app.example"


def test_off_by_default_and_headers_everywhere(client: TestClient) -> None:
    up = _call(client, "post", "/upscale?scale=2")
    assert up.status_code == 200 and "access-control-allow-origin" not in up.headers
    assert client.get("/kernels/deconv?scale=2").status_code == 200
    pre = client.options("/upscale", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers
    for path, csp in [("/", PAGE_CSP), ("/docs", DOCS_CSP), ("/redoc", DOCS_CSP), ("/docs/oauth2-redirect", DOCS_CSP),
                      ("/healthz", API_CSP), ("/no/such/route", API_CSP), ("/upscale?scale=9", API_CSP)]:
        r = client.get(path) if not path.startswith("/upscale") else _call(client, "post", path)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["referrer-policy"] == "no-referrer" and r.headers["x-frame-options"] == "DENY", path
        assert r.headers["content-security-policy"] == csp, path
    assert up.headers["content-security-policy"] == API_CSP


class _InlineFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k.lower() for k, _ in attrs}
        if tag == "script" and "src" not in names:
            self.problems.append("inline <script>")
        if tag == "style":
            self.problems.append("<style> element")
        self.problems += [f"{tag}[{n}]" for n in names if n == "style" or n.startswith("on")]
        self.problems += [f"{tag}[{k}] javascript: URL" for k, v in attrs if v and v.strip().lower().startswith("javascript:")]


def test_the_page_needs_no_inline_script_or_style() -> None:
    """PAGE_CSP forbids inline script and style, so the page must have none (else it breaks in a browser)."""
    finder = _InlineFinder()
    finder.feed((STATIC_DIR / "index.html").read_text())
    assert finder.problems == []
    assert "'unsafe-inline'" not in PAGE_CSP and "script-src" not in PAGE_CSP  # default-src 'self' governs scripts
    assert not re.search(r"\beval\(|new Function\(", (STATIC_DIR / "app.js").read_text())
