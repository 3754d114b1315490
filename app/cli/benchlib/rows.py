"""One dataclass per kind of result row; :func:`dataclasses.asdict` of each is what ``bench.json`` holds."""

from __future__ import annotations

from dataclasses import dataclass

OK, NOT_AVAILABLE, SKIPPED = "ok", "n/a", "skipped"


@dataclass
class FrameRow:
    """One method on one frame: our model paths (``kind="ours"``) and the peers (``kind="peer"``)."""

    scale: int
    width: int  # LR input
    height: int
    method: str
    kind: str
    status: str  # ok, n/a (failed: see note) or skipped
    median_ms: float | None = None
    min_ms: float | None = None
    max_abs_diff: float | None = None  # vs eager whole-image output; None for peers
    note: str = ""


@dataclass
class LimitRow:
    """The compute bound of one frame: 2·MACs at the machine's measured sgemm rate."""

    scale: int
    width: int
    height: int
    macs: int  # macs_per_lr_pixel · H · W (interior only)
    halo_extra_pct: float  # extra MACs the unpadded convolutions spend on the halo ring
    gflops: float
    limit_ms: float
    best_method: str | None
    best_ms: float | None
    pct_of_limit: float | None  # limit_ms / best_ms · 100


@dataclass
class CodecRow:
    """One image-pipeline stage timed on its own, in-process (Pillow through the service's own functions)."""

    stage: str
    width: int
    height: int
    median_ms: float
    bytes: int | None = None


@dataclass
class RequestRow:
    """One ``POST /upscale`` answered end to end over loopback HTTP, against the model alone on the same frame."""

    format: str
    scale: int
    width: int
    height: int
    median_ms: float
    server_decode_ms: float | None
    server_model_ms: float | None
    server_encode_ms: float | None
    model_eager_ms: float
    model_tiled_ms: float
    ratio_to_eager: float  # end to end / model-only eager
    response_bytes: int
    workers: int = 1  # SR_WORKERS of the server


@dataclass
class ThroughputRow:
    """Concurrent clients against one app instance, next to the bare model on the same images."""

    variant: str
    max_batch: int
    clients: int
    image_side: int  # 0 when ``load`` describes it
    scale: int
    duration_s: float
    ok: int
    errors: int
    req_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    bare_batched_images_per_s: float  # ModelRunner on the same tiles, at its best batch size (the strictest bar)
    bare_best_batch: int  # the batch size that gave bare_batched_images_per_s
    bare_same_batch_images_per_s: float  # ModelRunner, batches of this variant's max_batch
    fraction_of_bare: float  # req_per_s / bare_batched_images_per_s
    # CPU time per request during the load (Linux /proc; None elsewhere): the server process, all threads;
    # the load generator (this process); cores kept busy by both; the bare model's CPU per image at its best batch
    server_cpu_ms_per_request: float | None = None
    client_cpu_ms_per_request: float | None = None
    cores_busy: float | None = None
    bare_cpu_ms_per_image: float | None = None
    load: str = ""  # what each client posts, e.g. "32 × 96² PNG → PNG, ×3"
    workers: int = 1  # SR_WORKERS of the server
    gpu_utilisation_pct: float | None = None  # mean over the load (CUDA, with pynvml)
