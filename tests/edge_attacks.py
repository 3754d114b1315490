"""Attacks on the HTTP edge with raw sockets, and the probe that times ``/healthz`` meanwhile.

Used by ``tests/test_edge.py``; ``python -m tests.edge_attacks`` runs each attack against a server
started with the launcher's defaults (``python -m app.serve``, the shipped models) and prints what it
cost: the process tree's RSS growth under a header flood, and ``/healthz`` latency and statuses during
a URL trickle and with thousands of idle connections. Everything talks to 127.0.0.1 only, and every
loop stops by itself (a byte budget or a deadline).
"""

from __future__ import annotations

import os
import selectors
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from app.cli.benchlib import launch
from app.cli.benchlib.launch import tree_rss_mb

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


@contextmanager
def serving(**env: str) -> Iterator[tuple[int, subprocess.Popen]]:
    """``python -m app.serve`` on a free loopback port with ``env`` (``SR_*``) over this environment."""
    with launch.serving({"SR_DEVICE": "cpu", **env}, timeout_s=180) as service:
        yield service.port, service.process


def read_answer(sock: socket.socket, timeout_s: float = 15.0) -> bytes:
    """Everything the server sends until it closes (or ``timeout_s`` passes, or a reset)."""
    sock.settimeout(timeout_s)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                break
            chunks.append(data)
    except OSError:
        pass
    return b"".join(chunks)


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer (``None``: no answer)."""
    parts = answer.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def get(port: int, path: str, method: str = "GET", timeout_s: float = 15.0) -> tuple[float, int | None, bytes]:
    """One request on a new connection (as a liveness probe makes it): seconds, status, the raw answer."""
    started = time.perf_counter()
    try:
        with socket.create_connection((HOST, port), timeout=timeout_s) as sock:
            sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n".encode())
            answer = read_answer(sock, timeout_s)
    except OSError:
        answer = b""
    return time.perf_counter() - started, status_of(answer), answer


class Prober:
    """Times ``GET /healthz`` every ``interval_s`` on a fresh connection, in a thread, until stopped."""

    def __init__(self, port: int, path: str = "/healthz", interval_s: float = 0.1) -> None:
        self.port, self.path, self.interval_s = port, path, interval_s
        self.results: list[tuple[float, int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            seconds, status, _ = get(self.port, self.path)
            self.results.append((seconds, status))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def p95(self) -> float:
        times = sorted(s for s, _ in self.results)
        return times[min(len(times) - 1, int(0.95 * len(times)))] if times else float("nan")

    def statuses(self) -> dict[int | None, int]:
        counts: dict[int | None, int] = {}
        for _, status in self.results:
            counts[status] = counts.get(status, 0) + 1
        return counts


def header_flood(port: int, total_bytes: int, line_bytes: int = 8192, url: str = "/healthz") -> tuple[int, bytes]:
    """Send one request whose headers go on for ``total_bytes`` (lines of ``line_bytes``), then its end.

    Stops early when the server answers or closes. Returns the bytes sent and the server's answer.
    """
    sent = 0
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(f"GET {url} HTTP/1.1\r\nHost: flood\r\n".encode())
        line = b"X-Pad: " + b"a" * (line_bytes - 9) + b"\r\n"
        try:
            while sent < total_bytes:
                sock.sendall(line)
                sent += len(line)
                if sent % (1 << 20) < line_bytes and _readable(sock):
                    break  # the server answered (or closed) before the end: stop sending
            else:
                sock.sendall(b"Connection: close\r\n\r\n")
        except OSError:
            pass
        return sent, read_answer(sock)


def url_trickle(port: int, seconds: float, chunk: int = 512, pause_s: float = 0.0005,
                into: str = "url") -> tuple[int, bytes]:
    """Send a request whose URL (or one header, ``into="header"``) grows by ``chunk`` bytes every ``pause_s``.

    For ``seconds`` at most, then the rest of the request. Each piece reaches the server as its own
    read (or a few), so a server that copies what it has so far on every read does work quadratic
    in the length. Stops when the server answers or closes.
    """
    sent, deadline = 0, time.monotonic() + seconds
    piece = b"a" * chunk
    start, end = b"GET /healthz?pad=", b" HTTP/1.1\r\nHost: trickle\r\nConnection: close\r\n\r\n"
    if into == "header":
        start, end = b"GET /healthz HTTP/1.1\r\nHost: trickle\r\nX-Pad: ", b"\r\nConnection: close\r\n\r\n"
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(start)
        try:
            while time.monotonic() < deadline:
                sock.sendall(piece)
                sent += chunk
                if _readable(sock):
                    break
                time.sleep(pause_s)
        except OSError:
            return sent, b""
        if time.monotonic() >= deadline:
            try:
                sock.sendall(end)
            except OSError:
                return sent, b""
        return sent, read_answer(sock, 10)


def trickle_for(port: int, seconds: float, chunk: int) -> list[int | None]:
    """:func:`url_trickle` again and again for ``seconds``; the status of each answer."""
    statuses, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        statuses.append(status_of(url_trickle(port, left, chunk)[1]))
    return statuses


def _readable(sock: socket.socket) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        return bool(sel.select(0))


def in_threads(count: int, target: Callable[[], object]) -> list[object]:
    """Run ``target`` in ``count`` threads at once; their results."""
    results: list[object] = [None] * count

    def run(i: int) -> None:
        results[i] = target()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


class IdleConnections:
    """``count`` connections that send nothing, reopened when the server closes one, until stopped."""

    def __init__(self, port: int, count: int, request: bytes = b"") -> None:
        self.port, self.count, self.request = port, count, request
        self.reopened = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self) -> None:
        sock = socket.create_connection((HOST, self.port), timeout=10)
        if self.request:  # e.g. a whole request, then idle keep-alive
            sock.sendall(self.request)
        sock.setblocking(False)
        self._sel.register(sock, selectors.EVENT_READ)

    def __enter__(self) -> IdleConnections:
        for _ in range(self.count):
            self._open()
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._sel.select(0.05):
                sock = key.fileobj
                try:
                    data = sock.recv(65536)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:  # closed by the server: open another
                    self._sel.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                    if not self._stop.is_set():
                        try:
                            self._open()
                            self.reopened += 1
                        except OSError:
                            pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for key in list(self._sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        self._sel.close()


def measure() -> None:
    """Each attack against the launcher's defaults, with the figures the issue quotes."""
    store = os.environ.get("SR_MODEL_STORE", str(ROOT / "model_store"))
    with serving(SR_MODEL_STORE=store) as (port, server):
        time.sleep(2)
        before = tree_rss_mb(server.pid)
        sent, answer = header_flood(port, int(os.environ.get("FLOOD_MB", "210")) << 20)
        time.sleep(1)
        body = answer.split(b"\r\n\r\n", 1)[-1][:120]
        print(f"header flood: sent {sent / 1e6:.1f} MB, answer {status_of(answer)} "
              f"{body!r}; tree RSS {before:.0f} -> {tree_rss_mb(server.pid):.0f} MB")

        tricklers, chunk = int(os.environ.get("TRICKLERS", "8")), int(os.environ.get("CHUNK", "2048"))
        with Prober(port) as probe:
            results = in_threads(tricklers, lambda: trickle_for(port, 12, chunk))
        answers: dict[int | None, int] = {}
        for statuses in results:
            for status in statuses:  # type: ignore[attr-defined]
                answers[status] = answers.get(status, 0) + 1
        print(f"URL trickle x{tricklers} for 12 s ({chunk} B pieces): answers {answers}; /healthz p95 "
              f"{probe.p95():.3f} s, max {max(s for s, _ in probe.results):.3f} s over {len(probe.results)} probes")

        count = int(os.environ.get("IDLE", "2100"))
        with IdleConnections(port, count) as idle:
            time.sleep(0.5)
            with Prober(port, interval_s=0.05) as probe:
                time.sleep(4)
            models = [get(port, "/models")[1] for _ in range(10)]
        print(f"{count} idle connections ({idle.reopened} reopened): /healthz statuses {probe.statuses()}, "
              f"p95 {probe.p95():.3f} s; GET /models statuses {models}")
        print(f"median probe {statistics.median(s for s, _ in probe.results):.4f} s")


if __name__ == "__main__":
    measure()
