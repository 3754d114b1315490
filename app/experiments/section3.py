"""The note's Section 3 as an experiment: LR-space against HR-space networks at matched multiply-adds.

For every scale and depth a matched pair (:func:`app.experiments.hr_space.matched_pair`)
is trained twice over:

* **equal patches**: both networks take ``steps`` Adam steps on the same
  batches, in the same order (one data generator per scale, seeded alike);
* **equal wall time**: both get the training time the faster network of the
  pair needs for ``steps`` (or ``time_budget`` seconds). Time is turned into a
  step count per network from a *calibrated* time per step (median of
  interleaved steps of both networks on training-shaped batches, one thread),
  so the budgets do not depend on what else the machine runs during training,
  and a rerun reproduces them. A network whose equal-time step count equals
  ``steps`` shares its equal-patches run.

Every run follows its own cosine schedule to the end, checkpoints (weights,
Adam moments, the data generator) every ``checkpoint_every`` steps, and resumes
bit-exactly. Runs are scored on the validation folder with the project's
protocol (:mod:`app.evaluation`); inference is timed model-only on the
validation LR frames, all models side by side (interleaved, median of repeats,
one thread). Everything lands in ``out``; finished parts are reused on a rerun.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from app.datasets import load_pairs, luma, training_patches
from app.evaluation import bicubic_upscaler, mean_score, model_upscaler, score_pairs
from app.experiments.hr_space import (
    layer_macs_per_output_pixel,
    layer_parameters,
    macs_per_output_pixel,
    matched_pair,
    measured_macs_per_output_pixel,
    parameter_count,
)
from app.training.checkpoint import load_checkpoint, save_checkpoint
from app.training.trainer import dihedral

log = logging.getLogger(__name__)

FAMILIES = ("lr", "hr")
DEFAULT_WIDTHS = {2: 32, 3: 36, 4: 32}  # LR maps n; the HR net gets n / r² (8, 4, 2)


@dataclass
class Section3Config:
    train_dirs: list[Path]
    val_dir: Path
    out: Path = Path("runs/section3")
    scales: tuple[int, ...] = (2, 3)
    depths: tuple[int, ...] = (3, 5)
    widths: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_WIDTHS))
    kernel: int = 3
    activation: str = "tanh"
    steps: int = 1600
    time_budget: float | None = None  # seconds per network; None: the faster network's time for `steps`
    batch_size: int = 32
    patch: int = 16
    stride: int = 12
    rescales: tuple[float, ...] = (1.0,)
    lr: float = 1e-3
    lr_min: float = 1e-5
    seed: int = 0
    calibration_steps: int = 15
    checkpoint_every: int = 200
    bench_repeats: int = 9
    jobs: int = 1
    threads: int = 1
    stop_after: int | None = None  # stop each run after this many steps in this invocation (tests, chopping)


@dataclass(frozen=True)
class RunSpec:
    scale: int
    depth: int
    family: str
    steps: int

    @property
    def name(self) -> str:
        return f"x{self.scale}-d{self.depth}-{self.family}-s{self.steps}"


def pair_name(scale: int, depth: int) -> str:
    return f"x{scale}-d{depth}"


def build(cfg: Section3Config, scale: int, depth: int, family: str) -> nn.Module:
    """The family's network, initialised from the run seed (the same init whatever the run's budget)."""
    torch.manual_seed(cfg.seed)
    lr, hr = matched_pair(scale, depth, cfg.widths[scale], cfg.kernel, cfg.activation)
    return lr if family == "lr" else hr


def cosine(cfg: Section3Config, step: int, total: int) -> float:
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(step, total) / total))


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor) -> Tensor:
    """One Adam step on MSE: the unit both the training loop and the step-time calibration run."""
    loss = F.mse_loss(model.forward_valid(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


# ---------------------------------------------------------------- patches
_PATCHES: dict[tuple[Any, ...], tuple[Tensor, Tensor]] = {}


def pair_radius(cfg: Section3Config, scale: int) -> int:
    """The largest LR halo any network at this scale needs: patches are cut once with it."""
    return max(build(cfg, scale, d, f).radius for d in cfg.depths for f in FAMILIES)


def patches(cfg: Section3Config, scale: int) -> tuple[Tensor, Tensor, int]:
    """(LR patches with the widest halo, HR targets, that halo), cut once per process and scale."""
    radius = pair_radius(cfg, scale)
    key = (tuple(map(str, cfg.train_dirs)), scale, cfg.patch, cfg.stride, cfg.rescales, radius)
    if key not in _PATCHES:
        _PATCHES[key] = training_patches(
            cfg.train_dirs, scale, patch=cfg.patch, radius=radius, stride=cfg.stride, rescales=cfg.rescales
        )
    lr, hr = _PATCHES[key]
    return lr, hr, radius


def crop_halo(x: Tensor, have: int, need: int) -> Tensor:
    d = have - need
    return x[..., d : x.shape[-2] - d, d : x.shape[-1] - d] if d else x


def data_generator(cfg: Section3Config, scale: int) -> torch.Generator:
    """One batch sequence per scale: every network of that scale sees the same patches in the same order."""
    return torch.Generator().manual_seed(cfg.seed * 1000 + scale)


def draw(gen: torch.Generator, n: int, batch: int) -> tuple[Tensor, int]:
    return torch.randint(n, (batch,), generator=gen), int(torch.randint(8, (), generator=gen))


# ---------------------------------------------------------------- one run
def run_dir(cfg: Section3Config, spec: RunSpec) -> Path:
    return cfg.out / "runs" / spec.name


def train_run(cfg: Section3Config, spec: RunSpec) -> dict[str, Any] | None:
    """Train (or resume) one network for ``spec.steps`` steps and score it; None if stopped by ``stop_after``."""
    folder = run_dir(cfg, spec)
    check_settings(cfg, folder)
    result_path = folder / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    torch.set_num_threads(cfg.threads)
    model = build(cfg, spec.scale, spec.depth, spec.family)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = data_generator(cfg, spec.scale)
    step, wall, history = 0, 0.0, []
    state = load_checkpoint(folder / "checkpoint")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"].to(torch.uint8))
        step, wall, history = int(state["step"]), float(state["wall_time_s"]), list(state["history"])
        log.info("%s: resumed at step %d", spec.name, step)
    lr_p, hr_p, have = patches(cfg, spec.scale)
    need = model.radius
    t0, done_here = time.perf_counter(), 0
    running, count = 0.0, 0
    model.train()
    while step < spec.steps:
        for group in opt.param_groups:
            group["lr"] = cosine(cfg, step, spec.steps)
        idx, k = draw(gen, len(lr_p), cfg.batch_size)
        x = dihedral(crop_halo(lr_p[idx], have, need), k)
        y = dihedral(hr_p[idx], k)
        running += float(train_step(model, opt, x, y))
        count += 1
        step += 1
        done_here += 1
        if step % 100 == 0 or step == spec.steps:
            history.append({"step": step, "loss": running / count})
            running, count = 0.0, 0
        stop = cfg.stop_after is not None and done_here >= cfg.stop_after
        if step % cfg.checkpoint_every == 0 or step == spec.steps or stop:
            wall += time.perf_counter() - t0
            t0 = time.perf_counter()
            save_checkpoint(folder / "checkpoint", {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state(),
                "step": step, "wall_time_s": wall, "history": history,
            })
            log.info("%s: step %d/%d (%.0f s)", spec.name, step, spec.steps, wall)
        if stop and step < spec.steps:
            return None
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    val = load_pairs(cfg.val_dir, spec.scale)
    scores = score_pairs(model_upscaler(model), val, spec.scale)
    mean = mean_score(scores)
    result = {
        **asdict(spec), "name": spec.name, "architecture": model.architecture(),
        "psnr": mean.psnr, "ssim": mean.ssim, "per_image": {s.name: [s.psnr, s.ssim] for s in scores},
        "train_wall_time_s": wall, "history": history,
    }
    result_path.write_text(json.dumps(result, indent=2))
    return result


def run_settings(cfg: Section3Config) -> dict[str, Any]:
    """What a run's outcome depends on besides its RunSpec: a folder trained under others is never resumed."""
    keys = ("train_dirs", "val_dir", "widths", "kernel", "activation", "batch_size", "patch", "stride", "rescales",
            "lr", "lr_min", "seed")
    return json.loads(json.dumps({k: getattr(cfg, k) for k in keys}, default=str))


def check_settings(cfg: Section3Config, folder: Path) -> None:
    path = folder / "settings.json"
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved != run_settings(cfg):
            raise SystemExit(f"{folder} was trained with other settings ({saved}); use another --out")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run_settings(cfg), indent=2))


def _run_in_worker(args: tuple[Section3Config, RunSpec]) -> dict[str, Any] | None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return train_run(*args)


def load_model_of(cfg: Section3Config, spec: RunSpec) -> nn.Module:
    model = build(cfg, spec.scale, spec.depth, spec.family)
    model.load_state_dict(load_file(str(run_dir(cfg, spec) / "model.safetensors")))
    return model.eval()


# ---------------------------------------------------------------- calibration and timing
def calibrate(cfg: Section3Config, scale: int, depth: int) -> dict[str, float]:
    """Median seconds per training step of each network, steps interleaved so load drift hits both alike."""
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(1)
    setups = {}
    for family in FAMILIES:
        model = build(cfg, scale, depth, family)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        size = cfg.patch + 2 * model.radius
        x = torch.rand(cfg.batch_size, 1, size, size, generator=gen)
        y = torch.rand(cfg.batch_size, 1, cfg.patch * scale, cfg.patch * scale, generator=gen)
        setups[family] = (model, opt, x, y)
    times: dict[str, list[float]] = {f: [] for f in FAMILIES}
    for i in range(cfg.calibration_steps + 2):  # the first two are warm-up
        order = FAMILIES if i % 2 == 0 else FAMILIES[::-1]
        for family in order:
            model, opt, x, y = setups[family]
            t = time.perf_counter()
            train_step(model, opt, x, y)
            if i >= 2:
                times[family].append(time.perf_counter() - t)
    return {f: statistics.median(times[f]) for f in FAMILIES}


def equal_time_steps(cfg: Section3Config, step_s: dict[str, float]) -> tuple[float, dict[str, int]]:
    """The pair's time budget in seconds and each network's step count within it."""
    budget = cfg.time_budget if cfg.time_budget is not None else cfg.steps * min(step_s.values())
    return budget, {f: max(1, round(budget / step_s[f])) for f in FAMILIES}


@torch.no_grad()
def time_inference(models: dict[str, nn.Module], frames: Sequence[Tensor], repeats: int) -> dict[str, dict[str, float]]:
    """Model-only time for one pass over ``frames`` (whole images, eager): median of interleaved repeats."""
    names = list(models)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats + 1):  # the first is warm-up
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            t = time.perf_counter()
            for frame in frames:
                models[name](frame)
            if rep:
                samples[name].append(time.perf_counter() - t)
    return {n: {"median_s": statistics.median(s), "min_s": min(s), "max_s": max(s)} for n, s in samples.items()}


class _Bicubic(nn.Module):
    """The HR network's own first step alone (torch bicubic), to show what share of its time it is."""

    def __init__(self, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)


# ---------------------------------------------------------------- the whole experiment
def plan(cfg: Section3Config, calibration: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Per pair: calibrated step times, the time budget and the run of each network under each budget."""
    pairs = {}
    for scale in cfg.scales:
        for depth in cfg.depths:
            name = pair_name(scale, depth)
            budget, timed = equal_time_steps(cfg, calibration[name])
            pairs[name] = {
                "scale": scale, "depth": depth, "step_s": calibration[name], "time_budget_s": budget,
                "runs": {f: {"patches": RunSpec(scale, depth, f, cfg.steps),
                             "time": RunSpec(scale, depth, f, timed[f])} for f in FAMILIES},
            }
    return pairs


def calibration_key(cfg: Section3Config) -> dict[str, Any]:
    return {"batch_size": cfg.batch_size, "patch": cfg.patch, "threads": cfg.threads, "widths": cfg.widths,
            "kernel": cfg.kernel, "activation": cfg.activation}


def run_calibration(cfg: Section3Config) -> dict[str, dict[str, float]]:
    path = cfg.out / "calibration.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("key") != json.loads(json.dumps(calibration_key(cfg))):
        saved = {"key": calibration_key(cfg), "pairs": {}}
    for scale in cfg.scales:
        for depth in cfg.depths:
            name = pair_name(scale, depth)
            if name not in saved["pairs"]:
                saved["pairs"][name] = calibrate(cfg, scale, depth)
                log.info("calibrated %s: %s s/step", name, saved["pairs"][name])
                cfg.out.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(saved, indent=2))
    return saved["pairs"]


def run_all(cfg: Section3Config) -> dict[str, Any] | None:
    """Calibrate, train every run, time and score; write the report. None when stopped early."""
    torch.set_num_threads(cfg.threads)
    cfg.out.mkdir(parents=True, exist_ok=True)
    pairs = plan(cfg, run_calibration(cfg))
    specs = sorted({s for p in pairs.values() for budget in p["runs"].values() for s in budget.values()},
                   key=lambda s: -pairs[pair_name(s.scale, s.depth)]["step_s"][s.family] * s.steps)
    if cfg.jobs > 1:
        with ProcessPoolExecutor(cfg.jobs, mp_context=get_context("spawn")) as pool:
            results = dict(zip(specs, pool.map(_run_in_worker, [(cfg, s) for s in specs]), strict=True))
    else:
        results = {s: train_run(cfg, s) for s in specs}
    if any(r is None for r in results.values()):
        log.info("stopped early (stop_after): run the same command again to resume")
        return None
    report = assemble(cfg, pairs, results, timing(cfg, pairs))
    write_report(cfg, report)
    return report


def timing(cfg: Section3Config, pairs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Inference time of every trained network (and torch bicubic) per scale, on that scale's validation frames."""
    path = cfg.out / "timing.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    torch.set_num_threads(cfg.threads)
    for scale in cfg.scales:
        names = [n for n, p in pairs.items() if p["scale"] == scale]
        key = f"x{scale}"
        if key in saved and set(saved[key]["models"]) >= {f"{n}-{f}" for n in names for f in FAMILIES}:
            continue
        frames = [luma(p.lr).unsqueeze(0) for p in load_pairs(cfg.val_dir, scale)]
        models: dict[str, nn.Module] = {f"{n}-{f}": load_model_of(cfg, pairs[n]["runs"][f]["patches"])
                                        for n in names for f in FAMILIES}
        models["bicubic"] = _Bicubic(scale)
        measured = time_inference(models, frames, cfg.bench_repeats)
        out_px = sum(f.shape[-1] * f.shape[-2] for f in frames) * scale**2
        saved[key] = {"frames": [list(f.shape[-2:]) for f in frames], "output_pixels": out_px,
                      "repeats": cfg.bench_repeats, "threads": cfg.threads, "models": measured}
        path.write_text(json.dumps(saved, indent=2))
    return saved


def assemble(cfg: Section3Config, pairs: dict[str, dict[str, Any]], results: dict[RunSpec, Any],
             times: dict[str, Any]) -> dict[str, Any]:
    """One record per network with its counts, speed and both budgets' scores."""
    rows, bicubic = [], {}
    for scale in cfg.scales:
        b = mean_score(score_pairs(bicubic_upscaler(scale), load_pairs(cfg.val_dir, scale), scale))
        bicubic[f"x{scale}"] = {"psnr": b.psnr, "ssim": b.ssim}
    for name, p in pairs.items():
        t = times[f"x{p['scale']}"]
        for family in FAMILIES:
            model = build(cfg, p["scale"], p["depth"], family)
            frame = t["frames"][0]
            runs = p["runs"][family]
            inf = t["models"][f"{name}-{family}"]
            rows.append({
                "pair": name, "scale": p["scale"], "depth": p["depth"], "family": family,
                "architecture": model.architecture(),
                "parameters": parameter_count(model), "layer_parameters": layer_parameters(model),
                "macs_per_output_pixel": macs_per_output_pixel(model),
                "layer_macs_per_output_pixel": layer_macs_per_output_pixel(model),
                "measured_macs_per_output_pixel": measured_macs_per_output_pixel(model, tuple(frame)),
                "train_step_s": p["step_s"][family], "time_budget_s": p["time_budget_s"],
                "inference_s": inf["median_s"], "inference_min_s": inf["min_s"], "inference_max_s": inf["max_s"],
                "inference_ms_per_mpx": 1e3 * inf["median_s"] / (t["output_pixels"] / 1e6),
                **{f"{budget}_{k}": results[spec][k] for budget, spec in runs.items()
                   for k in ("steps", "psnr", "ssim", "train_wall_time_s", "name")},
                # fit to the training data: PSNR of the mean training loss over the last 100 steps
                **{f"{budget}_train_psnr": -10 * math.log10(results[spec]["history"][-1]["loss"])
                   for budget, spec in runs.items()},
            })
    return {
        "claim": "at equal run time an LR-space network has more representation power than an HR-space one",
        "config": {k: (list(map(str, v)) if k == "train_dirs" else str(v) if isinstance(v, Path) else v)
                   for k, v in asdict(cfg).items() if k not in ("jobs", "stop_after")},
        "torch": torch.__version__,
        "bicubic": bicubic,
        "bicubic_inference_s": {k: v["models"]["bicubic"]["median_s"] for k, v in times.items()},
        "rows": rows,
    }


def markdown_table(report: dict[str, Any]) -> str:
    """The results as markdown: one row per network, then the LR − HR differences per pair."""
    lines = [
        "| ×r | depth | network | hidden layer | params | MACs / HR px | train s/step | inference ms (Set5) "
        "| equal patches: steps | Set5 PSNR / SSIM (train) | equal time: steps | Set5 PSNR / SSIM (train) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        arch = row["architecture"]
        w, k = arch["widths"][-1], arch["kernel_sizes"][-1]
        net = "LR (sub-pixel)" if row["family"] == "lr" else "HR (bicubic first)"
        lines.append(
            f"| ×{row['scale']} | {row['depth']} | {net} | {w} maps, {k}×{k} | {row['parameters']:,} "
            f"| {row['macs_per_output_pixel']:,.0f} | {row['train_step_s'] * 1e3:.0f} ms "
            f"| {row['inference_s'] * 1e3:.1f} | {row['patches_steps']:,} "
            f"| {row['patches_psnr']:.2f} / {row['patches_ssim']:.4f} ({row['patches_train_psnr']:.2f}) "
            f"| {row['time_steps']:,} | {row['time_psnr']:.2f} / {row['time_ssim']:.4f} ({row['time_train_psnr']:.2f}) |"
        )
    for key, b in report["bicubic"].items():
        lines.append(f"| ×{key[1:]} | | bicubic (Pillow) | | | | | "
                     f"{report['bicubic_inference_s'][key] * 1e3:.1f} (torch) | | {b['psnr']:.2f} / {b['ssim']:.4f} | | |")
    lines += ["", "| pair | LR − HR, equal patches (dB) | LR − HR, equal time (dB) | HR ÷ LR inference time "
              "| HR ÷ LR train step | HR ÷ LR MACs | LR ÷ HR params |", "|---|---|---|---|---|---|---|"]
    by_pair: dict[str, dict[str, Any]] = {}
    for row in report["rows"]:
        by_pair.setdefault(row["pair"], {})[row["family"]] = row
    for name, p in by_pair.items():
        lr, hr = p["lr"], p["hr"]
        lines.append(
            f"| {name} | {lr['patches_psnr'] - hr['patches_psnr']:+.2f} | {lr['time_psnr'] - hr['time_psnr']:+.2f} "
            f"| {hr['inference_s'] / lr['inference_s']:.2f} | {hr['train_step_s'] / lr['train_step_s']:.2f} "
            f"| {hr['macs_per_output_pixel'] / lr['macs_per_output_pixel']:.3f} "
            f"| {lr['parameters'] / hr['parameters']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path_time: Path, path_params: Path) -> None:
    """PSNR against measured inference time and against parameters, one panel per scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    scales = sorted({r["scale"] for r in report["rows"]})
    for path, xkey, xlabel in ((path_time, "inference_s", "inference time, Set5 pass, 1 CPU thread (ms)"),
                               (path_params, "parameters", "parameters")):
        fig, axes = plt.subplots(1, len(scales), figsize=(5.5 * len(scales), 4.2), squeeze=False)
        for ax, scale in zip(axes[0], scales, strict=True):
            rows = [r for r in report["rows"] if r["scale"] == scale]
            for family, colour, label in (("lr", "tab:blue", "LR space"), ("hr", "tab:red", "HR space")):
                fam = sorted((r for r in rows if r["family"] == family), key=lambda r: r["depth"])
                xs = [r[xkey] * (1e3 if xkey == "inference_s" else 1) for r in fam]
                for budget, marker, fill in (("patches", "o", colour), ("time", "s", "none")):
                    ys = [r[f"{budget}_psnr"] for r in fam]
                    ax.plot(xs, ys, marker=marker, color=colour, markerfacecolor=fill, linestyle="-" if
                            budget == "patches" else ":", label=f"{label}, equal {budget}")
                for x, r in zip(xs, fam, strict=True):
                    ax.annotate(f"d{r['depth']}", (x, r["patches_psnr"]), textcoords="offset points", xytext=(5, 4),
                                fontsize=8, color=colour)
            ax.axhline(report["bicubic"][f"x{scale}"]["psnr"], color="grey", linewidth=0.8, linestyle="--",
                       label="bicubic")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
            ax.xaxis.set_minor_formatter(ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if f"{v:.0e}"[0] in "25"
                                                              else ""))
            ax.set_xlabel(xlabel)
            ax.set_ylabel("Set5 Y-PSNR (dB)")
            ax.set_title(f"×{scale}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def write_report(cfg: Section3Config, report: dict[str, Any]) -> None:
    (cfg.out / "results.json").write_text(json.dumps(report, indent=2))
    (cfg.out / "table.md").write_text(markdown_table(report))
    plot(report, cfg.out / "psnr_vs_time.png", cfg.out / "psnr_vs_params.png")


def publish(out: Path, docs: Path) -> list[Path]:
    """Copy the table, JSON and plots into ``docs`` (docs/section3/…, docs/section3_*.png)."""
    (docs / "section3").mkdir(parents=True, exist_ok=True)
    copies = [(out / "table.md", docs / "section3" / "table.md"),
              (out / "results.json", docs / "section3" / "results.json"),
              (out / "calibration.json", docs / "section3" / "calibration.json"),
              (out / "timing.json", docs / "section3" / "timing.json"),
              (out / "psnr_vs_time.png", docs / "section3_psnr_vs_time.png"),
              (out / "psnr_vs_params.png", docs / "section3_psnr_vs_params.png")]
    for src, dst in copies:
        shutil.copyfile(src, dst)
    return [dst for _, dst in copies]
