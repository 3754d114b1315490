"""Model store: safetensors + manifest round trip, hash and architecture checks, discovery."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from app.core.espcn import ESPCN
from app.store.manifest import Manifest
from app.store.registry import ModelRejected, discover, load_model, save_model


def _saved(tmp_path: Path, scale: int = 3, name: str | None = None) -> tuple[ESPCN, Path]:
    torch.manual_seed(scale)
    model = ESPCN(scale)
    return model, save_model(model, tmp_path, name or f"espcn-x{scale}")


def test_round_trip_gives_the_same_model(tmp_path: Path) -> None:
    model, manifest = _saved(tmp_path)
    loaded = load_model(manifest)
    assert loaded.manifest.scale == 3 and loaded.manifest.architecture.widths == [64, 32]
    x = torch.rand(1, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    # nothing pickled: the weights file is safetensors (8-byte header length, then JSON)
    raw = (tmp_path / "espcn-x3.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + header_len])["subpixel.weight"]["shape"] == [9, 32, 3, 3]


def test_tampered_weights_are_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _, manifest = _saved(tmp_path)
    weights = tmp_path / "espcn-x3.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelRejected, match="sha256 mismatch"):
        load_model(manifest)
    with caplog.at_level(logging.ERROR):
        assert discover(tmp_path) == {}
    assert "sha256 mismatch" in caplog.text


def test_architecture_that_does_not_fit_the_tensors_is_refused(tmp_path: Path) -> None:
    _, manifest = _saved(tmp_path)
    doc = json.loads(manifest.read_text())
    doc["architecture"]["widths"] = [32, 32]
    manifest.write_text(json.dumps(doc))
    with pytest.raises(ModelRejected, match="do not match the architecture"):
        load_model(manifest)


def test_invalid_manifest_and_missing_weights(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ModelRejected, match="invalid manifest"):
        load_model(tmp_path / "broken.json")
    _, manifest = _saved(tmp_path, 2)
    (tmp_path / "espcn-x2.safetensors").unlink()
    with pytest.raises(ModelRejected, match="missing"):
        load_model(manifest)
    doc = json.loads(manifest.read_text())
    doc["weights"] = "../elsewhere.safetensors"
    with pytest.raises(ValueError):
        Manifest.model_validate(doc)


def test_discover_one_model_per_scale_and_skips_bad_ones(tmp_path: Path) -> None:
    _saved(tmp_path, 2)
    _saved(tmp_path, 3)
    _saved(tmp_path, 3, "zz-other-x3")
    (tmp_path / "junk.json").write_text("[]")
    models = discover(tmp_path)
    assert sorted(models) == [2, 3]
    assert models[3].manifest.name == "espcn-x3"
