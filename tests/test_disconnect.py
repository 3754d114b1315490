"""A client that hangs up has its queued tiles dropped: a real uvicorn server and a raw socket."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import uvicorn

from app.main import create_app
from tests.conftest import encoded, make_settings, natural


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_disconnected_client_has_its_tiles_dropped(seeded_store: Path) -> None:
    port = _free_port()
    # the worker waits 3 s for a fuller batch: the request is still queued when the client leaves
    app = create_app(make_settings(seeded_store, max_batch=64, max_delay_ms=3000))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        before = _metric(httpx.get(f"{base}/metrics").text, 'sr_rejected_total{reason="client_gone"}')
        body = encoded(natural((64, 64)))
        head = (f"POST /upscale?scale=2 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + body)
            for _ in range(100):  # wait until its 4 tiles are queued
                if _metric(httpx.get(f"{base}/metrics").text, "sr_queue_depth") == 4:
                    break
                time.sleep(0.02)
            else:
                raise AssertionError("the request never reached the queue")
        # the socket is closed: the server notices, cancels the request, and drops its tiles
        for _ in range(100):
            text = httpx.get(f"{base}/metrics").text
            if _metric(text, 'sr_rejected_total{reason="client_gone"}') == before + 1:
                break
            time.sleep(0.02)
        assert _metric(text, 'sr_rejected_total{reason="client_gone"}') == before + 1
        assert _metric(text, "sr_queue_depth") == 0
        assert httpx.get(f"{base}/readyz").status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=20)
