"""A client that hangs up has its queued tiles dropped: a real uvicorn server and a raw socket."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import httpx

from app.cli.benchlib.launch import serving_app
from app.main import create_app
from tests.conftest import encoded, make_settings, natural
from tests.gates import WAIT_S, gated, wait_until


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_disconnected_client_has_its_tiles_dropped(seeded_store: Path) -> None:
    # a one-tile request is held at the (gated) model call: the next request's tiles stay queued behind it
    # until the gate opens, however slow this machine is, so they are still queued when their client leaves
    app = create_app(make_settings(seeded_store, max_batch=64))
    gone = 'sr_rejected_total{reason="client_gone"}'
    with serving_app(app) as base, gated(app.state.service.pipeline.engine, 2) as gate:
        port = int(base.rsplit(":", 1)[1])
        before = _metric(httpx.get(f"{base}/metrics").text, gone)
        batches = _metric(httpx.get(f"{base}/metrics").text, "sr_batch_size_count")
        held: list[int] = []
        blocker = threading.Thread(target=lambda: held.append(httpx.post(
            f"{base}/upscale?scale=2", content=encoded(natural((20, 20))), headers={"content-type": "image/png"},
            timeout=60).status_code))
        blocker.start()
        assert gate.entered.wait(WAIT_S), "the first request never reached the model"
        body = encoded(natural((64, 64)))
        head = (f"POST /upscale?scale=2 HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(head + body)
            wait_until(lambda: _metric(httpx.get(f"{base}/metrics").text, "sr_queue_depth") == 4,
                       "the request's 4 tiles queued")
        # the socket is closed: the server notices, cancels the request, and drops its tiles
        wait_until(lambda: _metric(httpx.get(f"{base}/metrics").text, gone) == before + 1, "client_gone counted")
        text = httpx.get(f"{base}/metrics").text
        assert _metric(text, gone) == before + 1
        assert _metric(text, "sr_queue_depth") == 0
        assert httpx.get(f"{base}/readyz").status_code == 200
        gate.open()
        blocker.join()
        assert held == [200]
        text = httpx.get(f"{base}/metrics").text
        assert _metric(text, "sr_batch_size_count") == batches + 1  # the held request's batch; the dropped tiles never ran
