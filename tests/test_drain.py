"""Early refusals reach clients that send the whole body before reading (urllib, requests, many SDKs),
and come from the first bytes of an upload when the queue is full.

A real server (``python -m app.serve``) on 127.0.0.1 and Python's own urllib, which sends
``Connection: close`` and reads nothing until its body is out.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch

from app.api.upload import multipart_file_prefix
from app.cli.benchlib import launch
from app.core.espcn import ESPCN
from app.engine.priority import in_lowered_thread, lowered_pool
from tests.conftest import encoded, natural

ROOT = Path(__file__).resolve().parents[1]
BODY = b"\x89PNG\r\n\x1a\n" + bytes(8 * 1024 * 1024)  # 8 MiB, over the 1 MiB limit below


@contextmanager
def serving(store: Path, **env: str) -> Iterator[str]:
    settings = {"SR_MODEL_STORE": str(store), "SR_WORKERS": "1", "SR_DEVICE": "cpu",
                "SR_MAX_BODY_BYTES": str(1 << 20), **env}
    with launch.serving(settings) as service:
        yield service.url


def urllib_post(url: str) -> tuple[int, dict] | OSError:
    request = urllib.request.Request(url, data=BODY, headers={"Content-Type": "image/png"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())
    except OSError as exc:  # the reset this is about (URLError wraps ECONNRESET / EPIPE)
        return exc


@pytest.mark.slow
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


@pytest.mark.slow
def test_without_the_drain_the_same_client_sees_a_reset(seeded_store: Path) -> None:
    """The control: the behaviour the drain fixes (so the test above can fail)."""
    with serving(seeded_store, SR_REFUSAL_DRAIN_BYTES="0") as base:
        assert isinstance(urllib_post(base + "/upscale?scale=2"), OSError)


def _start_upload(base: str, data: bytes, sent: int, content_type: str = "image/jpeg") -> socket.socket:
    """A raw HTTP/1.1 upload of ``data`` whose first ``sent`` bytes only are on the wire."""
    host, port = base.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    head = (f"POST /upscale?scale=2&format=jpeg HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode()
    conn.sendall(head + data[:sent])
    return conn


def _answer(conn: socket.socket) -> tuple[int, bytes]:
    """One whole response (status, body) read from ``conn``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed inside the answer"
        body += chunk
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.slow
def test_an_early_refusal_arrives_at_once_and_the_connection_lingers_for_the_body(seeded_store: Path) -> None:
    """The 413 (from Content-Length) is all there while 8 MiB are still unsent; the connection then reads
    the rest (no reset: sending it succeeds) and serves the next request on it."""
    with serving(seeded_store) as base:
        conn = _start_upload(base, BODY, 2048, "image/png")
        started = time.perf_counter()
        status, body = _answer(conn)
        assert status == 413 and json.loads(body)["code"] == "body_too_large"
        assert time.perf_counter() - started < 2
        conn.sendall(BODY[2048:])
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _answer(conn)[0] == 200
        conn.close()


@pytest.mark.slow
def test_a_full_queue_refuses_an_upload_from_its_first_bytes(seeded_store: Path) -> None:
    """Admission mid-upload (issue 15): the room is held from the header, so the next upload is refused
    while its body is still on the wire; the held room serves its own request, or comes back if it never ends."""
    data = encoded(natural((400, 400)), "JPEG", quality=90)  # 5 × 5 tiles of 96²: the queue holds one such image
    with serving(seeded_store, SR_MAX_QUEUE_TILES="30", SR_REFUSAL_DRAIN_S="0") as base:
        first = _start_upload(base, data, 2048)
        time.sleep(0.3)  # its first bytes are in and its room is held
        second = _start_upload(base, data, 2048)
        started = time.perf_counter()
        assert _answer(second)[0] == 503  # with most of its body unsent
        assert time.perf_counter() - started < 2
        second.close()
        first.sendall(data[2048:])
        assert _answer(first)[0] == 200
        first.close()
        gone = _start_upload(base, data, 2048)  # takes the room, then hangs up
        time.sleep(0.3)
        gone.close()
        deadline = time.monotonic() + 10
        while (r := httpx.post(base + "/upscale?scale=2", content=data, headers={"content-type": "image/jpeg"},
                               timeout=30)).status_code == 503:  # until the hang-up is noticed
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert r.status_code == 200


def test_the_file_part_of_a_multipart_prefix() -> None:
    image = encoded(natural((64, 48)), "PNG")
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
            b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + image + b"\r\n--XyZ--\r\n")
    assert multipart_file_prefix(body, b"XyZ") == image
    cut = body.index(image) + 100
    assert multipart_file_prefix(body[:cut], b"XyZ") == image[:100]  # the file's first bytes, still arriving
    assert multipart_file_prefix(body[:40], b"XyZ") is None  # its headers are not in yet
    assert multipart_file_prefix(body.replace(b'name="file"', b'name="other"'), b"XyZ") is None
    assert multipart_file_prefix(body.replace(b'name="file"; filename', b'name="x"; filename'), b"XyZ") is None


def _nice(tid: int | None = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id() if tid is None else tid)


def _native_threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_lowered_threads_get_the_main_threads_nice_plus_n_once() -> None:
    """A pool started from a lowered thread is not lowered twice; 0 leaves threads alone."""
    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    with lowered_pool(1, "t", 5) as outer:
        assert outer.submit(_nice).result() == min(19, base + 5)
        with lowered_pool(1, "t2", 5) as inner:  # started from a lowered thread
            assert outer.submit(lambda: inner.submit(_nice).result()).result() == min(19, base + 5)
    assert in_lowered_thread(_nice, 3) == min(19, base + 3)
    with lowered_pool(1, "t3", 0) as same:
        assert same.submit(_nice).result() == base


def test_only_onnx_runtimes_own_threads_run_below_the_event_loop(seeded_store: Path) -> None:
    """The sessions are built in a lowered thread, so ONNX Runtime's pool threads (native, never holding
    the GIL) are lowered; the Python threads (inference caller, codec pool) keep the loop's priority."""
    from app.engine.onnx_backend import OrtModel
    from app.pipeline.build import build_pipeline
    from tests.conftest import make_settings

    base = os.getpriority(os.PRIO_PROCESS, os.getpid())
    before = _native_threads()
    session = in_lowered_thread(lambda: OrtModel(ESPCN(3), threads=2), 5)  # intra-op pool: one thread of its own
    session(torch.rand(1, 1, 24, 24))
    started = _native_threads() - before
    assert started, "ONNX Runtime started no pool thread"
    assert {_nice(t) for t in started} == {min(19, base + 5)}

    pipeline = build_pipeline(make_settings(seeded_store, compute_nice=5, backend="onnxruntime"))
    try:
        assert pipeline.codec_pool.submit(_nice).result() == base
        assert pipeline.engine._executor.submit(_nice).result() == base
    finally:
        pipeline.codec_pool.shutdown()
        pipeline.engine._executor.shutdown()
