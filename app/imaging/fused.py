"""The RGB compose in one compiled pass: Pillow's bicubic of the source and the luma swap, same bytes.

Why: on the CPU the Pillow/NumPy compose cost a large share of the model's own time, because
Pillow's resize and a dozen NumPy passes each walk the whole output (figures in
docs/benchmarks.md). Here one loop (compiled by Numba, without the GIL) computes each
output row's bicubic R, G, B and swaps its luma while the row is in cache.

The arithmetic is the reference's, not an approximation of it:

- the bicubic is Pillow's ``libImaging/Resample.c`` for 8-bit images, as
  :mod:`app.core.resample` states it: Keys' cubic (a = −0.5), taps and
  weights per output pixel from :func:`app.core.resample.axis_coefficients`
  (renormalised at the borders, 22-bit fixed point), integer sums from
  2²¹, horizontal pass first, clipped to 8 bits after each pass;
- the luma swap is :func:`app.imaging.compose._swap_luma`'s float32
  operations in the same order (no fused multiply-add: Numba compiles
  without fast-math), rounded half to even, added, clipped.

So the answer is the Pillow compose's, byte for byte (tested on real and
random images at every scale). Without Numba the pipeline keeps the Pillow
path: :func:`available` says which.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache

import numpy as np

from app.core.color import Y_OFFSET, Y_WEIGHTS
from app.core.planes import Y_TO_RGB
from app.core.resample import PRECISION_BITS, axis_coefficients

_HALF = 1 << (PRECISION_BITS - 1)
_WR, _WG, _WB = (np.float32(w) for w in Y_WEIGHTS)
_OFF, _Y255, _K = np.float32(Y_OFFSET), np.float32(255.0), np.float32(Y_TO_RGB)  # float32: the NumPy swap's roundings


def available() -> bool:
    """Whether Numba can be imported (the ``numba`` package is a runtime dependency; this guards odd installs)."""
    return importlib.util.find_spec("numba") is not None


def coefficients(size_in: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output index of a ×``scale`` axis: the first source index (int32) and the fixed-point weights
    (out, taps) int32 of Pillow's bicubic, zero-padded (cached by :func:`app.core.resample.axis_coefficients`)."""
    return axis_coefficients(size_in, size_in * scale)


def _kernel(src, y, out, row0, xs, xk, ys, yk):  # noqa: ANN001 (Numba)
    """Output rows ``row0 … row0 + len(out)`` of the compose of ``src`` (H, W, 3) uint8 with ``y`` (rows, r·W).

    Rows are flat (x, c) runs of ``3·r·W`` integers so the inner loops are contiguous and vectorise.
    """
    rows, width = out.shape[0], out.shape[1]
    flat = 3 * width
    taps_x, taps_y = xk.shape[1], yk.shape[1]
    first = ys[row0]
    last = first
    for i in range(row0, row0 + rows):  # the source rows these output rows read
        last = max(last, ys[i] + taps_y)
    last = min(last, src.shape[0])
    horizontal = np.empty((last - first, flat), np.int32)
    acc = np.empty(flat, np.int32)
    moves = np.empty(width, np.float32)
    for sy in range(first, last):  # horizontal pass, 8-bit result
        line = src[sy]
        acc[:] = _HALF
        for j in range(taps_x):
            for x in range(width):
                w = xk[x, j]
                sx = min(xs[x] + j, line.shape[0] - 1)  # a zero weight may sit past the edge
                acc[3 * x] += line[sx, 0] * w
                acc[3 * x + 1] += line[sx, 1] * w
                acc[3 * x + 2] += line[sx, 2] * w
        h = horizontal[sy - first]
        for n in range(flat):
            v = acc[n] >> PRECISION_BITS
            h[n] = 0 if v < 0 else (255 if v > 255 else v)
    for i in range(rows):  # vertical pass, then the luma swap, row by row
        r = row0 + i
        y0 = ys[r] - first
        acc[:] = _HALF
        for j in range(taps_y):
            w = yk[r, j]
            if y0 + j < last - first:  # a zero weight may sit past the edge
                h = horizontal[y0 + j]
                for n in range(flat):
                    acc[n] += h[n] * w
        for n in range(flat):
            v = acc[n] >> PRECISION_BITS
            acc[n] = 0 if v < 0 else (255 if v > 255 else v)
        yrow, orow = y[i], out[i].reshape(flat)
        for x in range(width):  # the luma shift of each pixel, one float32 plane
            shift = np.float32(acc[3 * x]) * _WR
            shift += np.float32(acc[3 * x + 1]) * _WG
            shift += np.float32(acc[3 * x + 2]) * _WB
            shift += _OFF
            shift = yrow[x] * _Y255 - shift
            shift *= _K
            moves[x] = np.rint(shift)
        for n in range(flat):  # added to R, G and B alike
            v = acc[n] + np.int32(moves[n // 3])
            orow[n] = 0 if v < 0 else (255 if v > 255 else v)


@lru_cache(maxsize=1)
def _compiled():
    import numba

    try:
        return numba.njit(nogil=True, cache=True)(_kernel)
    except RuntimeError:  # no writable cache folder (a read-only install): compile at every start instead
        return numba.njit(nogil=True)(_kernel)


def warm_up() -> None:
    """Compile (or load from Numba's cache) before the first request, off the event loop: compiling takes seconds.

    Both kinds of source: a decoded image's pixels come read-only (``np.asarray`` of a Pillow
    image), a different type to Numba, which would otherwise compile it on the first request.
    """
    src = np.zeros((2, 2, 3), np.uint8)
    for source in (src, _read_only(src)):
        compose_rows(source, np.zeros((4, 4), np.float32), 2, 0, 4)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def compose_rows(src: np.ndarray, y: np.ndarray, scale: int, row0: int, row1: int,
                 out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``row0:row1`` of the ×``scale`` RGB answer: Pillow's bicubic of ``src`` (H, W, 3) uint8 with its
    luma replaced by ``y`` ((row1 − row0, r·W) float32 in [0, 1], those rows of the model output).

    Writes into ``out`` ((row1 − row0, r·W, 3) uint8, e.g. a slice of the whole answer) when given.
    """
    height, width = src.shape[:2]
    if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
        raise ValueError(f"src must be (H, W, 3) uint8, got {src.shape} {src.dtype}")
    if y.shape != (row1 - row0, width * scale):
        raise ValueError(f"y must be ({row1 - row0}, {width * scale}), got {y.shape}")
    if out is None:
        out = np.empty((row1 - row0, width * scale, 3), np.uint8)
    xs, xk = coefficients(width, scale)
    ys, yk = coefficients(height, scale)
    _compiled()(np.ascontiguousarray(src), np.ascontiguousarray(y, dtype=np.float32), out, row0, xs, xk, ys, yk)
    return out
