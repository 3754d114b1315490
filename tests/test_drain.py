"""Early refusals reach clients that send the whole body before reading (urllib, requests, many SDKs).

A real server (``python -m app.serve``) on 127.0.0.1 and Python's own urllib, which sends
``Connection: close`` and reads nothing until its body is out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.cli.benchlib.service import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
BODY = b"\x89PNG\r\n\x1a\n" + bytes(8 * 1024 * 1024)  # 8 MiB, over the 1 MiB limit below


@contextmanager
def serving(store: Path, **env: str) -> Iterator[str]:
    port = free_port()
    settings = {"SR_MODEL_STORE": str(store), "SR_PORT": str(port), "SR_WORKERS": "1", "SR_DEVICE": "cpu",
                "SR_MAX_BODY_BYTES": str(1 << 20), **env}
    server = subprocess.Popen([sys.executable, "-m", "app.serve"], cwd=ROOT, env={**os.environ, **settings},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, server)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=60)


def urllib_post(url: str) -> tuple[int, dict] | OSError:
    request = urllib.request.Request(url, data=BODY, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
    except OSError as exc:  # the reset this is about (URLError wraps ECONNRESET / EPIPE)
        return exc


def test_send_it_all_clients_read_their_413_and_422(seeded_store: Path) -> None:
    with serving(seeded_store) as base:
        for path, status, code in (("/upscale?scale=2", 413, "body_too_large"),
                                   ("/upscale?scale=5", 422, "unknown_scale"),
                                   ("/debug/channels?scale=2", 413, "body_too_large")):
            started = time.perf_counter()
            answer = urllib_post(base + path)
            assert not isinstance(answer, OSError), (path, answer)
            assert answer[0] == status and answer[1]["code"] == code, (path, answer)
            assert time.perf_counter() - started < 5


def test_without_the_drain_the_same_client_sees_a_reset(seeded_store: Path) -> None:
    """The control: the behaviour the drain fixes (so the test above can fail)."""
    with serving(seeded_store, SR_REFUSAL_DRAIN_BYTES="0") as base:
        assert isinstance(urllib_post(base + "/upscale?scale=2"), OSError)
