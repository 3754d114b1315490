"""The model store: safetensors weights beside JSON manifests (:mod:`app.store.registry` loads them)."""

from pathlib import Path

DEFAULT_STORE = Path(__file__).resolve().parents[2] / "model_store"  # the models this repository ships; here, not
# in the registry, so that reading the settings (app.api.settings) does not import PyTorch
