"""No request a client can send produces a 500: a seeded fuzz over bodies, media types and parameters."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from tests.conftest import encoded, natural

FORMATS = ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO"]
CONTENT_TYPES = ["image/png", "image/jpeg", "application/octet-stream", "text/plain", "", "multipart/form-data",
                 "image/x-unknown", "application/json"]
PARAMS = [{"scale": "3"}, {"scale": "2", "format": "webp", "lossless": "true"}, {"scale": "4", "format": "jpeg",
          "quality": "1"}, {"scale": "0"}, {"scale": "3", "format": "gif"}, {"scale": "3", "quality": "abc"},
          {"scale": "2", "format": "jpeg", "lossless": "yes"}, {}, {"scale": "3.5"}, {"scale": "-2"}]


def bodies(rng: np.random.Generator) -> list[bytes]:
    out = [b"", bytes(rng.integers(0, 256, 64, dtype=np.uint8)), b"\x89PNG\r\n\x1a\n" + b"\x00" * 40]
    for fmt in FORMATS:
        data = encoded(natural((int(rng.integers(1, 40)), int(rng.integers(1, 40)))), fmt)
        out.append(data)
        cut = int(rng.integers(8, max(9, len(data))))
        out.append(data[:cut])
        flipped = bytearray(data)
        for i in rng.integers(0, len(data), 8):
            flipped[i] ^= 0xFF
        out.append(bytes(flipped))
    return out


def test_no_request_gets_a_500(client: TestClient) -> None:
    rng = np.random.default_rng(2024)
    statuses = set()
    for body in bodies(rng):
        for _ in range(3):
            ctype = CONTENT_TYPES[int(rng.integers(len(CONTENT_TYPES)))]
            params = PARAMS[int(rng.integers(len(PARAMS)))]
            path = ["/upscale", "/debug/channels"][int(rng.integers(2))]
            if rng.random() < 0.5:
                r = client.post(path, params=params, files={"file": ("f", body, ctype or "image/png")})
            else:
                r = client.post(path, params=params, content=body, headers={"content-type": ctype} if ctype else {})
            statuses.add(r.status_code)
            assert r.status_code < 500, (path, ctype, params, r.status_code, r.text[:200])
            if r.status_code != 200:
                assert r.json()["code"]
    assert 200 in statuses and {400, 415, 422} <= statuses
