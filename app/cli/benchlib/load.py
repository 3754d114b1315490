"""A lean HTTP/1.1 load generator: keep-alive connections on asyncio streams, one request in flight each.

Why not httpx: the load generator shares the machine's two cores with the service, and
httpx spends milliseconds of CPU per request (h11 parsing, its connection pool), a sizeable
part of a small machine under load — a measurement of the client, not of the service
(docs/benchmarks.md). This client does what ``wrk`` does: writes a prepared request, reads the status
line and headers, then exactly ``Content-Length`` bytes. It speaks only to our own
service (no chunked bodies, no redirects); anything else counts as an error.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class LoadResult:
    ok: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    wall_s: float = 0.0


def request_bytes(host: str, path: str, body: bytes, content_type: str) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One response with a ``Content-Length`` body → (status, body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def hammer(base: str, path: str, bodies: list[bytes], duration_s: float,
                 content_type: str = "image/png") -> LoadResult:
    """One keep-alive connection per body, each posting its body back to back until ``duration_s`` is up."""
    url = urlsplit(base)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    result = LoadResult()
    start = time.perf_counter()
    end = start + duration_s

    async def one_client(body: bytes) -> None:
        request = request_bytes(f"{host}:{port}", path, body, content_type)
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            result.errors += 1
            return
        try:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                writer.write(request)
                await writer.drain()
                status, _ = await read_response(reader)
                if status == 200:
                    result.ok += 1
                    result.latencies_ms.append((time.perf_counter() - t0) * 1000.0)
                else:
                    result.errors += 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(one_client(body) for body in bodies))
    result.wall_s = time.perf_counter() - start
    return result
