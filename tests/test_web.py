"""The web page, its static files and the offline API docs, over HTTP (no browser: tests/test_browser.py)."""

from __future__ import annotations

import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.routes import web
from app.api.routes.web import serving_words, worker_count
from app.main import create_app
from app.web import STATIC_DIR
from tests.conftest import make_settings, open_bytes

ROOT = Path(__file__).resolve().parents[1]
TEST_IDS = ("file", "upscale", "result", "download")


class AssetRefs(HTMLParser):
    """Every URL an HTML page loads: <script src>, <link href>, <img src>, and a Swagger ``url:``."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.test_ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if a.get("data-testid"):
            self.test_ids.add(a["data-testid"])
        if tag in ("script", "img") and a.get("src"):
            self.urls.append(a["src"])
        if tag == "link" and a.get("href"):
            self.urls.append(a["href"])
        if tag == "redoc" and a.get("spec-url"):
            self.urls.append(a["spec-url"])


def refs(html: str) -> AssetRefs:
    parser = AssetRefs()
    parser.feed(html)
    parser.urls += re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", html)  # Swagger UI's spec URL, in a script
    return parser


def assert_local_and_served(client: TestClient, html: str) -> list[str]:
    urls = refs(html).urls
    assert urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), f"not a local asset: {url}"
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        assert response.content, url
    return urls


def test_page_is_served_at_root_with_the_test_ids(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = refs(response.text)
    assert set(TEST_IDS) <= page.test_ids
    urls = assert_local_and_served(client, response.text)
    assert {"/static/app.js", "/static/style.css"} <= set(urls)
    assert client.head("/").status_code == 200


@pytest.mark.parametrize(("path", "media"), [
    ("/static/app.js", "javascript"), ("/static/style.css", "text/css"), ("/static/favicon.svg", "image/svg+xml"),
])
def test_static_files_have_their_media_types(client: TestClient, path: str, media: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert media in response.headers["content-type"]


def test_page_scripts_and_styles_load_nothing_from_elsewhere() -> None:
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"https?://|//cdn|@import", text), f"{name} refers to an outside resource"


def test_docs_and_redoc_use_only_the_shipped_assets(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    urls = assert_local_and_served(client, docs.text)
    assert {web.SWAGGER_JS, web.SWAGGER_CSS, "/openapi.json"} <= set(urls)
    assert '"validatorUrl": null' in docs.text
    redoc = client.get("/redoc")
    assert redoc.status_code == 200
    urls = assert_local_and_served(client, redoc.text)
    assert {web.REDOC_JS, "/openapi.json"} <= set(urls)
    assert "fonts.googleapis" not in redoc.text
    # the real bundles, not stubs
    assert len(client.get(web.SWAGGER_JS).content) > 1_000_000
    assert len(client.get(web.REDOC_JS).content) > 1_000_000
    assert client.get(web.OAUTH2_REDIRECT).status_code == 200


def test_vendored_assets_ship_with_their_licences() -> None:
    vendor = STATIC_DIR / "vendor"
    swagger = (vendor / "swagger-ui" / "LICENSE").read_text()
    assert "Apache License" in swagger and (vendor / "swagger-ui" / "NOTICE").is_file()
    assert "MIT License" in (vendor / "redoc" / "LICENSE").read_text()
    for bundle in ("swagger-ui/swagger-ui-bundle.js", "redoc/redoc.standalone.js"):
        assert (vendor / f"{bundle}.LICENSE.txt").is_file()


def test_every_static_file_is_package_data() -> None:
    """An installed (non-editable) package must carry the page and the docs assets."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app"]
    app_dir = ROOT / "app"
    shipped = {path for pattern in patterns for path in app_dir.glob(pattern) if path.is_file()}
    missing = [p.relative_to(app_dir).as_posix() for p in STATIC_DIR.rglob("*") if p.is_file() and p not in shipped]
    assert not missing, f"not package data: {missing}"


def test_web_config_says_whether_debug_routes_are_on(client: TestClient, seeded_store: Path) -> None:
    config = client.get("/web/config").json()
    assert config == {"debug_routes": True, "formats": ["png", "jpeg", "webp", "same"],
                      "max_body_bytes": 32 * 1024 * 1024, "jobs_max_upload_bytes": 1 << 30, "workers": 1,
                      "serving": config["serving"]}
    assert re.fullmatch(r"1 worker process on the CPU, \d+ inference threads?, (ONNX Runtime|TorchScript|PyTorch)",
                        config["serving"]), config["serving"]
    with TestClient(create_app(make_settings(seeded_store, debug_routes=False))) as off:
        assert off.get("/web/config").json()["debug_routes"] is False
        assert off.get("/kernels/deconv.png", params={"scale": 3}).status_code == 404
        assert off.get("/").status_code == 200  # the page itself stays


def test_sample_image_for_the_page(client: TestClient) -> None:
    response = client.get("/web/sample.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert open_bytes(response.content).size == (128, 128)


def test_schema_lists_the_config_route_but_not_the_page(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/web/config" in paths
    assert not {"/", "/docs", "/redoc", "/web/sample.png"} & set(paths)


@pytest.mark.parametrize("path", ["/", "/docs", "/redoc"])
def test_pages_tell_the_browser_to_load_only_from_this_origin(client: TestClient, path: str) -> None:
    policy = client.get(path).headers["content-security-policy"]
    assert "default-src 'self'" in policy and "img-src 'self' data: blob:" in policy
    assert "http" not in policy and "unsafe-eval" not in policy


@pytest.mark.parametrize(("workers", "device", "backend", "words"), [
    (2, "cpu (1 threads)", "onnxruntime", "2 worker processes on the CPU, 1 inference thread each, ONNX Runtime"),
    (1, "cpu (4 threads)", "torchscript", "1 worker process on the CPU, 4 inference threads, TorchScript"),
    (8, "cuda (NVIDIA H200)", "eager", "8 worker processes on the GPU (NVIDIA H200), PyTorch"),
])
def test_the_footer_says_workers_device_and_backend_in_words(workers: int, device: str, backend: str,
                                                             words: str) -> None:
    """Issue 31: the footer said "Running on cpu (1 threads)" while two worker processes served."""
    assert serving_words(workers, device, backend) == words


def test_worker_count_follows_app_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert worker_count(2, "cpu") == 1  # a bare uvicorn is one process whatever SR_WORKERS says
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent")  # app.serve sets it with more than one
    assert worker_count(3, "cpu") == 3


def test_redoc_is_served_its_logo_from_here(client: TestClient) -> None:
    """Issue 31: ReDoc's sidebar logo came from cdn.redoc.ly, which the docs CSP refused (a console error)."""
    bundle = client.get(web.REDOC_JS)
    assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("text/javascript")
    assert b"cdn.redoc.ly" not in bundle.content and web.FAVICON.encode() in bundle.content
    assert b"cdn.redoc.ly" in web.REDOC_BUNDLE.read_bytes()  # the shipped file itself stays as npm has it


def test_the_channel_figure_writes_sizes_width_first() -> None:
    """Issue 31: "Look inside" wrote "centre 384x384 of 1200x1800" for a 1800-wide, 1200-high image."""
    from app.viz.channels import size_note

    assert size_note(3, 128, 128, 400, 600) == "centre 384x384 of 1800x1200"
    assert size_note(2, 30, 40, 30, 40) == "80x60"
