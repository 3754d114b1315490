"""``python -m app.cli.evaluate`` on real photographs: the protocol's table, and candidates side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from skimage import data as skdata

from app.cli.evaluate import main as evaluate_main
from app.core.espcn import ESPCN
from app.store.registry import save_model

STORE = Path(__file__).resolve().parents[1] / "model_store"


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for name in ("chelsea", "coffee"):
        image = Image.fromarray(getattr(skdata, name)())
        image.crop((60, 60, 180, 180)).save(folder / f"{name}.png")
    return folder


def test_two_candidates_side_by_side_with_bicubic(photos: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    untrained = save_model(ESPCN(3), tmp_path / "untrained", "espcn-x3")
    out = tmp_path / "scores.json"
    evaluate_main([str(photos), "--scale", "3", "--model", str(STORE / "espcn-x3.json"), str(untrained),
                   "--json", str(out)])
    scores = json.loads(out.read_text())
    shipped, fresh = f"espcn-x3 ({STORE})", f"espcn-x3 ({untrained.parent})"
    assert set(scores) == {"bicubic", shipped, fresh}
    mean = {name: sum(s["psnr"] for s in rows) / len(rows) for name, rows in scores.items()}
    assert [s["name"] for s in scores["bicubic"]] == ["chelsea", "coffee"]
    assert mean[shipped] > mean["bicubic"] + 0.5 > mean[fresh]
    assert "| **mean** |" in capsys.readouterr().out


def test_a_model_of_another_scale_is_refused(photos: Path) -> None:
    with pytest.raises(SystemExit, match="x2 model, not x3"):
        evaluate_main([str(photos), "--scale", "3", "--model", str(STORE / "espcn-x2.json")])


def test_resizing_the_hr_instead_of_cropping_it_inflates_the_scores(tmp_path: Path, capsys) -> None:
    """``--hr-fit resize`` (how some reimplementations fit HR sizes) blurs the ground truth: every score rises."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(skdata, name)()).crop((100, 40, 281, 201)).save(folder / f"{name}.png")  # 181×161
    means = {}
    for fit in ("crop", "resize"):
        out = tmp_path / f"{fit}.json"
        evaluate_main([str(folder), "--scale", "3", "--hr-fit", fit, "--json", str(out)])
        scores = json.loads(out.read_text())
        means[fit] = {name: sum(s["psnr"] for s in rows) / len(rows) for name, rows in scores.items()}
    assert "NOT the protocol" in capsys.readouterr().out
    for name, crop in means["crop"].items():
        assert means["resize"][name] > crop + 0.2, name
