"""Early refusals a client can read: the answer goes out at once, the connection closes only after the body.

A 413 from ``Content-Length``, or a 415/422/401/503 decided before the body
is read, used to go out while the client was still sending; the connection
then closed with unread data in the server's socket, the kernel answered with
a reset, and a client that sends its whole body before reading (Python's
``urllib``, ``requests``, many SDKs; they also send ``Connection: close``)
saw ``ECONNRESET`` instead of the JSON. This middleware lingers, as nginx
does: the answer's status, headers and body are sent at once (a client that
reads while sending, like curl or a browser, has it within milliseconds, and
one that sends first finds it waiting), but its end is held back — uvicorn
closes the connection when the answer ends — while the rest of the body is
read and dropped, never buffered, up to ``max_bytes`` or ``max_seconds``,
whichever comes first. Past those the answer ends anyway: a ``Connection:
close`` request's connection then closes as before, a keep-alive one has the
rest dropped by uvicorn's parser (within ``SR_BODY_TIMEOUT_S``). A client
that goes away meanwhile just ends it.
"""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.config import Settings, get_settings


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
        finished = False  # the request body is all in (or the client left)

        async def tracked() -> Message:
            nonlocal finished
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                finished = True
            return message

        async def linger_then_end(message: Message) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not finished:
                await send({**message, "more_body": True})  # every byte of the answer, but not its end
                await self._drain(receive)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send(message)

        await self.app(scope, tracked, linger_then_end)

    async def _drain(self, receive: Receive) -> None:
        """Discard the rest of the body within the bounds (or until the client leaves)."""
        max_bytes = self.settings.refusal_drain_bytes
        drained, deadline = 0, time.monotonic() + self.settings.refusal_drain_s
        while drained <= max_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                message = await asyncio.wait_for(receive(), left)
            except TimeoutError:
                return
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                return
            drained += len(message.get("body", b""))


def _has_body(scope: Scope) -> bool:
    headers = dict(scope.get("headers") or [])
    length = headers.get(b"content-length", b"0")
    return (length.isdigit() and int(length) > 0) or b"chunked" in headers.get(b"transfer-encoding", b"").lower()
