"""Compiled integer kernels of the decoder's hot loops (numba, cached on disk).

The wavefront of the int8 prior (`vqcodec.prior_int8`) spends most of its time outside its
GEMMs: requantisation, gates, clamps, casts, gathers and scatters of a few hundred bytes per
position, and the PMF of every decoded position (`vqcodec.prior.pmf_from_logits`).  Each
function here does one such chain in one pass over int8/int32 arrays, in integer (int64)
arithmetic exactly as format/SPEC.md writes the formulas (requantisation after Jacob et al.,
CVPR 2018; gates and PMF as in the spec); the PMF's division alone goes through a float64
estimate that is then corrected to the exact integer floor.  So results cannot depend on the
CPU or on the compiler.  The GEMMs stay on torch._int_mm (oneDNN, `vqcodec.int8.mm`).

numba compiles each function the first time it is called with new argument types (about 5 s
for all of them) and caches the machine code on disk (`cache=True`: next to this file, or in
the user's cache directory, ~/.cache/numba, when the package directory is read-only; where
neither is writable, every process compiles again).  A later process pays numba's start-up
(importing numba, about 0.25-0.3 s, and setting up its compiler on the first call, about
0.25 s, on a busy 2-core machine) and a few milliseconds per function, so this module is
imported only by the int8 prior's CPU decoder (`vqcodec.prior.pmf_from_logits` uses `pmf` once
it is loaded).  No compiler is needed on the user's machine (numba's wheels bundle LLVM).

Array arguments are C-contiguous numpy arrays; "rows" are the flat [positions * n] rows of the
wavefront (`vqcodec.prior.wavefront_slots`).
"""

from __future__ import annotations

import sys

import numpy as np


def _import_numba():
    """Import numba and its array support without SciPy: numba imports scipy.linalg (about
    0.25 s) only to offer np.linalg inside compiled functions, which these kernels do not use.
    SciPy stays importable for everything else (it is hidden only while numba loads)."""
    hide = "scipy" not in sys.modules
    if hide:
        sys.modules["scipy"] = None  # "import scipy..." raises ImportError meanwhile
    try:
        import numba
        import numba.np.arraymath  # noqa: F401  (what numba would import on the first call)
    finally:
        if hide:
            del sys.modules["scipy"]
    return numba.njit


_njit = _import_numba()


def njit(**options):
    """numba.njit with its on-disk cache, or without it (compiled in each process, a few
    seconds) where no cache directory is writable: numba would raise RuntimeError."""
    def decorate(fn):
        try:
            return _njit(cache=True, **options)(fn)
        except RuntimeError:
            return _njit(**options)(fn)
    return decorate

S8_MAX = 127
U8_OFFSET = 128
GATE_SHIFT = 24


@njit(inline="always")
def _requant(acc, m, shift, lo, hi):
    """clamp(floor((acc * m + 2**(shift-1)) / 2**shift), lo, hi); acc, m int64."""
    y = (acc * m + (np.int64(1) << (shift - 1))) >> shift
    return min(max(y, lo), hi)


@njit(inline="always")
def _gate(a, b, t, mg):
    """G_T(a, b) of format/SPEC.md: a, b in units 1/t, result s8 in units 1/127."""
    tc = min(max(a, -t), t)
    g = min(max(b + t, 0), 2 * t)
    y = (tc * g * mg + (np.int64(1) << (GATE_SHIFT - 1))) >> GATE_SHIFT
    return min(max(y, -S8_MAX), S8_MAX)


@njit(nogil=True)
def gather_layers(src, at, m, dst, col):
    """dst[l, r, col:col + c] = src[at[l * m + r]] for l < len(at) // m, r < m.

    Rows are copied as int64 words (int8 rows of c bytes viewed as c / 8 words: a few times
    faster than bytes).

    Args:
        src: int64 [slots, c] (a state ring's rows).
        at: int64 [layers * m]: per layer, the slot of each of the m rows.
        m: rows per layer.
        dst: int64 [>= layers, >= m, >= col + c].
        col: first word written.
    """
    c = src.shape[1]
    for i in range(at.shape[0]):
        s = at[i]
        l = i // m
        r = i - l * m
        for k in range(c):
            dst[l, r, col + k] = src[s, k]


@njit(nogil=True)
def gather_patch(src, at, dst):
    """dst[r, t * c:(t + 1) * c] = src[at[r, t]]: a convolution patch of taps at[r] (im2col).

    Args:
        src: int64 [slots, c] (int8 rows as words, as `gather_layers`).
        at: int64 [m, taps].
        dst: int64 [>= m, taps * c].
    """
    c = src.shape[1]
    for r in range(at.shape[0]):
        for t in range(at.shape[1]):
            s = at[r, t]
            for k in range(c):
                dst[r, t * c + k] = src[s, k]


@njit(nogil=True)
def vertical(acc, m, cst, shift, t, mg, p, p_at, a, a_at):
    """Vertical stack after its GEMM: vp = requant(acc) (s8) into ring p; G_T(vp) into ring a.

    Args:
        acc: int32 [>= m, 2c] (GEMM without bias); m: rows.
        cst: int64 [2, 2c]: bias, mult; shift: S.
        t, mg: the gate's T and Mg (`int8.gate_mult`).
        p: int8 [slots, 2c]; p_at int64 [m]: where vp goes.
        a: int8 [slots, c]; a_at int64 [m] (empty: no gate, the last layer).
    """
    c = a.shape[1]
    bias, mult = cst[0], cst[1]
    gated = a_at.shape[0] > 0
    for r in range(m):
        row, vp = acc[r], p[p_at[r]]
        for o in range(2 * c):
            vp[o] = _requant(np.int64(row[o]) + bias[o], mult[o], shift, -S8_MAX, S8_MAX)
        if gated:
            y = a[a_at[r]]
            for o in range(c):
                y[o] = _gate(np.int64(vp[o]), np.int64(vp[o + c]), t, mg)


@njit(nogil=True)
def horizontal_gate(acc, m, cst, shift, t, mg, out):
    """Horizontal stack after its GEMM (h and v2h): hp = requant(acc) (s8); out = G_T(hp).

    Args:
        acc: int32 [>= m, 2c]; m: rows; cst int64 [2, 2c]: bias, mult; shift S;
        t, mg: the gate's T and Mg.
        out: int8 [>= m, c].
    """
    c = out.shape[1]
    ba, bb, ma, mb = cst[0, :c], cst[0, c:], cst[1, :c], cst[1, c:]
    for r in range(m):
        ra, rb, y = acc[r, :c], acc[r, c:], out[r]
        for o in range(c):
            x = _requant(np.int64(ra[o]) + ba[o], ma[o], shift, -S8_MAX, S8_MAX)
            z = _requant(np.int64(rb[o]) + bb[o], mb[o], shift, -S8_MAX, S8_MAX)
            y[o] = _gate(x, z, t, mg)


@njit(nogil=True)
def residual(acc, m, cst, shift, x, col, lo, out, ocol, a, a_at):
    """Residual 1x1 layer after its GEMM: h' = clamp(requant(acc + R * h), lo, 127) (s8; lo = 0
    is the head's ReLU), written to out[:, ocol:ocol + c] and, where a_at is not empty, to ring a.

    Args:
        acc: int32 [>= m, c]; m: rows; cst int64 [3, c]: bias, mult, R; shift S.
        x: int8 [>= m, >= col + c]: h (the residual input) in columns col:col + c.
        lo: -127 or 0.
        out: int8 [>= m, >= ocol + c].
        a: int8 [slots, c]; a_at int64 [m] or empty.
    """
    c = acc.shape[1]
    bias, mult, res = cst[0], cst[1], cst[2]
    store = a_at.shape[0] > 0
    for r in range(m):
        row, h, y = acc[r], x[r, col:col + c], out[r, ocol:ocol + c]
        for o in range(c):
            y[o] = _requant(np.int64(row[o]) + bias[o] + res[o] * np.int64(h[o]), mult[o], shift, lo, S8_MAX)
        if store:
            a[a_at[r]] = y


@njit(nogil=True)
def requant_u8(acc, m, cst, shift, out):
    """A u8 layer after its GEMM: out = clamp(requant(acc), 0, 255) - 128 (u8 stored as int8).

    Args:
        acc: int32 [>= m, o]; m: rows; cst int64 [2, o]: bias, mult; shift S; out int8 [>= m, o].
    """
    bias, mult = cst[0], cst[1]
    for r in range(m):
        row, y = acc[r], out[r]
        for o in range(row.shape[0]):
            y[o] = _requant(np.int64(row[o]) + bias[o], mult[o], shift, 0, 255) - U8_OFFSET


@njit(inline="always", error_model="numpy")
def _pmf_row(lg, lut, out):
    """PMF of one row of integer logits lg int64 [K] into out int64 [K] (format/SPEC.md,
    "PMF from logits"): w_k = LUT[min((max(l) - l_k) >> 4, 511)];
    p_k = 1 + floor(w_k * (2**20 - K) / sum(w)); the remainder to the first largest logit.

    The quotient is computed in float64 and corrected to the exact floor: the numerator (< 2**50)
    and the sum (< 2**40) are exact in float64, the estimate is within 1 of the true quotient
    (relative error ~2**-52 of a value < 2**20), and one integer correction step makes it exact.
    """
    k = lg.shape[0]
    top = 0
    mx = lg[0]
    for i in range(1, k):
        if lg[i] > mx:
            mx = lg[i]
            top = i
    last = lut.shape[0] - 1
    total = np.int64(0)
    for i in range(k):
        w = lut[min((mx - lg[i]) >> 4, last)]
        out[i] = w
        total += w
    scale = (np.int64(1) << 20) - k
    inv = 1.0 / np.float64(total)
    s = np.int64(0)
    for i in range(k):
        num = out[i] * scale
        q = np.int64(np.float64(num) * inv)
        rem = num - q * total
        q += np.int64(rem >= total) - np.int64(rem < 0)
        out[i] = q + 1
        s += q + 1
    out[top] += (np.int64(1) << 20) - s


@njit(nogil=True, error_model="numpy")
def pmf(logits, lut, n, out):
    """Integer PMFs of rows of integer logits (`vqcodec.prior.pmf_from_logits`'s arithmetic).

    Args:
        logits: int64 [m, K], m = n * npos, entries within +-2**40.
        lut: int64 [LUT_LEN], `prior.EXP_LUT`.
        n: rows are ordered position-major (row k * n + b: position k of grid b).
        out: int64 [n, npos, K]: out[b, k] = PMF of row k * n + b.
    """
    for r in range(logits.shape[0]):
        _pmf_row(logits[r], lut, out[r % n, r // n])


@njit(nogil=True, error_model="numpy")
def logits_pmf(acc, m, cst, shift, lo, hi, lut, n, out):
    """The prior's last layer and the PMF: logits = clamp(requant(acc), lo, hi), then `pmf`.

    Args:
        acc: int32 [>= m, K]; m: rows; cst int64 [2, K]: bias, mult; shift S; (lo, hi) the
            logit clamp.
        lut, n, out: as `pmf` (out [n, m / n, K]).
    """
    k = acc.shape[1]
    bias, mult = cst[0], cst[1]
    lg = np.empty(k, dtype=np.int64)
    for r in range(m):
        row = acc[r]
        for o in range(k):
            lg[o] = _requant(np.int64(row[o]) + bias[o], mult[o], shift, lo, hi)
        _pmf_row(lg, lut, out[r % n, r // n])
