"""Issue 32 (High 2, Medium 9, Smaller 11): every header parser, the frame count included, runs under the guards.

A TIFF's directory chain is walked by the guards before Pillow counts its pages
(Pillow's count is quadratic in the chain); a corrupt later frame or directory is a
4xx, never a 500; ``POST /jobs`` sniffs uploads with the same guarded peek. The
inputs are generated here, from Pillow's own output (tests/hostile_corpus.py).
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import GifImagePlugin, Image, TiffImagePlugin

from app.imaging.animation import decode_animation
from app.imaging.decode import decode, peek, peek_file
from app.imaging.errors import ImageTooComplex, InvalidImage
from app.imaging.limits import ImageLimits
from app.main import create_app
from tests import hostile_corpus as H
from tests.conftest import make_settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the corrupt directories


@pytest.fixture()
def pillow_seeks(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many frames Pillow's GIF and TIFF plugins seek to: its own count (``n_frames``) seeks to every one."""
    seeks = {"GIF": 0, "TIFF": 0}
    for name, cls in (("GIF", GifImagePlugin.GifImageFile), ("TIFF", TiffImagePlugin.TiffImageFile)):
        real = cls._seek

        def counted(self, *args, _real=real, _name=name, **kwargs):
            seeks[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "_seek", counted)
    return seeks


def test_pillows_own_count_seeks_to_every_frame(pillow_seeks: dict[str, int]) -> None:
    """The control: what the counts below would show if Pillow walked the frames (so they can fail)."""
    assert Image.open(io.BytesIO(H.tiff_directory_chain(100))).n_frames == 100
    assert Image.open(io.BytesIO(H.gif_one_pixel_frames(100, 8))).n_frames == 100
    assert pillow_seeks["TIFF"] >= 100 and pillow_seeks["GIF"] >= 100


def test_a_long_tiff_directory_chain_is_refused_by_the_guards_in_milliseconds(pillow_seeks: dict[str, int]) -> None:
    chain = H.tiff_directory_chain(20_000)  # 2.3 MB; Pillow's page count alone took seconds
    for check in (peek, decode):
        start = time.perf_counter()
        with pytest.raises(ImageTooComplex, match="over 1000 directories"):
            check(chain, 2)
        assert time.perf_counter() - start < 1.0  # ~3 ms here; Pillow's walk of the chain: ~3 s
    assert pillow_seeks["TIFF"] <= 2  # refused before Pillow walked the chain
    with pytest.raises(ImageTooComplex, match="over 10 directories"):
        peek(H.tiff_directory_chain(11), 2, ImageLimits(max_frames=10))


def test_a_tiff_within_the_bound_is_counted_without_pillows_quadratic_walk(pillow_seeks: dict[str, int]) -> None:
    header = peek(H.tiff_directory_chain(1000), 2)
    assert header.frames == 1000 and header.format == "TIFF"
    assert pillow_seeks["TIFF"] <= 2  # Pillow's count: a seek to each of the 1,000 (~70–130 ms here)


def test_the_tiffs_directories_together_are_bounded() -> None:
    # 3,000 directories of 9 entries: within this page bound, over the 20,000 entries of max_chunks
    with pytest.raises(ImageTooComplex, match="over 20000 entries"):
        peek(H.tiff_directory_chain(3000), 2, ImageLimits(max_frames=5000))


def test_a_looping_directory_chain_ends_where_pillow_ends_it() -> None:
    import struct

    one = bytearray(H.tiff_directory_chain(3))
    last = len(one) - 4
    struct.pack_into("<I", one, last, struct.unpack_from("<I", one, 4)[0])  # the last links back to the first
    assert peek(bytes(one), 2).frames == 3


def test_corrupt_later_frames_are_400_or_decode_never_an_exception_of_pillows() -> None:
    assert peek(H.tiff_bad_last_directory(), 2).format == "TIFF"  # the first page is whole: it is served
    assert decode(H.tiff_bad_last_directory(), 2).width == 4
    assert peek(H.gif_truncated(), 2).frames == 5  # counted by the guards: Pillow's count would raise
    with pytest.raises(InvalidImage, match="frames of the GIF"):
        decode_animation(H.gif_truncated(), 2)


def test_a_gifs_frames_are_counted_by_the_guards_not_pillows_python_walk(pillow_seeks: dict[str, int]) -> None:
    gif = H.gif_one_pixel_frames(1000, 90)
    assert peek(gif, 2).frames == 1000
    assert pillow_seeks["GIF"] <= 4  # is_animated looks at frame 2; Pillow's n_frames seeks to all 1,000
    still = H.encoded(H.noise((8, 8)).convert("P"), "GIF")
    assert peek(still, 2).frames == 1


@pytest.mark.parametrize("route", ["/upscale?scale=2", "/debug/channels?scale=2&format=json"])
def test_corrupt_later_frames_get_4xx_json_over_http(client: TestClient, route: str) -> None:
    tiff = H.tiff_bad_last_directory()
    assert len(tiff) < 140  # the 135-byte file
    # the truncated GIF: /upscale answers animations (400: a frame is cut), /debug/channels reads the whole first one
    gif_ok = (400,) if route.startswith("/upscale") else (200, 400)
    for data, ok in ((tiff, (200,)), (H.gif_truncated(), gif_ok)):
        r = client.post(route, content=data, headers={"content-type": "application/octet-stream"})
        assert r.status_code in ok, r.text
        if r.status_code != 200:
            assert r.json()["code"] == "invalid_image" and "frames" in r.json()["detail"]


def test_upscale_refuses_a_tiff_chain_flood_with_422(client: TestClient) -> None:
    r = client.post("/upscale?scale=2", content=H.tiff_directory_chain(20_000),
                    headers={"content-type": "image/tiff"})
    assert r.status_code == 422 and r.json()["code"] == "image_too_complex", r.text


def test_peek_file_reads_only_uploads_that_start_like_an_image(tmp_path: Path) -> None:
    video = tmp_path / "clip"
    video.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    assert peek_file(video, 2) is None
    flood = tmp_path / "flood"
    flood.write_bytes(H.png_chunk_flood())
    with pytest.raises(ImageTooComplex, match="chunks"):
        peek_file(flood, 2)
    with pytest.raises(Exception, match="over 100 bytes"):
        peek_file(flood, 2, max_bytes=100)


def test_jobs_sniff_runs_the_image_guards(seeded_store: Path, tmp_path: Path) -> None:
    flood = H.png_chunk_flood(200_000)  # 2.4 MB: Pillow's PNG header parser took ~2 CPU-s before the 202
    with TestClient(create_app(make_settings(seeded_store, jobs_dir=tmp_path / "jobs"))) as c:
        start = time.perf_counter()
        r = c.post("/jobs", params={"scale": 2}, content=flood, headers={"content-type": "image/png"})
        assert r.status_code == 422 and r.json()["code"] == "image_too_complex", r.text
        assert time.perf_counter() - start < 1.0
        chain = c.post("/jobs", params={"scale": 2}, content=H.tiff_directory_chain(20_000),
                       headers={"content-type": "image/tiff"})
        assert chain.status_code == 422, chain.text
        small = c.post("/jobs", params={"scale": 2}, content=H.encoded(H.noise((32, 32)), "PNG"),
                       headers={"content-type": "image/png"})
        assert small.status_code == 202, small.text
