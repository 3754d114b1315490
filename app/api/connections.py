"""uvicorn's HTTP protocol with header and body read timeouts (uvicorn itself has neither).

Without them a client holds a connection (a file descriptor, and a task once its
headers are in) for as long as it likes by sending nothing, or a byte now and
then: 20,000 such connections exhausted the server's descriptors. Here a
connection whose request headers are not complete ``SR_HEADER_TIMEOUT_S`` after
its first byte (or after it was opened) is closed, and so is one whose body is
not complete ``SR_BODY_TIMEOUT_S`` after its headers: the route then sees a
disconnect (499 ``client_gone``), like any client that went away. Idle
keep-alive connections are closed by uvicorn after ``SR_KEEP_ALIVE_S``, and
``SR_LIMIT_CONCURRENCY`` bounds connections and tasks (503 beyond it).

Used by ``python -m app.serve`` as ``http="app.api.connections:TimedHttpToolsProtocol"``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.api.settings import get_settings


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing connections whose headers or body arrive too slowly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._header_timeout, self._body_timeout = settings.header_timeout_s, settings.body_timeout_s
        self._read_timer: asyncio.TimerHandle | None = None

    def _arm(self, seconds: float) -> None:
        self._disarm()
        if seconds > 0:
            self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._read_timer is None:  # a keep-alive connection's next request
            self._arm(self._header_timeout)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self._body_timeout)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
