"""uvicorn's HTTP protocol, bounded in time and in bytes (uvicorn itself bounds neither).

Time. A client held a connection (a file descriptor, and a task once its headers
were in) for as long as it liked by sending nothing, or a byte now and then:
20,000 such connections exhausted the server's descriptors. Here a connection
whose request headers are not complete ``SR_HEADER_TIMEOUT_S`` after its first
byte (or after it was opened) is closed, and one whose body is not complete
``SR_BODY_TIMEOUT_S`` after its headers (``SR_JOBS_BODY_TIMEOUT_S`` for ``POST
/jobs``, whose uploads may be 1 GiB) is answered 408 ``body_timeout`` when no
answer has begun, else closed; the route sees a disconnect (499 ``client_gone``).

Bytes. uvicorn kept every header a client sent (210 MB were accepted in one
request) and copied the URL so far on every read (``self.url += url``), which is
quadratic in its length: a few URLs trickled in held the event loop for seconds.
Here a request head is gathered in one growing buffer, amortised linear, and fed
to the parser only once it is complete, so the URL and each header reach uvicorn
in one piece; a head whose URL passes ``SR_MAX_URL_BYTES`` is answered 414
``url_too_long``, one whose headers pass ``SR_MAX_HEADER_BYTES`` 431
``headers_too_large``, as soon as the excess arrives. (A pipelined request that
starts in the same read as the previous one's end goes to the parser as it
comes; its bytes are counted and capped the same way.)

Slots. ``SR_LIMIT_CONCURRENCY`` bounds connections and tasks (503 beyond it), so
2,100 idle connections made liveness probes fail. Here a new connection that
finds the slots full first closes the connections idle longest (keep-alive ones
between requests, or ones that have sent nothing yet; HTTP lets a server close
those), and ``GET``/``HEAD`` ``/healthz`` and ``/readyz`` are never refused for
the limit: they answer from the event loop at no cost.

Every refusal here is JSON in the service's error shape, ``{"detail", "code"}``,
with ``Connection: close``; the connection then half-closes and reads and drops
what the client still sends (up to ``SR_REFUSAL_DRAIN_BYTES``, for at most
:data:`LINGER_S`), so a client that sends before reading gets the answer, not a reset.

Used by ``python -m app.serve`` as ``http="app.api.http_protocol:TimedHttpToolsProtocol"``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any, Literal

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.api.security import SECURITY_HEADERS
from app.config import get_settings

log = logging.getLogger("app.connections")

PROBES = (b"/healthz", b"/readyz")  # never refused for the concurrency limit
LINGER_S = 2.0  # after a refusal, the longest the connection reads and drops the rest
REQUEST_START = re.compile(rb"[\r\n]*(?:[A-Z]{1,24} |[A-Z]{0,24}\Z)")  # a method and its space, or a prefix of one
LINE_SLACK = 64  # a request line's method, spaces and version around its URL

# This process's connections that are idle (nothing of a request received), oldest first,
# and those closed for it whose close has not completed yet.
_IDLE: dict[TimedHttpToolsProtocol, None] = {}
_SHEDDING: set[TimedHttpToolsProtocol] = set()


class _Refused(Exception):
    """Raised in a parser callback after a refusal, to stop the parser mid-read."""


class TimedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header/body timeouts, head byte limits and probe-safe slots."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()
        self._header_timeout, self._body_timeout = settings.header_timeout_s, settings.body_timeout_s
        self._jobs_body_timeout = settings.jobs_body_timeout_s
        self._max_url, self._max_headers = settings.max_url_bytes, settings.max_header_bytes
        self._linger_bytes, self._linger_s = settings.refusal_drain_bytes, min(settings.refusal_drain_s, LINGER_S)
        self._limit = self.limit_concurrency
        self._read_timer: asyncio.TimerHandle | None = None
        self._head: bytearray | None = bytearray()  # the request head gathered so far; None: the parser has it
        self._phase: Literal["idle", "head", "body"] = "idle"  # of the message the parser is in
        self._began_in_feed = False  # the parser began a message during the current read
        self._head_fed = 0  # head bytes given to the parser piecemeal (pipelined requests)
        self._line_end = -1  # where the gathered head's request line ends (-1: not seen yet)
        self._url_parts: list[bytes] = []
        self._url_bytes = self._header_bytes = 0
        self._lingering = False

    # --- timers ---------------------------------------------------------------------------------

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
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if (self._phase == "body" and not self._lingering and cycle is not None and not cycle.response_started
                and not self.pipeline):  # no earlier answer is being written: the client can still read one
            timeout = self._body_timeout_for(cycle.scope)
            self._refuse(408, "body_timeout", f"the request body did not arrive within {timeout:g} s")
        else:
            self.transport.close()

    def _body_timeout_for(self, scope: Any) -> float:
        jobs = scope.get("method") == "POST" and scope.get("path") == f"{self.root_path}/jobs"
        return self._jobs_body_timeout if jobs else self._body_timeout

    # --- connections ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self._header_timeout)
        if self._limit is not None:
            self._shed_idle()
        _IDLE[self] = None  # until its first byte

    def _shed_idle(self) -> None:
        """Close the longest-idle connections while this one would leave no slot for a request."""
        excess = len(self.connections) - len(_SHEDDING) - (self._limit - 1)
        while excess > 0 and _IDLE:
            idle = next(iter(_IDLE))
            del _IDLE[idle]
            if idle.transport is None or idle.transport.is_closing():
                continue
            _SHEDDING.add(idle)
            idle.transport.close()
            excess -= 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        _IDLE.pop(self, None)
        _SHEDDING.discard(self)
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline and self._head is not None and not self._head:
            _IDLE[self] = None  # keep-alive, waiting for the next request

    def shutdown(self) -> None:
        if self._lingering:
            self.transport.close()
        else:
            super().shutdown()

    # --- reading --------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # a refusal went out: drop what still comes, within the bounds
            self._linger_bytes -= len(data)
            if self._linger_bytes < 0:
                self.transport.close()
            return
        self._unset_keepalive_if_required()
        _IDLE.pop(self, None)
        if self._head is not None:
            if not self._head and self._read_timer is None:  # a keep-alive connection's next request
                self._arm(self._header_timeout)
            scanned = max(0, len(self._head) - 2)
            self._head += data
            if REQUEST_START.match(self._head, 0, 32) is None:  # not HTTP: let the parser say 400
                data, self._head = bytes(self._head), None
            elif not self._head_ends(scanned):
                return
            else:
                data, self._head = bytes(self._head), None
        self._began_in_feed = False
        self._feed(data)
        if self._lingering or self._head is not None:
            return
        if self._phase == "head":  # the parser holds part of a head: count it and bound it
            if not self._began_in_feed:
                self._head_fed += len(data)
            if self._head_fed > self._max_url + self._max_headers + LINE_SLACK:
                self._refuse(431, "headers_too_large", f"the request head is over {self._max_headers} bytes")
        elif self._phase == "idle":  # only blank lines between requests: gather the next head
            self._head, self._line_end = bytearray(), -1

    def _head_ends(self, scanned: int) -> bool:
        """Whether the gathered head is complete (refusing it when it is over a limit, complete or not)."""
        head = self._head
        assert head is not None
        ends = [i for i in (head.find(b"\n\r\n", scanned), head.find(b"\n\n", scanned)) if i >= 0]
        if self._line_end < 0:  # searched only in what is new: a scan of the whole head per read is quadratic
            self._line_end = head.find(b"\n", scanned)
        line_end = self._line_end
        if line_end < 0:  # still in the request line
            url = len(head) - head.find(b" ") - 1 if b" " in head else 0
            if url > self._max_url:
                self._refuse(414, "url_too_long", f"the request target is over {self._max_url} bytes")
                return False
            return False
        line = head[:line_end].rstrip(b"\r")
        first, last = line.find(b" "), line.rfind(b" ")
        url = (last if last > first else len(line)) - first - 1
        if url > self._max_url:
            self._refuse(414, "url_too_long", f"the request target is over {self._max_url} bytes")
            return False
        headers = (min(ends) if ends else len(head)) - line_end - 1
        if headers > self._max_headers:
            self._refuse(431, "headers_too_large", f"the request headers are over {self._max_headers} bytes")
            return False
        return bool(ends)

    def _feed(self, data: bytes) -> None:
        """uvicorn's ``data_received`` after its keep-alive bookkeeping: the parser, and its errors."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except (httptools.HttpParserError, _Refused):
            if self._lingering:  # a callback refused the request: the answer is out
                return
            log.info("invalid HTTP request from %s", self.client)
            self.send_400_response("Invalid HTTP request received.")

    # --- parser callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase, self._began_in_feed, self._head_fed = "head", True, 0
        self._url_parts, self._url_bytes, self._header_bytes = [], 0, 0
        if self._head is not None:  # pipelined: the parser began this head in the previous one's read
            self._head = None
        if self._read_timer is None:
            self._arm(self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url_parts.append(url)  # joined once (uvicorn's ``self.url += url`` is quadratic)
        self._url_bytes += len(url)
        if self._url_bytes > self._max_url:
            self._refuse(414, "url_too_long", f"the request target is over {self._max_url} bytes")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4  # "name: value\r\n"
        if self._header_bytes > self._max_headers:
            self._refuse(431, "headers_too_large", f"the request headers are over {self._max_headers} bytes")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.url = b"".join(self._url_parts)
        self._phase = "body"
        if self._limit is not None:  # connections being shed count no more; probes are never refused
            self.limit_concurrency = None if self._is_probe() else self._limit + len(_SHEDDING)
        try:
            super().on_headers_complete()
        finally:
            self.limit_concurrency = self._limit
        self._arm(self._body_timeout_for(self.scope))

    def _is_probe(self) -> bool:
        """``GET``/``HEAD`` of ``/healthz`` or ``/readyz``: answered even when the slots are full."""
        path = self.url.split(b"?", 1)[0]
        root = self.root_path.encode()
        return self.parser.get_method() in (b"GET", b"HEAD") and path.startswith(root) and path[len(root):] in PROBES

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._phase = "idle"
        self._head, self._line_end = bytearray(), -1  # the next request's head is gathered again

    # --- refusals -------------------------------------------------------------------------------

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Answer ``status`` with the JSON error, then half-close and drop what the client still sends."""
        if self._lingering or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and (cycle.response_started or status != 408):
            self.transport.close()  # an earlier request's answer is (or will be) on the wire: no room for this one
            return
        log.info("%d %s from %s", status, code, self.client)
        body = json.dumps({"detail": detail, "code": code}).encode()
        head = [STATUS_LINE[status]]
        headers = [*self.server_state.default_headers, (b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode()), (b"connection", b"close"),
                   *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]
        for name, value in headers:
            head += [name, b": ", value, b"\r\n"]
        self.transport.write(b"".join([*head, b"\r\n", body]))
        self._lingering, self._head = True, None
        _IDLE.pop(self, None)
        if cycle is not None and not cycle.response_complete:  # the route sees a disconnect; its answer is dropped
            cycle.disconnected, cycle.keep_alive = True, False
            cycle.message_event.set()
        self._disarm()
        if self._linger_s <= 0 or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()  # the answer, then end of stream: the client reads it whatever it still sends
        self.flow.resume_reading()
        self._read_timer = self.loop.call_later(self._linger_s, self._read_timed_out)
