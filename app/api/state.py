"""What the app holds between requests, built once in the lifespan (never at import time)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

import torch
from fastapi import Depends, Request

from app.api.settings import Settings
from app.engine.batcher import Engine
from app.imaging.limits import ImageLimits
from app.store.registry import LoadedModel


@dataclass
class ServiceState:
    settings: Settings
    models: dict[int, LoadedModel]
    engine: Engine
    device: torch.device
    device_name: str
    codec_pool: ThreadPoolExecutor
    limits: ImageLimits


async def get_state(request: Request) -> ServiceState:
    """``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request."""
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]
