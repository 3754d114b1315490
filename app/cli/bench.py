"""``python -m app.cli.bench``: our ESPCN paths, the peers and the HTTP service, side by side, in one process.

Example (the full run; on an idle machine)::

    python -m app.cli.bench --opencv ../shared/peers/opencv --out bench_results/

What is measured, on the same frames (``app/assets/sample.png`` mirror-tiled to each LR size, so the
texture is at its native scale), each time as the median of ``--repeats`` timed calls
(``time.perf_counter``) after ``--warmup`` untimed ones:

1. **Model only**, Y channel, fp32, ms per frame, for every scale in the store and every ``--sizes``:
   eager whole image (``model.forward_valid(pad_for(model, x))`` under ``torch.inference_mode()``),
   eager channels_last, TorchScript (trace + freeze + ``optimize_for_inference``), ``torch.compile``
   (``n/a`` when it fails here, skipped by ``--quick``), and the service's tiled path (ModelRunner on all
   ``--tile`` windows in batches of ``--max-batch``). Every path's output is compared with eager's
   (max |Δ|, must be ≤ 1e-4).
2. **Peers** on the same frames: OpenCV ``dnn_superres`` ESPCN and FSRCNN (with ``--opencv DIR``, when
   ``cv2`` imports; its whole ``upsample`` call on the BGR frame, colour conversion included), Pillow bicubic
   of the RGB frame, and the **compute limit**: 2 · macs_per_lr_pixel · H · W at the measured sgemm rate
   (a float32 ``torch.mm`` of ``--sgemm-size``²); our best path is reported as a percentage of it.
3. **The service over HTTP** (unless ``--skip-http``): the real app under uvicorn on 127.0.0.1 in its
   own process; one ×3 request of a 640×360 frame → JPEG and → PNG (level 1), against the model
   alone; the other stages (decode, compose, JPEG/PNG 1/PNG 6/WebP encodes) timed alone on that output;
   and throughput with ``--clients`` concurrent clients posting 96×96 PNGs for ``--duration`` seconds,
   batching on (``--max-batch``) and off (max_batch = 1), against the bare model's throughput at its best
   batch size (of 1, 2, 4, … 32) on the same tiles.

Outputs in ``--out``: ``bench.md`` (also printed), ``bench.json`` (every row and the machine) and
``bench.png`` (needs matplotlib). ``--quick`` is a smoke run: tiny sizes, one repeat, one second of load,
no torch.compile; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from app.cli.benchlib.common import frame, load_source, luma_of, machine_info, parse_size, sgemm_gflops
from app.cli.benchlib.model_paths import PathConfig, exact_macs, model_rows, service_runner
from app.cli.benchlib.peers import opencv_available, peer_rows
from app.cli.benchlib.report import BenchResults, markdown, write_chart, write_json
from app.cli.benchlib.rows import OK, FrameRow, LimitRow
from app.config import Settings
from app.core.espcn import ESPCN
from app.engine.device import max_batch_for, resolve_device
from app.engine.host import usable_cores
from app.store import DEFAULT_STORE
from app.store.registry import LoadedModel, discover

FULL = {"sizes": ["256x256", "640x360", "1920x1080"], "repeats": 10, "warmup": 2, "duration": 10.0,
        "http_size": "640x360", "sgemm_size": 2048, "compile": True}
QUICK = {"sizes": ["64x36"], "repeats": 1, "warmup": 0, "duration": 1.0,
         "http_size": "64x36", "sgemm_size": 256, "compile": False}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Settings.model_fields
    p = argparse.ArgumentParser(prog="python -m app.cli.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=DEFAULT_STORE, help="model store (default: model_store/)")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4], help="scales to time (default: 2 3 4)")
    p.add_argument("--sizes", nargs="+", help="LR frame sizes WxH (default: 256x256 640x360 1920x1080)")
    p.add_argument("--repeats", type=int, help="timed calls per measurement, median reported (default 10)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default 2)")
    p.add_argument("--tile", type=int, default=defaults["tile_size"].default, help="service tile side (Settings)")
    p.add_argument("--max-batch", type=int, default=defaults["max_batch"].default, help="tiles per model call (0: the service's auto)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="time torch.compile (default: on, off with --quick)")
    p.add_argument("--sgemm-size", type=int, help="matmul side for the GFLOP/s measurement (default 2048)")
    p.add_argument("--opencv", type=Path, help="folder of OpenCV dnn_superres {ESPCN,FSRCNN}_x{2,3,4}.pb")
    p.add_argument("--image", type=Path, help="source texture for the frames (default app/assets/sample.png)")
    p.add_argument("--skip-http", action="store_true", help="model and peers only, no service")
    p.add_argument("--http-size", help="LR size of the single-request frame (default 640x360)")
    p.add_argument("--http-scale", type=int, default=3, help="scale of the HTTP requests (default 3)")
    p.add_argument("--duration", type=float, help="seconds of load per throughput variant (default 10)")
    p.add_argument("--clients", type=int, default=32, help="concurrent clients posting small PNGs (default 32)")
    p.add_argument("--many-clients", type=int, default=64, help="the second small-PNG load (default 64)")
    p.add_argument("--frame-clients", type=int, default=16,
                   help="concurrent clients posting --http-size JPEG frames → JPEG (default 16)")
    p.add_argument("--workers", type=int, nargs="+",
                   help="SR_WORKERS values to measure (default: 1 2 4 8 as far as the cores allow)")
    p.add_argument("--batching-off", action=argparse.BooleanOptionalAction, default=True,
                   help="also measure one worker with max_batch=1 (default on)")
    p.add_argument("--load-side", type=int, default=96, help="side of the throughput PNGs (default 96)")
    p.add_argument("--throughput-only", action="store_true",
                   help="only the concurrent-clients section (and the bare model it is compared with)")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 repeat, 1 s of load, no compile")
    p.add_argument("--video-only", action="store_true",
                   help="only the video section (app/cli/benchlib/video.py): ×3 640x360 clip → 1080p H.264, frames/s")
    p.add_argument("--video-seconds", type=float, default=5.0, help="length of the video section's clip (default 5)")
    p.add_argument("--out", type=Path, default=Path("bench_results"), help="output folder (default bench_results/)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def pick_models(store: Path, scales: list[int], notes: list[str]) -> dict[int, LoadedModel]:
    found = discover(store)
    if not found:
        raise SystemExit(f"no usable model in {store}: train one (python -m app.cli.train) or pass --store")
    missing = [s for s in scales if s not in found]
    if missing:
        notes.append(f"no model for {', '.join(f'×{s}' for s in missing)} in {store}: not timed")
    chosen = {s: found[s] for s in scales if s in found}
    if not chosen:
        raise SystemExit(f"none of the scales {scales} has a model in {store} (it has {sorted(found)})")
    return chosen


def limit_row(model: ESPCN, rows: list[FrameRow], gflops: float) -> LimitRow:
    """The compute bound of this frame and how close our fastest working path comes to it."""
    first = rows[0]
    macs = model.macs_per_lr_pixel() * first.width * first.height
    limit_ms = 2.0 * macs / (gflops * 1e9) * 1000.0
    timed = [r for r in rows if r.kind == "ours" and r.status == OK and r.median_ms]
    best = min(timed, key=lambda r: r.median_ms or float("inf"), default=None)
    return LimitRow(
        scale=model.scale, width=first.width, height=first.height, macs=macs,
        halo_extra_pct=100.0 * (exact_macs(model, first.height, first.width) / macs - 1.0),
        gflops=gflops, limit_ms=limit_ms,
        best_method=best.method if best else None, best_ms=best.median_ms if best else None,
        pct_of_limit=100.0 * limit_ms / best.median_ms if best and best.median_ms else None,
    )


def frame_section(models: dict[int, LoadedModel], args: argparse.Namespace, cfg: PathConfig, gflops: float,
                  results: BenchResults) -> None:
    source = load_source(args.image)
    for width, height in (parse_size(s) for s in args.sizes):
        image = frame(source, width, height)
        x = luma_of(image)
        for scale, loaded in models.items():
            log(f"model ×{scale} on {width}×{height} …")
            rows = model_rows(loaded.model, x, cfg)
            rows += peer_rows(image, scale, opencv_dir=args.opencv, repeats=args.repeats, warmup=args.warmup)
            results.frames += rows
            results.limits.append(limit_row(loaded.model, rows, gflops))


def gpu_section(models: dict[int, LoadedModel], args: argparse.Namespace, device: torch.device,
                results: BenchResults) -> None:
    from app.cli.benchlib.gpu import gpu_rows, lr_size

    source = load_source(args.image)
    for scale, loaded in models.items():
        width, height = lr_size(scale)
        log(f"GPU: ×{scale} 1080p frames in batches, fp32/fp16/bf16 …")
        results.gpu += gpu_rows(loaded.model, luma_of(frame(source, width, height)).to(device))


def worker_counts(requested: list[int] | None) -> list[int]:
    """SR_WORKERS values to measure: the ones asked for, else 1, 2, 4, 8 as far as the cores allow."""
    if requested:
        return requested
    cores = usable_cores()
    return [w for w in (1, 2, 4, 8) if w <= max(1, cores)]


def service_section(models: dict[int, LoadedModel], args: argparse.Namespace, cfg: PathConfig,
                    results: BenchResults) -> None:
    from app.cli.benchlib import service  # httpx/uvicorn only when the service is benchmarked

    scale = args.http_scale if args.http_scale in models else next(iter(models))
    model = models[scale].model
    source = load_source(args.image)
    base = {"model_store": args.store, "device": args.device, "tile_size": args.tile, "threads": args.threads}
    width, height = parse_size(args.http_size)
    image = frame(source, width, height)
    loads = [service.small_load(source, args.clients, args.load_side, scale, args.duration)]
    if not args.throughput_only:
        loads = [service.frame_load(image, args.frame_clients, scale, args.duration), *loads,
                 service.small_load(source, args.many_clients, args.load_side, scale, args.duration)]
    log("bare model on the same tiles, batches of 1 … 32 …")
    images = service.load_images(source, service.LoadConfig(args.clients, args.duration, args.load_side, scale))
    bare = service.bare_runs(model, images, cfg, sorted({1, 2, 4, 8, 16, 32, args.max_batch}))
    best = max(bare.items(), key=lambda item: item[1].images_per_s)
    bare_frames = service.bare_frame_run(model, image, cfg) if not args.throughput_only else None
    for workers in worker_counts(args.workers):
        settings = Settings(**base, max_batch=args.max_batch, workers=workers)
        with service.running_service(settings) as served:
            if not args.throughput_only:
                log(f"service, {workers} worker(s): one request ×{scale} of {width}×{height} …")
                rows, png_answer = service.single_requests(served.url, model, image, cfg, workers)
                results.requests += rows
                if not results.codecs:
                    results.codecs += service.codec_rows(image, model, png_answer, args.repeats, args.warmup)
            for load in loads:
                log(f"service, {workers} worker(s): {load.label} for {load.duration_s:g} s …")
                frames = bare_frames is not None and load.content_type == "image/jpeg"
                bar = (1, bare_frames) if frames else best
                results.throughput.append(service.throughput_row(
                    served, f"{workers} worker(s)", args.max_batch, workers, load, bar,
                    bare_frames if frames else bare[args.max_batch], cfg.device))
    if args.batching_off:
        load = loads[-1] if args.throughput_only else loads[1]
        with service.running_service(Settings(**base, max_batch=1, workers=1)) as served:
            log(f"service, batching off: {load.label} …")
            results.throughput.append(service.throughput_row(served, "1 worker, batching off", 1, 1, load, best,
                                                             bare[1], cfg.device))
    results.notes.append("the service runs as `python -m app.serve` in its own processes; the load generator "
                         "(app/cli/benchlib/load.py, raw keep-alive HTTP/1.1) shares the machine's cores with it; "
                         "the bare model beside a JPEG-frame load is whole frames through the runner, beside a PNG "
                         "load the same 96² tiles at the runner's best batch")


def write_outputs(results: BenchResults, out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    if not write_chart(results, out / "bench.png"):
        results.notes.append("matplotlib is not installed: no chart (pip install matplotlib)")
        print("note: matplotlib is not installed, bench.png skipped", file=sys.stderr)
    text = markdown(results)
    (out / "bench.md").write_text(text)
    write_json(results, out / "bench.json")
    return text


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.video_only:
        from app.cli.benchlib.video import run_section

        return run_section(args)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    notes: list[str] = []
    models = pick_models(args.store, args.scales, notes)
    machine = machine_info(device)
    log(f"sgemm {args.sgemm_size}² …")
    gflops = machine["sgemm_gflops"] = sgemm_gflops(device, args.sgemm_size)
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5 * cores:
        notes.append(f"the machine was busy (load average {load:.2f} on {cores} logical cores): "
                     "these timings are not representative")
    if args.quick:
        notes.append("--quick smoke run: tiny sizes, one repeat; the numbers mean nothing")
    if args.opencv is not None and not opencv_available():
        notes.append("cv2 with dnn_superres is not importable (pip install opencv-contrib-python-headless): "
                     "OpenCV peers skipped")
    if models:  # the service's auto batch depends on the backend its runners end up on
        backend = service_runner(next(iter(models.values())).model, device, args.tile).backend
        args.max_batch = max_batch_for(device, args.max_batch, backend)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    results = BenchResults(machine=machine, config=config, notes=notes)
    cfg = PathConfig(device=device, tile=args.tile, max_batch=args.max_batch, repeats=args.repeats,
                     warmup=args.warmup, compile=args.compile)
    if not args.throughput_only:
        frame_section(models, args, cfg, gflops, results)
        if device.type == "cuda":
            gpu_section(models, args, device, results)
    if not args.skip_http:
        service_section(models, args, cfg, results)
    print(write_outputs(results, args.out))
    log(f"wrote {args.out / 'bench.md'}, {args.out / 'bench.json'} and the chart to {args.out}")


if __name__ == "__main__":
    main()
