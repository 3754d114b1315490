"""The web page at ``/``, its static files under ``/static``, and ``/docs`` / ``/redoc`` without a CDN.

:func:`install` wires it all into an app built with ``docs_url=None, redoc_url=None``
(FastAPI's own docs pages load Swagger UI and ReDoc from a CDN; these load the
copies shipped in ``app/web/static/vendor/``).
"""

from __future__ import annotations

import os
import re
from functools import lru_cache

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from app.api.security import DOCS_CSP, PAGE_CSP
from app.api.state import StateDep
from app.assets import SAMPLE_IMAGE
from app.pipeline import OUTPUT_CHOICES
from app.web import STATIC_DIR

STATIC_URL = "/static"
SWAGGER_JS = f"{STATIC_URL}/vendor/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = f"{STATIC_URL}/vendor/swagger-ui/swagger-ui.css"
REDOC_BUNDLE = STATIC_DIR / "vendor" / "redoc" / "redoc.standalone.js"  # as shipped by npm, unmodified
REDOC_JS = f"{STATIC_URL}/redoc.offline.js"  # the same, with its one off-site image pointed here
REDOC_LOGO_URL = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
FAVICON = f"{STATIC_URL}/favicon.svg"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"

router = APIRouter()


BACKEND_WORDS = {"onnxruntime": "ONNX Runtime", "torchscript": "TorchScript", "eager": "PyTorch"}


class WebConfig(BaseModel):
    """What the page needs to know beyond ``GET /models``."""

    debug_routes: bool  # false: /kernels/* and /debug/* answer 404, so the page hides "Look inside"
    formats: list[str]
    max_body_bytes: int
    jobs_max_upload_bytes: int  # videos go to /jobs, which takes bigger uploads
    workers: int  # processes serving this port
    serving: str  # the footer's words: workers, device, backend


def worker_count(setting: int | str, device: str) -> int:
    """How many processes serve this port, as far as one of them can tell.

    ``python -m app.serve`` starts :func:`app.engine.host.workers_for` processes and, only
    when there are several, switches Prometheus to multiprocess mode; a bare ``uvicorn
    app.main:app`` is one process whatever ``SR_WORKERS`` says.
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return 1
    from app.engine.host import workers_for

    return workers_for(setting, device)


def serving_words(workers: int, device: str, backend: str) -> str:
    """``2 worker processes on the CPU, 1 inference thread each, ONNX Runtime`` — what the footer says.

    ``device`` is the engine's own description (``cpu (1 threads)``, ``cuda (NVIDIA H200)``).
    """
    found = re.search(r"(\d+) thread", device)
    threads = int(found.group(1)) if found else 1
    procs = "1 worker process" if workers == 1 else f"{workers} worker processes"
    if device.startswith("cuda"):
        gpu = device.partition("(")[2].rstrip(")") or "CUDA"
        where = f"on the GPU ({gpu})"
    else:
        each = "" if workers == 1 else " each"
        where = f"on the CPU, {threads} inference thread{'' if threads == 1 else 's'}{each}"
    return f"{procs} {where}, {BACKEND_WORDS.get(backend, backend)}"


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP})


@router.get("/web/config", response_model=WebConfig, tags=["web"], summary="Settings the web page adapts to")
async def web_config(state: StateDep) -> WebConfig:
    settings, pipeline = state.settings, state.pipeline
    workers = worker_count(settings.workers, settings.device)
    backend = pipeline.backend(pipeline.scales[0]) if pipeline.scales else ""
    return WebConfig(debug_routes=settings.debug_routes, formats=list(OUTPUT_CHOICES),
                     max_body_bytes=settings.max_body_bytes, jobs_max_upload_bytes=settings.jobs_max_upload_bytes,
                     workers=workers,
                     serving=serving_words(workers, state.device_name, backend))


@router.get("/web/sample.png", include_in_schema=False)
async def sample_image() -> FileResponse:
    """The photograph ``GET /debug/channels`` draws, for the page's "use the sample" button."""
    return FileResponse(SAMPLE_IMAGE, media_type="image/png")


@lru_cache(maxsize=1)
def redoc_offline_bundle() -> bytes:
    """ReDoc's bundle with its CDN logo replaced by the service's favicon, so /redoc fetches nothing from elsewhere."""
    bundle = REDOC_BUNDLE.read_bytes()
    return bundle.replace(REDOC_LOGO_URL, FAVICON.encode())


@router.get(REDOC_JS, include_in_schema=False)
async def redoc_offline_js() -> Response:
    return Response(redoc_offline_bundle(), media_type="text/javascript",
                    headers={"Cache-Control": "public, max-age=3600"})


def _docs_page(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def install(app: FastAPI) -> None:
    """Serve the page at ``/``, ``/static/*``, and offline ``/docs`` and ``/redoc`` for ``app``."""
    openapi_url = app.openapi_url or "/openapi.json"
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _docs_page(get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{title} — API docs", swagger_js_url=SWAGGER_JS, swagger_css_url=SWAGGER_CSS,
            swagger_favicon_url=FAVICON, oauth2_redirect_url=OAUTH2_REDIRECT,
            swagger_ui_parameters={"validatorUrl": None},  # no badge that calls validator.swagger.io
        ))

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _docs_page(get_redoc_html(openapi_url=openapi_url, title=f"{title} — ReDoc", redoc_js_url=REDOC_JS,
                                         redoc_favicon_url=FAVICON, with_google_fonts=False))

    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")
