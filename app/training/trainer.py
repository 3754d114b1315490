"""Train an ESPCN on Y patches: Adam, cosine learning-rate decay, dihedral augmentation, resumable.

The paper's network is kept as is (5-3-3, 64/32, tanh); what improves on the
paper is the training: more data (T91 + BSD200, each image also at smaller
sizes), Adam instead of SGD, a cosine schedule and many more updates.
Patches are cut once into memory (on the GPU when training there, so a step
never waits on the host); every step draws a random batch and applies one of
the eight flips/rotations to it. A run can start from a shipped model
(``init``) and can be fitted to a wall-clock budget (``time_budget``).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from app.core.espcn import ESPCN
from app.datasets import load_pairs, training_patches
from app.evaluation import bicubic_upscaler, mean_score, model_upscaler, score_pairs
from app.store.manifest import Architecture
from app.store.registry import build_model, load_model
from app.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    scale: int
    train_dirs: list[Path]
    val_dir: Path | None = None
    epochs: int = 60
    steps_per_epoch: int = 1000
    batch_size: int = 32
    patch: int = 24
    stride: int = 12
    lr: float = 1e-3
    lr_min: float = 1e-5
    seed: int = 0
    rescales: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6)
    checkpoint: Path = Path("runs/espcn-x3/checkpoint")
    widths: tuple[int, ...] = (64, 32)
    kernel_sizes: tuple[int, ...] = (5, 3, 3)
    activation: str = "tanh"
    device: str = "cpu"
    init: Path | None = None  # warm start: manifest of a stored model with the same architecture
    time_budget: float | None = None  # seconds (this and earlier runs): fewer epochs if they would not fit
    history: list[dict[str, float]] = field(default_factory=list)


def dihedral(x: Tensor, k: int) -> Tensor:
    """One of the 8 flips/rotations of a (N, C, H, W) batch, ``k`` in [0, 8)."""
    if k >= 4:
        x = x.flip(-1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def learning_rate(cfg: TrainConfig, step: int) -> float:
    total = cfg.epochs * cfg.steps_per_epoch
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1 + math.cos(math.pi * min(step, total) / total))


def build(cfg: TrainConfig) -> ESPCN:
    """The network ``cfg`` describes, built the way the store rebuilds it from a manifest."""
    return build_model(Architecture(scale=cfg.scale, widths=list(cfg.widths), kernel_sizes=list(cfg.kernel_sizes),
                                    activation=cfg.activation))


def warm_start(model: ESPCN, manifest: Path) -> None:
    """Load a stored model's weights (hash-checked by the registry) into ``model``."""
    loaded = load_model(manifest)
    if loaded.model.architecture() != model.architecture():
        raise ValueError(f"{manifest}: architecture {loaded.model.architecture()} != {model.architecture()}")
    model.load_state_dict(loaded.model.state_dict())


def fit_epochs(requested: int, done: int, epoch_s: float, left_s: float) -> int:
    """How many epochs to run in all so that the run ends within its time budget.

    At most ``requested``, at least ``done`` (0 more: stop now). It is
    recomputed after every epoch, so the cosine's length follows the measured
    pace: a slow start shortens the schedule, a faster steady state lengthens it back.
    """
    return max(done, min(requested, done + int(left_s // max(epoch_s, 1e-9))))


def train(cfg: TrainConfig, on_epoch: Callable[[dict[str, float]], None] | None = None) -> tuple[ESPCN, float]:
    """Run (or resume) training; returns the model and the wall time spent in this and earlier runs."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed patch shapes: pick the fastest kernels once
    model = build(cfg).to(device)
    start_epoch, wall = 0, 0.0
    state = load_checkpoint(cfg.checkpoint)
    if state is None and cfg.init is not None:
        warm_start(model, cfg.init)
        log.info("warm start from %s", cfg.init)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=device.type == "cuda")
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"])
        start_epoch, wall = int(state["epoch"]), float(state["wall_time_s"])
        cfg.history = list(state["history"])
        log.info("resumed from %s at epoch %d", cfg.checkpoint, start_epoch)
    if start_epoch >= cfg.epochs:
        return model.cpu().eval(), wall

    t0 = time.perf_counter()
    lr_patches, hr_patches = training_patches(
        cfg.train_dirs, cfg.scale, patch=cfg.patch, radius=model.radius, stride=cfg.stride, rescales=cfg.rescales
    )
    log.info("%d training patches (%s LR → %s HR)", len(lr_patches), tuple(lr_patches.shape[1:]),
             tuple(hr_patches.shape[1:]))
    lr_patches, hr_patches = lr_patches.to(device), hr_patches.to(device)
    val_pairs = load_pairs(cfg.val_dir, cfg.scale) if cfg.val_dir else []
    if val_pairs and not cfg.history:
        bic = mean_score(score_pairs(bicubic_upscaler(cfg.scale), val_pairs, cfg.scale))
        log.info("bicubic on validation: %.2f dB / %.4f", bic.psnr, bic.ssim)
    wall += time.perf_counter() - t0

    requested, epoch_times = cfg.epochs, []
    if cfg.time_budget is not None and state is not None:
        cfg.epochs = min(requested, int(state.get("epochs", requested)))
    epoch = start_epoch
    while epoch < cfg.epochs:
        t0 = time.perf_counter()
        model.train()
        running = torch.zeros((), device=device)
        bar = tqdm(range(cfg.steps_per_epoch), desc=f"x{cfg.scale} epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=None)
        for i in bar:
            step = epoch * cfg.steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, step)
            idx = torch.randint(len(lr_patches), (cfg.batch_size,), device=device)
            k = int(torch.randint(8, ()).item())
            x = dihedral(lr_patches[idx], k)
            y = dihedral(hr_patches[idx], k)
            loss = F.mse_loss(model.forward_valid(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.detach()  # no .item() per step: on a GPU that would wait for every step
            if i % 200 == 199 and not bar.disable:
                bar.set_postfix(loss=f"{running.item() / (i + 1):.2e}")
        record = {"epoch": epoch + 1, "loss": running.item() / cfg.steps_per_epoch, "lr": learning_rate(cfg, step)}
        if val_pairs:
            model.eval()
            val = mean_score(score_pairs(model_upscaler(model), val_pairs, cfg.scale))
            record.update(val_psnr=val.psnr, val_ssim=val.ssim)
        epoch_s = time.perf_counter() - t0
        wall += epoch_s
        record["wall_time_s"] = wall
        cfg.history.append(record)
        epoch += 1
        if cfg.time_budget is not None:
            epoch_times.append(epoch_s)
            pace = sum(epoch_times[1:]) / (len(epoch_times) - 1) if len(epoch_times) > 1 else epoch_s
            fitted = fit_epochs(requested, epoch, pace, cfg.time_budget - wall)
            if fitted != cfg.epochs:
                log.info("time budget: %d epochs in all (%.1f s each, %.0f s left)", fitted, pace,
                         cfg.time_budget - wall)
                cfg.epochs = fitted
        save_checkpoint(
            cfg.checkpoint,
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "epochs": cfg.epochs,
                "wall_time_s": wall,
                "history": cfg.history,
                "config": {k: str(v) for k, v in asdict(cfg).items() if k != "history"},
            },
        )
        if on_epoch:
            on_epoch(record)
    return model.cpu().eval(), wall
