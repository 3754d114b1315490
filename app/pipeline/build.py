"""The composition root: settings → models, runners, engine, pools → a :class:`Pipeline`.

The HTTP app, the command-line upscaler and the benchmark build their
pipeline here, so each gets the same models, backends and bounds from the
same settings (``SR_*``, :class:`app.config.Settings`, the one source
of their defaults).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

import torch

from app.config import Settings
from app.engine import jpeg
from app.engine.batcher import Engine
from app.engine.core_tokens import CoreTokens
from app.engine.device import configure_threads, max_batch_for, resolve_device
from app.engine.host import codec_threads_for, usable_cores
from app.engine.observer import EngineObserver
from app.engine.pixels import PixelEngine
from app.engine.priority import in_lowered_thread
from app.engine.remote import RemoteEngine
from app.engine.runner import ModelRunner
from app.imaging.limits import ImageLimits
from app.imaging.sandbox import DecodeBudget, DecodeSandbox
from app.pipeline.observer import PipelineObserver
from app.pipeline.pipeline import Pipeline
from app.store.registry import LoadedModel, discover

log = logging.getLogger(__name__)


def build_engine(
    settings: Settings, device: torch.device, *, engine_observer: EngineObserver | None = None
) -> tuple[dict[int, LoadedModel], Engine]:
    """The store's models and the batching engine that runs them on ``device``: what owns the device.

    Built in the HTTP worker when it owns the device itself, or in the device process
    (:mod:`app.device_process`) that serves every worker; the same settings give both the same engine.
    """
    models = discover(settings.model_store)
    if not models:
        log.error("no usable model in %s: the service will not become ready", settings.model_store)
    cores = CoreTokens(settings.core_tokens_dir, usable_cores()) if settings.core_tokens_dir else None
    runners = in_lowered_thread(lambda: {  # ONNX Runtime's own worker threads start here and inherit the priority
        s: ModelRunner(m.model, device, half=settings.half and device.type == "cuda", backend=settings.backend,
                       tile=settings.tile_size, observer=engine_observer, cores=cores)
        for s, m in models.items()
    }, settings.compute_nice)
    backend = next(iter(runners.values())).backend if runners else "eager"  # they all get the same one
    engine = Engine(
        runners,
        tile=settings.tile_size,
        max_batch=max_batch_for(device, settings.max_batch, backend),
        max_delay_s=settings.max_delay_ms / 1000,
        max_queue_tiles=settings.max_queue_tiles,
        retry_after_s=settings.retry_after_s,
        whole_max_pixels=settings.whole_image_max_pixels,
        observer=engine_observer,
    )
    return models, engine


def device_socket_for(sockets: str, pid: int | None = None) -> str:
    """The device process this worker uses: one of ``SR_DEVICE_SOCKET``'s, spread over workers by process id."""
    paths = [p for p in sockets.split(",") if p]
    return paths[(os.getpid() if pid is None else pid) % len(paths)]


def build_pipeline(
    settings: Settings,
    *,
    engine_observer: EngineObserver | None = None,
    observer: PipelineObserver | None = None,
) -> Pipeline:
    """Load the store and build everything a request needs; call ``await pipeline.start()`` before use.

    With ``SR_DEVICE_SOCKET`` (set by ``python -m app.serve`` for its workers) the models run in a
    device process and this worker keeps CPU copies only for what it shows (``/models``, kernels,
    channels); otherwise the engine runs here, and the colour work goes through the same
    :class:`~app.engine.pixels.PixelEngine` on a GPU (or with ``SR_COMPOSE=tensor``).
    """
    configure_threads(settings.threads)
    codec_pool = ThreadPoolExecutor(codec_threads_for(settings.codec_threads), thread_name_prefix="codec")
    pixels: PixelEngine | RemoteEngine | None
    if settings.device_socket:
        device = torch.device("cpu")  # this worker's own tensors; the models' device is the device process's
        models = discover(settings.model_store)
        remote = RemoteEngine(device_socket_for(settings.device_socket), retry_after_s=settings.retry_after_s)
        engine: Engine | RemoteEngine = remote
        pixels = remote if settings.compose != "pillow" else None
        device_jpeg: PixelEngine | RemoteEngine | None = remote  # the device process says whether it does JPEG
    else:
        device = resolve_device(settings.device)
        models, engine = build_engine(settings, device, engine_observer=engine_observer)
        tensor = {"auto": device.type == "cuda", "tensor": True, "pillow": False}[settings.compose]
        on_device = PixelEngine(engine, device, codec_pool, jpeg=jpeg.enabled(settings.device_jpeg, device))
        pixels = on_device if tensor else None
        device_jpeg = on_device if on_device.jpeg_ready else None
    compose_threads = codec_threads_for(settings.compose_threads)
    return Pipeline(
        models,
        engine,
        codec_pool=codec_pool,
        band_pool=ThreadPoolExecutor(compose_threads, thread_name_prefix="compose-band") if compose_threads > 1 else None,
        limits=ImageLimits(
            max_input_pixels=settings.max_input_pixels, max_output_pixels=settings.max_output_pixels,
            max_jpeg_scans=settings.max_jpeg_scans, max_chunks=settings.max_image_chunks,
            max_frames=settings.max_frames, max_metadata_bytes=settings.max_metadata_bytes,
        ),
        sandbox=DecodeSandbox(max_workers=settings.decode_workers or max(4, 2 * usable_cores()), warm=1),
        sandbox_min_pixels=settings.decode_sandbox_min_pixels,
        decode_budget=DecodeBudget(timeout_s=settings.decode_timeout_s, memory_bytes=settings.decode_memory_mb << 20),
        device=device,
        pixels=pixels,
        device_jpeg=device_jpeg,
        pixels_min_pixels=settings.gpu_compose_min_pixels if settings.compose == "auto" else 0,
        png_compress_level=settings.png_compress_level,
        request_timeout_s=settings.request_timeout_s,
        max_animation_pixels=settings.max_animation_pixels,
        observer=observer,
    )
