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

from app.api.errors import ApiError, field_error

RAW_TYPES = ("image/", "application/octet-stream")
PREFIX_MAX_BYTES = 256 * 1024  # a JPEG's size marker comes after its EXIF/ICC segments, rarely later than this
PrefixHook = Callable[[bytes], bool]  # the image's first bytes → True once it needs no more of them
_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)
_FILE_PART = re.compile(rb'content-disposition:[^\r\n]*[;\s]name="?file"?(?=[;\s]|$)', re.IGNORECASE | re.MULTILINE)
_PART_NAME = re.compile(rb'content-disposition:[^\r\n]*?[;\s]name="?([^";\r\n]*)"?', re.IGNORECASE)
_PART_FILENAME = re.compile(rb'content-disposition:[^\r\n]*?[;\s]filename="?([^";\r\n]*)"?', re.IGNORECASE)
PEEK_MAX_BYTES = 64 * 1024  # how much of a refused request's body is read to tell its upload's problems too
UPLOAD_FIELD = "file"


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


def multipart_fields(body: bytes, boundary: bytes) -> tuple[list[tuple[str, str | None]], bool]:
    """The parts whose headers are in ``body`` as (field name, file name or None), and whether the body's end was seen."""
    delimiter = b"--" + boundary
    fields: list[tuple[str, str | None]] = []
    at = body.find(delimiter)
    while at != -1:
        heads = at + len(delimiter)
        if body.startswith(b"--", heads):
            return fields, True
        end_of_heads = body.find(b"\r\n\r\n", heads)
        if end_of_heads == -1:
            return fields, False
        block = body[heads:end_of_heads]
        name, filename = _PART_NAME.search(block), _PART_FILENAME.search(block)
        if name:
            fields.append((name.group(1).decode("utf-8", "replace"),
                           filename.group(1).decode("utf-8", "replace") if filename else None))
        following = body.find(b"\r\n" + delimiter, end_of_heads + 4)
        at = -1 if following == -1 else following + 2
    return fields, False


def missing_file_field(fields: list[tuple[str, str | None]]) -> dict[str, object]:
    """The field error for a multipart body without ``file``, naming the file field it has instead, if any."""
    files = [name for name, filename in fields if filename is not None]
    msg = f"the image must be in multipart field '{UPLOAD_FIELD}'"
    if files:
        msg += f", not {', '.join(repr(f) for f in files)}"
    elif fields:
        msg += f"; the body has only {', '.join(repr(name) for name, _ in fields)}"
    return field_error(["body", UPLOAD_FIELD], msg, "missing")


async def upload_problems(request: Request) -> list[dict[str, object]]:
    """What is wrong with an upload whose query was refused already, so one answer names every problem.

    Reads at most :data:`PEEK_MAX_BYTES` of a multipart body (the part headers come first); the
    rest is read and dropped by :class:`app.api.early_refusal.DrainBeforeRefusal`. Anything unclear
    (headers past the peek, a raw body) is left for the corrected request to find.
    """
    if request.method != "POST":
        return []
    content_type = request.headers.get("content-type", "")
    declared = request.headers.get("content-length")
    chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
    if declared == "0" or (declared is None and not chunked):
        return [field_error(["body", UPLOAD_FIELD], "no image: send multipart field 'file' or a raw image body",
                            "missing")]
    found = _BOUNDARY.search(content_type)
    if not content_type.lower().startswith("multipart/form-data") or found is None:
        return []
    boundary = found.group(1).encode("latin-1", "replace")
    seen = b""
    try:
        async for chunk in request.stream():
            seen += chunk
            fields, ended = multipart_fields(seen, boundary)
            if any(name == UPLOAD_FIELD for name, _ in fields):
                return []
            if ended:
                return [missing_file_field(fields)]
            if len(seen) >= PEEK_MAX_BYTES:
                break
    except ClientDisconnect:
        return []
    fields, ended = multipart_fields(seen, boundary)
    if any(name == UPLOAD_FIELD for name, _ in fields):
        return []
    # every part seen so far is another field and a file is among them: the name is wrong, whatever follows
    if ended or any(filename is not None for _, filename in fields):
        return [missing_file_field(fields)]
    return []


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
        upload = form.get(UPLOAD_FIELD)
        if upload is None:
            fields = [(k, v.filename if isinstance(v, UploadFile) else None) for k, v in form.multi_items()]
            problem = missing_file_field(fields)
            raise ApiError(422, "missing_image", f"No image: {problem['msg']}.", errors=[problem])
        if not isinstance(upload, UploadFile):
            raise ApiError(422, "missing_image", "Multipart field 'file' must be a file, not a text field.",
                           errors=[field_error(["body", UPLOAD_FIELD], "must be a file, not a text field", "file")])
        declared = (upload.content_type or "").lower()
        if declared and not declared.startswith(RAW_TYPES):
            raise ApiError(415, "unsupported_media_type", f"uploaded file has Content-Type {declared!r}, not image/*")
        return await upload.read()
    finally:
        await form.close()
