"""The model store: safetensors weights beside JSON manifests (:mod:`app.store.registry` loads them)."""

from app.config import DEFAULT_STORE

__all__ = ["DEFAULT_STORE"]
