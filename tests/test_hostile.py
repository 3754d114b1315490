"""Hostile uploads (issue 19): a generated corpus, each file refused with a clear 4xx or answered correctly.

Every file is small and inside the byte and pixel limits; each is costly in one way
(scans, chunks, frames, tiles, metadata, RLE). Checked three ways: ``decode`` alone
(the refusal, its class and its time), the app over HTTP (status, JSON code, and a
small request still served), and the decode sandbox (time and memory budgets and
cancellation, on files the structural checks are told to let through). Mid-upload
disconnects and the header/body timeouts run against a live uvicorn on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import io
import logging
import resource
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageCms

from app.api.http_protocol import TimedHttpToolsProtocol
from app.cli.benchlib.launch import serving_app
from app.config import get_settings
from app.imaging import icc
from app.imaging.decode import decode
from app.imaging.encode import encode
from app.imaging.errors import ImageError, ImageTooComplex, ImageTooLarge, InvalidImage
from app.imaging.limits import ImageLimits
from app.imaging.sandbox import DecodeBudget, DecodeSandbox
from app.main import create_app
from tests import hostile_corpus as H
from tests.conftest import make_settings

# name → (file, expected error class or None for a 200, HTTP status, JSON code)
CORPUS: dict[str, tuple[Callable[[], bytes], type[ImageError] | None, int, str | None]] = {
    "jpeg_scans": (lambda: H.progressive_scan_bomb(256, 150), ImageTooComplex, 422, "image_too_complex"),
    "jpeg_markers": (H.jpeg_marker_flood, ImageTooComplex, 422, "image_too_complex"),
    "jpeg_junk": (H.jpeg_junk_between_markers, ImageTooComplex, 422, "image_too_complex"),
    "jpeg_icc_2mb": (lambda: H.jpeg_with_icc(H.icc_profile()), None, 200, None),
    "png_idat_flood": (H.png_idat_flood, ImageTooComplex, 422, "image_too_complex"),
    "png_text_pile": (lambda: H.png_text_pile(20, 1 << 20), ImageTooComplex, 422, "image_too_complex"),
    "png_ztxt_bomb": (H.png_ztxt_bomb, InvalidImage, 400, "invalid_image"),
    "apng_frames": (H.apng_frame_count, ImageTooComplex, 422, "image_too_complex"),
    "png_header": (H.png_header_bomb, ImageTooLarge, 413, "image_too_large"),
    "tiff_tile": (lambda: H.tiff_tile_bomb(inflate=False), ImageTooComplex, 422, "image_too_complex"),
    "tiff_strip_past_end": (lambda: H.tiff_strip(byte_count=10**8), InvalidImage, 400, "invalid_image"),
    "tiff_strips_listed": (lambda: H.tiff_strip(offsets=500), InvalidImage, 400, "invalid_image"),
    "tiff_tag_array": (H.tiff_tag_array, ImageTooComplex, 422, "image_too_complex"),
    "gif_extensions": (H.gif_extension_flood, ImageTooComplex, 422, "image_too_complex"),
    "gif_frames": (H.gif_frame_flood, ImageTooComplex, 422, "image_too_complex"),
    "gif_frame_outside": (H.gif_frame_outside_screen, ImageTooLarge, 413, "image_too_large"),
    "webp_canvas": (H.webp_canvas_bomb, ImageTooLarge, 413, "image_too_large"),
    "webp_frames": (H.webp_frame_flood, ImageTooComplex, 422, "image_too_complex"),
    "bmp_rle": (H.bmp_rle, ImageTooComplex, 422, "image_too_complex"),
}


@pytest.fixture(scope="module")
def corpus() -> dict[str, bytes]:
    return {name: make() for name, (make, *_) in CORPUS.items()}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("name", list(CORPUS))
def test_decode_refuses_or_decodes_each_hostile_file_quickly(corpus: dict[str, bytes], name: str) -> None:
    data, (_, error, _, _) = corpus[name], CORPUS[name]
    peak_before = _rss_mb()
    start = time.perf_counter()
    if error is None:
        decode(data, 2)
    else:
        with pytest.raises(error):
            decode(data, 2)
    assert time.perf_counter() - start < 1.0
    assert _rss_mb() - peak_before < 256  # never near the 1 GB a decode bomb would take


def test_refusals_say_what_was_out_of_proportion(corpus: dict[str, bytes]) -> None:
    cases = {
        "jpeg_scans": "over 100 scans", "png_idat_flood": "over 20000 chunks", "apng_frames": "1000000 frames",
        "tiff_tile": "64×64 but declares tiles of width 16000", "gif_frames": "over 1000 frames",
        "bmp_rle": "RLE data", "jpeg_junk": "junk between its markers",
    }
    for name, words in cases.items():
        with pytest.raises(ImageError, match=words):
            decode(corpus[name], 2)


def test_limits_are_settings() -> None:
    scans = H.progressive_scan_bomb(128, 30)
    decode(scans, 2, ImageLimits(max_jpeg_scans=100))
    with pytest.raises(ImageTooComplex, match="over 20 scans"):
        decode(scans, 2, ImageLimits(max_jpeg_scans=20))
    frames = H.gif_frame_flood(50)
    decode(frames, 2)
    with pytest.raises(ImageTooComplex, match="over 10 frames"):
        decode(frames, 2, ImageLimits(max_frames=10))


def test_real_encoders_files_pass_the_checks() -> None:
    """What real encoders write stays well inside every bound (progressive JPEG, APNG, animated GIF/WebP, tiled TIFF)."""
    photo = H.noise((300, 200))
    frames = [H.noise((64, 64), seed=s) for s in range(20)]
    files = [
        H.encoded(photo, "JPEG", progressive=True, quality=95, icc_profile=_srgb()),
        H.encoded(photo, "PNG", icc_profile=_srgb()),
        H.encoded(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        H.encoded(frames[0].convert("P"), "GIF", save_all=True, append_images=[f.convert("P") for f in frames[1:]]),
        H.encoded(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        H.encoded(photo, "TIFF", compression="tiff_adobe_deflate", tiffinfo={322: 256, 323: 256}),
        H.encoded(photo, "TIFF", compression="tiff_lzw"),
        H.encoded(photo.convert("P"), "BMP"),
    ]
    for data in files:
        out = decode(data, 2)
        assert out.width in (300, 64)


def _srgb() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


# --- ICC profiles -----------------------------------------------------------------------------------

def test_icc_profiles_are_checked_as_profiles() -> None:
    srgb = _srgb()
    assert icc.problem(srgb) is None and icc.fits(srgb, "RGB")
    assert "over the 262144-byte bound" in icc.problem(H.icc_profile(size=icc.MAX_PROFILE_BYTES + 4))
    assert "header says 132 bytes" in icc.problem(H.icc_profile(size=4096, header_size=132))
    bad_tag = bytearray(srgb)
    bad_tag[132 + 4 : 132 + 8] = (10**6).to_bytes(4, "big")  # first tag's offset, far past the end
    assert "outside the profile" in icc.problem(bytes(bad_tag))
    link = bytearray(srgb)
    link[12:16] = b"link"
    assert "device class" in icc.problem(bytes(link))
    assert not icc.fits(bytes(link), "RGB")


def test_oversized_icc_jpeg_answer_decodes_with_pillow_and_carries_no_profile(client: TestClient) -> None:
    blob = H.jpeg_with_icc(H.icc_profile())  # the case: a valid RGB header padded to 2 MB
    assert len(Image.open(io.BytesIO(blob)).info["icc_profile"]) == 2 * 1024 * 1024
    for fmt in ("png", "jpeg", "webp"):
        r = client.post(f"/upscale?scale=2&format={fmt}", content=blob, headers={"content-type": "image/jpeg"})
        assert r.status_code == 200, r.text
        answer = Image.open(io.BytesIO(r.content))
        answer.load()
        assert answer.size == (64, 64) and "icc_profile" not in answer.info
    # a sane profile still travels
    r = client.post("/upscale?scale=2", content=H.jpeg_with_icc(_srgb()), headers={"content-type": "image/jpeg"})
    assert Image.open(io.BytesIO(r.content)).info["icc_profile"] == _srgb()


def test_encode_never_writes_a_profile_pillow_cannot_read() -> None:
    big = H.icc_profile(size=1536 * 1024)  # past Pillow's 1 MB iCCP reading limit
    for fmt in ("png", "jpeg", "webp"):
        out = Image.open(io.BytesIO(encode(H.noise((16, 16)), fmt, icc_profile=big)))
        out.load()
        assert "icc_profile" not in out.info


# --- over HTTP --------------------------------------------------------------------------------------

def test_every_hostile_file_gets_its_4xx_json_and_the_service_keeps_serving(
    client: TestClient, corpus: dict[str, bytes]
) -> None:
    small = H.encoded(H.noise((64, 64)), "PNG")
    errors_before = _server_errors(client.get("/metrics").text)  # the registry is the process's: other tests count too
    for name, data in corpus.items():
        _, _, status, code = CORPUS[name]
        start = time.perf_counter()
        r = client.post("/upscale?scale=2", content=data, headers={"content-type": "application/octet-stream"})
        assert r.status_code == status, (name, r.text)
        if code:
            assert r.json()["code"] == code and r.json()["detail"], name
        assert time.perf_counter() - start < 3.0, name
        assert client.post("/upscale?scale=2", content=small, headers={"content-type": "image/png"}).status_code == 200
    assert _server_errors(client.get("/metrics").text) == errors_before


def _server_errors(metrics: str) -> float:
    """All 5xx answers counted in ``sr_requests_total``."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("sr_requests_total{") and 'status="5' in line)


# --- the decode sandbox -----------------------------------------------------------------------------

LAX = ImageLimits(max_jpeg_scans=10**6)  # let the scan bomb through the structural checks


@pytest.fixture(scope="module")
def sandbox() -> Iterator[DecodeSandbox]:
    box = DecodeSandbox(max_workers=4, warm=2)
    box.start()
    yield box
    box.close()


@pytest.fixture(scope="module")
def slow_jpeg() -> bytes:
    """12,000 scans of 2048²: ≈ 1.4 s of decoding on an idle 2-core machine, well past the tests' 0.2–0.3 s budgets."""
    return H.progressive_scan_bomb(2048, 12000)


def test_sandbox_decodes_like_decode(sandbox: DecodeSandbox) -> None:
    data = H.encoded(H.noise((97, 61), "RGBA"), "PNG", icc_profile=_srgb())
    ours, theirs = asyncio.run(sandbox.decode(data, 3)), decode(data, 3)
    assert ours.color.tobytes() == theirs.color.tobytes() and ours.alpha.tobytes() == theirs.alpha.tobytes()
    assert (ours.icc_profile, ours.source_format, ours.source_mode) == (theirs.icc_profile, "PNG", "RGBA")
    with pytest.raises(ImageTooComplex, match="over 100 scans"):  # the worker raises what decode raises
        asyncio.run(sandbox.decode(H.progressive_scan_bomb(128, 150), 2))


def test_sandbox_stops_a_decode_past_its_time_budget(sandbox: DecodeSandbox, slow_jpeg: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(ImageTooComplex, match="longer than its 0.3 s budget"):
        asyncio.run(sandbox.decode(slow_jpeg, 2, LAX, DecodeBudget(timeout_s=0.3)))
    assert time.perf_counter() - start < 1.0
    assert asyncio.run(sandbox.decode(H.encoded(H.noise((8, 8)), "PNG"), 2)).width == 8  # replaced, serving


def test_sandbox_deadline_cuts_the_budget(sandbox: DecodeSandbox, slow_jpeg: bytes) -> None:
    start = time.perf_counter()
    with pytest.raises(ImageTooComplex, match="0.2 s"):
        asyncio.run(sandbox.decode(slow_jpeg, 2, LAX, deadline=time.monotonic() + 0.2))
    assert time.perf_counter() - start < 1.0


def test_sandbox_refuses_a_decode_past_its_memory_budget(sandbox: DecodeSandbox) -> None:
    big = H.encoded(Image.new("RGBA", (4096, 4096), (1, 2, 3, 4)), "PNG")  # 64 MB of pixels, 200 KB file
    with pytest.raises(ImageTooComplex, match="memory budget of 64 MiB"):
        asyncio.run(sandbox.decode(big, 2, budget=DecodeBudget(memory_bytes=64 << 20)))
    assert asyncio.run(sandbox.decode(big, 2)).color.size == (4096, 4096)  # within the default budget


def test_abandoned_bombs_are_killed_and_a_small_decode_is_served_meanwhile(
    sandbox: DecodeSandbox, slow_jpeg: bytes
) -> None:
    small = H.encoded(H.noise((64, 64)), "PNG")

    async def scenario() -> float:
        bombs = [asyncio.ensure_future(sandbox.decode(slow_jpeg, 2, LAX)) for _ in range(2)]
        await asyncio.sleep(0.2)
        start = time.perf_counter()
        assert (await sandbox.decode(small, 2)).width == 64  # while both bombs run
        served = time.perf_counter() - start
        for bomb in bombs:  # their clients went away
            bomb.cancel()
        for bomb in bombs:
            with pytest.raises(asyncio.CancelledError):
                await bomb
        return served

    assert asyncio.run(scenario()) < 3.0
    for _ in range(50):  # killed, and replaced back to the warm count
        if sandbox.workers <= 2 + 1:
            break
        time.sleep(0.05)
    assert sandbox.workers <= 3
    assert asyncio.run(sandbox.decode(small, 2)).width == 64


# --- live server: disconnects and read timeouts -----------------------------------------------------

def _metric(text: str, prefix: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.fixture
def live(seeded_store: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The app on uvicorn with the launcher's protocol (header/body timeouts of 0.5 s), on 127.0.0.1."""
    monkeypatch.setenv("SR_HEADER_TIMEOUT_S", "0.5")
    monkeypatch.setenv("SR_BODY_TIMEOUT_S", "0.5")
    get_settings.cache_clear()
    try:
        with serving_app(create_app(make_settings(seeded_store)), log_level="info", http=TimedHttpToolsProtocol,
                         limit_concurrency=64) as base:
            yield base
    finally:
        get_settings.cache_clear()


def test_mid_upload_disconnects_are_client_gone_not_500(live: str, caplog: pytest.LogCaptureFixture) -> None:
    port = int(live.rsplit(":", 1)[1])
    before = httpx.get(f"{live}/metrics").text
    caplog.set_level(logging.INFO)
    for i in range(30):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            kind = ("content-type: image/png", "content-type: multipart/form-data; boundary=x")[i % 2]
            sock.sendall(f"POST /upscale?scale=2 HTTP/1.1\r\nHost: x\r\n{kind}\r\nContent-Length: 100000\r\n\r\n"
                         .encode() + b"\x89PNG" * 8)
            time.sleep(0.01)
    for _ in range(100):
        after = httpx.get(f"{live}/metrics").text
        if _metric(after, 'sr_requests_total{endpoint="/upscale",scale="2",status="499"}') - _metric(
                before, 'sr_requests_total{endpoint="/upscale",scale="2",status="499"}') == 30:
            break
        time.sleep(0.05)
    gone = 'sr_rejected_total{reason="client_gone"}'
    assert _metric(after, gone) - _metric(before, gone) == 30
    five = 'sr_requests_total{endpoint="/upscale",scale="2",status="5'  # the registry is shared with other tests
    assert _metric(after, five) == _metric(before, five)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert "Traceback" not in caplog.text


def test_slow_headers_and_bodies_are_cut_off(live: str) -> None:
    port = int(live.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as idle:  # sends nothing at all
        idle.settimeout(3)
        start = time.perf_counter()
        assert idle.recv(100) == b""  # closed by the server
        assert 0.3 < time.perf_counter() - start < 2.0
    with socket.create_connection(("127.0.0.1", port)) as slow:  # a slowloris: headers a byte at a time
        start, cut = time.perf_counter(), None
        try:
            for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
                slow.sendall(bytes([byte]))
                time.sleep(0.05)
        except OSError:  # the server closed it
            cut = time.perf_counter() - start
        assert cut is not None and cut < 2.5
    with socket.create_connection(("127.0.0.1", port)) as stalled:  # headers, then a body that never comes
        stalled.settimeout(3)
        stalled.sendall(b"POST /upscale?scale=2 HTTP/1.1\r\nHost: x\r\ncontent-type: image/png\r\n"
                        b"Content-Length: 1000\r\n\r\n\x89PNG")
        start = time.perf_counter()
        stalled.recv(1000)
        assert time.perf_counter() - start < 2.0
    assert httpx.get(f"{live}/healthz").status_code == 200  # a prompt client is served as ever
