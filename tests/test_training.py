"""Training on tiny synthetic data: the loss goes down, checkpoints resume, the store gets a valid model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.cli.train import main as train_main
from app.store.registry import load_model, save_model
from app.training.checkpoint import load_checkpoint
from app.training.trainer import TrainConfig, build, dihedral, fit_epochs, train


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


def test_a_warm_started_model_records_the_phases_before_it(tmp_path: Path) -> None:
    data = synthetic_folder(tmp_path / "data", n=2)
    common = ["--scale", "2", "--train", str(data), "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
              "--patch", "10", "--rescales", "1.0", "--out", str(tmp_path / "store")]
    train_main([*common, "--checkpoint", str(tmp_path / "ck1"), "--name", "first-x2"])
    train_main([*common, "--checkpoint", str(tmp_path / "ck2"), "--name", "second-x2", "--lr", "1e-4",
                "--init", str(tmp_path / "store" / "first-x2.json")])
    first = load_model(tmp_path / "store" / "first-x2.json").manifest.training
    second = load_model(tmp_path / "store" / "second-x2.json").manifest.training
    assert first is not None and second is not None
    assert second.previous == [first] and first.previous == []
    phases = second.phases()
    assert [p.optimizer for p in phases] == ["Adam(lr=0.001)", "Adam(lr=0.0001)"]
    assert "warm start from" in phases[-1].schedule and "--init" in phases[-1].command


def test_dihedral_covers_the_eight_symmetries() -> None:
    x = torch.arange(9.0).view(1, 1, 3, 3)
    seen = {tuple(dihedral(x, k).flatten().tolist()) for k in range(8)}
    assert len(seen) == 8


def test_warm_start_begins_from_the_stored_weights(tmp_path: Path) -> None:
    data = synthetic_folder(tmp_path / "data", n=2)
    base = TrainConfig(scale=2, train_dirs=[data], epochs=1, steps_per_epoch=1, batch_size=2, patch=10,
                       rescales=(1.0,), checkpoint=tmp_path / "a" / "state")
    torch.manual_seed(123)
    start = build(base)
    manifest = save_model(start, tmp_path / "store", "start-x2")
    # a vanishing learning rate: one step leaves the warm-started weights where they were
    cfg = TrainConfig(**{**base.__dict__, "init": manifest, "lr": 1e-12, "lr_min": 1e-12, "history": []})
    model, _ = train(cfg)
    for name, tensor in start.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, atol=1e-9, rtol=0)
    other = save_model(build(TrainConfig(**{**base.__dict__, "widths": (8, 4)})), tmp_path / "store", "narrow-x2")
    bad = TrainConfig(**{**base.__dict__, "init": other, "checkpoint": tmp_path / "b" / "state", "history": []})
    with pytest.raises(ValueError, match="architecture"):
        train(bad)


def test_fit_epochs_follows_the_pace_within_the_request() -> None:
    assert fit_epochs(requested=100, done=1, epoch_s=10.0, left_s=95.0) == 10  # 9 more fit
    assert fit_epochs(requested=5, done=1, epoch_s=10.0, left_s=95.0) == 5  # never past the request
    assert fit_epochs(requested=100, done=3, epoch_s=10.0, left_s=5.0) == 3  # out of time: stop now
    assert fit_epochs(requested=100, done=3, epoch_s=10.0, left_s=-20.0) == 3


def test_a_spent_time_budget_stops_after_the_epoch_in_progress(tmp_path: Path) -> None:
    data = synthetic_folder(tmp_path / "data", n=2)
    cfg = TrainConfig(scale=2, train_dirs=[data], epochs=50, steps_per_epoch=2, batch_size=2, patch=10,
                      rescales=(1.0,), checkpoint=tmp_path / "ck" / "state", time_budget=0.0)
    train(cfg)
    assert cfg.epochs == 1 and len(cfg.history) == 1
    assert load_checkpoint(cfg.checkpoint)["epoch"] == 1
