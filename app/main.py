"""The FastAPI application: ``uvicorn app.main:app``.

Heavy resources (models, the engine, thread pools) are built in the lifespan,
from :class:`~app.api.settings.Settings`; ``create_app(settings)`` lets tests
and tools build an app with their own settings.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import install_error_handlers
from app.api.routes import debug, service, upscale, web
from app.api.settings import Settings, get_settings
from app.api.state import ServiceState
from app.api.telemetry import PrometheusObserver, RequestMetricsMiddleware
from app.engine.batcher import Engine
from app.engine.device import codec_threads_for, configure_threads, describe, max_batch_for, resolve_device
from app.engine.runner import ModelRunner
from app.imaging.limits import ImageLimits
from app.observability import metrics
from app.store.registry import discover

log = logging.getLogger("app")


def _backend(runners: dict[int, ModelRunner]) -> str:
    """The CPU backend the runners ended up on (they all get the same one)."""
    return next(iter(runners.values())).backend if runners else "eager"


def build_state(settings: Settings) -> ServiceState:
    configure_threads(settings.threads)
    device = resolve_device(settings.device)
    device_name = describe(device)
    models = discover(settings.model_store)
    if not models:
        log.error("no usable model in %s: the service will not become ready", settings.model_store)
    observer = PrometheusObserver()
    runners = {
        s: ModelRunner(m.model, device, half=settings.half, backend=settings.backend, tile=settings.tile_size,
                       observer=observer)
        for s, m in models.items()
    }
    engine = Engine(
        runners,
        tile=settings.tile_size,
        max_batch=max_batch_for(device, settings.max_batch, _backend(runners)),
        max_delay_s=settings.max_delay_ms / 1000,
        max_queue_tiles=settings.max_queue_tiles,
        retry_after_s=settings.retry_after_s,
        whole_max_pixels=settings.whole_image_max_pixels,
        observer=observer,
    )
    for scale, loaded in models.items():
        best = loaded.manifest.metrics[0] if loaded.manifest.metrics else None
        metrics.set_model_loaded(
            name=loaded.manifest.name, scale=scale, device=device.type, parameters=loaded.model.parameter_count(),
            psnr=best.psnr if best else None, ssim=best.ssim if best else None, dataset=best.dataset if best else "",
        )
    return ServiceState(
        settings=settings,
        models=models,
        engine=engine,
        device=device,
        device_name=device_name,
        codec_pool=ThreadPoolExecutor(codec_threads_for(settings.codec_threads), thread_name_prefix="codec"),
        limits=ImageLimits(max_input_pixels=settings.max_input_pixels, max_output_pixels=settings.max_output_pixels),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings or get_settings())
        await state.engine.start()
        app.state.service = state
        log.info("ready: scales %s on %s", sorted(state.models), state.device_name)
        try:
            yield
        finally:
            await state.engine.close(state.settings.drain_timeout_s)
            state.codec_pool.shutdown(wait=True)

    app = FastAPI(
        title="ESPCN super-resolution",
        version="0.1.0",
        description="Sub-pixel convolution super-resolution (Shi et al., CVPR 2016), batched across requests. "
        "Every error answers JSON `{detail, code}`.",
        lifespan=lifespan,
        docs_url=None,  # offline copies: app.api.routes.web
        redoc_url=None,
    )
    install_error_handlers(app)
    app.add_middleware(RequestMetricsMiddleware)
    app.include_router(upscale.router)
    app.include_router(service.router)
    app.include_router(debug.router)
    web.install(app)
    return app


app = create_app()
