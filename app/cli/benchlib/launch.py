"""The service as a child process: a free port, ``python -m app.serve`` started and ready, its process tree.

The one way the benchmark, the tests and the probes in ``scripts/`` start the real service (or, for tests,
an app object under uvicorn in a thread: :func:`serving_app`) and read what its processes hold: RSS, CPU,
threads, open files, command lines (Linux ``/proc``; no psutil). Light on purpose: it imports neither
PyTorch nor the app.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]
HOST = "127.0.0.1"
READY_TIMEOUT_S = 300.0  # models are warmed up before /readyz answers 200
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # app.serve makes a fresh one for several workers


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_ready(base: str, server: subprocess.Popen | None = None, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Poll ``base``/readyz until 200; ``RuntimeError`` if ``server`` (when given) exits first or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the service process stopped ({server.returncode}) before it became ready")
        try:
            if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the service at {base} was not ready within {timeout_s:.0f} s")


@dataclass(frozen=True)
class Service:
    """A started ``python -m app.serve``: its base URL, port and process."""

    url: str  # http://127.0.0.1:PORT
    port: int
    process: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.process.pid


def spawn_service(env: Mapping[str, str | None] | None = None, *,
                  log: Path | int | None = subprocess.DEVNULL) -> Service:
    """``python -m app.serve`` on 127.0.0.1 and a free port, started but not waited for (see :func:`start_service`).

    For a caller that boots several at once, then calls :func:`wait_ready` on each.
    """
    port = free_port()
    full = {k: v for k, v in os.environ.items() if k != MULTIPROC_ENV} | {"SR_HOST": HOST, "SR_PORT": str(port)}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    if isinstance(log, Path):
        with log.open("ab") as out:
            server = subprocess.Popen([sys.executable, "-m", "app.serve"], cwd=ROOT, env=full, stdout=out,
                                      stderr=subprocess.STDOUT)
    else:
        server = subprocess.Popen([sys.executable, "-m", "app.serve"], cwd=ROOT, env=full, stdout=log,
                                  stderr=subprocess.STDOUT if log is not None else None)
    return Service(f"http://{HOST}:{port}", port, server)


def start_service(env: Mapping[str, str | None] | None = None, *, log: Path | int | None = subprocess.DEVNULL,
                  timeout_s: float = READY_TIMEOUT_S) -> Service:
    """``python -m app.serve`` on 127.0.0.1 and a free port, returned once ``/readyz`` is 200.

    ``env`` (``SR_*``) goes over this process's environment, less ``PROMETHEUS_MULTIPROC_DIR``; a ``None``
    value removes a variable. ``log``: a file for stdout and stderr, a ``subprocess`` constant, or ``None``
    to inherit. The caller stops it with :func:`stop_service` (or uses :func:`serving`).
    """
    service = spawn_service(env, log=log)
    try:
        wait_ready(service.url, service.process, timeout_s=timeout_s)
    except BaseException:
        stop_service(service, timeout_s=10)
        raise
    return service


def stop_service(service: Service, timeout_s: float = 60) -> int:
    """SIGTERM (the drain), then SIGKILL if it has not exited within ``timeout_s``; its exit status."""
    server = service.process
    if server.poll() is None:
        server.terminate()
    try:
        return server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()


@contextmanager
def serving(env: Mapping[str, str | None] | None = None, *, log: Path | int | None = subprocess.DEVNULL,
            timeout_s: float = READY_TIMEOUT_S, stop_timeout_s: float = 60) -> Iterator[Service]:
    """:func:`start_service` for a ``with`` block, stopped at its end."""
    service = start_service(env, log=log, timeout_s=timeout_s)
    try:
        yield service
    finally:
        stop_service(service, stop_timeout_s)


@contextmanager
def serving_app(app: object, *, timeout_s: float = 60, **config: object) -> Iterator[str]:
    """An ASGI ``app`` object under uvicorn in a thread of this process, on 127.0.0.1 and a free port.

    Yields its base URL once ``/readyz`` is 200; ``config`` goes to ``uvicorn.Config`` (``log_level``
    defaults to ``warning``). For tests that need a real socket but the app's objects at hand.
    """
    import threading

    import uvicorn  # here: the rest of this module needs no server

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, **{"log_level": "warning", **config}))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://{HOST}:{port}"
    try:
        wait_ready(base, timeout_s=timeout_s)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=20)


# -- the process tree -----------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """``/proc/PID/stat`` after the command name (whose brackets may hold spaces); None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, nearest first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        frontier = [child for parent in frontier for child in children.get(parent, [])]
        found += frontier
    return found


def status_kib(pid: int, field: str) -> int | None:
    """The number on a line of ``/proc/PID/status``: kB for ``VmRSS``, ``VmHWM``, ``RssAnon``…, a count for
    ``Threads``; None when the process is gone (or has no such line)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def open_files(pid: int) -> int | None:
    """File descriptors ``pid`` holds open; None when it is gone."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def cmdline(pid: int) -> str:
    """The command line of ``pid``, its arguments joined by spaces ("" when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (exited, not yet reaped)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def rss_mb(pid: int) -> float:
    """Resident memory of one process, MiB (0 when it is gone)."""
    return (status_kib(pid, "VmRSS") or 0) / 1024


def tree_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of ``pid`` and every live descendant, MiB; ``field="VmHWM"`` sums their peaks."""
    return sum(status_kib(p, field) or 0 for p in [pid, *descendants(pid)]) / 1024


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid``, all threads together; None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of ``pid`` and every live descendant (the workers of ``python -m app.serve``)."""
    own = process_cpu_s(pid)
    if own is None:
        return None
    return own + sum(cpu for p in descendants(pid) if (cpu := process_cpu_s(p)) is not None)
