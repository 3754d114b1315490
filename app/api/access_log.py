"""One line per request on the ``app.access`` logger, so whoever runs the service sees each request arrive.

``SR_REQUEST_LOG`` (on by default, so ``make serve`` shows it) switches it; the line is::

    a1b2c3d4e5f6 POST /upscale 200 scale=3 in=640×360 out=1920×1080 bytes=812345 decode=3.1 model=48.0 compose=20.1 encode=13.5 total=89.0ms

The request id is the client's ``X-Request-Id`` when it sends a sane one, else a new
one; it comes back as ``X-Request-Id`` so a client can quote it. Stage times are
read from the answer's ``Server-Timing``; sizes (width × height) are noted by the
route (:func:`note_sizes`). Pure ASGI, outside everything else, so refusals made
by the other middlewares (401, early 413) are logged too.
"""

from __future__ import annotations

import logging
import re
import sys
import time
import uuid
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.state import settings_for
from app.config import Settings

log = logging.getLogger("app.access")
SCOPE_KEY = "sr.access"
_SANE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})  # probes every few seconds would drown the rest


def note_sizes(request: Request, input_size: tuple[int, int], output_size: tuple[int, int]) -> None:
    """Record the image's sizes (width, height) for the request's access line."""
    entry = request.scope.get(SCOPE_KEY)
    if entry is not None:
        entry["in"], entry["out"] = input_size, output_size


def _ensure_handler() -> None:
    """Under ``python -m app.serve`` each worker process starts with no logging set up: give the line a place."""
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)


def _size(wh: object) -> str:
    w, h = wh  # type: ignore[misc]
    return f"{w}×{h}"


def access_line(request_id: str, scope: Scope, status: int, sent: int, seconds: float,
                server_timing: str, entry: dict[str, object]) -> str:
    """The one line (kept a function so tests can read its format without a logger)."""
    parts = [request_id, scope.get("method", "?"), scope.get("path", "?"), str(status)]
    scale = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("scale")
    if scale:
        parts.append(f"scale={scale}")
    if "in" in entry:
        parts += [f"in={_size(entry['in'])}", f"out={_size(entry['out'])}"]
    parts.append(f"bytes={sent}")
    for item in server_timing.split(","):
        name, _, rest = item.strip().partition(";dur=")
        if name and rest:
            parts.append(f"{name}={rest}")
    parts.append(f"total={seconds * 1000:.1f}ms")
    return " ".join(parts)


class AccessLog:
    """Logs each HTTP request's line when it ends (``SR_REQUEST_LOG=false``: only the request id header is added).

    The settings are read on the first request (the app's own, built in the lifespan), never at import time.
    """

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app, self._settings = app, settings
        self.enabled: bool | None = None

    def _configure(self, scope: Scope) -> bool:
        settings = settings_for(scope, self._settings)
        if settings.request_log:
            _ensure_handler()
        return settings.request_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.enabled is None:
            self.enabled = self._configure(scope)
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SANE_ID.match(given) else uuid.uuid4().hex[:12]
        entry: dict[str, object] = {}
        scope[SCOPE_KEY] = entry
        start = time.perf_counter()
        status, sent, timing = 500, 0, ""

        async def send_wrapper(message: Message) -> None:
            nonlocal status, sent, timing
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers") or [])
                timing = next((v.decode("latin-1") for k, v in headers if k.lower() == b"server-timing"), "")
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if self.enabled and scope.get("path") not in _QUIET_PATHS:
                log.info(access_line(request_id, scope, status, sent, time.perf_counter() - start, timing, entry))
