"""``python -m app.cli.train``: train one ESPCN and publish it into the model store.

Example (the shipped ×3 model)::

    python -m app.cli.train --scale 3 --train ../shared/datasets/train/t91 ../shared/datasets/train/bsd200 \\
        --val ../shared/datasets/val/set5 --out model_store

Interrupt it at any time: run the same command again and it resumes from the
last epoch's checkpoint (``--checkpoint``, default ``runs/espcn-x{r}/checkpoint``).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from dataclasses import fields
from pathlib import Path

import torch

from app.datasets import load_pairs
from app.engine.device import describe, resolve_device
from app.evaluation import bicubic_upscaler, mean_score, model_upscaler, score_pairs
from app.store.manifest import Metric, Training
from app.store.registry import load_manifest, save_model
from app.training.trainer import TrainConfig, train

DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}  # one source of the training defaults


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", type=int, required=True, choices=range(2, 9), metavar="{2..8}")
    p.add_argument("--train", type=Path, nargs="+", required=True, help="folders of HR training images")
    p.add_argument("--val", type=Path, help="folder of HR validation images (PSNR per epoch)")
    p.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    p.add_argument("--steps-per-epoch", type=int, default=DEFAULTS["steps_per_epoch"])
    p.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    p.add_argument("--patch", type=int, default=DEFAULTS["patch"], help="LR patch size (output pixels), halo excluded")
    p.add_argument("--stride", type=int, default=DEFAULTS["stride"], help="LR stride between patches")
    p.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="initial learning rate (cosine decay)")
    p.add_argument("--lr-min", type=float, default=DEFAULTS["lr_min"], help="final learning rate")
    p.add_argument("--rescales", type=float, nargs="+", default=list(DEFAULTS["rescales"]),
                   help="each training image is also used at these sizes")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--init", type=Path, metavar="MANIFEST",
                   help="warm start from a stored model (its JSON manifest), e.g. model_store/espcn-x3.json")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="fit the run into this wall time: --epochs becomes an upper bound, the cosine follows the pace")
    p.add_argument("--checkpoint", type=Path, help="checkpoint path stem (default runs/espcn-x{r}/checkpoint)")
    p.add_argument("--out", type=Path, default=Path("model_store"), help="model store to publish into")
    p.add_argument("--name", help="model name (default espcn-x{r})")
    return p.parse_args(argv)


def earlier_phases(init: Path | None) -> list[Training]:
    """A warm start inherits the lineage of the model it started from."""
    if init is None:
        return []
    training = load_manifest(init).training
    return training.phases() if training is not None else []


def schedule(cfg: TrainConfig) -> str:
    text = f"cosine {cfg.lr} → {cfg.lr_min} over {cfg.epochs} epochs"
    if cfg.time_budget is not None:
        text += f" (epochs fitted to a {cfg.time_budget:.0f} s budget)"
    if cfg.init is not None:
        text += f"; warm start from {cfg.init}"
    return text + f"; rescales {list(cfg.rescales)}; 8 dihedral augmentations"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device).type
    name = args.name or f"espcn-x{args.scale}"
    cfg = TrainConfig(
        scale=args.scale,
        train_dirs=args.train,
        val_dir=args.val,
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        patch=args.patch,
        stride=args.stride,
        lr=args.lr,
        lr_min=args.lr_min,
        seed=args.seed,
        rescales=tuple(args.rescales),
        checkpoint=args.checkpoint or Path(f"runs/{name}/checkpoint"),
        device=device,
        init=args.init,
        time_budget=args.time_budget,
    )

    def report(record: dict[str, float]) -> None:
        val = f" val {record['val_psnr']:.3f} dB / {record['val_ssim']:.4f}" if "val_psnr" in record else ""
        logging.info("epoch %d loss %.3e lr %.2e%s (%.0f s)", record["epoch"], record["loss"], record["lr"], val,
                     record["wall_time_s"])

    model, wall = train(cfg, on_epoch=report)
    metrics = []
    if args.val is not None:
        pairs = load_pairs(args.val, args.scale)
        ours = mean_score(score_pairs(model_upscaler(model), pairs, args.scale))
        bicubic = mean_score(score_pairs(bicubic_upscaler(args.scale), pairs, args.scale))
        metrics.append(Metric(dataset=args.val.name, psnr=ours.psnr, ssim=ours.ssim,
                              bicubic_psnr=bicubic.psnr, bicubic_ssim=bicubic.ssim))
    training = Training(
        data=[p.name for p in args.train],
        command="python -m app.cli.train " + shlex.join(sys.argv[1:] if argv is None else argv),
        epochs=cfg.epochs,
        steps=cfg.epochs * cfg.steps_per_epoch,
        batch_size=cfg.batch_size,
        patch_size=cfg.patch,
        optimizer=f"Adam(lr={cfg.lr})",
        schedule=schedule(cfg),
        seed=cfg.seed,
        wall_time_s=round(wall, 1),
        device=describe(torch.device(device)),
        history=cfg.history,
        previous=earlier_phases(args.init),
    )
    path = save_model(model, args.out, name, metrics=metrics, training=training)
    logging.info("published %s", path)


if __name__ == "__main__":
    main()
