"""Reading an uploaded image — multipart field ``file`` or a raw ``image/*`` body — within a byte limit.

Starlette has no body limit and spools multipart uploads to disk before the
app sees them, so the body is counted while it streams: the answer is 413 as
soon as the limit is passed (or at once, from ``Content-Length``), and only
then is a multipart body parsed, from memory.

Admission need not wait for the whole body: ``on_prefix`` is called with the
image's first bytes as they arrive (from inside the multipart framing too),
so the pipeline can hold or refuse the request's queue room from the header
while a large upload is still on the wire.

A client that goes away before its body has arrived is no error of ours:
starlette raises ``ClientDisconnect`` from the stream, which becomes 499
``client_gone`` here (counted under that reason by the metrics middleware,
logged as one access line, never as a traceback or a 500).
"""

from __future__ import annotations

import re
from collections.abc import Callable

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from app.api.errors import ApiError

RAW_TYPES = ("image/", "application/octet-stream")
PREFIX_MAX_BYTES = 256 * 1024  # a JPEG's size marker comes after its EXIF/ICC segments, rarely later than this
PrefixHook = Callable[[bytes], bool]  # the image's first bytes → True once it needs no more of them
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_FILE_PART = re.compile(rb'content-disposition:[^\r\n]*[;\s]name="?file"?(?=[;\s]|$)', re.IGNORECASE | re.MULTILINE)


def client_gone() -> ApiError:
    """The 499 a request gets when its client hangs up before the answer is ready."""
    return ApiError(499, "client_gone", "client disconnected before the request body was read")


def _too_large(limit: int) -> ApiError:
    return ApiError(413, "body_too_large", f"request body is larger than the limit of {limit} bytes")


async def read_body(request: Request, limit: int, on_prefix: PrefixHook | None = None) -> bytes:
    """The whole body, or :class:`ApiError` 413 as soon as it passes ``limit`` bytes.

    ``on_prefix`` sees the first bytes after each chunk until it returns True
    or :data:`PREFIX_MAX_BYTES` are in; what it raises ends the read.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if on_prefix is not None and chunk:
                done = on_prefix(b"".join(chunks)[:PREFIX_MAX_BYTES])
                if done or size >= PREFIX_MAX_BYTES:
                    on_prefix = None
    except ClientDisconnect:
        raise client_gone() from None
    return b"".join(chunks)


def multipart_file_prefix(body: bytes, boundary: bytes) -> bytes | None:
    """The first bytes of the ``file`` part in the first bytes of a multipart body; ``None`` until they are in."""
    delimiter = b"--" + boundary
    at = body.find(delimiter)
    while at != -1:
        heads = at + len(delimiter)
        end_of_heads = body.find(b"\r\n\r\n", heads)
        if body.startswith(b"--", heads) or end_of_heads == -1:
            return None
        start = end_of_heads + 4
        following = body.find(b"\r\n" + delimiter, start)
        if _FILE_PART.search(body, heads, end_of_heads):
            return body[start:] if following == -1 else body[start:following]
        at = -1 if following == -1 else following + 2
    return None


def _in_multipart(hook: PrefixHook, content_type: str) -> PrefixHook | None:
    found = _BOUNDARY.search(content_type)
    if found is None:
        return None
    boundary = found.group(1).encode("latin-1", "replace")

    def file_prefix(body: bytes) -> bool:
        prefix = multipart_file_prefix(body, boundary)
        return bool(prefix) and hook(prefix)

    return file_prefix


async def read_image_upload(request: Request, limit: int, on_prefix: PrefixHook | None = None) -> bytes:
    """The image bytes of an ``/upscale``-style request (415/422/413 as :class:`ApiError`).

    ``on_prefix`` (see :func:`read_body`) is given the image's own first bytes, multipart or raw.
    """
    content_type = request.headers.get("content-type", "")
    if content_type.lower().startswith("multipart/form-data"):
        hook = None if on_prefix is None else _in_multipart(on_prefix, content_type)
        body = await read_body(request, limit, hook)
        return await _multipart_file(request, body)
    content_type = content_type.lower()
    if content_type.startswith(RAW_TYPES):
        return await read_body(request, limit, on_prefix)
    if not content_type:
        body = await read_body(request, limit)
        if not body:
            raise ApiError(422, "missing_image", "no image: send multipart field 'file' or a raw image/* body")
        raise ApiError(415, "unsupported_media_type", "a raw body needs an image/* Content-Type")
    raise ApiError(
        415, "unsupported_media_type",
        f"unsupported Content-Type {content_type.split(';')[0]!r}: use multipart/form-data or image/*",
    )


async def _multipart_file(request: Request, body: bytes) -> bytes:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    buffered = Request(request.scope, replay)
    try:
        form = await buffered.form(max_files=1, max_fields=16)
    except Exception as exc:  # malformed multipart framing
        raise ApiError(400, "invalid_multipart", f"malformed multipart body: {exc}") from exc
    try:
        upload = form.get("file")
        if upload is None:
            raise ApiError(422, "missing_image", "multipart body has no 'file' field")
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_image", "multipart field 'file' must be a file, not a text field")
        declared = (upload.content_type or "").lower()
        if declared and not declared.startswith(RAW_TYPES):
            raise ApiError(415, "unsupported_media_type", f"uploaded file has Content-Type {declared!r}, not image/*")
        return await upload.read()
    finally:
        await form.close()
