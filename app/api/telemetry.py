"""Prometheus on every HTTP answer (the engine's and pipeline's events: :mod:`app.observability.adapters`)."""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.observability import metrics
from app.observability.adapters import COUNTED

CLIENT_GONE_STATUS = 499  # nginx's "client closed request"
INPUT_REJECTIONS = {400: metrics.BAD_INPUT, 415: metrics.BAD_INPUT, 422: metrics.BAD_INPUT, 413: metrics.TOO_LARGE}


class RequestMetricsMiddleware:
    """Counts every answer (errors included) by route template, scale and status, and times it.

    Pure ASGI (not ``BaseHTTPMiddleware``) so streaming bodies and disconnects pass untouched.
    Unmatched paths share one ``endpoint`` label so clients cannot mint series.

    Input rejections are counted here, by status, for every route alike: 400, 415 and 422
    as ``bad_input`` (parameter validation fails before any route runs), 413 as ``too_large``.
    Load rejections (``queue_full``, ``timeout``, ``client_gone``) come from the engine; a 499
    the engine did not count (the client left during the upload or the decode) is counted
    here as ``client_gone``, once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        counted: set[str] = set()
        token = COUNTED.set(counted)

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            if endpoint != "/metrics":
                query = dict(_query_items(scope))
                metrics.observe_request(endpoint, query.get("scale"), status, time.perf_counter() - start)
                reason = INPUT_REJECTIONS.get(status)
                if status == CLIENT_GONE_STATUS and metrics.CLIENT_GONE not in counted:
                    reason = metrics.CLIENT_GONE
                if reason:
                    metrics.reject(reason)
            COUNTED.reset(token)


def _query_items(scope: Scope) -> list[tuple[str, str]]:
    return parse_qsl(scope.get("query_string", b"").decode("latin-1"))
