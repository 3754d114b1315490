"""Discover, verify and load models from a folder of manifests and safetensors files.

Loading never unpickles: tensors come from safetensors, metadata from JSON.
A model is refused — with one clear log line, while the others still load —
when its manifest does not validate, its weights file is missing or hashes
differently from the manifest, or its tensors do not fit the architecture.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from app.core.espcn import ESPCN
from app.store.manifest import Architecture, Manifest, Metric, Training

log = logging.getLogger(__name__)


class ModelRejected(Exception):
    """A model in the store that must not be served; the message says why."""


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    model: ESPCN
    path: Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_model(arch: Architecture) -> ESPCN:
    """The one ESPCN builder: a manifest's architecture → the module (training builds through it too)."""
    return ESPCN(
        arch.scale,
        channels=arch.channels,
        widths=arch.widths,
        kernel_sizes=arch.kernel_sizes,
        activation=arch.activation,
    )


def load_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        raise ModelRejected(f"{path.name}: invalid manifest: {exc}") from exc


def load_model(manifest_path: Path) -> LoadedModel:
    """Load one model, verifying hash and tensor shapes; raises :class:`ModelRejected`."""
    manifest = load_manifest(manifest_path)
    weights = manifest_path.parent / manifest.weights
    if not weights.is_file():
        raise ModelRejected(f"{manifest.name}: weights file {weights} is missing")
    actual = sha256_of(weights)
    if actual != manifest.sha256:
        raise ModelRejected(
            f"{manifest.name}: sha256 mismatch for {weights.name}: manifest says {manifest.sha256}, file is {actual}"
        )
    if manifest.architecture.scale != manifest.scale:
        raise ModelRejected(f"{manifest.name}: architecture scale {manifest.architecture.scale} != {manifest.scale}")
    model = build_model(manifest.architecture)
    state = load_file(weights)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        raise ModelRejected(f"{manifest.name}: tensors do not match the architecture: expected {expected}, found {found}")
    model.load_state_dict(state)
    model.eval().requires_grad_(False)
    return LoadedModel(manifest=manifest, model=model, path=manifest_path)


def discover(store: Path) -> dict[int, LoadedModel]:
    """All valid models in ``store``, one per scale (the first manifest by name wins)."""
    models: dict[int, LoadedModel] = {}
    for manifest_path in sorted(store.glob("*.json")):
        try:
            loaded = load_model(manifest_path)
        except ModelRejected as exc:
            log.error("model refused: %s", exc)
            continue
        scale = loaded.manifest.scale
        if scale in models:
            log.warning("model %s ignored: scale x%d already served by %s", loaded.manifest.name, scale,
                        models[scale].manifest.name)
            continue
        models[scale] = loaded
        log.info("model loaded: %s (x%d) from %s", loaded.manifest.name, scale, manifest_path)
    return models


def save_model(
    model: ESPCN,
    store: Path,
    name: str,
    *,
    metrics: list[Metric] | None = None,
    training: Training | None = None,
) -> Path:
    """Write ``<name>.safetensors`` and ``<name>.json`` into ``store``; returns the manifest path."""
    store.mkdir(parents=True, exist_ok=True)
    weights = store / f"{name}.safetensors"
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"format": "pt", "model": name})
    manifest = Manifest(
        name=name,
        scale=model.scale,
        architecture=Architecture(**model.architecture()),
        weights=weights.name,
        sha256=sha256_of(weights),
        created=datetime.now(UTC).replace(microsecond=0),
        metrics=metrics or [],
        training=training,
    )
    path = store / f"{name}.json"
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
    return path
