"""Cheap structural checks that refuse files whose decoding cost is out of proportion with their image.

The pixel limits bound what a decoded image holds, not what decoding it costs.
Small files well inside them can still take minutes of CPU or gigabytes of
memory: a progressive JPEG may repeat a scan thousands of times (libjpeg
decodes every one), a 64×64 TIFF may declare one 16000×16000 tile (libtiff
allocates and inflates all of it), and the parts of Pillow written in Python
(JPEG markers before the first scan, PNG chunks, GIF extension blocks, TIFF
tag arrays, the BMP RLE decoder) spend microseconds per element of the
container. These walks look at the container only — in C-speed slices and
regular expressions, stopping at the first bound passed — and run before
Pillow parses anything; :func:`check_opened` adds what needs Pillow's reading
of the header (TIFF tiles and strips). Each refusal says what was out of
proportion (:class:`ImageTooComplex`, 422; :class:`ImageTooLarge` for a
canvas over the pixel limits).

Malformed containers are left to Pillow, which reports them as corrupt:
these walks only refuse what a well-formed reading would make too costly.
"""

from __future__ import annotations

import re
import struct

from PIL import Image

from app.imaging.errors import ImageTooComplex, InvalidImage
from app.imaging.limits import ImageLimits, check_size

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_TIFF_MAGICS = {b"II*\x00": ("<", False), b"MM\x00*": (">", False), b"II+\x00": ("<", True), b"MM\x00+": (">", True)}
# Bytes between JPEG segments that are no marker: libjpeg skips them with a warning, Pillow one by
# one in Python (≈ 0.3 µs each) before the first scan.
MAX_JPEG_JUNK_BYTES = 64 * 1024
# Pillow's BMP RLE decoder is Python: ≈ 130-160 ns per byte of RLE data, so 8 MiB is about a second.
MAX_BMP_RLE_BYTES = 8 * 1024 * 1024
# TIFF tag values of numeric types become Python tuples (≈ 36 bytes per element) when Pillow opens
# the file. Real files need a few per strip or tile: 4096² in 16×16 tiles has 65,536 of each.
MAX_TIFF_NUMERIC_VALUES = 1 << 20
# A TIFF tile may be larger than the image (encoders use 256×256 tiles for small pictures), but not
# larger than this or than the image rounded up to the 16-pixel grid tiles live on.
TIFF_TILE_SIDE_FLOOR = 1024
_TIFF_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_TIFF_BYTES_TYPES = frozenset({1, 2, 7})  # BYTE, ASCII, UNDEFINED: Pillow keeps them as bytes/str
# The end of a JPEG scan's entropy-coded data: a marker that is neither a stuffed 0xFF00, a restart
# marker nor a fill byte.
_JPEG_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_FILL = re.compile(rb"\xff+")
_PNG_PIXEL_CHUNKS = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"fcTL", b"fdAT", b"acTL", b"IEND"})
_WEBP_METADATA = frozenset({b"ICCP", b"EXIF", b"XMP "})


def check_structure(data: bytes, scale: int, limits: ImageLimits) -> int | None:
    """Walk the container of a JPEG, PNG, GIF, WebP, TIFF or BMP and refuse it if decoding would cost too much.

    Returns the frame count of a TIFF (its directories) or a GIF (its image
    descriptors), which this walk knows at no cost and Pillow's ``n_frames`` finds by
    a slow walk (quadratic for TIFF, Python per block for GIF); ``None`` otherwise.
    """
    if data[:4] in _TIFF_MAGICS:
        return _tiff_ifd(data, limits)
    if data.startswith(b"\xff\xd8"):
        _jpeg(data, limits)
    elif data.startswith(PNG_MAGIC):
        _png(data, limits)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        return _gif(data, scale, limits)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        _webp(data, scale, limits)
    elif data[:2] == b"BM":
        _bmp(data)
    return None


def check_opened(im: Image.Image, data: bytes) -> None:
    """Checks that need Pillow's reading of the header: TIFF tiles and strips against the image."""
    if im.format == "TIFF":
        _tiff_layout(im, len(data))


def _too_complex(what: str) -> ImageTooComplex:
    return ImageTooComplex(f"{what}; refused as too costly to decode")


def _jpeg(data: bytes, limits: ImageLimits) -> None:
    n, pos, scans, segments, junk = len(data), 2, 0, 0, 0
    while pos < n:
        if data[pos] != 0xFF:
            nxt = data.find(b"\xff", pos)
            junk += (n if nxt < 0 else nxt) - pos
            if nxt < 0:
                break
            pos = nxt
        fill = _JPEG_FILL.match(data, pos)
        assert fill is not None
        junk += fill.end() - pos - 1
        if junk > MAX_JPEG_JUNK_BYTES:
            raise _too_complex(f"the JPEG has over {MAX_JPEG_JUNK_BYTES} bytes of padding or junk between its markers")
        pos = fill.end()
        if pos >= n:
            break
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI: what follows (MPO's other pictures) is not decoded
            break
        if 0xD0 <= marker <= 0xD7 or marker in (0x01, 0x00):  # restart, TEM: no length
            continue
        if pos + 2 > n:
            break
        segments += 1
        if segments > limits.max_chunks:
            raise _too_complex(f"the JPEG has over {limits.max_chunks} marker segments")
        pos += (data[pos] << 8) | data[pos + 1]
        if marker == 0xDA:
            scans += 1
            if scans > limits.max_jpeg_scans:
                raise _too_complex(
                    f"the JPEG has over {limits.max_jpeg_scans} scans (progressive encoders write about 10)"
                )
            end = _JPEG_SCAN_END.search(data, pos)
            pos = n if end is None else end.start()


def _png(data: bytes, limits: ImageLimits) -> None:
    n, pos, chunks, metadata = len(data), 8, 0, 0
    while pos + 12 <= n:
        length, kind = struct.unpack_from(">I4s", data, pos)
        chunks += 1
        if chunks > limits.max_chunks:
            raise _too_complex(f"the PNG has over {limits.max_chunks} chunks")
        if kind == b"acTL" and length >= 4:
            frames = struct.unpack_from(">I", data, pos + 8)[0]
            if frames > limits.max_frames:
                raise _too_complex(f"the APNG declares {frames} frames; at most {limits.max_frames} are accepted")
        elif kind not in _PNG_PIXEL_CHUNKS:
            metadata += length
            if metadata > limits.max_metadata_bytes:
                raise _too_complex(f"the PNG carries over {limits.max_metadata_bytes} bytes of metadata chunks")
        if kind == b"IEND":
            break
        pos += 12 + length


def _gif(data: bytes, scale: int, limits: ImageLimits) -> int:
    n = len(data)
    if n < 13:
        return 0
    width, height, flags = struct.unpack_from("<HHB", data, 6)
    pos = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = blocks = 0
    while pos < n:
        kind = data[pos]
        if kind == 0x21:  # extension: label, then sub-blocks; Pillow reads them in Python
            pos += 2
        elif kind == 0x2C:  # image descriptor
            if pos + 10 > n:
                return frames
            x, y, w, h, local = struct.unpack_from("<HHHHB", data, pos + 1)
            frames += 1
            if frames > limits.max_frames:
                raise _too_complex(f"the GIF has over {limits.max_frames} frames")
            if x + w > width or y + h > height:  # Pillow grows the canvas to hold any frame
                width, height = max(width, x + w), max(height, y + h)
                check_size(width, height, scale, limits)
            elif frames == 1:
                check_size(width, height, scale, limits)
            pos += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1  # + LZW minimum code size
        else:  # trailer, or garbage Pillow stops at
            return frames
        while pos < n:  # sub-blocks, up to the empty one
            blocks += 1
            if blocks > limits.max_chunks * 64:
                raise _too_complex(f"the GIF has over {limits.max_chunks * 64} data blocks")
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
        if frames == 0 and blocks > limits.max_chunks:
            raise _too_complex(f"the GIF has over {limits.max_chunks} extension blocks before its first image")
    return frames


def _webp(data: bytes, scale: int, limits: ImageLimits) -> None:
    n, pos, chunks, frames, metadata = len(data), 12, 0, 0, 0
    sized = False
    while pos + 8 <= n:
        fourcc, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        chunks += 1
        if chunks > limits.max_chunks:
            raise _too_complex(f"the WebP has over {limits.max_chunks} chunks")
        # libwebp allocates the canvas when Pillow opens the file: check it against the limits first
        if fourcc == b"VP8X" and body + 10 <= n:
            w = 1 + int.from_bytes(data[body + 4 : body + 7], "little")
            h = 1 + int.from_bytes(data[body + 7 : body + 10], "little")
            check_size(w, h, scale, limits)
            sized = True
        elif fourcc == b"VP8 " and not sized and body + 10 <= n and data[body + 3 : body + 6] == b"\x9d\x01\x2a":
            w, h = struct.unpack_from("<HH", data, body + 6)
            check_size(w & 0x3FFF, h & 0x3FFF, scale, limits)
        elif fourcc == b"VP8L" and not sized and body + 5 <= n and data[body] == 0x2F:
            bits = int.from_bytes(data[body + 1 : body + 5], "little")
            check_size((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, scale, limits)
        elif fourcc == b"ANMF":
            frames += 1
            if frames > limits.max_frames:
                raise _too_complex(f"the WebP has over {limits.max_frames} frames")
        elif fourcc in _WEBP_METADATA or fourcc not in (b"ALPH", b"ANIM", b"VP8 ", b"VP8L", b"VP8X"):
            metadata += size
            if metadata > limits.max_metadata_bytes:
                raise _too_complex(f"the WebP carries over {limits.max_metadata_bytes} bytes of metadata chunks")
        pos = body + size + (size & 1)


def _tiff_ifd(data: bytes, limits: ImageLimits) -> int:
    """Every directory of the chain, before Pillow parses any: their count, entries and tag values.

    Pillow's frame count walks the whole chain, loading each directory twice and
    checking each offset against a list of those seen (quadratic: 20,000
    directories cost seconds). This walk reads only offsets and entry headers,
    stops at the first bound passed or at a loop (where Pillow stops too), and
    leaves anything malformed to Pillow.
    """
    order, big = _TIFF_MAGICS[data[:4]]
    n = len(data)
    if big:
        first_fmt, first_at, count_fmt, count_size, entry_fmt, entry_size, next_fmt = "Q", 8, "Q", 8, "HHQQ", 20, "Q"
    else:
        first_fmt, first_at, count_fmt, count_size, entry_fmt, entry_size, next_fmt = "I", 4, "H", 2, "HHII", 12, "I"
    try:
        (offset,) = struct.unpack_from(order + first_fmt, data, first_at)
    except struct.error:
        return 0
    seen: set[int] = set()
    total_entries = numeric = value_bytes = 0
    max_value_bytes = limits.max_metadata_bytes + 8 * MAX_TIFF_NUMERIC_VALUES
    while offset and offset not in seen and offset + count_size <= n:
        seen.add(offset)
        if len(seen) > limits.max_frames:
            raise _too_complex(f"the TIFF has over {limits.max_frames} directories (pages)")
        (entries,) = struct.unpack_from(order + count_fmt, data, offset)
        total_entries += entries
        if total_entries > limits.max_chunks:
            raise _too_complex(f"the TIFF's directories have over {limits.max_chunks} entries")
        start = offset + count_size
        for i in range(entries):
            at = start + i * entry_size
            if at + entry_size > n:
                return len(seen)  # truncated: Pillow reports it
            _, kind, count, value_at = struct.unpack_from(order + entry_fmt, data, at)
            unit = _TIFF_TYPE_SIZES.get(kind)
            if unit is None:
                continue  # unknown types are skipped by Pillow unread
            size = count * unit
            if size > (8 if big else 4):  # stored elsewhere: Pillow reads up to that many bytes
                value_bytes += min(size, max(n - value_at, 0))
                if value_bytes > max_value_bytes:
                    raise _too_complex(f"the TIFF's tags hold over {max_value_bytes} bytes of values")
            if kind in _TIFF_BYTES_TYPES or size > n:
                continue  # bytes stay bytes; values past the end are skipped by Pillow
            numeric += count
            if numeric > MAX_TIFF_NUMERIC_VALUES:
                raise _too_complex(f"the TIFF's directories hold over {MAX_TIFF_NUMERIC_VALUES} numeric tag values")
        try:
            (offset,) = struct.unpack_from(order + next_fmt, data, start + entries * entry_size)
        except struct.error:
            break
    return len(seen)


def _tiff_layout(im: Image.Image, size: int) -> None:
    tags = im.tag_v2  # type: ignore[attr-defined]
    width, height = im.size
    tiled = 322 in tags or 323 in tags
    if tiled:
        tile_w, tile_h = int(tags.get(322, width)), int(tags.get(323, height))
        for side, tile, name in ((width, tile_w, "width"), (height, tile_h, "length")):
            bound = max(-(-side // 16) * 16, TIFF_TILE_SIDE_FLOOR)
            if tile > bound:
                raise _too_complex(
                    f"the TIFF is {width}×{height} but declares tiles of {name} {tile} (at most {bound} for this image)"
                )
        pieces = -(-width // max(tile_w, 1)) * -(-height // max(tile_h, 1))
    else:
        rows = int(tags.get(278, height) or height)
        pieces = -(-height // max(min(rows, height), 1))
    offsets = tags.get(324 if tiled else 273)
    counts = tags.get(325 if tiled else 279)
    if offsets is None or counts is None:
        return
    offsets = offsets if isinstance(offsets, tuple) else (offsets,)
    counts = counts if isinstance(counts, tuple) else (counts,)
    kind = "tiles" if tiled else "strips"
    planes = int(tags.get(277, 1) or 1) if int(tags.get(284, 1) or 1) == 2 else 1
    if len(offsets) > pieces * planes or len(counts) > pieces * planes:
        raise InvalidImage(f"the TIFF lists {len(offsets)} {kind} where its layout has {pieces * planes}")
    for offset, count in zip(offsets, counts, strict=False):
        if offset + count > size:
            raise InvalidImage(f"a TIFF {kind[:-1]} of {count} bytes at offset {offset} lies past the end of the file")


def _bmp(data: bytes) -> None:
    if len(data) < 34 or struct.unpack_from("<I", data, 14)[0] < 40:
        return  # OS/2 1.x headers have no compression field
    offset, compression = struct.unpack_from("<I", data, 10)[0], struct.unpack_from("<I", data, 30)[0]
    if compression in (1, 2) and len(data) - offset > MAX_BMP_RLE_BYTES:  # RLE8, RLE4
        raise _too_complex(f"the BMP holds over {MAX_BMP_RLE_BYTES} bytes of RLE data (decoded in Python)")
