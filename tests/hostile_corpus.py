"""Hostile files, generated: each is small, inside the byte and pixel limits, and costly in one way.

Used by ``tests/test_hostile.py`` and ``scripts/hostile_probe.py``. Every file is
built from a real encoder's output (Pillow) and then edited at the container
level, or written field by field where no encoder would write it.
"""

from __future__ import annotations

import io
import re
import struct
import zlib

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    bands = len(Image.new(mode, (1, 1)).getbands())
    shape = (size[1], size[0], bands) if bands > 1 else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def encoded(image: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


# --- JPEG -------------------------------------------------------------------------------------------

def _jpeg_scans(data: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Where each scan (SOS header + entropy data) starts and ends, and where EOI is."""
    scans, pos = [], 2
    while pos < len(data):
        assert data[pos] == 0xFF, pos
        marker = data[pos + 1]
        if marker == 0xD9:
            return pos, scans
        length = struct.unpack_from(">H", data, pos + 2)[0]
        if marker == 0xDA:
            end = re.compile(rb"\xff[^\x00\xd0-\xd7]").search(data, pos + 2 + length)
            assert end is not None
            scans.append((pos, end.start()))
            pos = end.start()
        else:
            pos += 2 + length
    raise AssertionError("no EOI")


def smooth(side: int) -> Image.Image:
    """A smooth colour gradient: its progressive AC scans are a few bytes each."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    rgb = np.stack([np.add.outer(ramp, ramp) / 2, np.add.outer(ramp, 255 - ramp) / 2, np.tile(ramp, (side, 1))], -1)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def progressive_scan_bomb(side: int = 1024, repeats: int = 1500) -> bytes:
    """A real progressive JPEG with its smallest refinement scan repeated ``repeats`` times before EOI.

    libjpeg decodes every scan (a pass over the whole coefficient buffer) and only warns about
    the bogus progression; the issue's 1,500 scans at 4096² cost ~25 s of CPU in ~100 KB.
    """
    base = encoded(smooth(side), "JPEG", quality=90, progressive=True)
    eoi, scans = _jpeg_scans(base)
    start, end = min(scans[1:], key=lambda s: s[1] - s[0])
    return base[:eoi] + base[start:end] * repeats + base[eoi:]


def jpeg_marker_flood(count: int = 50_000) -> bytes:
    """A small JPEG with ``count`` empty COM segments before its frame (Pillow parses each in Python)."""
    base = encoded(noise((32, 32)), "JPEG")
    return base[:2] + b"\xff\xfe\x00\x02" * count + base[2:]


def jpeg_junk_between_markers(junk: int = 1 << 20) -> bytes:
    """Junk bytes between two segments: libjpeg skips them, Pillow byte by byte in Python."""
    base = encoded(noise((32, 32)), "JPEG")
    return base[:2] + b"\x00" * junk + base[2:]


def icc_profile(space: bytes = b"RGB ", size: int = 2 * 1024 * 1024, *, header_size: int | None = None) -> bytes:
    """A valid ICC header for ``space`` padded to ``size`` bytes (a zero-tag profile): the issue's 2 MB case."""
    header = bytearray(128)
    header[0:4] = (header_size if header_size is not None else size).to_bytes(4, "big")
    header[12:16], header[16:20], header[20:24], header[36:40] = b"mntr", space, b"XYZ ", b"acsp"
    return bytes(header) + bytes(size - 128)


def jpeg_with_icc(profile: bytes, side: int = 32) -> bytes:
    return encoded(noise((side, side)), "JPEG", icc_profile=profile)


# --- PNG --------------------------------------------------------------------------------------------

def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_parts(data: bytes) -> list[tuple[bytes, bytes]]:
    parts, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        parts.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return parts


def png_idat_flood(chunk_bytes: int = 1, side: int = 256) -> bytes:
    """A real PNG whose image data is split into chunks of ``chunk_bytes`` (Pillow: µs per chunk, in Python)."""
    parts = _png_parts(encoded(noise((side, side)), "PNG"))
    idat = b"".join(p for k, p in parts if k == b"IDAT")
    out = [png_chunk(k, p) for k, p in parts if k == b"IHDR"]
    out += [png_chunk(b"IDAT", idat[i : i + chunk_bytes]) for i in range(0, len(idat), chunk_bytes)]
    return PNG_MAGIC + b"".join(out) + png_chunk(b"IEND", b"")


def png_text_pile(chunks: int = 40, size: int = 1 << 20) -> bytes:
    """A 16² PNG followed by ``chunks`` tEXt chunks of ``size`` bytes each."""
    parts = _png_parts(encoded(noise((16, 16)), "PNG"))
    text = [png_chunk(b"tEXt", b"k%d\x00" % i + b"x" * size) for i in range(chunks)]
    body = [png_chunk(k, p) for k, p in parts if k != b"IEND"]
    return PNG_MAGIC + b"".join(body[:1] + text + body[1:]) + png_chunk(b"IEND", b"")


def png_ztxt_bomb(inflated: int = 64 << 20) -> bytes:
    """A zTXt chunk that inflates to ``inflated`` bytes (Pillow stops at 1 MB per text chunk)."""
    parts = _png_parts(encoded(noise((16, 16)), "PNG"))
    comp = zlib.compressobj(9)
    blob = b"".join(comp.compress(bytes(1 << 20)) for _ in range(inflated >> 20)) + comp.flush()
    body = [png_chunk(k, p) for k, p in parts if k != b"IEND"]
    return PNG_MAGIC + b"".join(body[:1] + [png_chunk(b"zTXt", b"bomb\x00\x00" + blob)] + body[1:]) + png_chunk(b"IEND", b"")


def apng_frame_count(frames: int = 1_000_000) -> bytes:
    """A 16² PNG whose acTL declares ``frames`` frames."""
    parts = _png_parts(encoded(noise((16, 16)), "PNG"))
    body = [png_chunk(k, p) for k, p in parts if k != b"IEND"]
    actl = png_chunk(b"acTL", struct.pack(">II", frames, 0))
    return PNG_MAGIC + b"".join(body[:1] + [actl] + body[1:]) + png_chunk(b"IEND", b"")


def png_header_bomb(side: int = 50_000) -> bytes:
    """A real 16² PNG whose header claims ``side``×``side`` (a decompression bomb by its header)."""
    parts = _png_parts(encoded(noise((16, 16)), "PNG"))
    ihdr = struct.pack(">II", side, side) + parts[0][1][8:]
    return PNG_MAGIC + png_chunk(b"IHDR", ihdr) + b"".join(png_chunk(k, p) for k, p in parts[1:])


# --- TIFF -------------------------------------------------------------------------------------------

def _tiff(entries: list[tuple[int, int, int, bytes]], payload: bytes) -> bytes:
    """A little-endian TIFF: header, ``payload`` at offset 8, then one IFD of (tag, type, count, value)."""
    ifd_at = 8 + len(payload) + (len(payload) & 1)
    extra = bytearray()
    rows = []
    extra_at = ifd_at + 2 + 12 * len(entries) + 4
    for tag, kind, count, value in sorted(entries):
        if len(value) <= 4:
            rows.append(struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0"))
        else:
            rows.append(struct.pack("<HHII", tag, kind, count, extra_at + len(extra)))
            extra += value + b"\0" * (len(value) & 1)
    return (b"II*\0" + struct.pack("<I", ifd_at) + payload + b"\0" * (len(payload) & 1)
            + struct.pack("<H", len(entries)) + b"".join(rows) + b"\0\0\0\0" + bytes(extra))


def _short(*v: int) -> bytes:
    return struct.pack(f"<{len(v)}H", *v)


def _long(*v: int) -> bytes:
    return struct.pack(f"<{len(v)}I", *v)


def tiff_tile_bomb(tile: int = 16000, side: int = 64, inflate: bool = True) -> bytes:
    """A ``side``² RGB TIFF declaring one ``tile``² deflate tile: libtiff allocates and inflates tile² × 3 bytes.

    With ``inflate`` the tile's data really inflates to the whole tile (zeros, ~1000:1); else it is tiny.
    """
    comp = zlib.compressobj(1)  # level 1 is ~1000:1 on zeros too, and several times faster than 9
    if inflate:
        row = bytes(tile * 3 * 64)
        blob = b"".join(comp.compress(row) for _ in range(tile // 64)) + comp.flush()
    else:
        blob = comp.compress(bytes(side * side * 3)) + comp.flush()
    entries = [
        (256, 3, 1, _short(side)), (257, 3, 1, _short(side)), (258, 3, 3, _short(8, 8, 8)),
        (259, 3, 1, _short(8)), (262, 3, 1, _short(2)), (277, 3, 1, _short(3)), (284, 3, 1, _short(1)),
        (322, 4, 1, _long(tile)), (323, 4, 1, _long(tile)), (324, 4, 1, _long(8)), (325, 4, 1, _long(len(blob))),
    ]
    return _tiff(entries, blob)


def tiff_strip(side: int = 64, byte_count: int | None = None, offsets: int = 1) -> bytes:
    """An uncompressed grey ``side``² TIFF in one strip, its StripByteCounts optionally lying; ``offsets`` copies."""
    pixels = noise((side, side), "L").tobytes()
    count = len(pixels) if byte_count is None else byte_count
    entries = [
        (256, 3, 1, _short(side)), (257, 3, 1, _short(side)), (258, 3, 1, _short(8)), (259, 3, 1, _short(1)),
        (262, 3, 1, _short(1)), (277, 3, 1, _short(1)), (278, 3, 1, _short(side)),
        (273, 4, offsets, _long(*([8] * offsets))), (279, 4, offsets, _long(*([count] * offsets))),
    ]
    return _tiff(entries, pixels)


def tiff_tag_array(values: int = 4_000_000) -> bytes:
    """A real 16² TIFF with a private LONG tag of ``values`` elements (Pillow makes a Python tuple of it)."""
    base = tiff_strip(16)
    entries = [
        (256, 3, 1, _short(16)), (257, 3, 1, _short(16)), (258, 3, 1, _short(8)), (259, 3, 1, _short(1)),
        (262, 3, 1, _short(1)), (277, 3, 1, _short(1)), (278, 3, 1, _short(16)),
        (273, 4, 1, _long(8)), (279, 4, 1, _long(256)), (65000, 4, values, bytes(4 * values)),
    ]
    return _tiff(entries, base[8 : 8 + 256])


# --- GIF, WebP, BMP ---------------------------------------------------------------------------------

def gif_extension_flood(count: int = 200_000) -> bytes:
    """A real GIF with ``count`` empty comment extensions before its first image (Pillow: Python per block)."""
    base = encoded(noise((16, 16)).convert("P"), "GIF")
    screen_end = 13 + (3 << ((base[10] & 7) + 1) if base[10] & 0x80 else 0)
    return base[:screen_end] + b"\x21\xfe\x00" * count + base[screen_end:]


def gif_frame_flood(frames: int = 5000) -> bytes:
    """A real 8² GIF whose one image is repeated ``frames`` times."""
    base = encoded(noise((8, 8)).convert("P"), "GIF")
    screen_end = 13 + (3 << ((base[10] & 7) + 1) if base[10] & 0x80 else 0)
    image = base[screen_end:-1]
    return base[:screen_end] + image * frames + b"\x3b"


def gif_frame_outside_screen(side: int = 60_000) -> bytes:
    """A 16² GIF whose first image descriptor claims ``side``×``side`` (Pillow grows the canvas to it)."""
    base = bytearray(encoded(noise((16, 16)).convert("P"), "GIF"))
    at = base.index(b"\x2c", 13 + (3 << ((base[10] & 7) + 1) if base[10] & 0x80 else 0))
    struct.pack_into("<HH", base, at + 5, side, side)
    return bytes(base)


def webp_canvas_bomb(side: int = 13000) -> bytes:
    """A real 16² WebP put in a VP8X container that claims a ``side``² canvas (libwebp allocates it at open)."""
    simple = encoded(noise((16, 16)), "WEBP", lossless=True)
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\0\0\0" + (side - 1).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + simple[12:]
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_frame_flood(frames: int = 5000) -> bytes:
    """An animated WebP (real, from Pillow) whose one frame is repeated ``frames`` times."""
    two = encoded(noise((8, 8)), "WEBP", save_all=True, append_images=[noise((8, 8), seed=2)], lossless=True)
    pos, chunks = 12, []
    while pos < len(two):
        size = struct.unpack_from("<I", two, pos + 4)[0]
        chunks.append(two[pos : pos + 8 + size + (size & 1)])
        pos += 8 + size + (size & 1)
    anmf = [c for c in chunks if c[:4] == b"ANMF"]
    head = [c for c in chunks if c[:4] != b"ANMF"]
    body = b"WEBP" + b"".join(head) + anmf[0] * frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def bmp_rle(side: int = 3000) -> bytes:
    """An 8-bit RLE BMP of 1-pixel runs: 2 bytes per pixel, each decoded by Pillow's Python RLE decoder."""
    pixels = (b"\x01\x05" * side + b"\x00\x00") * side + b"\x00\x01"
    palette = bytes(1024)
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(pixels), 0, 0, 256, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 1024 + len(pixels), 0, 0, 14 + 40 + 1024) + info + palette + pixels


def tiff_directory_chain(directories: int = 20_000, side: int = 4) -> bytes:
    """A real ``side``² grey TIFF whose one directory is repeated ``directories`` times, each linking to the next.

    Pillow's frame count walks the chain with a list lookup per directory: quadratic in its length.
    """
    one = tiff_strip(side)
    ifd_at = struct.unpack_from("<I", one, 4)[0]
    entries = struct.unpack_from("<H", one, ifd_at)[0]
    body = one[ifd_at : ifd_at + 2 + 12 * entries]  # every value is inline: the directory is self-contained
    size = len(body) + 4
    chain = b"".join(body + struct.pack("<I", 0 if i == directories - 1 else ifd_at + (i + 1) * size)
                     for i in range(directories))
    return one[:ifd_at] + chain


def tiff_bad_last_directory(side: int = 4) -> bytes:
    """A real ``side``² TIFF whose directory links to a second one, past the end of the file (Pillow: TypeError)."""
    one = bytearray(tiff_strip(side))
    ifd_at = struct.unpack_from("<I", one, 4)[0]
    entries = struct.unpack_from("<H", one, ifd_at)[0]
    struct.pack_into("<I", one, ifd_at + 2 + 12 * entries, len(one) - 3)
    return bytes(one)


def gif_truncated(frames: int = 5, side: int = 32, keep: float = 0.85) -> bytes:
    """A real animated GIF cut short inside a later frame's pixel data (Pillow: IndexError counting frames)."""
    images = [noise((side, side), seed=s).convert("P") for s in range(frames)]
    data = encoded(images[0], "GIF", save_all=True, append_images=images[1:])
    return data[: int(len(data) * keep)]


def png_chunk_flood(count: int = 200_000) -> bytes:
    """A real 16² PNG with ``count`` empty private chunks before its pixels (Pillow opens them one by one, in Python)."""
    parts = _png_parts(encoded(noise((16, 16)), "PNG"))
    flood = png_chunk(b"prIv", b"") * count
    return PNG_MAGIC + png_chunk(*parts[0]) + flood + b"".join(png_chunk(k, p) for k, p in parts[1:])


def gif_one_pixel_frames(frames: int = 1000, side: int = 90) -> bytes:
    """A real animated GIF of ``frames`` ``side``² frames, each changing one pixel (Pillow's writer keeps a 1×1
    rectangle per frame): a few tens of KB that decode to frames × side² pixels, and ×scale² more upscaled."""
    base = Image.new("L", (side, side), 128)
    images = []
    for i in range(frames):
        frame = base.copy()
        frame.putpixel((i % side, (i // side) % side), (i * 7) % 256)
        images.append(frame)
    return encoded(images[0], "GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
