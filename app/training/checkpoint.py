"""Resumable training checkpoints without pickle: tensors in safetensors, the rest in JSON.

A checkpoint is written to a temporary name and renamed, so an interrupted
write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor


def _split(tree: Any, prefix: str, tensors: dict[str, Tensor]) -> Any:
    """Replace every tensor in a nested dict/list with a ``{"$tensor": key}`` reference."""
    if isinstance(tree, Tensor):
        tensors[prefix] = tree.detach().cpu().contiguous()
        return {"$tensor": prefix}
    if isinstance(tree, dict):
        return {str(k): _split(v, f"{prefix}.{k}", tensors) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_split(v, f"{prefix}.{i}", tensors) for i, v in enumerate(tree)]
    return tree


def _join(tree: Any, tensors: dict[str, Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"$tensor"}:
            return tensors[tree["$tensor"]]
        return {k: _join(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_join(v, tensors) for v in tree]
    return tree


def _int_keys(state: dict[str, Any]) -> dict[Any, Any]:
    """JSON turns the optimizer's integer parameter ids into strings; turn them back."""
    return {int(k) if k.isdigit() else k: v for k, v in state.items()}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tensors: dict[str, Tensor] = {}
    meta = _split(state, "s", tensors)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_t, tmp_j = path.with_suffix(".safetensors.tmp"), path.with_suffix(".json.tmp")
    save_file(tensors, str(tmp_t))
    tmp_j.write_text(json.dumps(meta))
    os.replace(tmp_t, path.with_suffix(".safetensors"))
    os.replace(tmp_j, path.with_suffix(".json"))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The saved state, or ``None`` when there is no complete checkpoint at ``path``."""
    t, j = path.with_suffix(".safetensors"), path.with_suffix(".json")
    if not (t.is_file() and j.is_file()):
        return None
    state = _join(json.loads(j.read_text()), load_file(str(t)))
    if "optimizer" in state:
        state["optimizer"]["state"] = _int_keys(state["optimizer"]["state"])
    return state


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].to(torch.uint8))
