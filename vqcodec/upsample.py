"""The normative upsampler: coded size -> display size (format/SPEC.md, "Upsampling").

A file may code a smaller image than it displays (the "coded size" chunk, SPEC 1.2): the decoder
turns the coded pixels into the display size with this separable filter, which SPEC defines
exactly, so every decoder gives the same pixels. Resolution as a coding tool follows AV1's
super-resolution mode (a normative 8-tap, 64-phase horizontal upscaler) and VVC's reference
picture resampling; here the filter is a 6-tap Lanczos-3 (a = 3) kernel at 64 phases, rounded to
7-bit integer taps that sum to 128, applied horizontally then vertically:

    P(x)  = floor(((2x + 1) * n_in * 64 - 64 * n_out) / (2 * n_out))    (source position, 1/64 px)
    i, ph = floor(P / 64), P mod 64
    h     = sum_t TAPS[ph][t] * src[clamp(i - 2 + t, 0, n_in - 1)]          (horizontal, x 128)
    v     = sum_t TAPS[ph][t] * h[clamp(i - 2 + t, 0, n_in - 1)]            (vertical, x 16384)
    out   = clamp(floor((v + 8192) / 16384), 0, 255)

Every |partial sum| stays below 255 * 198^2 < 2^24 (198 = the largest sum of |taps| of a phase),
so float32, float64 and int32 arithmetic all give the same integers in any order; the compiled
loops (`vqcodec.upsample_kernels`, numba) use int32, in strips of 256 output rows. Equal sizes are
the identity (phase 0 is the unit impulse). How the encoder *down*scales is its own choice.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["TAPS", "PHASES", "positions", "strips", "upsample"]

#: Phases per source pixel (positions are in 1/64 pixel).
PHASES = 64

#: TAPS[phase][t]: weight of source sample i - 2 + t; every row sums to 128
#: (also `format/upsample-taps.txt`; normative, never regenerated).
TAPS: tuple[tuple[int, ...], ...] = (
    (  0,   0, 128,   0,   0,   0),
    (  0,  -2, 128,   2,   0,   0),
    (  1,  -3, 128,   3,  -1,   0),
    (  1,  -5, 128,   5,  -1,   0),
    (  1,  -6, 128,   7,  -2,   0),
    (  2,  -7, 126,   9,  -2,   0),
    (  2,  -9, 127,  11,  -3,   0),
    (  2, -10, 126,  13,  -3,   0),
    (  3, -11, 125,  15,  -4,   0),
    (  3, -12, 123,  18,  -4,   0),
    (  3, -13, 123,  20,  -5,   0),
    (  3, -14, 123,  22,  -6,   0),
    (  3, -15, 120,  25,  -6,   1),
    (  4, -15, 118,  27,  -7,   1),
    (  4, -16, 116,  30,  -7,   1),
    (  4, -17, 116,  32,  -8,   1),
    (  4, -17, 114,  35,  -9,   1),
    (  4, -18, 113,  37,  -9,   1),
    (  4, -18, 111,  40, -10,   1),
    (  4, -18, 109,  43, -11,   1),
    (  4, -18, 107,  45, -11,   1),
    (  4, -19, 105,  48, -12,   2),
    (  4, -19, 102,  51, -12,   2),
    (  4, -19, 100,  54, -13,   2),
    (  4, -19,  99,  56, -14,   2),
    (  4, -19,  96,  59, -14,   2),
    (  4, -19,  94,  62, -15,   2),
    (  4, -19,  91,  65, -15,   2),
    (  4, -19,  89,  67, -16,   3),
    (  3, -18,  86,  70, -16,   3),
    (  3, -18,  84,  73, -17,   3),
    (  3, -18,  81,  76, -17,   3),
    (  3, -17,  78,  78, -17,   3),
    (  3, -17,  76,  81, -18,   3),
    (  3, -17,  73,  84, -18,   3),
    (  3, -16,  70,  86, -18,   3),
    (  3, -16,  67,  89, -19,   4),
    (  2, -15,  65,  91, -19,   4),
    (  2, -15,  62,  94, -19,   4),
    (  2, -14,  59,  96, -19,   4),
    (  2, -14,  56,  99, -19,   4),
    (  2, -13,  54, 100, -19,   4),
    (  2, -12,  51, 102, -19,   4),
    (  2, -12,  48, 105, -19,   4),
    (  1, -11,  45, 107, -18,   4),
    (  1, -11,  43, 109, -18,   4),
    (  1, -10,  40, 111, -18,   4),
    (  1,  -9,  37, 113, -18,   4),
    (  1,  -9,  35, 114, -17,   4),
    (  1,  -8,  32, 116, -17,   4),
    (  1,  -7,  30, 116, -16,   4),
    (  1,  -7,  27, 118, -15,   4),
    (  1,  -6,  25, 120, -15,   3),
    (  0,  -6,  22, 123, -14,   3),
    (  0,  -5,  20, 123, -13,   3),
    (  0,  -4,  18, 123, -12,   3),
    (  0,  -4,  15, 125, -11,   3),
    (  0,  -3,  13, 126, -10,   2),
    (  0,  -3,  11, 127,  -9,   2),
    (  0,  -2,   9, 126,  -7,   2),
    (  0,  -2,   7, 128,  -6,   1),
    (  0,  -1,   5, 128,  -5,   1),
    (  0,  -1,   3, 128,  -3,   1),
    (  0,   0,   2, 128,  -2,   0),
)

_TAPS = np.asarray(TAPS, dtype=np.float32)
_ROWS = 256  # output rows per strip: bounds the int32 horizontal pass kept for a large image


def positions(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights of every output sample along one axis.

    Args:
        n_in: coded length in pixels (>= 1).
        n_out: display length in pixels (>= n_in).

    Returns:
        (index, weight): int64 [n_out, 6] source sample indices, clamped to [0, n_in - 1], and
        float32 [n_out, 6] integer taps (each row sums to 128).

    Raises:
        ValueError: n_in < 1 or n_out < n_in.
    """
    if n_in < 1 or n_out < n_in:
        raise ValueError(f"upsampling needs 1 <= coded ({n_in}) <= display ({n_out})")
    x = np.arange(n_out, dtype=np.int64)
    p = ((2 * x + 1) * n_in * PHASES - PHASES * n_out) // (2 * n_out)
    i, phase = p // PHASES, p % PHASES
    index = np.clip(i[:, None] - 2 + np.arange(6)[None, :], 0, n_in - 1)
    return index, _TAPS[phase]


def strips(pixels: np.ndarray, height: int, width: int) -> Iterator[tuple[int, np.ndarray]]:
    """The upsampled image in strips of at most 256 rows, top to bottom (a large image need not
    exist twice: each strip can go straight into the output image).

    Args:
        pixels: uint8 [h, w, C] (C >= 1), the decoded image at the coded size.
        height: display height in pixels, >= h.
        width: display width in pixels, >= w.

    Yields:
        (y0, uint8 [rows, width, C]): display rows y0 .. y0 + rows - 1, as `upsample` gives them.

    Raises:
        ValueError: a display dimension is smaller than the coded one, or pixels is not
            uint8 [h, w, C] (raised by the first `next`).
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"pixels must be uint8 [h, w, C], got {pixels.dtype} {pixels.shape}")
    from vqcodec import upsample_kernels  # numba: only when a file needs upsampling

    h, w, c = pixels.shape
    xi, xw = positions(w, width)
    yi, yw = positions(h, height)
    xw, yw = xw.astype(np.int32), yw.astype(np.int32)
    src = np.ascontiguousarray(pixels)
    for y0 in range(0, height, _ROWS):
        y1 = min(height, y0 + _ROWS)
        r0, r1 = int(yi[y0:y1].min()), int(yi[y0:y1].max()) + 1  # the source rows this strip needs
        horiz = np.empty((r1 - r0, width, c), dtype=np.int32)
        upsample_kernels.horizontal(src, r0, xi, xw, horiz)
        out = np.empty((y1 - y0, width, c), dtype=np.uint8)
        upsample_kernels.vertical(horiz, r0, np.ascontiguousarray(yi[y0:y1]),
                                  np.ascontiguousarray(yw[y0:y1]), out)
        yield y0, out


def upsample(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Upsample coded pixels to the display size with the normative filter.

    Args:
        pixels: uint8 [h, w, C] (C = 1 or 3), the decoded image at the coded size.
        height: display height in pixels, >= h.
        width: display width in pixels, >= w.

    Returns:
        uint8 [height, width, C]; `pixels` itself when the sizes are equal.

    Raises:
        ValueError: a display dimension is smaller than the coded one, or pixels is not
            uint8 [h, w, C].
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3:
        raise ValueError(f"pixels must be uint8 [h, w, C], got {pixels.dtype} {pixels.shape}")
    h, w, c = pixels.shape
    if (h, w) == (height, width):
        return pixels
    out = np.empty((height, width, c), dtype=np.uint8)
    for y0, strip in strips(pixels, height, width):
        out[y0:y0 + len(strip)] = strip
    return out
