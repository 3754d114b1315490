"""``POST /upscale``: HTTP ⇄ the request pipeline, nothing else.

The route checks the query (scale served, options coherent) before it reads
the body, reads the body within the byte limit (taking the request's queue
room from the image's first bytes, so a full queue refuses it mid-upload), hands the bytes to
:class:`~app.pipeline.Pipeline` and turns its result into a response — or its
exception into a JSON error. Pixels, codecs and the model live below.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from enum import StrEnum
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Query, Request, Response

from app.api.access_log import note_sizes
from app.api.errors import ApiError, classify, error_responses, field_error, invalid
from app.api.params import UPLOAD_BODY, ScaleQuery
from app.api.state import StateDep
from app.api.upload import read_image_upload, upload_problems
from app.engine.batcher import Reservation
from app.engine.errors import EngineError, UnknownScale
from app.imaging.encode import OUTPUT_FORMATS
from app.imaging.errors import ImageError
from app.pipeline import OUTPUT_CHOICES, InvalidOptions, OutputOptions

router = APIRouter(tags=["super-resolution"])
T = TypeVar("T")

FORMAT_ALIASES = {"jpg": "jpeg"}  # the spelling of the file extension is accepted too
# png, jpeg, webp, same, and the aliases (TIFF is read, never written, so there is no `tif` to accept)
OutputFormat = StrEnum("OutputFormat", {name: name for name in (*OUTPUT_CHOICES, *FORMAT_ALIASES)})
FORMAT_HELP = ("output format: `png`, `jpeg` (or `jpg`), `webp`, or `same`: JPEG → JPEG, WebP → WebP, an animated "
               "GIF → GIF and an animated PNG → APNG, any other input → PNG")
UPSCALE_PARAMS = ("scale", "format", "quality", "lossless")

IMAGE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The super-resolved image; headers `X-Model`, `X-Scale`, `X-Process-Time-Ms`, `Server-Timing`.",
        "content": {media: {"schema": {"type": "string", "format": "binary"}}
                    for media in (*OUTPUT_FORMATS.values(), "image/gif")},  # GIF: an animated GIF with format=same
    }
}


async def until_disconnected(request: Request) -> None:
    """Returns when the client goes away (the body has been read, so only a disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it (its tiles are dropped)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(until_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
    raise ApiError(499, "client_gone", "client disconnected before the answer was ready")


def query_problems(request: Request, known: tuple[str, ...]) -> list[dict[str, object]]:
    """Repeated parameters (``?scale=2&scale=3`` would silently mean 3) and unknown ones (``fromat=jpeg`` would be PNG)."""
    params = request.query_params
    problems = [field_error(["query", k], "given more than once", "repeated")
                for k in sorted({k for k in params if len(params.getlist(k)) > 1})]
    problems += [field_error(["query", k], f"unknown parameter; this route takes {', '.join(known)}", "unknown")
                 for k in sorted(set(params) - set(known))]
    return problems


async def refuse_bad_query(request: Request, problems: list[dict[str, object]]) -> None:
    """Raise one 422 naming every problem (the upload's too); ``unknown_scale`` when that is the only one."""
    if not problems:
        return
    only_scale = all(p["type"] == "unknown_scale" for p in problems)
    problems += await upload_problems(request)
    raise invalid(problems, "unknown_scale" if only_scale else "invalid_parameters")


@router.post(
    "/upscale",
    summary="Super-resolve one image by a served scale",
    response_class=Response,
    responses={**IMAGE_RESPONSE, **error_responses(400, 413, 415, 422, 429, 503, 504)},
    openapi_extra=UPLOAD_BODY,
)
async def upscale(
    request: Request,
    state: StateDep,
    scale: ScaleQuery,
    format: Annotated[OutputFormat, Query(description=FORMAT_HELP)] = OutputFormat.png,
    quality: Annotated[int | None, Query(ge=1, le=100, description="JPEG/WebP quality (default 90)")] = None,
    lossless: Annotated[bool, Query(description="lossless WebP (PNG is always lossless)")] = False,
) -> Response:
    started = time.perf_counter()
    pipeline = state.pipeline
    reservation: Reservation | None = None

    def admit(prefix: bytes) -> bool:  # queue room from the header, while the rest of the body arrives
        nonlocal reservation
        reservation = pipeline.admit(prefix, scale)
        return reservation is not None

    try:
        problems = query_problems(request, UPSCALE_PARAMS)  # all of them, before the body is read
        try:
            pipeline.check_scale(scale)
        except UnknownScale as exc:
            problems.append(field_error(["query", "scale"], str(exc), "unknown_scale"))
        try:
            options = OutputOptions(FORMAT_ALIASES.get(format.value, format.value), quality, lossless)
        except InvalidOptions as exc:
            problems.append(field_error(["query", "format"], str(exc), "incoherent"))
        await refuse_bad_query(request, problems)
        data = await read_image_upload(request, state.settings.max_body_bytes, on_prefix=admit)
        result = await unless_disconnected(request, pipeline.upscale(data, scale, options, reservation=reservation))
    except (ImageError, EngineError, InvalidOptions, ApiError) as exc:
        raise classify(exc, state.settings.overload_status) from exc
    finally:
        if reservation is not None:
            reservation.release()  # idempotent: the pipeline has released it unless the body never came
    note_sizes(request, result.input_size, result.output_size)
    return Response(
        result.body,
        media_type=result.media_type,
        headers={
            "X-Model": result.model,
            "X-Scale": str(result.scale),
            "X-Process-Time-Ms": f"{(time.perf_counter() - started) * 1000:.1f}",
            "Server-Timing": result.timings.server_timing(),
        },
    )
