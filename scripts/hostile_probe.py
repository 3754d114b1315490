"""Issue 19's done-when figures, measured against the real service over real sockets on 127.0.0.1.

Starts ``python -m app.serve`` on a free loopback port and measures:

1. two decode bombs of each kind in flight and abandoned → time for a 64×64 request;
2. one bomb with its client waiting → time to its 4xx;
3. peak RSS growth of the server's process tree per hostile upload (the whole corpus);
4. 30 mid-upload disconnects → 5xx added to /metrics, client_gone added, tracebacks in the log;
5. idle connections closed by the header timeout;

then, in this process, the decode sandbox: per-request overhead on a 64×64 PNG and the
bounds it achieves on bombs the structural checks are told to let through.

    .venv/bin/python scripts/hostile_probe.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.cli.benchlib.launch import start_service, stop_service, tree_rss_mb  # noqa: E402
from app.imaging.decode import decode  # noqa: E402
from app.imaging.limits import ImageLimits  # noqa: E402
from app.imaging.sandbox import DecodeBudget, DecodeSandbox  # noqa: E402
from tests import hostile_corpus as H  # noqa: E402


class PeakRss:
    """Samples the tree's RSS every 10 ms in a thread; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak, self._stop = pid, 0.0, False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, tree_rss_mb(self.pid))
            time.sleep(0.01)

    def reset(self) -> float:
        self.peak = now = tree_rss_mb(self.pid)
        return now

    def stop(self) -> None:
        self._stop = True


def raw_post(port: int, body: bytes, content_type: str = "application/octet-stream") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST /upscale?scale=2 HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def status_of(sock: socket.socket, timeout: float = 60) -> int:
    sock.settimeout(timeout)
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return -1
        head += chunk
    return int(head.split(b" ", 2)[1])


def metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller bombs (for a smoke run)")
    args = parser.parse_args()
    side = 2048 if args.quick else 4096
    print("building bombs ...", flush=True)
    bombs = {
        "progressive JPEG, 1,500 scans": H.progressive_scan_bomb(side, 1500),
        "TIFF 64x64 with one 16000x16000 tile": H.tiff_tile_bomb(8000 if args.quick else 16000),
    }
    corpus = {
        "jpeg_marker_flood": H.jpeg_marker_flood(), "jpeg_junk": H.jpeg_junk_between_markers(),
        "jpeg_icc_2mb": H.jpeg_with_icc(H.icc_profile()), "png_idat_flood": H.png_idat_flood(),
        "png_text_pile": H.png_text_pile(20), "png_ztxt_bomb": H.png_ztxt_bomb(), "apng_frames": H.apng_frame_count(),
        "png_header_bomb": H.png_header_bomb(), "tiff_tag_array": H.tiff_tag_array(),
        "tiff_strip_past_end": H.tiff_strip(byte_count=10**8), "gif_extension_flood": H.gif_extension_flood(),
        "gif_frame_flood": H.gif_frame_flood(), "gif_frame_outside": H.gif_frame_outside_screen(),
        "webp_canvas_bomb": H.webp_canvas_bomb(), "webp_frame_flood": H.webp_frame_flood(), "bmp_rle": H.bmp_rle(),
    }
    small = H.encoded(H.noise((64, 64)), "PNG")
    for name, data in bombs.items():
        print(f"  {name}: {len(data) / 1024:.0f} KB")

    log = tempfile.NamedTemporaryFile("w+", prefix="sr-probe-", suffix=".log", delete=False)
    service = start_service({"SR_WORKERS": "1", "SR_HEADER_TIMEOUT_S": "2", "SR_ACCESS_LOG": "true"},
                            log=Path(log.name), timeout_s=60)
    base, port = service.url, service.port
    try:
        client = httpx.Client(base_url=base, timeout=60)
        post = lambda body: client.post("/upscale?scale=2", content=body,  # noqa: E731
                                         headers={"content-type": "application/octet-stream"})
        assert post(small).status_code == 200
        rss = PeakRss(service.pid)
        print(f"\nservice pid {service.pid} on {base}; process tree RSS {rss.reset():.0f} MB")

        print("\n1. two bombs of each kind in flight, abandoned after 0.3 s; then a 64x64 request")
        for name, data in bombs.items():
            socks = [raw_post(port, data) for _ in range(2)]
            time.sleep(0.3)
            for s in socks:
                s.close()
            t = time.perf_counter()
            code = post(small).status_code
            print(f"   {name}: 64x64 answered {code} in {time.perf_counter() - t:.3f} s")

        print("\n2. one bomb, its client waiting")
        for name, data in bombs.items():
            t = time.perf_counter()
            r = post(data)
            print(f"   {name}: {r.status_code} {r.json().get('code')} in {time.perf_counter() - t:.3f} s — "
                  f"{r.json().get('detail')}")

        print("\n3. peak RSS growth of the server's process tree per hostile upload")
        worst = 0.0
        for name, data in {**bombs, **corpus}.items():
            before = rss.reset()
            t = time.perf_counter()
            r = post(data)
            time.sleep(0.05)
            grown = rss.peak - before
            worst = max(worst, grown)
            print(f"   {name:40s} {len(data) / 1024:8.0f} KB -> {r.status_code} "
                  f"{r.json().get('code') if r.status_code != 200 else 'image'} "
                  f"in {time.perf_counter() - t:.3f} s, peak RSS +{grown:.0f} MB")
        print(f"   worst: +{worst:.0f} MB")

        print("\n4. 30 mid-upload disconnects (Content-Length 100000, a few bytes, close)")
        before = client.get("/metrics").text
        log.flush()
        log_lines = sum(1 for _ in open(log.name))
        for i in range(30):
            kind = ("image/png", "multipart/form-data; boundary=x")[i % 2]
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(f"POST /upscale?scale=2 HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n"
                          f"Content-Length: 100000\r\n\r\n".encode() + b"\x89PNG\r\n")
                time.sleep(0.01)
        time.sleep(1.0)
        after = client.get("/metrics").text
        lines = open(log.name).read().splitlines()[log_lines:]
        five = metric(after, 'sr_requests_total{endpoint="/upscale",scale="2",status="5') - metric(
            before, 'sr_requests_total{endpoint="/upscale",scale="2",status="5')
        gone = metric(after, 'sr_rejected_total{reason="client_gone"}') - metric(
            before, 'sr_rejected_total{reason="client_gone"}')
        print(f"   5xx added: {five:.0f}; client_gone added: {gone:.0f}; log lines added: {len(lines)} "
              f"(access log on); tracebacks: {sum('Traceback' in line for line in lines)}")

        print("\n5. 2,000 idle connections (SR_HEADER_TIMEOUT_S=2 here; default 10)")
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2000)]
        t = time.perf_counter()
        code = post(small).status_code
        print(f"   a 64x64 request meanwhile: {code} in {time.perf_counter() - t:.3f} s")
        time.sleep(2.5)
        closed = 0
        for s in idle:
            s.settimeout(0.5)
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
            s.close()
        print(f"   closed by the server after 2.5 s: {closed} of {len(idle)}")
        rss.stop()
    finally:
        stop_service(service, timeout_s=40)

    print("\n6. the decode sandbox (in this process; structural checks relaxed so the bombs reach a decoder)")
    box = DecodeSandbox(max_workers=4, warm=2)
    box.start()

    async def sandbox_figures() -> None:
        await box.decode(small, 2)
        inproc, boxed = [], []
        for _ in range(50):
            t = time.perf_counter()
            decode(small, 2)
            inproc.append(time.perf_counter() - t)
            t = time.perf_counter()
            await box.decode(small, 2)
            boxed.append(time.perf_counter() - t)
        print(f"   64x64 PNG: in-process {statistics.median(inproc) * 1000:.2f} ms, "
              f"sandbox {statistics.median(boxed) * 1000:.2f} ms (median of 50): "
              f"+{(statistics.median(boxed) - statistics.median(inproc)) * 1000:.2f} ms")
        big = H.encoded(H.noise((2048, 2048)), "PNG", compress_level=1)
        t = time.perf_counter()
        decode(big, 2)
        a = time.perf_counter() - t
        t = time.perf_counter()
        await box.decode(big, 2)
        print(f"   2048² RGB PNG: in-process {a * 1000:.0f} ms, sandbox {(time.perf_counter() - t) * 1000:.0f} ms")
        lax = ImageLimits(max_jpeg_scans=10**6)
        slow = H.progressive_scan_bomb(2048, 3000)
        t = time.perf_counter()
        decode(slow, 2, lax)
        unbounded = time.perf_counter() - t
        for budget in (DecodeBudget(timeout_s=1.0), DecodeBudget(timeout_s=0.25)):
            t = time.perf_counter()
            try:
                await box.decode(slow, 2, lax, budget)
                outcome = "decoded"
            except Exception as e:
                outcome = f"{type(e).__name__}: {e}"
            print(f"   scan bomb (2048², 3,000 scans; {unbounded:.2f} s unbounded), budget {budget.timeout_s} s: "
                  f"stopped after {time.perf_counter() - t:.2f} s ({outcome})")
        rgba = H.encoded(H.noise((4096, 4096), "RGBA"), "PNG", compress_level=1)
        for mb in (64, 768):
            t = time.perf_counter()
            try:
                await box.decode(rgba, 2, budget=DecodeBudget(memory_bytes=mb << 20))
                outcome = "decoded"
            except Exception as e:
                outcome = f"{type(e).__name__}: {e}"
            print(f"   4096² RGBA PNG, memory budget {mb} MiB: {time.perf_counter() - t:.2f} s ({outcome})")

    asyncio.run(sandbox_figures())
    box.close()


if __name__ == "__main__":
    main()
