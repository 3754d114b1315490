"""The three outputs: ``bench.md`` (also printed), ``bench.json`` (every row) and ``bench.png`` (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from app.cli.benchlib.gpu import GpuRow
from app.cli.benchlib.model_paths import PATHS
from app.cli.benchlib.rows import OK, CodecRow, FrameRow, LimitRow, RequestRow, ThroughputRow

COLUMN_TITLES = {
    "eager": "eager",
    "channels_last": "channels_last",
    "torchscript": "TorchScript",
    "onnxruntime": "ONNX Runtime",
    "compile": "torch.compile",
    "tiled": "tiled (service path)",
    "opencv_espcn": "OpenCV ESPCN ¹",
    "opencv_fsrcnn": "OpenCV FSRCNN ¹",
    "pillow_bicubic": "Pillow bicubic ²",
}


@dataclass
class BenchResults:
    machine: dict[str, object]
    config: dict[str, object]
    frames: list[FrameRow] = field(default_factory=list)
    limits: list[LimitRow] = field(default_factory=list)
    codecs: list[CodecRow] = field(default_factory=list)
    requests: list[RequestRow] = field(default_factory=list)
    throughput: list[ThroughputRow] = field(default_factory=list)
    gpu: list[GpuRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "—"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def _ratio(bare: float | None, server: float | None, client: float | None) -> str:
    if bare is None or server is None or client is None or server + client <= 0:
        return "—"
    return f"{bare / (server + client):.2f}"


def _cell(row: FrameRow | None) -> str:
    if row is None:
        return "—"
    return _ms(row.median_ms) if row.status == OK else row.status


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in body)]


def _cases(results: BenchResults) -> list[tuple[int, int, int]]:
    seen: dict[tuple[int, int, int], None] = {}
    for r in results.frames:
        seen[(r.scale, r.width, r.height)] = None
    return list(seen)


def _methods(results: BenchResults) -> list[str]:
    present = {r.method for r in results.frames}
    return [m for m in COLUMN_TITLES if m in present]


def frame_tables(results: BenchResults) -> list[str]:
    methods = _methods(results)
    index = {(r.scale, r.width, r.height, r.method): r for r in results.frames}
    limits = {(r.scale, r.width, r.height): r for r in results.limits}
    header = ["×r", "LR size", *(COLUMN_TITLES[m] for m in methods), "compute limit ³", "best ours, % of limit"]
    body = []
    for case in _cases(results):
        s, w, h = case
        limit = limits.get(case)
        pct = f"{limit.pct_of_limit:.1f} % ({limit.best_method})" if limit and limit.pct_of_limit else "—"
        body.append([f"×{s}", f"{w}×{h}", *(_cell(index.get((*case, m))) for m in methods),
                     _ms(limit.limit_ms) if limit else "—", pct])
    lines = ["## Model only: ms per frame (median)", "", *_table(header, body), ""]
    ours = [m for m in PATHS if m != "eager" and m in methods]
    diff_body = []
    for case in _cases(results):
        cells = []
        for m in ours:
            r = index.get((*case, m))
            cells.append(f"{r.max_abs_diff:.1e}" if r and r.max_abs_diff is not None else (r.status if r else "—"))
        diff_body.append([f"×{case[0]}", f"{case[1]}×{case[2]}", *cells])
    lines += ["## Same output? max |Δ| against eager whole-image inference (must be ≤ 1e-4)", "",
              *_table(["×r", "LR size", *(COLUMN_TITLES[m] for m in ours)], diff_body), ""]
    return lines


def service_tables(results: BenchResults) -> list[str]:
    lines: list[str] = []
    if results.requests:
        body = [[str(r.workers), r.format, f"×{r.scale} of {r.width}×{r.height}", _ms(r.median_ms), _ms(r.server_decode_ms),
                 _ms(r.server_model_ms), _ms(r.server_encode_ms), _ms(r.model_eager_ms), _ms(r.model_tiled_ms),
                 f"{r.ratio_to_eager:.2f}×", f"{r.response_bytes:,}"] for r in results.requests]
        header = ["workers", "input → answer", "request", "end to end ms", "server: decode", "server: model (queue incl.)",
                  "server: compose+encode", "model only, eager", "model only, tiled", "end to end / eager", "bytes"]
        lines += ["## One request over HTTP (median)", "", *_table(header, body), ""]
    if results.codecs:
        body = [[c.stage, f"{c.width}×{c.height}", _ms(c.median_ms), f"{c.bytes:,}" if c.bytes else "—"]
                for c in results.codecs]
        lines += ["## Image stages alone, in-process (median)", "",
                  *_table(["stage", "image", "ms", "bytes"], body), ""]
    if results.throughput:
        body = [[t.variant, str(t.max_batch), t.load or f"{t.clients} × {t.image_side}² PNG, ×{t.scale}",
                 f"{t.req_per_s:.1f}", f"{t.ok} / {t.errors}", _ms(t.p50_ms), _ms(t.p95_ms),
                 f"{t.bare_same_batch_images_per_s:.1f}", f"{t.bare_batched_images_per_s:.1f} (batch {t.bare_best_batch})",
                 f"{t.fraction_of_bare:.1%}",
                 f"{t.gpu_utilisation_pct:.0f} %" if t.gpu_utilisation_pct is not None else "—"] for t in results.throughput]
        header = ["service", "max_batch", "load", "requests/s", "ok / errors", "p50 ms", "p95 ms",
                  "bare model img/s, same batch", "bare model img/s, best batch", "requests/s ÷ bare best",
                  "GPU busy"]
        lines += ["## Throughput under concurrent clients", "", *_table(header, body), ""]
        cpu = [t for t in results.throughput if t.server_cpu_ms_per_request is not None]
        if cpu:
            body = [[f"{t.variant}, {t.load}", _ms(t.server_cpu_ms_per_request), _ms(t.client_cpu_ms_per_request),
                     f"{t.cores_busy:.2f}" if t.cores_busy is not None else "—", _ms(t.bare_cpu_ms_per_image),
                     _ratio(t.bare_cpu_ms_per_image, t.server_cpu_ms_per_request, t.client_cpu_ms_per_request)]
                    for t in cpu]
            header = ["service", "server core-ms / request", "load generator core-ms / request", "cores busy",
                      "bare model core-ms / image (best batch)", "bare ÷ (server + client)"]
            lines += ["CPU time per request during the load (all threads, from `/proc`). The last column is the ratio "
                      "this work would give if the service and the bare model both kept every core busy: what "
                      "separates it from the measured ratio is idle time, what separates it from 1 is work.", "", *_table(header, body), ""]
    return lines


def gpu_tables(results: BenchResults) -> list[str]:
    if not results.gpu:
        return []
    body = [[f"×{g.scale}", f"{g.width}×{g.height} → 1920×1080", g.dtype, str(g.batch),
             f"{g.frames_per_s:,.0f}" if g.frames_per_s else (g.note or "—"), _ms(g.ms_per_batch),
             f"{g.max_abs_diff_levels:.3g}" if g.max_abs_diff_levels is not None else "—"] for g in results.gpu]
    header = ["×r", "frame", "dtype", "batch", "frames/s", "ms per batch", "max |Δ| vs fp32 eager (grey levels)"]
    return ["## GPU: 1080p output frames in batches, model only (CUDA graph replay, channels-last)", "",
            *_table(header, body), ""]


def markdown(results: BenchResults) -> str:
    m = results.machine
    lines = [
        "# ESPCN benchmark", "",
        f"Machine: {m.get('cpu')}, {m.get('logical_cores')} logical cores, torch {m.get('torch')} "
        f"({m.get('torch_threads')} threads), device {m.get('device')}"
        + (f" ({m['gpu']})" if m.get("gpu") else "")
        + f", load average at start {m.get('load_average_1m')}, sgemm {m.get('sgemm_gflops', 0):.1f} GFLOP/s.",
        "",
        f"Settings: {', '.join(f'{k}={v}' for k, v in results.config.items())}.",
        "",
        *frame_tables(results),
        *gpu_tables(results),
        *service_tables(results),
        "## Notes", "",
        "¹ OpenCV `dnn_superres` `upsample()` on the BGR frame: its own colour conversion and chroma upscaling "
        "are included (ours above are the Y plane alone). ² Pillow `resize(BICUBIC)` of the RGB frame. "
        "³ compute limit = 2 · macs_per_lr_pixel · H · W / measured sgemm FLOP/s: the interior H·W only; the "
        "unpadded convolutions also compute on the halo ring (see `halo_extra_pct` in bench.json).",
        "",
        *(f"- {n}" for n in results.notes),
    ]
    return "\n".join(lines).rstrip() + "\n"


def write_json(results: BenchResults, path: Path) -> None:
    data = {
        "machine": results.machine,
        "config": results.config,
        "frames": [asdict(r) for r in results.frames],
        "limits": [asdict(r) for r in results.limits],
        "codecs": [asdict(r) for r in results.codecs],
        "requests": [asdict(r) for r in results.requests],
        "throughput": [asdict(r) for r in results.throughput],
        "gpu": [asdict(r) for r in results.gpu],
        "notes": results.notes,
    }
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def write_chart(results: BenchResults, path: Path) -> bool:
    """Bars of ms per frame (log scale) per case and method, and the throughput; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = _cases(results)
    index = {(r.scale, r.width, r.height, r.method): r for r in results.frames}
    methods = [m for m in _methods(results) if any(index.get((*c, m)) and index[(*c, m)].median_ms for c in cases)]
    panels = 2 if results.throughput else 1
    fig, axes = plt.subplots(1, panels, figsize=(max(8, 1.6 * len(cases) + 4) + 5 * (panels - 1), 6), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        values = [index[(*c, method)].median_ms if (*c, method) in index and index[(*c, method)].median_ms else 0.0
                  for c in cases]
        ax.bar([k + i * width for k in range(len(cases))], values, width, label=COLUMN_TITLES[method])
    limits = {(r.scale, r.width, r.height): r.limit_ms for r in results.limits}
    ax.scatter([k + 0.4 - width / 2 for k in range(len(cases))], [limits.get(c, 0.0) for c in cases],
               marker="_", s=600, color="black", label="compute limit", zorder=3)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(cases))], [f"×{s} {w}×{h}" for s, w, h in cases])
    ax.set_yscale("log")
    ax.set_ylabel("ms per frame (median)")
    ax.set_title("Model only and peers")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    if results.throughput:
        ax = axes[0][1]
        small = [t for t in results.throughput if "PNG" in (t.load or "PNG")]  # the small-image loads
        ax.bar([f"{t.variant}\n{t.clients} clients" for t in small], [t.req_per_s for t in small],
               color="tab:blue", label="service requests/s")
        if small:
            ax.axhline(small[0].bare_batched_images_per_s, color="black", linestyle="--",
                       label="bare model images/s (best batch)")
        ax.set_ylabel("images per second")
        ax.set_title("small PNGs under concurrent clients")
        ax.tick_params(axis="x", labelsize=6)
        ax.legend(fontsize=7)
    fig.suptitle(f"{results.machine.get('cpu')} · torch {results.machine.get('torch')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
