"""Prometheus metrics of the service. Names, labels and buckets are a public contract.

Dashboards (``deploy/grafana/dashboards/sr.json``), alerts and autoscalers read these
series, so rename nothing. Every metric is described in :data:`METRIC_DOCS`, keyed by
the name as exposed (counters with their ``_total``):

=================================  ==========================  =============================================
metric                             labels                      one observation / increment per …
=================================  ==========================  =============================================
sr_requests_total                  endpoint, scale, status     answer sent, errors included
sr_request_duration_seconds        endpoint                    answer, end to end
sr_queue_wait_seconds              —                           tile, from enqueue to its batch starting
sr_inference_duration_seconds      scale, device               model call (one batch)
sr_batch_size                      —                           model call: tiles in the batch
sr_batch_fill_ratio                —                           model call: tiles / max_batch
sr_queue_depth                     —                           (gauge) tiles waiting now
sr_input_pixels_total              scale                       LR pixels accepted
sr_output_pixels_total             scale                       SR pixels produced
sr_rejected_total                  reason                      refused request (see ``REJECT_REASONS``)
sr_model_info                      name, scale, device,        (gauge = 1) model loaded
                                   psnr, ssim, dataset
sr_model_parameters                scale                       (gauge) learnable parameters of that model
sr_stage_duration_seconds          stage                       decode/compose/encode per request, queue per tile,
                                                               inference per model call
sr_jobs_total                      kind, state                 job entering a state (see ``JOB_STATES``)
sr_jobs_active                     state                       (gauge) this process's jobs queued / running now
sr_jobs_backend                    state                       (gauge) jobs queued / running in the whole jobs
                                                               backend, every replica (same value on each)
sr_video_frames_total              scale                       video frame super-resolved and encoded
sr_worker_restarts_total           —                           batching worker restarted after it died
sr_device_lost_total               —                           device failed for good (a sticky CUDA error): its
                                                               process exits and is started again
sr_model_fallbacks_total           reason                      model call that left its fast path (``FALLBACK_REASONS``)
sr_jpeg_codec_total                codec                       JPEG → JPEG answer with device JPEG on: ``device``
                                                               or ``pillow`` (the fallback, see ``JPEG_CODECS``)
sr_process_resident_bytes          role (+ pid)                (gauge) the process's resident memory, sampled
                                                               every few seconds (``PROCESS_ROLES``)
sr_device_memory_bytes             device, kind (+ pid)        (gauge) GPU memory seen by a process that holds
                                                               models there (``DEVICE_MEMORY_KINDS``); none on CPU
=================================  ==========================  =============================================

In multiprocess mode the two memory gauges carry a ``pid`` label too (``liveall``): a leak
shows in the process that has it, and a process that dies takes its series with it.

Labels stay bounded: ``scale`` is ``"1"``…``"8"`` (the manifests' range) or ``""`` (invalid),
``endpoint`` must be a route template, never a raw path, and reasons and stages are
checked against fixed sets, so no client input can mint new series.

Multiprocess mode (several worker processes behind one port)
------------------------------------------------------------
Each worker process would otherwise have its own registry and a scrape would see one
worker at random (kserve#2979). Set ``PROMETHEUS_MULTIPROC_DIR`` to an empty writable
directory *before the server starts*: prometheus-client picks its value store when it is
first imported, and every process then writes mmap files there. **Wipe the directory
between runs** — files left by earlier pids are merged into counters and histograms.
:func:`render` then merges all files through a fresh ``MultiProcessCollector``. Every
gauge declares a ``live*`` ``multiprocess_mode``, so only living processes count — once
their dead are marked: uvicorn's supervisor has no exit hook, so before each merge
:func:`forget_dead_processes` calls ``mark_process_dead`` for every pid whose gauge files
are there but whose process is gone (SIGKILLed, OOM-killed, exited), and a replaced
worker's ``sr_queue_depth`` or ``sr_jobs_active`` no longer adds to the living's for good.
(gunicorn can also call :func:`mark_process_dead` from its ``child_exit`` hook.) Info/Enum
metrics do not work in this mode, hence ``sr_model_info`` is a Gauge set to 1. Separate containers
(compose ``scaled`` profile) need none of this: Prometheus scrapes each replica.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics import MetricWrapperBase

from app.config import MAX_BATCH_LIMIT
from app.engine.observer import FALLBACK_REASONS
from app.store.manifest import MAX_SCALE, MIN_SCALE

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")

# Rejection reasons (label values of sr_rejected_total).
QUEUE_FULL = "queue_full"
TOO_LARGE = "too_large"
TIMEOUT = "timeout"
BAD_INPUT = "bad_input"
CLIENT_GONE = "client_gone"
REJECT_REASONS = (QUEUE_FULL, TOO_LARGE, TIMEOUT, BAD_INPUT, CLIENT_GONE)

# Who answered a JPEG → JPEG request with device JPEG on (label values of sr_jpeg_codec_total).
JPEG_CODECS = ("device", "pillow")

# Who a process is (label values of sr_process_resident_bytes): an HTTP worker, or the device process
PROCESS_ROLES = ("worker", "device")
# What sr_device_memory_bytes measures: this process's tensors, its caching allocator's hold, the device's free and total
DEVICE_MEMORY_KINDS = ("allocated", "reserved", "free", "total")

# Stages (label values of sr_stage_duration_seconds).
STAGE_DECODE = "decode"
STAGE_COMPOSE = "compose"
STAGE_ENCODE = "encode"
STAGE_QUEUE = "queue"
STAGE_INFERENCE = "inference"
STAGES = (STAGE_DECODE, STAGE_COMPOSE, STAGE_ENCODE, STAGE_QUEUE, STAGE_INFERENCE)

# Jobs (label values of sr_jobs_total / sr_jobs_active).
JOB_KINDS = ("video", "image")
JOB_STATES = ("queued", "running", "done", "failed", "cancelled")
JOB_ACTIVE_STATES = ("queued", "running")

KNOWN_SCALES = tuple(str(s) for s in range(MIN_SCALE, MAX_SCALE + 1))  # any scale a manifest may declare


def power_of_two_buckets(limit: int) -> tuple[float, ...]:
    """``1, 2, 4, …`` up to and including the first power of two ≥ ``limit``."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    buckets = [1.0]
    while buckets[-1] < limit:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets)


# Boundaries sit on plausible latency objectives (0.1, 0.25, 0.5, 1, 2.5 s) so SLO ratios
# read straight off a bucket; the top one is the 60 s request deadline.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
QUEUE_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Fixed at the settings' ceiling, not derived from the running max_batch: replicas with
# different settings must share boundaries for `sum by (le)` to be meaningful.
BATCH_SIZE_BUCKETS = power_of_two_buckets(MAX_BATCH_LIMIT)
FILL_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

_M = TypeVar("_M", bound=MetricWrapperBase)


def _metric(cls: type[_M], name: str, documentation: str, labelnames: tuple[str, ...] = (), **kwargs: object) -> _M:
    """Create a metric once per process; a second import (reload, other path) gets the same object.

    Without this, re-executing the module raises "Duplicated timeseries in CollectorRegistry".
    """
    existing = REGISTRY._names_to_collectors.get(name)  # no public lookup exists
    if existing is not None:
        if not isinstance(existing, cls):
            raise TypeError(f"{name} is already registered as {type(existing).__name__}")
        return existing
    return cls(name, documentation, labelnames, **kwargs)


METRIC_DOCS: dict[str, str] = {
    "sr_requests_total": "Answers sent, errors included; status is the HTTP code, scale '' when unknown.",
    "sr_request_duration_seconds": "End-to-end time from request received to answer sent, per endpoint.",
    "sr_queue_wait_seconds": "Time a tile waits in the batch queue before its batch starts running.",
    "sr_inference_duration_seconds": "Wall time of one model call (one batch of tiles), per scale and device.",
    "sr_batch_size": "Tiles per model call; mean = rate(_sum) / rate(_count).",
    "sr_batch_fill_ratio": "Tiles per model call divided by max_batch; low values mean batching rarely pays.",
    "sr_queue_depth": "Tiles waiting in the queue now; the best autoscaling signal.",
    "sr_input_pixels_total": "Low-resolution pixels accepted for upscaling.",
    "sr_output_pixels_total": "Super-resolved pixels produced.",
    "sr_rejected_total": "Requests refused, by reason: " + ", ".join(REJECT_REASONS) + ".",
    "sr_model_info": "1 per loaded model; labels carry its name, device and validation PSNR/SSIM on dataset.",
    "sr_model_parameters": "Learnable parameters of the model served at each scale.",
    "sr_stage_duration_seconds": "Time per stage: decode/compose/encode per request, queue per tile, inference per model call.",
    "sr_jobs_total": "Jobs entering each state (queued, running, done, failed, cancelled), by kind (video, image).",
    "sr_jobs_active": "Jobs of this process queued or running now, by state (summed over live worker processes).",
    "sr_jobs_backend": "Jobs queued or running now in the whole jobs backend (every replica with SR_JOBS_REDIS_URL; "
    "every process of the host without), by state: each replica exports the same value, so aggregate with max.",
    "sr_video_frames_total": "Video frames super-resolved and encoded by jobs, per scale.",
    "sr_worker_restarts_total": "Times the batching worker died and its supervisor restarted it (0 when healthy).",
    "sr_device_lost_total": "Times the device failed with an error every later call would repeat (a sticky CUDA "
                            "error) and the process holding it had to restart (0 when healthy).",
    "sr_model_fallbacks_total": "Model calls that left their fast path, by reason: half_nonfinite (fp16 overflowed, "
    "recomputed in fp32), cuda_oom (the GPU ran out of memory: the batch was split, a lone tile ran on the CPU).",
    "sr_jpeg_codec_total": "JPEG uploads answered as JPEG while device JPEG is on (SR_DEVICE_JPEG), by the codec that "
    "did it: device (decode and encode beside the model), or pillow (the upload needed the CPU path: progressive, "
    "greyscale, CMYK...).",
    "sr_process_resident_bytes": "Resident memory of each process (role worker: an HTTP worker; device: the device "
    "process), sampled every few seconds; with several processes each has its pid label.",
    "sr_device_memory_bytes": "GPU memory, sampled every few seconds by each process holding models on a GPU: "
    "allocated (its tensors), reserved (held by its caching allocator), free and total (the whole device's).",
}

REQUESTS = _metric(Counter, "sr_requests_total", METRIC_DOCS["sr_requests_total"], ("endpoint", "scale", "status"))
REQUEST_DURATION = _metric(
    Histogram,
    "sr_request_duration_seconds",
    METRIC_DOCS["sr_request_duration_seconds"],
    ("endpoint",),
    buckets=REQUEST_BUCKETS,
)
QUEUE_WAIT = _metric(
    Histogram, "sr_queue_wait_seconds", METRIC_DOCS["sr_queue_wait_seconds"], buckets=QUEUE_WAIT_BUCKETS
)
INFERENCE_DURATION = _metric(
    Histogram,
    "sr_inference_duration_seconds",
    METRIC_DOCS["sr_inference_duration_seconds"],
    ("scale", "device"),
    buckets=INFERENCE_BUCKETS,
)
BATCH_SIZE = _metric(Histogram, "sr_batch_size", METRIC_DOCS["sr_batch_size"], buckets=BATCH_SIZE_BUCKETS)
BATCH_FILL_RATIO = _metric(
    Histogram, "sr_batch_fill_ratio", METRIC_DOCS["sr_batch_fill_ratio"], buckets=FILL_RATIO_BUCKETS
)
QUEUE_DEPTH = _metric(Gauge, "sr_queue_depth", METRIC_DOCS["sr_queue_depth"], multiprocess_mode="livesum")
INPUT_PIXELS = _metric(Counter, "sr_input_pixels_total", METRIC_DOCS["sr_input_pixels_total"], ("scale",))
OUTPUT_PIXELS = _metric(Counter, "sr_output_pixels_total", METRIC_DOCS["sr_output_pixels_total"], ("scale",))
REJECTED = _metric(Counter, "sr_rejected_total", METRIC_DOCS["sr_rejected_total"], ("reason",))
MODEL_INFO = _metric(
    Gauge,
    "sr_model_info",
    METRIC_DOCS["sr_model_info"],
    ("name", "scale", "device", "psnr", "ssim", "dataset"),
    multiprocess_mode="livemax",
)
MODEL_PARAMETERS = _metric(
    Gauge, "sr_model_parameters", METRIC_DOCS["sr_model_parameters"], ("scale",), multiprocess_mode="livemax"
)
STAGE_DURATION = _metric(
    Histogram, "sr_stage_duration_seconds", METRIC_DOCS["sr_stage_duration_seconds"], ("stage",), buckets=STAGE_BUCKETS
)
JOBS = _metric(Counter, "sr_jobs_total", METRIC_DOCS["sr_jobs_total"], ("kind", "state"))
JOBS_ACTIVE = _metric(Gauge, "sr_jobs_active", METRIC_DOCS["sr_jobs_active"], ("state",), multiprocess_mode="livesum")
JOBS_BACKEND = _metric(Gauge, "sr_jobs_backend", METRIC_DOCS["sr_jobs_backend"], ("state",),
                       multiprocess_mode="livemax")
VIDEO_FRAMES = _metric(Counter, "sr_video_frames_total", METRIC_DOCS["sr_video_frames_total"], ("scale",))
WORKER_RESTARTS = _metric(Counter, "sr_worker_restarts_total", METRIC_DOCS["sr_worker_restarts_total"])
DEVICE_LOST = _metric(Counter, "sr_device_lost_total", METRIC_DOCS["sr_device_lost_total"])
MODEL_FALLBACKS = _metric(Counter, "sr_model_fallbacks_total", METRIC_DOCS["sr_model_fallbacks_total"], ("reason",))
JPEG_CODEC = _metric(Counter, "sr_jpeg_codec_total", METRIC_DOCS["sr_jpeg_codec_total"], ("codec",))
PROCESS_RESIDENT = _metric(Gauge, "sr_process_resident_bytes", METRIC_DOCS["sr_process_resident_bytes"], ("role",),
                           multiprocess_mode="liveall")
DEVICE_MEMORY = _metric(Gauge, "sr_device_memory_bytes", METRIC_DOCS["sr_device_memory_bytes"], ("device", "kind"),
                        multiprocess_mode="liveall")
# Every job series exists from the start at 0, so rate() and absent() need no first event.
for _kind in JOB_KINDS:
    for _state in JOB_STATES:
        JOBS.labels(_kind, _state)
for _state in JOB_ACTIVE_STATES:
    JOBS_ACTIVE.labels(_state)
    JOBS_BACKEND.labels(_state)
for _scale in KNOWN_SCALES:
    VIDEO_FRAMES.labels(_scale)
for _codec in JPEG_CODECS:
    JPEG_CODEC.labels(_codec)
for _reason in FALLBACK_REASONS:
    MODEL_FALLBACKS.labels(_reason)

ALL_METRICS: tuple[MetricWrapperBase, ...] = (
    REQUESTS,
    REQUEST_DURATION,
    QUEUE_WAIT,
    INFERENCE_DURATION,
    BATCH_SIZE,
    BATCH_FILL_RATIO,
    QUEUE_DEPTH,
    INPUT_PIXELS,
    OUTPUT_PIXELS,
    REJECTED,
    MODEL_INFO,
    MODEL_PARAMETERS,
    STAGE_DURATION,
    JOBS,
    JOBS_ACTIVE,
    JOBS_BACKEND,
    VIDEO_FRAMES,
    WORKER_RESTARTS,
    DEVICE_LOST,
    MODEL_FALLBACKS,
    JPEG_CODEC,
    PROCESS_RESIDENT,
    DEVICE_MEMORY,
)


def scale_label(scale: int | str | None) -> str:
    """``"2"``/``"3"``/``"4"``; anything else (unknown, invalid) is ``""`` so clients cannot mint series."""
    text = "" if scale is None else str(scale).strip()
    return text if text in KNOWN_SCALES else ""


def observe_request(endpoint: str, scale: int | str | None, status: int, seconds: float) -> None:
    """Count one answer and its end-to-end time; call once per response, errors included."""
    REQUESTS.labels(endpoint, scale_label(scale), str(int(status))).inc()
    REQUEST_DURATION.labels(endpoint).observe(seconds)


def reject(reason: str) -> None:
    """Count a refused request; ``reason`` must be one of :data:`REJECT_REASONS`."""
    if reason not in REJECT_REASONS:
        raise ValueError(f"unknown rejection reason {reason!r}; expected one of {REJECT_REASONS}")
    REJECTED.labels(reason).inc()


def observe_stage(stage: str, seconds: float) -> None:
    """Record time spent in one of :data:`STAGES`."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    STAGE_DURATION.labels(stage).observe(seconds)


@contextmanager
def time_stage(stage: str) -> Iterator[None]:
    """Time the ``with`` body as ``stage`` (also when it raises: failed decodes cost time too)."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
    start = time.perf_counter()
    try:
        yield
    finally:
        STAGE_DURATION.labels(stage).observe(time.perf_counter() - start)


def observe_queue_wait(seconds: float) -> None:
    """One tile's wait from enqueue to its batch starting (feeds the queue histogram and the queue stage)."""
    QUEUE_WAIT.observe(seconds)
    STAGE_DURATION.labels(STAGE_QUEUE).observe(seconds)


def observe_batch(*, scale: int | str, device: str, tiles: int, max_batch: int, seconds: float) -> None:
    """One model call: its time, its size and how full it was."""
    INFERENCE_DURATION.labels(scale_label(scale), device).observe(seconds)
    STAGE_DURATION.labels(STAGE_INFERENCE).observe(seconds)
    BATCH_SIZE.observe(tiles)
    BATCH_FILL_RATIO.observe(min(tiles / max_batch, 1.0) if max_batch > 0 else 0.0)


def count_fallback(reason: str) -> None:
    """One model call that left its fast path; ``reason`` is one of :data:`FALLBACK_REASONS`."""
    if reason not in FALLBACK_REASONS:
        raise ValueError(f"unknown fallback reason {reason!r}; expected one of {FALLBACK_REASONS}")
    MODEL_FALLBACKS.labels(reason).inc()


def count_jpeg_codec(codec: str) -> None:
    """One JPEG → JPEG answer, by the codec that made it (one of :data:`JPEG_CODECS`)."""
    if codec not in JPEG_CODECS:
        raise ValueError(f"unknown JPEG codec {codec!r}; expected one of {JPEG_CODECS}")
    JPEG_CODEC.labels(codec).inc()


def count_pixels(scale: int | str, input_pixels: int, output_pixels: int) -> None:
    """Pixels in and out of one successful request."""
    label = scale_label(scale)
    INPUT_PIXELS.labels(label).inc(input_pixels)
    OUTPUT_PIXELS.labels(label).inc(output_pixels)


def set_model_loaded(
    *,
    name: str,
    scale: int | str,
    device: str,
    parameters: int,
    psnr: float | None = None,
    ssim: float | None = None,
    dataset: str = "",
) -> None:
    """Publish a loaded model (info gauge = 1) and its parameter count."""
    label = scale_label(scale)
    MODEL_INFO.labels(
        name,
        label,
        device,
        "" if psnr is None else f"{psnr:.2f}",
        "" if ssim is None else f"{ssim:.4f}",
        dataset,
    ).set(1)
    MODEL_PARAMETERS.labels(label).set(parameters)


def job_entered(kind: str, state: str) -> None:
    """Count a job entering ``state``; kind and state are checked against the fixed sets."""
    if kind not in JOB_KINDS or state not in JOB_STATES:
        raise ValueError(f"unknown job kind/state {kind!r}/{state!r}")
    JOBS.labels(kind, state).inc()


def set_jobs_backend(state: str, count: int) -> None:
    """Jobs now in ``state`` (queued or running) in the whole jobs backend, as the heartbeat last counted them."""
    if state not in JOB_ACTIVE_STATES:
        raise ValueError(f"unknown active job state {state!r}; expected one of {JOB_ACTIVE_STATES}")
    JOBS_BACKEND.labels(state).set(count)


def set_jobs_active(state: str, count: int) -> None:
    """This process's jobs now in ``state`` (queued or running)."""
    if state not in JOB_ACTIVE_STATES:
        raise ValueError(f"unknown active job state {state!r}; expected one of {JOB_ACTIVE_STATES}")
    JOBS_ACTIVE.labels(state).set(count)


def count_video_frames(scale: int | str, frames: int = 1) -> None:
    """Video frames super-resolved and written by a job."""
    VIDEO_FRAMES.labels(scale_label(scale)).inc(frames)


def set_process_memory(role: str, resident_bytes: int) -> None:
    """This process's resident memory; ``role`` is one of :data:`PROCESS_ROLES`."""
    if role not in PROCESS_ROLES:
        raise ValueError(f"unknown process role {role!r}; expected one of {PROCESS_ROLES}")
    PROCESS_RESIDENT.labels(role).set(resident_bytes)


def set_device_memory(device: str, stats: dict[str, int]) -> None:
    """GPU memory as this process sees it: ``stats`` maps kinds of :data:`DEVICE_MEMORY_KINDS` to bytes."""
    unknown = set(stats) - set(DEVICE_MEMORY_KINDS)
    if unknown:
        raise ValueError(f"unknown device memory kinds {sorted(unknown)}; expected some of {DEVICE_MEMORY_KINDS}")
    for kind, value in stats.items():
        DEVICE_MEMORY.labels(device, kind).set(value)


def render(accept: str | None = None) -> tuple[bytes, str]:
    """Exposition body and content type for ``/metrics``.

    In multiprocess mode a fresh registry merges every process's files on each scrape
    (the default registry would only show this process). ``accept`` is the request's
    Accept header: OpenMetrics when asked for, the classic text format otherwise.
    """
    registry: CollectorRegistry = REGISTRY
    if os.environ.get(MULTIPROC_ENV):
        forget_dead_processes(os.environ[MULTIPROC_ENV])
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's ``live*`` gauge files; a no-op outside multiprocess mode.

    For gunicorn: ``def child_exit(server, worker): mark_process_dead(worker.pid)``.
    """
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no procfs: the signal test is all there is
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def forget_dead_processes(path: str | os.PathLike[str]) -> list[int]:
    """``mark_process_dead`` for each pid with ``live*`` gauge files in ``path`` whose process is gone; those pids.

    Counters and histograms of the dead stay (their counts happened); only their gauges,
    which describe "now", go. Safe to run from several processes at once.
    """
    pids = set()
    with contextlib.suppress(FileNotFoundError), os.scandir(path) as entries:
        for entry in entries:
            match = _LIVE_GAUGE_FILE.match(entry.name)
            if match:
                pids.add(int(match.group(1)))
    dead = sorted(pid for pid in pids if pid != os.getpid() and not process_alive(pid))
    for pid in dead:
        with contextlib.suppress(FileNotFoundError):  # a sibling's scrape removed it first
            multiprocess.mark_process_dead(pid, str(path))
    return dead
