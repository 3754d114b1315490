"""Choosing the device and CPU threading once, at start-up."""

from __future__ import annotations

import logging
from typing import Literal

import torch

log = logging.getLogger(__name__)

DeviceSetting = Literal["auto", "cpu", "cuda"]


def resolve_device(setting: DeviceSetting) -> torch.device:
    """``auto`` takes CUDA when present; ``cuda`` without a GPU is a configuration error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("SR_DEVICE=cuda but no CUDA device is available")
    if setting == "cpu" or (setting == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda")


def configure_threads(threads: int) -> int:
    """Set PyTorch's intra-op threads (0 keeps its default); returns the count in force."""
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
