"""Every setting, from ``SR_*`` environment variables (pydantic-settings), with documented defaults: the ground floor.

Each default lives here once (``docs/settings.md`` documents them, and a test holds the
two together). Everything imports this module and it imports nothing of the app's, so
the launcher (``python -m app.serve``) reads the settings without importing PyTorch.
Built once per process by :func:`get_settings`, never at import time; tests pass their
own :class:`Settings` to ``create_app``.
"""

from __future__ import annotations

import hashlib
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = Path(__file__).resolve().parents[1] / "model_store"  # the models this repository ships
TILE_SIZE = 96  # LR tile side: every model call runs tiles of this size, plus the model's halo
MAX_BATCH_LIMIT = 256  # the most tiles per model call the settings allow (the batch-size histogram's top bucket)
WHOLE_IMAGE_MAX_PIXELS = 512 * 1024  # LR pixels up to which a multi-tile image runs as one whole-image call
HASH_PREFIX = "sha256:"


def hash_key(key: str) -> str:
    """``sha256:<hex>`` of a key; an entry already in that form is kept (keys can be configured pre-hashed)."""
    key = key.strip()
    if key.startswith(HASH_PREFIX) and len(key) == len(HASH_PREFIX) + 64:
        return key.lower()
    return HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()


def hash_keys(keys: str) -> str:
    """``SR_API_KEYS`` as read (comma-separated keys) → the same list of hashes, so no raw key is kept."""
    return ",".join(hash_key(k) for k in keys.split(",") if k.strip())


class Settings(BaseSettings):
    """Service settings; each field is ``SR_<NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="SR_", extra="ignore")

    model_store: Path = Field(DEFAULT_STORE, description="folder of model manifests (*.json) and safetensors weights")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU")
    half: bool = Field(False, description="fp16 on CUDA (non-finite outputs are recomputed in fp32); ignored on CPU")
    backend: Literal["auto", "onnxruntime", "torchscript", "eager"] = Field(
        "auto", description="CPU inference path: auto = ONNX Runtime, else frozen TorchScript, else eager PyTorch "
        "(each fast path checked exact against eager at start-up)"
    )
    threads: int = Field(0, ge=0, description="PyTorch CPU threads for inference (0: PyTorch's default)")
    tile_size: int = Field(TILE_SIZE, ge=8, le=1024, description="LR tile side; every model call runs tiles of this size")
    max_batch: int = Field(
        0, ge=0, le=MAX_BATCH_LIMIT, description="most tiles per model call; 0: auto (CPU 8, CUDA 64: "
        "app.engine.device.AUTO_MAX_BATCH, measured in docs/benchmarks.md)"
    )
    max_delay_ms: float = Field(5.0, ge=0, le=10_000, description="longest wait for a fuller batch after the first tile")
    whole_image_max_pixels: int = Field(
        WHOLE_IMAGE_MAX_PIXELS, ge=0, description="images of several tiles up to this many LR pixels run as one whole-image "
        "model call (less halo work, more memory); 0: always tiles"
    )
    max_queue_tiles: int = Field(4096, ge=1, description="pending tiles admitted at most; beyond it: 503 + Retry-After")
    overload_status: int = Field(503, description="status when the queue is full: 503 or 429")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with an overload answer")
    request_timeout_s: float = Field(60.0, gt=0, description="per-request deadline; past it: 504")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body; beyond it: 413")
    max_input_pixels: int = Field(4096 * 4096, ge=1, description="largest input image (width × height)")
    max_output_pixels: int = Field(8192 * 8192, ge=1, description="largest output image (width × height)")
    codec_threads: int = Field(
        0, ge=0, le=64,
        description="threads decoding and encoding images off the event loop (0: one per usable CPU core, at least 2)",
    )
    compose_threads: int = Field(
        0, ge=0, le=64,
        description="threads composing one big answer band by band (0: one per usable CPU core, at least 2; 1: none)",
    )
    core_tokens_dir: Path | None = Field(
        None, description="folder of the per-core lock files that let a whole-image call of one worker process "
        "borrow the cores the others leave idle (app/engine/core_tokens.py); python -m app.serve sets it for CPU workers"
    )
    compute_nice: int = Field(
        0, ge=0, le=19, description="how far below the event loop ONNX Runtime's own worker threads run "
        "(Linux nice; 0: the same priority; docs/settings.md)"
    )
    compose: Literal["auto", "tensor", "pillow"] = Field(
        "auto", description="where the colour work around the model runs: auto = tensor code on the model's "
        "device when it is CUDA, else the banded Pillow/NumPy compose (same bytes); tensor / pillow force one"
    )
    device_process: Literal["auto", "on", "off"] = Field(
        "auto", description="python -m app.serve: one process per GPU owns the models, the batcher and the pixel "
        "work, and the HTTP workers hand it 8-bit planes in shared memory; auto: on GPU hosts (docs/settings.md)"
    )
    device_socket: str = Field(
        "", description="set by python -m app.serve for its workers: the device processes' sockets, comma-separated "
        "(a worker uses one); empty: the models run in this process"
    )
    gpu_compose_min_pixels: int = Field(
        65536, ge=0, description="with the colour work beside the model (CUDA, the device process, SR_COMPOSE=auto), "
        "images of fewer LR pixels still compose on the HTTP worker's CPU: a small image's GPU compose costs more "
        "CPU in kernel launches than the compiled CPU compose; 0: every image beside the model"
    )
    png_compress_level: int = Field(1, ge=0, le=9, description="PNG answers: 0–3 fast (ISA-L deflate level), 4–9 smaller (Pillow, zlib level)")
    debug_routes: bool = Field(True, description="serve /kernels/* and /debug/*; false: they answer 404")
    refusal_drain_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="an early refusal (413, 401, 415, 422) first reads and discards up to "
        "this much of the unread body, so clients that send everything before reading get the answer, not a reset"
    )
    refusal_drain_s: float = Field(10.0, ge=0, description="… and for at most this long")
    drain_timeout_s: float = Field(30.0, ge=0, description="on shutdown, how long in-flight work may finish")
    access_log: bool = Field(False, description="uvicorn's per-request log lines (counts and latencies are in /metrics)")
    request_log: bool = Field(
        True, description="one line per request on the app.access logger: request id, status, scale, sizes, stage "
        "times (app/api/access_log.py); false: none"
    )
    host: str = Field("127.0.0.1", description="bind address for `python -m app.serve`")
    port: int = Field(8000, ge=1, le=65535, description="port for `python -m app.serve`")
    workers: int | Literal["auto"] = Field(
        "auto", description="worker processes for `python -m app.serve`; auto: see app.engine.host.workers_for"
    )
    # decode bounds (app/imaging/guards.py, app/imaging/sandbox.py; issue 19)
    max_jpeg_scans: int = Field(100, ge=1, description="most scans in a JPEG (progressive encoders write about 10)")
    max_image_chunks: int = Field(
        20_000, ge=16, description="most JPEG segments, PNG/WebP chunks, GIF blocks or TIFF directory entries"
    )
    max_frames: int = Field(1000, ge=1, description="most frames in a GIF, APNG or WebP (animations are upscaled frame by frame)")
    max_metadata_bytes: int = Field(16 * 1024 * 1024, ge=64 * 1024, description="PNG/WebP metadata chunks together")
    decode_timeout_s: float = Field(10.0, gt=0, description="wall time one decode may take in its worker process")
    decode_memory_mb: int = Field(768, ge=64, description="address space one decode may add to its worker process")
    decode_sandbox_min_pixels: int = Field(
        1024 * 1024, ge=0, description="images over this many pixels decode in a killable worker process within "
        "the decode budget (smaller ones in-process, where the structural checks bound the work); 0: all of them"
    )
    decode_workers: int = Field(
        0, ge=0, le=256, description="most decode worker processes at once (0: 2 per usable core, at least 4)"
    )
    # connection limits for `python -m app.serve` (app/api/http_protocol.py)
    limit_concurrency: int = Field(1024, ge=1, description="connections + tasks at once; beyond it uvicorn answers 503")
    keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this many seconds")
    header_timeout_s: float = Field(10.0, ge=0, description="request headers must arrive within this (0: no limit)")
    body_timeout_s: float = Field(60.0, ge=0, description="the body must arrive within this after the headers (0: no limit)")
    jobs_body_timeout_s: float = Field(
        1800.0, ge=0, description="a POST /jobs body must arrive within this after the headers (0: no limit)"
    )
    max_header_bytes: int = Field(32 * 1024, ge=1024, description="request headers together, in bytes; beyond: 431")
    max_url_bytes: int = Field(8 * 1024, ge=256, description="request target (path and query), in bytes; beyond: 414")
    # jobs: videos and large images in the background (app/jobs, app/video; issue 16)
    jobs_dir: Path = Field(Path(tempfile.gettempdir()) / "espcn-jobs",
                           description="folder of job uploads, results and records (shared by worker processes)")
    jobs_ttl_s: float = Field(24 * 3600.0, gt=0, description="finished jobs' results are kept this long, then 410")
    jobs_max_bytes: int = Field(4 << 30, ge=1 << 20, description="all job files together; beyond it new jobs get 507")
    jobs_max_upload_bytes: int = Field(1 << 30, ge=1024, description="largest job upload; beyond it: 413")
    jobs_max_queued: int = Field(16, ge=1, description="jobs waiting per worker process; beyond it: 503 + Retry-After")
    jobs_concurrency: int = Field(1, ge=1, le=16, description="jobs running at once per worker process")
    jobs_max_duration_s: float = Field(600.0, gt=0, description="longest video accepted; beyond it: 413")
    jobs_max_frames: int = Field(36_000, ge=1, description="most video frames accepted; beyond it: 413 (or the job fails)")
    jobs_max_frame_pixels: int = Field(1920 * 1080, ge=1, description="largest video input frame (width × height)")
    jobs_frames_in_flight: int = Field(4, ge=1, le=64, description="video frames between decode and encode at once")
    jobs_video_memory_mb: int = Field(
        768, ge=64, description="a video job's frames in flight together (about 10 bytes per input and 16 per output "
        "pixel each), reserved before each frame's work: large frames go fewer at a time"
    )
    jobs_audio_buffer_mb: int = Field(
        16, ge=1, description="audio a video job holds before writing it; more before the first video frame: it fails"
    )
    jobs_timeout_s: float = Field(4 * 3600.0, gt=0, description="longest a job may run; beyond it, it fails (timeout)")
    jobs_x264_crf: int = Field(18, ge=0, le=51, description="H.264 (mp4) constant rate factor")
    jobs_x264_preset: str = Field("veryfast", description="x264 preset (ultrafast … veryslow); measured choice: "
                                  "scripts/x264_probe.py, docs/benchmarks.md")
    jobs_video_encoder: Literal["auto", "libx264", "h264_nvenc", "hevc_nvenc"] = Field(
        "auto", description="mp4 encoder: auto = NVENC (h264_nvenc) where it opens, else libx264; a named NVENC "
        "that does not open falls back to libx264 too, and the job's info.output.encoder says so")
    jobs_vp9_crf: int = Field(32, ge=0, le=63, description="VP9 (webm) constant quality")
    # jobs behind a load balancer (app/jobs/redis_store.py; issue 29)
    jobs_redis_url: str = Field(
        "", description="redis://host:port/db: job records, the queue, leases and cancels on Redis, so any replica "
        "answers for any job and runs queued work; SR_JOBS_DIR must then be a folder every replica mounts. "
        "Empty: the jobs stay in SR_JOBS_DIR on this host (needs nothing else)"
    )
    jobs_redis_prefix: str = Field("sr:jobs:", min_length=1, description="prefix of every Redis key of the jobs")
    jobs_lease_s: float = Field(
        30.0, ge=2, description="with Redis: a replica's hold on a job it runs, renewed every third of it; a job "
        "whose replica stopped renewing is taken over (or failed with the reason) within about this long"
    )
    # animated GIF/APNG/WebP uploads, frame by frame (app/pipeline/animated.py; issue 14)
    max_animation_pixels: int = Field(
        8192 * 8192, ge=1, description="largest animation answer: frames × output pixels; beyond it: 413. Also "
        "the memory all animations in flight in a process may hold together: 12 bytes per pixel of this "
        "(768 MiB by default), reserved before decoding; beyond it: 503 + Retry-After"
    )
    # bounded debug views and access control (app/api/routes/debug.py, app/api/security.py; issue 15)
    debug_max_pixels: int = Field(
        512 * 512, ge=64, description="/debug/channels analyses at most this many LR pixels: a larger image is "
        "centre-cropped to it (the answer says so), so one debug request costs a bounded model call"
    )
    api_keys: str = Field(
        "", repr=False, description="comma-separated API keys; empty: no access control. Only their SHA-256 "
        "hashes are kept; /upscale, /jobs*, /kernels/*, /debug/*, /web/config then need one"
    )
    metrics_require_key: bool = Field(False, description="with SR_API_KEYS set, /metrics needs a key too")
    cors_origins: str = Field("", description="comma-separated origins allowed by CORS ('*': any); empty: no CORS")

    @field_validator("workers")
    @classmethod
    def _workers(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError("workers must be 'auto' or at least 1")
        return value

    @field_validator("api_keys")
    @classmethod
    def _hash_api_keys(cls, value: str) -> str:
        return hash_keys(value)  # only the keys' SHA-256 hashes are kept

    @field_validator("overload_status")
    @classmethod
    def _overload_status(cls, value: int) -> int:
        # a field, not Literal[503, 429]: environment strings must coerce ("429" → 429)
        if value not in (429, 503):
            raise ValueError("overload_status must be 503 or 429")
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
