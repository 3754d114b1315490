"""``/jobs``: work too long for one request — videos, large images — queued, run in the background, polled.

``POST /jobs?scale=&format=`` streams the upload (multipart field ``file`` or a
raw ``video/*``/``image/*`` body) to the jobs folder within the byte limit and
the storage quota, checks it (image header, or the video's container, codec,
duration, frames and frame size) and answers ``202`` with the job's URLs; a
bad upload is refused here with a 4xx, never queued. ``GET /jobs/{id}`` is the
state and progress, ``GET /jobs/{id}/result`` the output once done,
``DELETE /jobs/{id}`` cancels and removes. The work itself is
:class:`app.jobs.JobManager`'s.

The upload's bytes go straight into the job's folder, multipart ones too (parsed
as they stream, never spooled to the temporary folder, where the quota would not
see them), and every byte is reserved against the jobs quota before it is written.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

try:
    import python_multipart as multipart
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import parse_options_header
except ImportError:  # python-multipart < 0.0.13
    import multipart  # type: ignore[no-redef]
    from multipart.exceptions import FormParserError  # type: ignore[no-redef]
    from multipart.multipart import parse_options_header  # type: ignore[no-redef]

from app.api.errors import ApiError, classify, error_responses
from app.api.params import ScaleQuery
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
MAX_PARTS = 16  # multipart parts besides the file; their data is skipped, not kept

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


def download_stem(record: JobRecord) -> str:
    """The upload's file stem (``clip`` of ``C:\\videos\\clip.mp4``), printable; the job id for a raw body."""
    base = re.split(r"[\\/]", record.upload_name)[-1]
    stem = "".join(ch for ch in base.rsplit(".", 1)[0] if ch.isprintable() and ch not in '"')[:100].strip()
    return stem or record.id


def _record(manager: JobManager, job_id: str) -> JobRecord:
    try:
        record = manager.get(job_id)
    except JobsUnavailable as exc:  # the shared backend (Redis) is away: a clear 503, never a 404 or a 500
        raise _unavailable(exc) from None
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


class _UploadFile:
    """The job's upload file, each chunk reserved against the quota (:meth:`JobManager.grow`) before it is written."""

    def __init__(self, manager: JobManager, job_id: str, path: Path) -> None:
        self.manager, self.job_id, self.path = manager, job_id, path
        self.file = path.open("wb")
        self.written = 0
        self.reserved = 0

    async def write(self, data: bytes) -> None:
        if not data:
            return
        end = self.written + len(data)
        if end > self.reserved:
            try:
                self.reserved = await asyncio.to_thread(self.manager.grow, self.job_id, end)
            except JobsUnavailable as exc:
                raise _unavailable(exc) from None
        self.file.write(data)
        self.written = end


class _FilePart:
    """A streaming multipart reader that writes field ``file``'s data to the upload file as it arrives.

    Starlette's form parser spools files to the temporary folder (outside the jobs quota, and a
    second copy); this keeps one copy, in the job's folder, counted from its first byte.
    """

    def __init__(self, boundary: bytes, sink: _UploadFile) -> None:
        self.sink = sink
        self.found = False  # a file part named "file" was seen
        self.filename = ""  # its file name, for the result's download name
        self._parts = 0
        self._target = False
        self._header = b""
        self._value = b""
        self._disposition = b""
        self._pending: list[bytes] = []
        self.parser = multipart.MultipartParser(boundary, {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_header_field": self._field,
            "on_header_value": self._header_value, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
        })

    def _begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS + 1:
            raise ApiError(400, "invalid_multipart", f"malformed multipart body: more than {MAX_PARTS + 1} parts")
        self._target, self._header, self._value, self._disposition = False, b"", b"", b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]
        if len(self._header) + len(self._value) > 16384:
            raise ApiError(400, "invalid_multipart", "malformed multipart body: a part header over 16 KiB")

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") == b"file" and b"filename" in options and not self.found:
            self._target = self.found = True
            self.filename = options[b"filename"].decode("utf-8", "replace")

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._target:
            self._pending.append(data[start:end])

    async def feed(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except FormParserError as exc:
            raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None
        pending, self._pending = b"".join(self._pending), []
        await self.sink.write(pending)

    def finish(self) -> None:
        try:
            self.parser.finalize()
        except FormParserError as exc:
            raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from None


async def receive_upload(request: Request, job_id: str, path: Path, manager: JobManager) -> str:
    """Stream the upload to ``path`` within the byte limit (413) and the quota (507); 415/422/400 as for /upscale.

    Returns the multipart file name ("" for a raw body), so the result downloads as ``clip_x3.mp4``.
    """
    limit = manager.limits.max_upload_bytes
    over = ApiError(413, "body_too_large", f"request body is larger than the limit of {limit} bytes")
    content_type = request.headers.get("content-type", "").lower()
    boundary = None
    if content_type.startswith("multipart/form-data"):
        _, params = parse_options_header(request.headers["content-type"])
        boundary = params.get(b"boundary")
        if not boundary:
            raise ApiError(400, "invalid_multipart", "malformed multipart body: Missing boundary in multipart.")
    elif not content_type.startswith(RAW_TYPES):
        raise ApiError(415, "unsupported_media_type", "send multipart field 'file' or a raw video/* or image/* body"
                       + (f", not {content_type.split(';')[0]!r}" if content_type else ""))
    sink = _UploadFile(manager, job_id, path)
    try:
        form = _FilePart(boundary, sink) if boundary else None
        async for chunk in _counted(request, limit, over):
            if form is not None:
                await form.feed(chunk)
            else:
                await sink.write(chunk)
        if form is not None:
            form.finish()
    finally:
        sink.file.close()
    if form is not None and not form.found:
        raise ApiError(422, "missing_file", "multipart body has no file field 'file'")
    if sink.written == 0:
        raise ApiError(422, "missing_file", "the body is empty: send the video or image")
    return form.filename if form is not None else ""


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
        size = int(declared) if declared and declared.isdigit() else None
        if size is not None and size > manager.limits.max_upload_bytes:
            raise ApiError(413, "body_too_large",
                           f"request body is larger than the limit of {manager.limits.max_upload_bytes} bytes")
        job_id, path = manager.reserve(size)  # the declared bytes are held against the quota from here
        name = await receive_upload(request, job_id, path, manager)
        record = await manager.admit(job_id, path, scale, format.value, upload_name=name)
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
            responses=error_responses(404, 503) | {410: {"description": "The job finished and its result expired"}})
async def job_status(request: Request, job_id: str) -> JobStatus:
    return status_of(_record(manager_of(request), job_id))


@router.get(
    "/jobs/{job_id}/result",
    summary="A finished job's output",
    response_class=FileResponse,
    responses={**error_responses(404, 503), 409: {"description": "Not done (queued, running, failed or cancelled)"},
               410: {"description": "Expired"}},
)
async def job_result(request: Request, job_id: str) -> Response:
    manager = manager_of(request)
    record = _record(manager, job_id)
    if record.state != "done":
        detail = f"job {job_id} is {record.state}" + (f": {record.error}" if record.error else "")
        raise ApiError(409, "not_done", detail)
    path = manager.result_file(record)
    if path is None:  # expired between the read and now (or not a file of its folder)
        raise ApiError(410, "expired", f"job {job_id} finished and its result expired")
    ext = path.suffix
    return FileResponse(path, media_type=record.media_type, filename=f"{download_stem(record)}_x{record.scale}{ext}",
                        headers={"X-Scale": str(record.scale)})


@router.delete("/jobs/{job_id}", summary="Cancel a job and remove it and its files", status_code=204,
               responses=error_responses(404, 503))
async def delete_job(request: Request, job_id: str) -> Response:
    try:
        found = await manager_of(request).delete(job_id)
    except JobsUnavailable as exc:
        raise _unavailable(exc) from None
    if not found:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return Response(status_code=204)
