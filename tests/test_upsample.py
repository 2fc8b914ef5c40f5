"""The normative upsampler (format/SPEC.md, "Upsampling") against a pure-integer transcription."""

from pathlib import Path

import numpy as np
import pytest

from vqcodec.upsample import TAPS, positions, upsample

TAPS_FILE = Path(__file__).resolve().parents[1] / "format" / "upsample-taps.txt"


def _reference(src: np.ndarray, height: int, width: int) -> np.ndarray:
    """SPEC's formulas in Python integers, one sample at a time."""
    h, w, c = src.shape

    def pos(n_in: int, n_out: int, x: int) -> tuple[int, int]:
        p = ((2 * x + 1) * n_in * 64 - 64 * n_out) // (2 * n_out)
        return p // 64, p % 64

    def at(v: int, n: int) -> int:
        return min(max(v, 0), n - 1)

    horiz = np.zeros((h, width, c), dtype=object)
    for x in range(width):
        i, ph = pos(w, width, x)
        for t in range(6):
            horiz[:, x] += TAPS[ph][t] * src[:, at(i - 2 + t, w)].astype(object)
    out = np.zeros((height, width, c), dtype=np.uint8)
    for y in range(height):
        i, ph = pos(h, height, y)
        v = sum(TAPS[ph][t] * horiz[at(i - 2 + t, h)] for t in range(6))
        out[y] = np.clip([(int(e) + 8192) // 16384 for e in v.ravel()], 0, 255).reshape(width, c)
    return out


def test_taps_file_matches_module():
    rows = [line.split() for line in TAPS_FILE.read_text().splitlines() if not line.startswith("#")]
    assert [tuple(int(v) for v in r) for r in rows] == list(TAPS)
    assert len(TAPS) == 64 and all(len(r) == 6 and sum(r) == 128 for r in TAPS)
    assert TAPS[0] == (0, 0, 128, 0, 0, 0)


@pytest.mark.parametrize("size", [(7, 9), (8, 12), (13, 17), (14, 9), (20, 31)])
@pytest.mark.parametrize("channels", [1, 3])
def test_upsample_equals_integer_formulas(size, channels):
    src = np.random.default_rng(sum(size) + channels).integers(0, 256, (7, 9, channels), dtype=np.uint8)
    assert np.array_equal(upsample(src, *size), _reference(src, *size))


def test_equal_size_is_identity_and_extremes_stay_exact():
    src = np.random.default_rng(1).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    assert upsample(src, 5, 6) is src
    board = (np.indices((9, 11)).sum(0) % 2 * 255).astype(np.uint8)[..., None]  # overshoot: clamps
    assert np.array_equal(upsample(board, 16, 21), _reference(board, 16, 21))
    flat = np.full((6, 6, 1), 200, dtype=np.uint8)
    assert (upsample(flat, 11, 9) == 200).all()  # taps sum to 128: a flat image stays flat


def test_positions_rejects_downscaling():
    with pytest.raises(ValueError):
        positions(10, 9)
    with pytest.raises(ValueError):
        upsample(np.zeros((4, 4, 3), np.uint8), 3, 4)
