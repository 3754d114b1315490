"""The JSON manifest that sits beside every weights file: what the tensors are and how they were made.

Like torchvision's weight metadata, it is the contract a loader checks: the
architecture must rebuild a module whose state dict matches the tensors
exactly, and the weights file must hash to ``sha256``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MIN_SCALE, MAX_SCALE = 1, 8  # the scales a manifest may declare; what is served comes from the loaded store


class Architecture(BaseModel):
    """``ESPCN(**architecture)`` hyper-parameters."""

    model_config = ConfigDict(extra="forbid")

    scale: int = Field(ge=MIN_SCALE, le=MAX_SCALE)
    channels: int = Field(default=1, ge=1)
    widths: list[int] = Field(default=[64, 32], min_length=1)
    kernel_sizes: list[int] = Field(default=[5, 3, 3], min_length=2)
    activation: Literal["tanh", "relu", "prelu"] = "tanh"


class Metric(BaseModel):
    """PSNR/SSIM on one validation set under the Y-channel protocol."""

    dataset: str
    psnr: float
    ssim: float
    bicubic_psnr: float | None = None
    bicubic_ssim: float | None = None


class Training(BaseModel):
    """How the weights were produced; free-form enough to record any recipe."""

    data: list[str]
    command: str
    epochs: int
    steps: int
    batch_size: int
    patch_size: int
    optimizer: str
    schedule: str
    seed: int
    wall_time_s: float
    device: str
    history: list[dict[str, float]] = Field(default_factory=list)
    previous: list[Training] = Field(
        default_factory=list,
        description="the phases this one warm-started from (train --init), oldest first, each without its own previous",
    )

    def phases(self) -> list[Training]:
        """Every phase that produced these weights, oldest first, this one last."""
        return [*self.previous, self.model_copy(update={"previous": []})]


class Manifest(BaseModel):
    """One served model: ``<name>.json`` beside ``<weights>``."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    scale: int = Field(ge=MIN_SCALE, le=MAX_SCALE)
    architecture: Architecture
    weights: str = Field(description="weights file name, relative to the manifest")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    created: datetime
    input: str = "Y (BT.601 studio swing) / 255, one channel"
    metrics: list[Metric] = Field(default_factory=list)
    training: Training | None = None

    @field_validator("weights")
    @classmethod
    def _plain_file_name(cls, value: str) -> str:
        if "/" in value or "\\" in value or value.startswith("."):
            raise ValueError("weights must be a plain file name beside the manifest")
        if not value.endswith(".safetensors"):
            raise ValueError("weights must be a .safetensors file")
        return value
