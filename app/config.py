"""Every setting, from ``SR_*`` environment variables (pydantic-settings), with documented defaults: the ground floor.

Each setting's default, bounds and meaning live here once: ``docs/settings.md`` is generated from
the fields' descriptions and :data:`SETTING_GROUPS` (``python -m app.cli.settings_doc``), and a test
fails when the committed page differs. Descriptions say what a value means and why; measured
figures stay in ``docs/benchmarks.md`` with their date and command. Everything imports this module
and it imports nothing of the app's, so the launcher (``python -m app.serve``) reads the settings
without importing PyTorch. Built once per process by :func:`get_settings`, never at import time;
tests pass their own :class:`Settings` to ``create_app``.
"""

from __future__ import annotations

import hashlib
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal, NamedTuple

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_STORE = Path(__file__).resolve().parents[1] / "model_store"  # the models this repository ships
TILE_SIZE = 96  # LR tile side: every model call runs tiles of this size, plus the model's halo
MAX_BATCH_LIMIT = 256  # the most tiles per model call the settings allow (the batch-size histogram's top bucket)
# tiles per model call when SR_MAX_BATCH is 0, by device (CUDA) or CPU backend (docs/benchmarks.md)
AUTO_MAX_BATCH = {"cuda": 64, "onnxruntime": 8, "torchscript": 8, "eager": 8}
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
    """Service settings; each field is ``SR_<NAME>`` in the environment.

    The fields follow :data:`SETTING_GROUPS`, one section per concern. A description is one
    line of Markdown (``docs/settings.md`` shows it as written; ``docs/<page>.md#anchor``
    becomes a link there).
    """

    model_config = SettingsConfigDict(env_prefix="SR_", extra="ignore")

    # model: which weights, on which device, through which inference path
    model_store: Path = Field(DEFAULT_STORE, description="folder of model manifests (`*.json`) and safetensors weights")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="`auto`: CUDA when present, else CPU; `cpu` or `cuda` pick one"
    )
    half: bool = Field(
        False, description="fp16 on CUDA (non-finite outputs are recomputed in fp32); ignored on CPU. fp16 rather "
        "than bf16, which was slower and further from fp32 (docs/benchmarks.md#on-a-gpu-nvidia-h200)"
    )
    backend: Literal["auto", "onnxruntime", "torchscript", "eager"] = Field(
        "auto", description="CPU inference path: `auto` = ONNX Runtime (the ESPCN graph built from the loaded "
        "weights; the fastest exact path on CPU), else frozen TorchScript, else eager PyTorch; `onnxruntime`, "
        "`torchscript`, `eager` pick one (a missing or inexact path falls back down that list). Each fast path is "
        "checked against eager at start-up (≤ 1e-4)"
    )
    threads: int = Field(
        0, ge=0, description="CPU inference threads (PyTorch and ONNX Runtime); `0`: PyTorch's default, or each "
        "worker's share of the cores with several workers"
    )

    # engine: tiles, cross-request batches, whole-image calls and the colour work around the model
    tile_size: int = Field(
        TILE_SIZE, ge=8, le=1024, description="LR tile side; every model call runs tiles of this size, plus the "
        "model's halo on each side (4 pixels for the shipped ESPCN models: 104² windows)"
    )
    max_batch: int = Field(
        0, ge=0, le=MAX_BATCH_LIMIT, description="most tiles per model call; `0`: auto "
        "(`app.config.AUTO_MAX_BATCH`): 8 on CPU, where a tile costs no less in bigger batches while "
        "ONNX Runtime's arena keeps the largest batch's activations (and TorchScript's spill the cache), so "
        "bigger batches only cost memory; 64 on CUDA, where batching keeps the GPU busy "
        "(docs/benchmarks.md#figures-behind-the-code)"
    )
    max_delay_ms: float = Field(
        5.0, ge=0, le=10_000, description="longest wait for a fuller batch after the first tile arrives"
    )
    whole_image_max_pixels: int = Field(
        WHOLE_IMAGE_MAX_PIXELS, ge=0, description="images of several tiles up to this many LR pixels run as one "
        "whole-image model call (no halo or overlap work; more memory); `0`: always tiles"
    )
    compose: Literal["auto", "tensor", "pillow"] = Field(
        "auto", description="where the colour work around the model runs: `auto` = tensor code on the GPU when "
        "the model is on CUDA, else the banded Pillow/NumPy compose; `tensor`, `pillow` force one (both give the "
        "same bytes, tested)"
    )
    gpu_compose_min_pixels: int = Field(
        65536, ge=0, description="with the colour work beside the model (CUDA or the device process, "
        "`SR_COMPOSE=auto`), images of fewer LR pixels send only their luma and compose on the HTTP worker's CPU "
        "(the compiled compose): a small image's GPU compose is some fifty kernel launches, which cost more CPU "
        "than the compiled compose, and in the device process that CPU is one GIL shared by every worker "
        "(docs/benchmarks.md#figures-behind-the-code). A first choice, to be set by the device check's figures; "
        "`0`: every image beside the model"
    )
    compose_threads: int = Field(
        0, ge=0, le=64, description="threads composing one big answer band by band; `0`: one per usable core, at "
        "least 2 (with several workers: each worker's share); `1`: no parallel bands"
    )
    compute_nice: int = Field(
        0, ge=0, le=19, description="how far below the event loop ONNX Runtime's own worker threads run (Linux "
        "per-thread nice, relative to the main thread; raising it needs no privilege); `0`: the same priority. "
        "Only those native threads, which never hold the GIL: lowering the Python threads too (inference caller, "
        "codec and compose pools) cost throughput, a lowered thread preempted while holding the GIL stalling the "
        "event loop. Off by default: since refusals go out before the body is drained, it made no measurable "
        "difference to a burst's refusals (docs/benchmarks.md#figures-behind-the-code)"
    )

    # processes: what python -m app.serve starts, how they share the cores, and how they stop
    workers: int | Literal["auto"] = Field(
        "auto", description="worker processes of `python -m app.serve`: `auto` = one per usable core on a CPU host "
        "(whole-image calls borrow the cores the other processes leave idle, `SR_CORE_TOKENS_DIR`), one per core "
        "pair on a GPU host (at most 8), counting the cgroup's CPU quota (`app.engine.host.workers_for`); or a "
        "number ≥ 1. With more than one, each gets its share of the cores for `SR_THREADS`, `SR_CODEC_THREADS` and "
        "`SR_COMPOSE_THREADS` (those left at 0) and Prometheus multiprocess mode is switched on"
    )
    device_process: Literal["auto", "on", "off"] = Field(
        "auto", description="`python -m app.serve`: `on` = one device process per GPU (or one on the CPU) holds the "
        "models, the cross-request batcher and the pixel work (luma, model, chroma, compose), and the HTTP workers "
        "hand it 8-bit planes in shared memory (an anonymous memfd passed over a Unix socket: nothing pickled, "
        "nothing left in `/dev/shm`); `off` = a model per worker; `auto` = on with a GPU (one CUDA context owns "
        "it, and every worker's tiles share its batches), off on CPU hosts, where a model per worker, lending idle "
        "cores, measured best (docs/benchmarks.md#figures-behind-the-code). A killed device process is restarted, "
        "as is one whose GPU failed for good (docs/operations.md#device-lost); meanwhile requests get 503 "
        "`worker_restarted` and `/readyz` says not ready (`app/device_process.py`)"
    )
    device_socket: str = Field(
        "", description="set by `python -m app.serve` for its workers: the device processes' sockets, "
        "comma-separated (a worker uses one, by process id); empty: the models run in the worker"
    )
    core_tokens_dir: Path | None = Field(
        None, description="folder of per-core lock files shared by the worker processes: a whole-image model call "
        "runs on every core only when it can lock them all, tile batches hold one (`app/engine/core_tokens.py`). "
        "`python -m app.serve` makes one in the temp folder for CPU workers and removes it at exit; set it only "
        "to share cores with processes started some other way"
    )
    drain_timeout_s: float = Field(30.0, ge=0, description="on shutdown, how long admitted work may finish; "
                                   "then jobs still running go back to a shared queue (Redis) or fail")

    # limits: what a request may ask for, and the answer when the service is full
    max_queue_tiles: int = Field(
        4096, ge=1, description="pending tiles admitted at most; beyond it: 503 + `Retry-After`. A JPEG or PNG "
        "upload takes its room from its first bytes, while the rest of the body arrives (held until its request "
        "ends or its client hangs up)"
    )
    overload_status: int = Field(503, description="status when the queue is full: `503` or `429`")
    retry_after_s: int = Field(1, ge=0, description="`Retry-After` seconds sent with an overload answer")
    request_timeout_s: float = Field(
        60.0, gt=0, description="per-request deadline, re-checked when tiles are dequeued; past it: 504"
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body; beyond it: 413")
    max_input_pixels: int = Field(4096 * 4096, ge=1, description="largest input image (width × height)")
    max_output_pixels: int = Field(8192 * 8192, ge=1, description="largest output image (width × height)")
    max_animation_pixels: int = Field(
        8192 * 8192, ge=1, description="largest animated answer (GIF, APNG, WebP, upscaled frame by frame): "
        "frames × output pixels; beyond it: 413. Also the memory all animations in flight in a process may hold "
        "together: 12 bytes per pixel of this (768 MiB by default), reserved before decoding; beyond it: 503 + "
        "`Retry-After`"
    )

    # codecs: decoding uploads within bounds, encoding answers
    codec_threads: int = Field(
        0, ge=0, le=64, description="threads decoding and encoding images off the event loop; `0`: one per usable "
        "CPU core, at least 2 (with several workers: each worker's share)"
    )
    png_compress_level: int = Field(
        1, ge=0, le=9, description="PNG answers: 0–3 use the fast writer (Up filter + ISA-L deflate at that level), "
        "4–9 Pillow's adaptive filters + zlib at that level (smaller, much slower: "
        "docs/benchmarks.md#before-the-pipeline-layer-session-4-2026-11-26)"
    )
    device_jpeg: Literal["auto", "on", "off"] = Field(
        "auto", description="JPEG uploads answered as JPEG decode and encode on the models' device, with "
        "torchvision (the `gpu` extra: nvJPEG on a GPU), so the frame crosses the bus as compressed bytes each way; "
        "what it cannot take as the CPU path would (progressive, greyscale, CMYK…: `app/engine/jpeg.py`), and "
        "images under `SR_GPU_COMPOSE_MIN_PIXELS`, go to Pillow as before. `auto`: on where the models run on "
        "CUDA and nvJPEG works; `on`: wherever torchvision's codec works (on a CPU its libjpeg-turbo writes Pillow's bytes: for tests); `off`: Pillow always"
    )
    max_jpeg_scans: int = Field(
        100, ge=1, description="most scans in a JPEG (progressive encoders write about 10; each scan is a pass over "
        "the image); beyond: 422 `image_too_complex`"
    )
    max_image_chunks: int = Field(
        20_000, ge=16, description="most JPEG segments, PNG/WebP chunks, GIF blocks or TIFF directory entries; "
        "beyond: 422 `image_too_complex`"
    )
    max_frames: int = Field(
        1000, ge=1, description="most frames in a GIF, APNG or WebP (animations are upscaled frame by frame); "
        "beyond: 422 `image_too_complex`"
    )
    max_metadata_bytes: int = Field(
        16 * 1024 * 1024, ge=64 * 1024, description="PNG/WebP metadata chunks together; beyond: 422 "
        "`image_too_complex`"
    )
    decode_sandbox_min_pixels: int = Field(
        1024 * 1024, ge=0, description="images over this many pixels decode in a killable worker process within "
        "the decode budget (`SR_DECODE_TIMEOUT_S`, `SR_DECODE_MEMORY_MB`); smaller ones in-process, where the "
        "structural checks above bound the work; `0`: all of them"
    )
    decode_timeout_s: float = Field(10.0, gt=0, description="wall time one sandboxed decode may take")
    decode_memory_mb: int = Field(768, ge=64, description="address space one sandboxed decode may add to its worker")
    decode_workers: int = Field(
        0, ge=0, le=256, description="most decode worker processes at once; `0`: 2 per usable core, at least 4"
    )

    # jobs: videos and large images in the background (app/jobs; issues 16, 29)
    jobs_dir: Path = Field(
        Path(tempfile.gettempdir()) / "espcn-jobs", description="folder of job uploads, results and records; "
        "shared by the worker processes, kept across restarts (with `SR_JOBS_REDIS_URL`: a volume every replica "
        "mounts)"
    )
    jobs_ttl_s: float = Field(
        24 * 3600.0, gt=0, description="finished jobs are kept this long; then their result answers 410"
    )
    jobs_max_bytes: int = Field(
        4 << 30, ge=1 << 20, description="all job files together; a new job beyond it gets 507 (with Redis: across "
        "all replicas)"
    )
    jobs_max_upload_bytes: int = Field(1 << 30, ge=1024, description="largest job upload; beyond it: 413")
    jobs_max_queued: int = Field(
        16, ge=1, description="jobs waiting per worker process; beyond it: 503 + `Retry-After` (with Redis: across "
        "all replicas)"
    )
    jobs_concurrency: int = Field(1, ge=1, le=16, description="jobs running at once per worker process")
    jobs_timeout_s: float = Field(
        4 * 3600.0, gt=0, description="longest a job may run (image jobs too); beyond it the job fails with "
        "`timeout`. At the defaults, the longest video accepted must be upscaled at 36000 frames in 4 h (2.5 a "
        "second) to finish within it"
    )
    jobs_redis_url: str = Field(
        "", description="`redis://host:6379/0`: job records, the queue, leases with heartbeats and cancels on Redis, "
        "so every replica answers `GET`/`DELETE /jobs/{id}` and `/result` for any job and runs queued work when it "
        "has room. Uploads and results stay files in `SR_JOBS_DIR`, which must then be a volume every replica "
        "mounts (docs/operations.md#jobs-on-several-replicas); `SR_JOBS_MAX_QUEUED` and `SR_JOBS_MAX_BYTES` then "
        "hold for all replicas together. Needs the `redis` extra (`pip install -e .[redis]`; the image has it). "
        "Empty: the jobs stay in `SR_JOBS_DIR` on this host, nothing else needed"
    )
    jobs_redis_prefix: str = Field(
        "sr:jobs:", min_length=1, description="prefix of every Redis key the jobs use (several services on one Redis)"
    )
    jobs_lease_s: float = Field(
        30.0, ge=2, description="with Redis: a replica's hold on a job it uploads or runs, renewed every third of it; "
        "when the replica stops renewing (killed, cut off), another replica takes the job over from the start "
        "(once) or fails it with the reason, within about this long"
    )

    # video jobs: limits, memory and encoders (app/video; issues 16, 28, 32)
    jobs_max_duration_s: float = Field(600.0, gt=0, description="longest video accepted; beyond it: 413")
    jobs_max_frames: int = Field(
        36_000, ge=1, description="most video frames accepted; beyond it: 413, and the job fails if decoding finds "
        "more"
    )
    jobs_max_frame_pixels: int = Field(
        1920 * 1080, ge=1, description="largest video input frame (width × height); beyond it: 413, and every "
        "frame is checked again while decoding"
    )
    jobs_frames_in_flight: int = Field(
        4, ge=1, le=64, description="video frames between decode and encode at once: bounds memory and how long a "
        "concurrent `/upscale` waits behind a video"
    )
    jobs_video_memory_mb: int = Field(
        768, ge=64, description="what a video job's encoder and frames in flight may hold together: the encoder's "
        "estimate first (libx264: bytes per output pixel by frame size, leaner over 1080p, "
        "`app/video/encoders.py`), then ≈ 10 bytes per input and 16 per output pixel per frame, reserved before "
        "each frame's work, so large frames go fewer at a time (1080p: 4 frames at ×2, 1 at ×3 and ×4). One frame "
        "always goes, so a 1080p ×4 job holds about 1 GB whatever this says "
        "(docs/benchmarks.md#video-encoder-2026-12-04). A frame of another size than the first fails the job"
    )
    jobs_audio_buffer_mb: int = Field(
        16, ge=1, description="audio a video job holds before it is written; past it the decode waits for the "
        "encoder, and a file with more than this before its first video frame fails"
    )
    jobs_video_encoder: Literal["auto", "libx264", "h264_nvenc", "hevc_nvenc"] = Field(
        "auto", description="MP4 encoder: `auto` = `h264_nvenc` where this FFmpeg has it and it opens at the "
        "output's size (probed once per process), else `libx264`; `libx264`, `h264_nvenc` or `hevc_nvenc` by name "
        "(an NVENC that does not open falls back to libx264 too). The job's `info.output.encoder` says which, and "
        "why"
    )
    jobs_x264_crf: int = Field(18, ge=0, le=51, description="H.264 (MP4) constant rate factor: lower is better quality")
    jobs_x264_preset: str = Field(
        "veryfast", description="x264 preset (`ultrafast` … `veryslow`), chosen by `scripts/x264_probe.py` for "
        "smaller files at little more CPU (docs/benchmarks.md#video-encoder-2026-12-04); output frames over 1080p "
        "add `tune=zerolatency` (no B-frames or lookahead: less than half the encoder's memory), over 4K "
        "`subme=0` too"
    )
    jobs_vp9_crf: int = Field(32, ge=0, le=63, description="VP9 (WebM) constant quality: lower is better quality")

    # HTTP connections: the connection layer of python -m app.serve (app/api/http_protocol.py)
    host: str = Field("127.0.0.1", description="bind address for `python -m app.serve` (`make serve`)")
    port: int = Field(8000, ge=1, le=65535, description="port for `python -m app.serve` (`make serve`)")
    limit_concurrency: int = Field(
        1024, ge=1, description="connections + tasks at once per process; beyond it uvicorn answers 503. When a new "
        "connection finds the slots full, the longest-idle connections (keep-alive, or nothing sent yet) are "
        "closed first; `GET`/`HEAD` `/healthz` and `/readyz` are never refused for it"
    )
    keep_alive_s: int = Field(5, ge=1, description="idle keep-alive connections are closed after this many seconds")
    header_timeout_s: float = Field(
        10.0, ge=0, description="request headers must arrive within this of the connection opening (`0`: no limit)"
    )
    body_timeout_s: float = Field(
        60.0, ge=0, description="the body must arrive within this after the headers (`0`: no limit); past it: 408 "
        "JSON (`body_timeout`) when no answer has begun, else the connection closes"
    )
    jobs_body_timeout_s: float = Field(
        1800.0, ge=0, description="the same for `POST /jobs` uploads, which may be far larger (a 90 MB upload at "
        "1.2 MB/s takes 75 s); `0`: no limit"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request headers together (after the request line); beyond: 431 JSON "
        "(`headers_too_large`), connection closed"
    )
    max_url_bytes: int = Field(
        8 * 1024, ge=256, description="the request target (path and query); beyond: 414 JSON (`url_too_long`), "
        "connection closed"
    )
    refusal_drain_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="an early refusal (413 from `Content-Length`, 401, 415, 422 on the "
        "query, 503 from the first bytes) is sent at once, and the connection then reads and discards up to this "
        "much of the unread body, for at most `SR_REFUSAL_DRAIN_S`, before it closes, so clients that send "
        "everything before reading (urllib, `requests`) get the JSON instead of a connection reset (the connection "
        "layer's own refusals linger for at most 2 s)"
    )
    refusal_drain_s: float = Field(
        10.0, ge=0, description="how long an early refusal's connection may read and discard the unread body "
        "(`SR_REFUSAL_DRAIN_BYTES`); `0`: it closes at once"
    )

    # security: access control, CORS and the debug routes (app/api/security.py, app/api/routes/debug.py; issue 15)
    api_keys: str = Field(
        "", repr=False, description="comma-separated API keys (or `sha256:<hex>` of them); empty: no access "
        "control. Only their SHA-256 hashes are kept; `/upscale`, `/jobs*`, `/kernels/*`, `/debug/*` and "
        "`/web/config` then need one"
    )
    metrics_require_key: bool = Field(False, description="with `SR_API_KEYS` set, `/metrics` needs a key too")
    cors_origins: str = Field(
        "", description="comma-separated origins allowed by CORS (`*`: any); empty: no CORS headers"
    )
    debug_routes: bool = Field(True, description="serve `/kernels/*` and `/debug/*`; `false`: they answer 404")
    debug_max_pixels: int = Field(
        512 * 512, ge=64, description="`/debug/channels` analyses at most this many LR pixels: a larger image is "
        "centre-cropped to it (the answer says what was analysed), so one debug request costs a bounded model call"
    )

    # observability: logs (counts and latencies are in /metrics)
    access_log: bool = Field(
        False, description="uvicorn's per-request log lines (counts and latencies are in `/metrics`)"
    )
    request_log: bool = Field(
        True, description="one line per request (`app.access` logger, stderr): request id (also the `X-Request-Id` "
        "answer header; a client's own is kept), method, path, status, scale, sizes width×height, bytes, stage "
        "times and total (`app/api/access_log.py`); `/healthz`, `/readyz`, `/metrics` are left out. `false`: none"
    )

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


class SettingGroup(NamedTuple):
    """One concern's settings: a heading of ``docs/settings.md``, a line on why they go together, the fields."""

    title: str
    about: str
    fields: tuple[str, ...]


# Every field in exactly one group, in the class's order (tests/test_settings_doc.py holds both).
SETTING_GROUPS: tuple[SettingGroup, ...] = (
    SettingGroup(
        "Model", "Which models are served, on which device, and through which inference path.",
        ("model_store", "device", "half", "backend", "threads"),
    ),
    SettingGroup(
        "Engine", "How the model is fed: fixed-size tiles batched across requests, whole-image calls for mid-sized "
        "images, and where the colour work around the model runs.",
        ("tile_size", "max_batch", "max_delay_ms", "whole_image_max_pixels", "compose", "gpu_compose_min_pixels",
         "compose_threads", "compute_nice"),
    ),
    SettingGroup(
        "Processes", "What `python -m app.serve` starts (worker processes, a device process per GPU), how they "
        "share the cores, and how they stop.",
        ("workers", "device_process", "device_socket", "core_tokens_dir", "drain_timeout_s"),
    ),
    SettingGroup(
        "Limits", "What one request may ask for, and the answer when the service is full: a refusal comes early, "
        "with a status and a reason, rather than as a slow answer.",
        ("max_queue_tiles", "overload_status", "retry_after_s", "request_timeout_s", "max_body_bytes",
         "max_input_pixels", "max_output_pixels", "max_animation_pixels"),
    ),
    SettingGroup(
        "Codecs", "Decoding uploads and encoding answers. A decode is bounded twice: structural limits checked "
        "before any pixel is decoded (`app/imaging/guards.py`), and a killable sandbox process for large images "
        "(`app/imaging/sandbox.py`).",
        ("codec_threads", "png_compress_level", "device_jpeg", "max_jpeg_scans", "max_image_chunks", "max_frames",
         "max_metadata_bytes", "decode_sandbox_min_pixels", "decode_timeout_s", "decode_memory_mb",
         "decode_workers"),
    ),
    SettingGroup(
        "Jobs", "`POST /jobs`: videos and large images processed in the background, their files in a folder, their "
        "records on this host or, for several replicas, on Redis.",
        ("jobs_dir", "jobs_ttl_s", "jobs_max_bytes", "jobs_max_upload_bytes", "jobs_max_queued", "jobs_concurrency",
         "jobs_timeout_s", "jobs_redis_url", "jobs_redis_prefix", "jobs_lease_s"),
    ),
    SettingGroup(
        "Video jobs", "A video job is decoded, upscaled and encoded frame by frame, within these limits and this "
        "memory.",
        ("jobs_max_duration_s", "jobs_max_frames", "jobs_max_frame_pixels", "jobs_frames_in_flight",
         "jobs_video_memory_mb", "jobs_audio_buffer_mb", "jobs_video_encoder", "jobs_x264_crf", "jobs_x264_preset",
         "jobs_vp9_crf"),
    ),
    SettingGroup(
        "HTTP", "The connection layer of `python -m app.serve` (uvicorn with `app/api/http_protocol.py`): bind "
        "address, connection slots, timeouts, head sizes, and how a refused upload's connection ends. Its refusals "
        "are JSON in the service's error shape.",
        ("host", "port", "limit_concurrency", "keep_alive_s", "header_timeout_s", "body_timeout_s",
         "jobs_body_timeout_s", "max_header_bytes", "max_url_bytes", "refusal_drain_bytes", "refusal_drain_s"),
    ),
    SettingGroup(
        "Security", "Who may call what: API keys, CORS, and the debug routes and their bounds.",
        ("api_keys", "metrics_require_key", "cors_origins", "debug_routes", "debug_max_pixels"),
    ),
    SettingGroup(
        "Observability", "Logs. Counts and latencies are always in `/metrics`.",
        ("access_log", "request_log"),
    ),
)


@lru_cache
def get_settings() -> Settings:
    return Settings()
