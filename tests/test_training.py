"""Training on tiny synthetic data: the loss goes down, checkpoints resume, the store gets a valid model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.cli.train import main as train_main
from app.store.registry import load_model
from app.training.checkpoint import load_checkpoint
from app.training.trainer import TrainConfig, dihedral, train


def synthetic_folder(folder: Path, n: int = 3, size: int = 72) -> Path:
    """Smooth random images (sums of sinusoids): structure a network can learn in a few steps."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        channels = []
        for _ in range(3):
            f = rng.uniform(1, 6, size=2)
            channels.append(0.5 + 0.5 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy) + rng.uniform(0, 6)))
        Image.fromarray((np.stack(channels, -1) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def test_a_few_steps_lower_the_loss_and_resume(tmp_path: Path) -> None:
    data = synthetic_folder(tmp_path / "data")
    cfg = TrainConfig(scale=3, train_dirs=[data], val_dir=data, epochs=2, steps_per_epoch=15, batch_size=8,
                      patch=12, stride=6, lr=3e-3, rescales=(1.0,), checkpoint=tmp_path / "ck" / "state")
    _, wall = train(cfg)
    losses = [h["loss"] for h in cfg.history]
    assert losses[1] < losses[0]
    assert wall > 0 and "val_psnr" in cfg.history[-1]
    saved = load_checkpoint(cfg.checkpoint)
    assert saved is not None and saved["epoch"] == 2
    # resuming with more epochs continues from epoch 2, keeping the history
    more = TrainConfig(**{**cfg.__dict__, "epochs": 3, "history": []})
    train(more)
    assert [h["epoch"] for h in more.history] == [1, 2, 3]
    assert more.history[:2] == cfg.history


def test_cli_publishes_a_loadable_model(tmp_path: Path) -> None:
    data = synthetic_folder(tmp_path / "data", n=2)
    store = tmp_path / "store"
    train_main(["--scale", "2", "--train", str(data), "--val", str(data), "--epochs", "1", "--steps-per-epoch", "3",
                "--batch-size", "4", "--patch", "10", "--rescales", "1.0", "--checkpoint", str(tmp_path / "ck"),
                "--out", str(store), "--name", "tiny-x2"])
    loaded = load_model(store / "tiny-x2.json")
    manifest = loaded.manifest
    assert manifest.scale == 2 and manifest.training is not None and manifest.training.steps == 3
    assert manifest.metrics and manifest.metrics[0].bicubic_psnr is not None
    assert "python -m app.cli.train" in manifest.training.command


def test_dihedral_covers_the_eight_symmetries() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    seen = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(seen) == 8
