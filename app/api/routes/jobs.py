"""``/jobs``: work too long for one request — videos, large images — queued, run in the background, polled.

``POST /jobs?scale=&format=`` streams the upload (multipart field ``file`` or a
raw ``video/*``/``image/*`` body) to the jobs folder within the byte limit and
the storage quota, checks it (image header, or the video's container, codec,
duration, frames and frame size) and answers ``202`` with the job's URLs; a
bad upload is refused here with a 4xx, never queued. ``GET /jobs/{id}`` is the
state and progress, ``GET /jobs/{id}/result`` the output once done,
``DELETE /jobs/{id}`` cancels and removes. The work itself is
:class:`app.jobs.JobManager`'s.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from app.api.common import ScaleQuery
from app.api.errors import ApiError, classify, error_responses
from app.api.state import StateDep
from app.api.upload import client_gone
from app.engine.errors import EngineError
from app.imaging.errors import ImageError
from app.jobs import JOB_FORMATS, JobManager, JobRecord, JobsUnavailable
from app.pipeline import InvalidOptions
from app.video import InvalidVideo, UnsupportedVideo, VideoError, VideoTooLarge

router = APIRouter(tags=["jobs"])

JobFormat = StrEnum("JobFormat", {name: name for name in JOB_FORMATS})
RAW_TYPES = ("video/", "image/", "application/octet-stream")
_CHUNK = 1 << 20

JOB_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The video or image, as multipart field `file` or as the raw body (`video/*`, `image/*`).",
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                               "properties": {"file": {"type": "string", "format": "binary"}}}},
            "video/*": {"schema": {"type": "string", "format": "binary"}},
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


class JobCreated(BaseModel):
    id: str
    status_url: str
    result_url: str
    state: str


class JobStatus(BaseModel):
    id: str
    kind: str
    state: str  # queued | running | done | failed | cancelled
    progress: float
    frames_done: int
    frames_total: int
    eta_s: float | None
    fps: float | None
    error: str | None
    error_code: str | None
    scale: int
    format: str
    created: float
    started: float | None
    finished: float | None
    expires: float | None
    result_bytes: int
    info: dict[str, Any]


def manager_of(request: Request) -> JobManager:
    return request.app.state.jobs


def status_of(record: JobRecord) -> JobStatus:
    eta = record.eta_s()
    return JobStatus(
        id=record.id, kind=record.kind, state=record.state, progress=round(record.progress, 4),
        frames_done=record.frames_done, frames_total=record.frames_total,
        eta_s=None if eta is None else round(eta, 1), fps=record.fps, error=record.error,
        error_code=record.error_code, scale=record.scale, format=record.format, created=record.created,
        started=record.started, finished=record.finished, expires=record.expires,
        result_bytes=record.result_bytes, info=record.info,
    )


def _video_error(exc: VideoError) -> ApiError:
    if isinstance(exc, VideoTooLarge):
        return ApiError(413, exc.code, str(exc))
    if isinstance(exc, UnsupportedVideo):
        return ApiError(415, exc.code, str(exc))
    if isinstance(exc, InvalidVideo):
        return ApiError(400, exc.code, str(exc))
    return ApiError(400, "invalid_video", str(exc))


def _unavailable(exc: JobsUnavailable) -> ApiError:
    headers = {"Retry-After": str(round(exc.retry_after_s))} if exc.retry_after_s is not None else None
    return ApiError(exc.status, exc.code, str(exc), headers)


def _record(manager: JobManager, job_id: str) -> JobRecord:
    record = manager.get(job_id)
    if record is None:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    if record.expired:
        raise ApiError(410, "expired", f"job {job_id} finished and its result expired")
    return record


async def _counted(request: Request, limit: int, over: ApiError) -> AsyncIterator[bytes]:
    """The request body, chunk by chunk, raising ``over`` as soon as it passes ``limit`` bytes."""
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise over
            yield chunk
    except ClientDisconnect:
        raise client_gone() from None


async def receive_upload(request: Request, path: Path, manager: JobManager) -> None:
    """Stream the upload to ``path`` within the byte limit (413) and the quota (507); 415/422/400 as for /upscale."""
    room = manager.room()
    limits = manager.limits
    if room < limits.max_upload_bytes:
        limit, over = room, ApiError(507, "storage_full", "the upload does not fit in the jobs storage quota")
    else:
        limit, over = limits.max_upload_bytes, ApiError(
            413, "body_too_large", f"request body is larger than the limit of {limits.max_upload_bytes} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise over
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        parser = MultiPartParser(request.headers, _counted(request, limit, over), max_files=1, max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc.message}") from None
        try:
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise ApiError(422, "missing_file", "multipart body has no file field 'file'")
            await asyncio.to_thread(_copy, upload, path)
        finally:
            await form.close()
        return
    if not content_type.startswith(RAW_TYPES):
        raise ApiError(415, "unsupported_media_type", "send multipart field 'file' or a raw video/* or image/* body"
                       + (f", not {content_type.split(';')[0]!r}" if content_type else ""))
    with path.open("wb") as f:
        async for chunk in _counted(request, limit, over):
            f.write(chunk)
    if path.stat().st_size == 0:
        raise ApiError(422, "missing_file", "the body is empty: send the video or image")


def _copy(upload: UploadFile, path: Path) -> None:
    upload.file.seek(0)
    with path.open("wb") as f:
        shutil.copyfileobj(upload.file, f, _CHUNK)


@router.post(
    "/jobs",
    summary="Queue a video (or a large image) to be super-resolved in the background",
    status_code=202,
    response_model=JobCreated,
    responses={**error_responses(400, 413, 415, 422, 503), 507: {"description": "Jobs storage quota full"}},
    openapi_extra=JOB_UPLOAD_BODY,
)
async def create_job(
    request: Request,
    state: StateDep,
    scale: ScaleQuery,
    format: Annotated[JobFormat, Query(
        description="videos: `mp4` (H.264), `webm` (VP9) or `same` (WebM for WebM/Matroska input, else MP4); "
        "images: `png`, `jpeg`, `webp` or `same`")] = JobFormat.same,
) -> JSONResponse:
    manager = manager_of(request)
    job_id: str | None = None
    try:
        state.pipeline.check_scale(scale)  # before the body is read
        declared = request.headers.get("content-length")
        job_id, path = manager.reserve(int(declared) if declared and declared.isdigit() else None)
        await receive_upload(request, path, manager)
        record = await manager.admit(job_id, path, scale, format.value)
    except BaseException as exc:
        if job_id is not None:
            manager.discard(job_id)
        if isinstance(exc, JobsUnavailable):
            raise _unavailable(exc) from None
        if isinstance(exc, VideoError):
            raise _video_error(exc) from None
        if isinstance(exc, ImageError | EngineError | InvalidOptions | ApiError):
            raise classify(exc, state.settings.overload_status) from None
        raise
    url = f"/jobs/{record.id}"
    body = JobCreated(id=record.id, status_url=url, result_url=f"{url}/result", state=record.state)
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": url})


@router.get("/jobs/{job_id}", summary="A job's state, progress and ETA", response_model=JobStatus,
            responses=error_responses(404) | {410: {"description": "The job finished and its result expired"}})
async def job_status(request: Request, job_id: str) -> JobStatus:
    return status_of(_record(manager_of(request), job_id))


@router.get(
    "/jobs/{job_id}/result",
    summary="A finished job's output",
    response_class=FileResponse,
    responses={**error_responses(404), 409: {"description": "Not done (queued, running, failed or cancelled)"},
               410: {"description": "Expired"}},
)
async def job_result(request: Request, job_id: str) -> Response:
    manager = manager_of(request)
    record = _record(manager, job_id)
    if record.state != "done":
        detail = f"job {job_id} is {record.state}" + (f": {record.error}" if record.error else "")
        raise ApiError(409, "not_done", detail)
    path = manager.result_path(record)
    if not path.is_file():  # expired between the read and now
        raise ApiError(410, "expired", f"job {job_id} finished and its result expired")
    ext = path.suffix
    return FileResponse(path, media_type=record.media_type, filename=f"{job_id}_x{record.scale}{ext}",
                        headers={"X-Scale": str(record.scale)})


@router.delete("/jobs/{job_id}", summary="Cancel a job and remove it and its files", status_code=204,
               responses=error_responses(404))
async def delete_job(request: Request, job_id: str) -> Response:
    if not await manager_of(request).delete(job_id):
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return Response(status_code=204)
