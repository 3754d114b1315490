"""Access control, CORS and security headers, as one pure ASGI middleware (issue 15).

* **API keys** (off unless ``SR_API_KEYS`` is set): every path needs a key except
  the open ones (:data:`OPEN_PATHS`, :data:`OPEN_PREFIXES`: probes, the page and
  its static files, the API docs; ``/metrics`` unless ``SR_METRICS_REQUIRE_KEY``),
  so a route added later is keyed by default. A key comes as
  ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``; without a valid one the
  answer is 401 ``{detail, code: "unauthorized"}`` with ``WWW-Authenticate: Bearer``.
  Only SHA-256 hashes of the keys are held (the settings validator hashes them
  as they are read), and a presented key's hash is compared with every stored
  one by :func:`hmac.compare_digest`, so neither the comparison nor the number
  of keys tried leaks through timing.
* **CORS** (off unless ``SR_CORS_ORIGINS`` is set): Starlette's ``CORSMiddleware``
  outside the key check, so preflights need no key; it exposes the headers a
  client reads from ``/upscale`` (``X-Model``, ``X-Scale``, ``X-Process-Time-Ms``,
  ``Server-Timing``).
* **Security headers** on every answer this middleware sees:
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
  ``X-Frame-Options: DENY``, and a Content-Security-Policy when the route set
  none: the page's (no inline script or style) at ``/``, a looser one for the
  vendored Swagger UI / ReDoc pages (they start from an inline script), and
  ``default-src 'none'`` for everything else (JSON and images never run code).

Pure ASGI (not ``BaseHTTPMiddleware``) so streamed bodies and disconnects pass
untouched. The settings are read from the app's state on the first request
(they are built in the lifespan, never at import time).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.state import settings_for
from app.config import HASH_PREFIX, Settings, hash_key

OPEN_PATHS = frozenset({"/", "/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                        "/favicon.ico", "/web/sample.png"})
OPEN_PREFIXES = ("/static/",)
EXPOSED_HEADERS = ("X-Model", "X-Scale", "X-Process-Time-Ms", "Server-Timing", "Retry-After", "X-Debug-Analysed",
                   "X-Request-Id")
API_CSP = "default-src 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {"x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY"}


# The browser itself keeps these pages on this origin: nothing is fetched from elsewhere. ReDoc's sidebar
# shows a logo from its vendor's CDN, which the policy refused with a console error: it is served the
# service's own mark instead (redoc_offline_js).
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; object-src 'none'; base-uri 'self'; "
            "form-action 'self'; frame-ancestors 'self'")
# FastAPI's docs pages start Swagger UI / ReDoc from an inline script, and both style with inline CSS
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data: blob:; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
            "frame-ancestors 'self'")


def csp_for(path: str) -> str:
    """The Content-Security-Policy an answer on ``path`` gets when its route set none."""
    if path == "/":
        return PAGE_CSP
    if path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
        return DOCS_CSP
    return API_CSP


class KeyChecker:
    """Holds the keys' hashes; :meth:`allows` compares a request's key against all of them."""

    def __init__(self, hashes: Iterable[str]) -> None:
        self._hashes = tuple(hash_key(h) for h in hashes)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    @staticmethod
    def presented(headers: Headers) -> str | None:
        auth = headers.get("authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        key = headers.get("x-api-key", "").strip()
        return key or None

    def allows(self, key: str | None) -> bool:
        if key is None:
            return False
        digest = HASH_PREFIX + hashlib.sha256(key.encode()).hexdigest()  # a presented hash is just a wrong key
        ok = False
        for stored in self._hashes:  # every one compared: the time does not say which matched
            ok |= hmac.compare_digest(digest.encode(), stored.encode())
        return ok


class SecurityMiddleware:
    """Security headers, then CORS, then the key check, around ``app``; configured on first use."""

    def __init__(self, app: ASGIApp, settings: Settings | None = None) -> None:
        self.app = app
        self._settings = settings
        self._chain: ASGIApp | None = None
        self._keys = KeyChecker(())
        self._metrics_keyed = False

    def _configure(self, scope: Scope) -> ASGIApp:
        settings = settings_for(scope, self._settings)
        self._keys = KeyChecker(h for h in settings.api_keys.split(",") if h)
        self._metrics_keyed = settings.metrics_require_key
        chain: ASGIApp = self._check_key
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        if origins:
            chain = CORSMiddleware(
                chain, allow_origins=origins, allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["Authorization", "X-API-Key", "Content-Type"], expose_headers=list(EXPOSED_HEADERS),
                max_age=600,
            )
        return chain

    def needs_key(self, path: str) -> bool:
        if not self._keys.enabled or path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
            return False
        return path != "/metrics" or self._metrics_keyed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._chain is None:
            self._chain = self._configure(scope)
        path = scope.get("path", "")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if "content-security-policy" not in headers:
                    headers["content-security-policy"] = csp_for(path)
            await send(message)

        await self._chain(scope, receive, with_headers)

    async def _check_key(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] == "OPTIONS" or not self.needs_key(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if self._keys.allows(KeyChecker.presented(Headers(scope=scope))):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"detail": "A valid API key is required: send 'Authorization: Bearer <key>' or "
                           "'X-API-Key: <key>'.", "code": "unauthorized"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="espcn"'),
        ]})
        await send({"type": "http.response.body", "body": body})
