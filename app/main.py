"""The FastAPI application: ``uvicorn app.main:app``.

Heavy resources (the request pipeline: models, engine, thread pools) are
built in the lifespan, from :class:`~app.config.Settings`; ``create_app(settings)`` lets tests
and tools build an app with their own settings.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.access_log import AccessLog
from app.api.early_refusal import DrainBeforeRefusal
from app.api.errors import install_error_handlers
from app.api.routes import debug, jobs, service, upscale, web
from app.api.security import SecurityMiddleware
from app.api.state import ServiceState
from app.api.telemetry import RequestMetricsMiddleware
from app.api.upload import upload_problems
from app.config import Settings, get_settings
from app.jobs import JobManager, from_settings
from app.observability import memory, metrics
from app.observability.adapters import JobsMetrics, PipelineMetrics, PrometheusObserver
from app.pipeline.build import build_pipeline

log = logging.getLogger("app")


def build_state(settings: Settings) -> ServiceState:
    pipeline = build_pipeline(settings, engine_observer=PrometheusObserver(), observer=PipelineMetrics())
    for scale, loaded in pipeline.models.items():
        best = loaded.manifest.metrics[0] if loaded.manifest.metrics else None
        metrics.set_model_loaded(
            name=loaded.manifest.name, scale=scale,
            device="device_process" if settings.device_socket else pipeline.device.type,
            parameters=loaded.model.parameter_count(), psnr=best.psnr if best else None,
            ssim=best.ssim if best else None, dataset=best.dataset if best else "",
        )
    return ServiceState(settings=settings, pipeline=pipeline)


def served_scales_openapi(app: FastAPI) -> None:
    """The live ``/openapi.json`` lists the served scales as the ``scale`` parameter's enum.

    ``ScaleQuery`` can only say 1–8 (what a manifest may declare) at import time; which scales
    are served is a fact of the loaded store, so the schema a client (or schemathesis) reads
    says it once the models are loaded.
    """
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            service = getattr(app.state, "service", None)
            if service is not None and service.pipeline.scales:
                for item in schema.get("paths", {}).values():
                    for op in item.values():
                        for param in op.get("parameters", []) if isinstance(op, dict) else []:
                            if param.get("name") == "scale" and param.get("in") == "query":
                                param["schema"]["enum"] = list(service.pipeline.scales)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class HeadWhereGet:
    """``HEAD`` is served wherever ``GET`` is: the ``GET`` route answers, with its headers and no body.

    FastAPI's routes answer only the methods they name, so ``HEAD /metrics``, ``/readyz`` and
    ``/docs`` gave 405, and monitors and link checkers that probe with ``HEAD`` saw failures.
    A ``HEAD`` that no route serves but a ``GET`` route does is routed as ``GET``; the method
    reads ``HEAD`` again before the answer starts, so the middlewares, the access log and the
    server (which sends no body for ``HEAD``) see the request as it came. Routes that serve
    ``HEAD`` themselves (``/``, ``/static/*``) keep doing so, unless a ``GET`` route comes
    before them (``/static/redoc.offline.js`` before the ``/static`` mount). Not in the OpenAPI
    document, which lists each operation once.
    """

    def __init__(self, app: ASGIApp, routes_of: FastAPI) -> None:
        self.app, self.routes_of = app, routes_of

    def _as_get(self, scope: Scope) -> bool:
        """Whether a route serves ``GET`` here before any serves ``HEAD`` (the router takes the first full match)."""
        for route in self.routes_of.router.routes:
            if route.matches({**scope, "method": "GET"})[0] is Match.FULL:
                return route.matches(scope)[0] is not Match.FULL
            if route.matches(scope)[0] is Match.FULL:
                return False
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not self._as_get(scope):
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            scope["method"] = "HEAD"
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        scope["method"] = "GET"  # for routing; the same scope dict, so outer layers see the matched route
        try:
            await self.app(scope, receive, headers_only)
        finally:
            scope["method"] = "HEAD"


def create_app(settings: Settings | None = None, *, freeze_gc: bool = False) -> FastAPI:
    """The app; ``freeze_gc`` (the served process's app) moves what start-up loaded out of the collector's view.

    The hundreds of thousands of objects of torch, the models and the app never die, yet
    every full collection scanned them, stalling the event loop during bursts of uploads
    (docs/benchmarks.md has the figures). Tests that build many apps in one
    process leave it off, or each app's objects would outlive it.
    """
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings or get_settings())
        await state.pipeline.start()
        app.state.service = state
        app.openapi_schema = None  # rebuilt with the served scales (served_scales_openapi)
        app.state.jobs = JobManager(state.pipeline, from_settings(state.settings), JobsMetrics())
        await app.state.jobs.start()
        if freeze_gc:
            gc.collect()
            gc.freeze()  # see create_app
        sampler = asyncio.create_task(memory.sample_forever("worker", state.pipeline.device), name="memory-gauges")
        log.info("ready: scales %s on %s", list(state.pipeline.scales), state.device_name)
        try:
            yield
        finally:
            sampler.cancel()
            await app.state.jobs.close(state.settings.drain_timeout_s)  # jobs first: they need the engine
            await state.pipeline.close(state.settings.drain_timeout_s)

    app = FastAPI(
        title="ESPCN super-resolution",
        version="0.1.0",
        description="Sub-pixel convolution super-resolution (Shi et al., CVPR 2016), batched across requests. "
        "Every error answers JSON `{detail, code}`.",
        lifespan=lifespan,
        docs_url=None,  # offline copies: app.api.routes.web
        redoc_url=None,
    )
    install_error_handlers(app, upload_problems)
    app.add_middleware(HeadWhereGet, routes_of=app)  # innermost: only routing sees HEAD as GET
    app.add_middleware(SecurityMiddleware, settings=settings)  # keys, CORS, security headers; inside the metrics
    app.add_middleware(DrainBeforeRefusal, settings=settings)  # early refusals readable by send-it-all clients
    app.add_middleware(RequestMetricsMiddleware)
    app.add_middleware(AccessLog, settings=settings)  # outermost: every answer gets its line and X-Request-Id
    app.include_router(upscale.router)
    app.include_router(jobs.router)
    app.include_router(service.router)
    app.include_router(debug.router)
    web.install(app)
    served_scales_openapi(app)
    return app


app = create_app(freeze_gc=True)
