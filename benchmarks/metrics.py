"""Rate-distortion helpers for the benchmarks (and the image-quality metrics of `vqcodec.metrics`).

Units used throughout:

* rates are in bits (bits per image) or bits per pixel (bpp); every function that takes a
  rate works with either as long as both curves use the same unit, because only ratios of
  rates matter (everything is done on log(rate));
* PSNR is in dB (RGB, 8-bit, peak 255);
* MS-SSIM is the plain index in [0, 1]; ``msssim_db`` turns it into dB, -10*log10(1 - MS-SSIM);
* BD-rate and "bits saved" are percentages; a negative BD-rate means the tested codec needs fewer
  bits than the anchor for the same quality.

Bjontegaard delta rate (G. Bjontegaard, "Calculation of average PSNR differences between
RD-curves", VCEG-M33, 2001): fit log(rate) as a function of quality for both curves, integrate
both fits over the quality range the two curves share, and turn the mean log-rate difference into
a percentage, (exp(mean diff) - 1) * 100.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# PSNR, MS-SSIM and bpp are the package's own (vqcodec.metrics), so the benchmarks and
# `python -m vqcodec.evaluate` measure with the same code.
from vqcodec.metrics import MSSSIM_MIN_SIDE, bpp, msssim, msssim_db, psnr

__all__ = [
    "psnr",
    "msssim",
    "msssim_db",
    "bpp",
    "pareto_front",
    "rate_at_quality",
    "bd_rate",
    "bd_method_for",
    "bits_saved",
    "MSSSIM_MIN_SIDE",
]

def _clean(rates: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(rates, dtype=np.float64)
    q = np.asarray(qualities, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError("rates and qualities must be 1-D sequences of equal length")
    ok = np.isfinite(r) & np.isfinite(q) & (r > 0)
    return r[ok], q[ok]


def pareto_front(rates: Sequence[float], qualities: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The rate-distortion points no other point beats, sorted by rate (and so by quality).

    A point is kept when its quality is strictly higher than that of every point with a lower
    (or equal) rate. The result is strictly increasing in both rate and quality, which is what
    interpolating "the rate needed for quality Q" requires. Non-finite or non-positive-rate
    points are dropped.

    Args:
        rates: rate of each point (bits or bpp).
        qualities: quality of each point (e.g. PSNR in dB), same length.

    Returns:
        (rates, qualities) of the front, float64 arrays in the input units.

    Raises:
        ValueError: the sequences are not 1-D or differ in length.
    """
    r, q = _clean(rates, qualities)
    order = np.lexsort((-q, r))  # by rate, ties: best quality first
    keep_r: list[float] = []
    keep_q: list[float] = []
    best = -math.inf
    for i in order:
        if q[i] > best:
            if keep_r and r[i] == keep_r[-1]:
                continue
            keep_r.append(float(r[i]))
            keep_q.append(float(q[i]))
            best = q[i]
    return np.asarray(keep_r), np.asarray(keep_q)


def rate_at_quality(
    rates: Sequence[float], qualities: Sequence[float], target: float
) -> float | None:
    """Rate a codec needs to reach quality ``target``, interpolated on its RD points.

    log(rate) is interpolated linearly against quality on the Pareto front of the points (see
    ``pareto_front``); this function never extrapolates.

    Args:
        rates: rate of each point (bits or bpp).
        qualities: quality of each point (e.g. PSNR in dB).
        target: the quality to reach, in the unit of ``qualities``.

    Returns:
        The rate in the unit of ``rates``, or None when ``target`` lies outside the front's
        quality range.
    """
    r, q = pareto_front(rates, qualities)
    if len(r) == 0 or not math.isfinite(target):
        return None
    if target < q[0] or target > q[-1]:
        return None
    if len(r) == 1:
        return float(r[0])
    return float(math.exp(np.interp(target, q, np.log(r))))


def bd_method_for(n_anchor: int, n_test: int) -> str:
    """'cubic' when both curves have at least 4 points (a cubic fit needs 4), else 'linear'."""
    return "cubic" if min(n_anchor, n_test) >= 4 else "linear"


def _fit_window(q: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Indices (of quality-sorted points) used for a local cubic fit over [lo, hi].

    Every point inside [lo, hi] plus the nearest point beyond each end; widened to the 4 points
    nearest the interval if that gives fewer than 4. Fitting a cubic to a whole 0.05..4 bpp sweep
    when the other curve only covers a narrow quality band makes the fit follow the far ends of
    the sweep rather than the band that is integrated, so the fit is kept local.
    """
    inside = np.nonzero((q >= lo) & (q <= hi))[0]
    if len(inside):
        first, last = int(inside[0]), int(inside[-1])
    else:
        first = int(np.searchsorted(q, lo))
        last = first - 1
    first = max(first - 1, 0)
    last = min(last + 1, len(q) - 1)
    while last - first + 1 < 4 and (first > 0 or last < len(q) - 1):
        mid = 0.5 * (lo + hi)
        left = abs(q[first - 1] - mid) if first > 0 else math.inf
        right = abs(q[last + 1] - mid) if last < len(q) - 1 else math.inf
        if left <= right:
            first -= 1
        else:
            last += 1
    return np.arange(first, last + 1)


def _linear_integral(q: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    """Exact integral over [lo, hi] of the piecewise-linear interpolant through (q, y)."""
    xs = np.concatenate(([lo], q[(q > lo) & (q < hi)], [hi]))
    ys = np.interp(xs, q, y)
    return float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))


def _cubic_integral(q: np.ndarray, y: np.ndarray, lo: float, hi: float) -> float:
    idx = _fit_window(q, lo, hi)
    qs, ys = q[idx], y[idx]
    centre = 0.5 * (lo + hi)  # centring keeps polyfit well conditioned
    poly = np.polyfit(qs - centre, ys, 3)
    integ = np.polyint(poly)
    return float(np.polyval(integ, hi - centre) - np.polyval(integ, lo - centre))


def bd_rate(
    anchor_rates: Sequence[float],
    anchor_qualities: Sequence[float],
    test_rates: Sequence[float],
    test_qualities: Sequence[float],
    method: str = "auto",
) -> float | None:
    """Bjontegaard delta rate of the test curve against the anchor curve, in percent.

    Negative: the test codec needs that many percent fewer bits than the anchor at equal
    quality, averaged over the quality range both curves cover. Rates may be bits or bpp (same
    unit for both curves); qualities e.g. PSNR in dB or MS-SSIM in dB.

    ``method``:

    * ``"cubic"``: classic Bjontegaard, a least-squares cubic of log(rate) vs quality per curve
      (fitted on the points in the overlap plus one on each side, at least 4), integrated over
      the overlap;
    * ``"linear"``: piecewise-linear interpolation of log(rate) vs quality through each curve's
      Pareto front, integrated exactly over the overlap; used when a curve has fewer than 4
      points, where a cubic cannot be fitted;
    * ``"auto"`` (default): ``"cubic"`` if both curves have >= 4 points, else ``"linear"``.

    Args:
        anchor_rates: the anchor's rates (bits or bpp).
        anchor_qualities: the anchor's qualities (e.g. PSNR dB).
        test_rates: the tested codec's rates, same unit.
        test_qualities: the tested codec's qualities, same unit.
        method: "cubic", "linear" or "auto".

    Returns:
        BD-rate in percent, or None when the quality ranges do not overlap (or a curve has
        fewer than 2 points on its Pareto front).

    Raises:
        ValueError: unknown method, or "cubic" with fewer than 4 points on a curve.
    """
    ra, qa = pareto_front(anchor_rates, anchor_qualities)
    rt, qt = pareto_front(test_rates, test_qualities)
    if len(ra) < 2 or len(rt) < 2:
        return None
    lo = max(qa[0], qt[0])
    hi = min(qa[-1], qt[-1])
    if not hi > lo:
        return None
    if method == "auto":
        method = bd_method_for(len(ra), len(rt))
    ya, yt = np.log(ra), np.log(rt)
    if method == "cubic":
        if min(len(ra), len(rt)) < 4:
            raise ValueError("cubic BD-rate needs at least 4 points per curve")
        ia = _cubic_integral(qa, ya, lo, hi)
        it = _cubic_integral(qt, yt, lo, hi)
    elif method == "linear":
        ia = _linear_integral(qa, ya, lo, hi)
        it = _linear_integral(qt, yt, lo, hi)
    else:
        raise ValueError(f"unknown BD-rate method {method!r}")
    mean_diff = (it - ia) / (hi - lo)
    return float((math.exp(mean_diff) - 1.0) * 100.0)


def bits_saved(test_bits: float, anchor_bits: float | None) -> float | None:
    """Percent of the anchor's bits the test saves.

    Args:
        test_bits: the tested codec's bits (or bpp).
        anchor_bits: the anchor's bits at equal quality, same unit, or None.

    Returns:
        ``(1 - test/anchor) * 100``; None when there is no positive anchor rate.
    """
    if anchor_bits is None or not anchor_bits > 0:
        return None
    return (1.0 - test_bits / anchor_bits) * 100.0
