"""The wire between HTTP workers and the device process: one datagram a message, pixels in passed memory.

A Unix ``SOCK_SEQPACKET`` socket keeps message boundaries, so a message is one
``sendmsg`` of compact JSON, never split or merged, and a request's pixels ride
beside it as a file descriptor (``SCM_RIGHTS``) of an anonymous ``memfd``:

- no pixel is pickled or copied through the socket; both processes map the same pages;
- the memory has no name: it cannot leak in ``/dev/shm`` whoever dies, and Docker's
  64 MiB ``/dev/shm`` does not bound it (it is counted in the cgroup's memory);
- it is freed when the last of the two mappings goes.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import socket
from typing import Any

MAX_MESSAGE = 64 * 1024  # bytes of JSON in one datagram: messages are a few hundred
_FDS_PER_MESSAGE = 1


class SharedBuffer:
    """``size`` bytes of anonymous shared memory, mapped here; :attr:`fd` passes it to another process."""

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = size
        own = fd is None
        self.fd = os.memfd_create("sr-pixels", os.MFD_CLOEXEC) if own else fd
        try:
            if own:
                os.ftruncate(self.fd, size)
            self.map = mmap.mmap(self.fd, size)
        finally:
            if not own:  # a received descriptor is only needed to map it
                os.close(self.fd)
                self.fd = -1

    def close(self) -> None:
        """Close the descriptor (the mapping lives on while arrays use it; then it goes with them)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def listen(path: str) -> socket.socket:
    """A non-blocking ``SOCK_SEQPACKET`` server socket at ``path`` (a stale file there is replaced)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    sock.listen(256)
    sock.setblocking(False)
    return sock


async def connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, path)
    except BaseException:
        sock.close()
        raise
    return sock


async def _wait(sock: socket.socket, writable: bool) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    fd = sock.fileno()
    add, remove = (loop.add_writer, loop.remove_writer) if writable else (loop.add_reader, loop.remove_reader)
    add(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        remove(fd)


class Channel:
    """One connected socket: send and receive whole messages, with at most one descriptor each."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = asyncio.Lock()  # one writer waits for room at a time (one add_writer per fd)

    async def send(self, message: dict[str, Any], fd: int | None = None) -> None:
        data = json.dumps(message, separators=(",", ":")).encode()
        fds = [fd] if fd is not None else []
        async with self._send_lock:
            while True:
                try:
                    socket.send_fds(self.sock, [data], fds)
                    return
                except BlockingIOError:
                    await _wait(self.sock, writable=True)

    async def receive(self) -> tuple[dict[str, Any], int | None] | None:
        """The next message and its descriptor (the caller owns it), or ``None`` once the peer has gone."""
        while True:
            try:
                data, fds, _flags, _ = socket.recv_fds(self.sock, MAX_MESSAGE, _FDS_PER_MESSAGE)
            except BlockingIOError:
                await _wait(self.sock, writable=False)
                continue
            except (ConnectionResetError, OSError):
                return None
            if not data:
                for fd in fds:
                    os.close(fd)
                return None
            for extra in fds[1:]:
                os.close(extra)
            return json.loads(data), (fds[0] if fds else None)

    def close(self) -> None:
        self.sock.close()
