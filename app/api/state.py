"""What the app holds between requests, built once in the lifespan (never at import time)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from starlette.types import Scope

from app.config import Settings, get_settings
from app.pipeline import Pipeline


@dataclass
class ServiceState:
    settings: Settings
    pipeline: Pipeline  # models, engine, pools: everything below HTTP

    @property
    def device_name(self) -> str:
        """Where the models run, in words (a device process's answer arrives once it is connected)."""
        return self.pipeline.device_name


async def get_state(request: Request) -> ServiceState:
    """``async`` on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, a hop per request."""
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def settings_for(scope: Scope, given: Settings | None = None) -> Settings:
    """The settings a middleware serves under: those it was given, else the running app's, else the environment's."""
    if given is not None:
        return given
    service = getattr(getattr(scope.get("app"), "state", None), "service", None)
    return service.settings if service is not None else get_settings()

