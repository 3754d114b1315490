"""The note's Section 3 experiment: matched LR/HR pairs, and the experiment command end to end on tiny images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from app.cli.experiment import main as experiment_main
from app.core.espcn import ESPCN
from app.experiments.hr_space import (
    HRSpaceNet,
    layer_macs_per_output_pixel,
    layer_parameters,
    macs_per_output_pixel,
    matched_pair,
    measured_macs_per_output_pixel,
    parameter_count,
)
from app.experiments.section3 import DEFAULT_WIDTHS, Section3Config, equal_time_steps


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("depth", [2, 3, 5])
def test_matched_pairs_cost_the_same_per_output_pixel(scale: int, depth: int) -> None:
    lr, hr = matched_pair(scale, depth, DEFAULT_WIDTHS[scale])
    assert isinstance(lr, ESPCN) and isinstance(hr, HRSpaceNet)
    # every layer, from the weights' shapes
    for a, b in zip(layer_macs_per_output_pixel(lr), layer_macs_per_output_pixel(hr), strict=True):
        assert abs(a - b) / a < 0.05
    # and counted by hooks on a real forward of one frame, borders included
    measured_lr = measured_macs_per_output_pixel(lr, (96, 128))
    measured_hr = measured_macs_per_output_pixel(hr, (96, 128))
    assert abs(measured_lr - measured_hr) / measured_lr < 0.05
    assert measured_lr == pytest.approx(macs_per_output_pixel(lr), rel=0.15)  # the halo adds little


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_lr_network_has_r_squared_times_the_parameters_per_hidden_layer(scale: int) -> None:
    lr, hr = matched_pair(scale, 4, DEFAULT_WIDTHS[scale])
    hidden_lr, hidden_hr = layer_parameters(lr)[1:-1], layer_parameters(hr)[1:-1]
    assert len(hidden_lr) == 2
    assert all(a == scale**2 * b for a, b in zip(hidden_lr, hidden_hr, strict=True))
    assert parameter_count(lr) > scale**2 * parameter_count(hr) * 0.9


def test_the_notes_x2_example() -> None:
    """n = 32 maps of 3×3 in LR against 8 maps of 6×6 in HR: 9,216 against 2,304 weights, same cost."""
    lr, hr = matched_pair(2, 3, 32)
    assert tuple(lr.features[2].weight.shape) == (32, 32, 3, 3)
    assert tuple(hr.features[2].weight.shape) == (8, 8, 6, 6)
    assert lr.features[2].weight.numel() == 9216 and hr.features[2].weight.numel() == 2304
    assert layer_macs_per_output_pixel(lr)[1] == layer_macs_per_output_pixel(hr)[1] == 2304


def test_widths_must_split_into_hr_maps() -> None:
    with pytest.raises(ValueError, match="multiple of"):
        matched_pair(3, 3, 32)


@pytest.mark.parametrize("scale,depth", [(2, 3), (2, 4), (3, 3)])
def test_hr_network_patch_with_halo_gives_the_whole_image_pixels(scale: int, depth: int) -> None:
    """Training on halo'd patches learns exactly what whole-image inference runs (as for ESPCN)."""
    torch.manual_seed(0)
    _, hr = matched_pair(scale, depth, 4 * scale**2)
    x = torch.rand(1, 1, 23, 19)
    with torch.no_grad():
        whole = hr(x)
        assert whole.shape == (1, 1, 23 * scale, 19 * scale)
        rad = hr.radius
        padded = F.pad(x, (rad,) * 4, mode="replicate")
        top, left, h, w = 5, 3, 9, 11
        patch = hr.forward_valid(padded[..., top : top + h + 2 * rad, left : left + w + 2 * rad])
    expected = whole[..., scale * top : scale * (top + h), scale * left : scale * (left + w)]
    torch.testing.assert_close(patch, expected, rtol=0, atol=1e-6)


def test_equal_time_gives_the_slower_network_proportionally_fewer_steps() -> None:
    cfg = Section3Config(train_dirs=[], val_dir=Path("."), steps=1000)
    budget, steps = equal_time_steps(cfg, {"lr": 0.02, "hr": 0.08})
    assert budget == pytest.approx(20.0) and steps == {"lr": 1000, "hr": 250}
    cfg.time_budget = 40.0
    assert equal_time_steps(cfg, {"lr": 0.02, "hr": 0.08})[1] == {"lr": 2000, "hr": 500}


def _images(folder: Path, n: int = 3, size: int = 48) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        channels = [0.5 + 0.5 * np.sin(2 * np.pi * (rng.uniform(1, 6) * xx + rng.uniform(1, 6) * yy)
                                       + rng.uniform(0, 6)) for _ in range(3)]
        Image.fromarray((np.stack(channels, -1) * 255).astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.mark.slow  # several seconds here: `make test` runs it, `make test-fast` does not
def test_experiment_command_runs_end_to_end_and_resumes_bit_exactly(tmp_path: Path) -> None:
    data = _images(tmp_path / "data")
    common = ["section3", "--train", str(data), "--val", str(data), "--depths", "2", "3", "--width", "2=8", "3=9",
              "--steps", "6", "--batch-size", "4", "--patch", "8", "--stride", "8", "--calibration-steps", "2",
              "--bench-repeats", "1", "--checkpoint-every", "4"]
    whole, chopped = tmp_path / "whole", tmp_path / "chopped"
    assert experiment_main([*common, "--scales", "2", "3", "--out", str(whole), "--publish", str(tmp_path / "docs")]) == 0
    report = json.loads((whole / "results.json").read_text())
    assert len(report["rows"]) == 8 and {r["family"] for r in report["rows"]} == {"lr", "hr"}
    for row in report["rows"]:
        assert row["patches_steps"] == 6 and 1 <= row["time_steps"]
        assert np.isfinite(row["patches_psnr"]) and row["inference_s"] > 0
    assert "equal time" in (whole / "table.md").read_text()
    for name in ("section3/table.md", "section3/results.json", "section3_psnr_vs_time.png",
                 "section3_psnr_vs_params.png"):
        assert (tmp_path / "docs" / name).stat().st_size > 0

    # ×2 interrupted after 3 steps of every run, then resumed: the same numbers as the uninterrupted run
    chopped.mkdir()
    shutil.copyfile(whole / "calibration.json", chopped / "calibration.json")  # the same step budgets
    common += ["--scales", "2", "--out", str(chopped)]
    assert experiment_main([*common, "--stop-after", "3"]) == 1
    assert not (chopped / "results.json").exists()
    assert experiment_main(common) == 0
    again = json.loads((chopped / "results.json").read_text())
    assert len(again["rows"]) == 4
    for a, b in zip(report["rows"][:4], again["rows"], strict=True):
        assert (a["patches_psnr"], a["time_psnr"], a["time_steps"]) == (b["patches_psnr"], b["time_psnr"],
                                                                          b["time_steps"])
        assert len(b["patches_name"]) and (chopped / "runs" / b["patches_name"] / "model.safetensors").is_file()

    # a rerun of a finished experiment reuses every run and the timings
    stamp = (chopped / "runs" / again["rows"][0]["patches_name"] / "result.json").stat().st_mtime_ns
    timing = (chopped / "timing.json").read_text()
    assert experiment_main(common) == 0
    assert (chopped / "runs" / again["rows"][0]["patches_name"] / "result.json").stat().st_mtime_ns == stamp
    assert (chopped / "timing.json").read_text() == timing

    # a run folder trained under other settings is never resumed
    with pytest.raises(SystemExit, match="other settings"):
        experiment_main([*common, "--lr", "5e-4"])
