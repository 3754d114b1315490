"""Early refusals a client can read: the unread rest of the body is discarded before the answer goes out.

A 413 from ``Content-Length``, or a 415/422/401 decided before the body is
read, used to go out while the client was still sending; the connection then
closed with unread data in the server's socket, the kernel answered with a
reset, and a client that sends its whole body before reading (Python's
``urllib``, ``requests``, many SDKs; they also send ``Connection: close``)
saw ``ECONNRESET`` instead of the JSON. uvicorn stops delivering the body
once the answer is complete, so this middleware drains it *before* the
answer starts: it reads and drops what is left, never buffering it, up to
``max_bytes`` or ``max_seconds``, whichever comes first — past those the
connection closes as before. A client that goes away meanwhile just ends it.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.settings import Settings, get_settings


class DrainBeforeRefusal:
    """``SR_REFUSAL_DRAIN_BYTES`` / ``SR_REFUSAL_DRAIN_S`` bound the discarding (settings read at the first request)."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app, self._settings = app, settings

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = get_settings()
        return self._settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _has_body(scope):
            await self.app(scope, receive, send)
            return
        finished = False

        async def tracked() -> Message:
            nonlocal finished
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                finished = True
            return message

        async def drain_then_send(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start" and not finished:
                finished = await self._drain(receive)
            await send(message)

        await self.app(scope, tracked, drain_then_send)

    async def _drain(self, receive: Receive) -> bool:
        """Discard the rest of the body within the bounds; True if it was all read (or the client left)."""
        max_bytes = self.settings.refusal_drain_bytes
        drained, deadline = 0, time.monotonic() + self.settings.refusal_drain_s
        while drained <= max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                return False
            if message["type"] == "http.disconnect":
                return True
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False


def _has_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length", b"0")
    return (length.isdigit() and int(length) > 0) or b"chunked" in headers.get(b"transfer-encoding", b"").lower()
