"""``GET /models``, ``/healthz``, ``/readyz`` and ``/metrics``: what runs, whether it can serve, and how."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.api.state import StateDep
from app.observability import metrics

router = APIRouter()


class ModelInfo(BaseModel):
    name: str
    scale: int
    parameters: int
    macs_per_lr_pixel: int
    macs_per_hr_pixel: float
    receptive_field_radius: int
    architecture: dict[str, Any]
    metrics: list[dict[str, Any]]
    device: str
    backend: str  # the inference path in use: onnxruntime, torchscript or eager (CUDA: eager)
    sha256: str
    created: str


class ModelList(BaseModel):
    models: list[ModelInfo]


@router.get("/models", response_model=ModelList, tags=["models"], summary="The served models and their metrics")
async def list_models(state: StateDep) -> ModelList:
    out = []
    pipeline = state.pipeline
    for scale, loaded in sorted(pipeline.models.items()):
        m, model = loaded.manifest, loaded.model
        macs = model.macs_per_lr_pixel()
        out.append(
            ModelInfo(
                name=m.name,
                scale=scale,
                parameters=model.parameter_count(),
                macs_per_lr_pixel=macs,
                macs_per_hr_pixel=macs / scale**2,
                receptive_field_radius=model.radius,
                architecture=m.architecture.model_dump(),
                metrics=[x.model_dump() for x in m.metrics],
                device=state.device_name,
                backend=pipeline.backend(scale),
                sha256=m.sha256,
                created=m.created.isoformat(),
            )
        )
    return ModelList(models=out)


@router.get(
    "/healthz",
    tags=["health"],
    summary="Liveness: the process answers, and its device still computes",
    responses={503: {"description": "The device this process holds failed for good (a sticky CUDA error): "
                                    "restart the process"}},
)
async def healthz(request: Request) -> JSONResponse:
    state = getattr(request.app.state, "service", None)
    lost = state.pipeline.lost if state is not None else None
    if lost is not None:  # in-process models only: a device process restarts itself
        return JSONResponse({"status": "device lost", "detail": lost}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    tags=["health"],
    summary="Readiness: models loaded and warmed up, worker running",
    responses={503: {"description": "Not ready (starting, no models, worker stopped, or shutting down)"}},
)
async def readyz(request: Request) -> JSONResponse:
    state = getattr(request.app.state, "service", None)
    if state is None or not state.pipeline.ready:
        return JSONResponse({"status": "not ready"}, status_code=503)
    return JSONResponse(
        {"status": "ready", "scales": list(state.pipeline.scales), "device": state.device_name,
         "queue_depth": state.pipeline.engine.queue_depth}
    )


@router.get("/metrics", tags=["observability"], summary="Prometheus metrics", response_class=Response)
async def prometheus_metrics(request: Request) -> Response:
    body, content_type = metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
