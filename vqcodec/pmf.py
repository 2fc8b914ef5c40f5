"""The format's PMF: integer logits -> integer probabilities (format/SPEC.md, "PMF from
logits"), shared by every arithmetic profile and the range coder.

`EXP_LUT` is part of the bitstream definition (format/exp-lut.txt is the normative copy);
`pmf_from_logits` is the one entry point, `pmf_numpy` its numpy implementation (the compiled
`vqcodec.kernels.pmf` is the other).
"""

from __future__ import annotations

import sys
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext

import numpy as np
import torch

from vqcodec import intops
from vqcodec.constants import LUT_LEN, LUT_ONE_BITS, LUT_STEP_SHIFT, PMF_BITS


def exp_table() -> np.ndarray:
    """The exponential table EXP_LUT of format/SPEC.md, "PMF from logits".

    EXP_LUT[i] = round(2**30 * exp(-i / 16)), computed with `decimal` (exactly rounded,
    identical on every platform).  Part of the bitstream definition; format/exp-lut.txt is
    the normative copy.

    Returns:
        int64 array [LUT_LEN].
    """
    with localcontext(Context(prec=50, rounding=ROUND_HALF_EVEN)):
        one = Decimal(1 << LUT_ONE_BITS)
        step = Decimal(1) / Decimal(1 << (intops.ACT_FRAC_BITS - LUT_STEP_SHIFT))
        vals = [int((one * (-(step * i)).exp()).to_integral_value()) for i in range(LUT_LEN)]
    return np.array(vals, dtype=np.int64)


#: int64 [LUT_LEN]: `exp_table()`, computed once at import.
EXP_LUT = exp_table()

_EXP_LUT_F64 = EXP_LUT.astype(np.float64)


def pmf_from_logits(logits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Integer PMF of each position from its integer logits (format/SPEC.md, "PMF from logits").

    Pure integer arithmetic:
    w_k = EXP_LUT[min((max(l) - l_k) >> 4, 511)];  p_k = 1 + floor(w_k * (2**20 - K) / sum(w));
    the remainder 2**20 - sum(p) goes to the first index of the largest logit.

    Two implementations give the same integers (tests/test_kernels.py): the compiled kernel
    `vqcodec.kernels.pmf` (about 40x faster), used once something in the process has loaded
    numba (the int8 prior's decoder does), and `pmf_numpy` otherwise, so that a process that
    never needs numba (v1 models) does not pay its start-up (about 0.5 s).

    Args:
        logits: integer logits [n, K] in units of 2**-ACT_FRAC_BITS nats, entries within
            +-2**40: an integer array, or an integer-valued array or torch tensor of any dtype
            (e.g. float64 from `ExactPrior`, on any device).

    Returns:
        int64 array [n, K]; each row sums to 2**20 (PMF_BITS) and every entry is >= 1.

    Raises:
        ValueError: logits is not 2-D.
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.cpu().numpy()
    lg = np.asarray(logits)
    if lg.ndim != 2:
        raise ValueError(f"logits must be 2-D [n, K], got shape {lg.shape}")
    kernels = sys.modules.get("vqcodec.kernels")
    if kernels is None:
        return pmf_numpy(lg)
    lg = np.ascontiguousarray(lg, dtype=np.int64)  # integer values: exact
    out = np.empty((1,) + lg.shape, dtype=np.int64)
    kernels.pmf(lg, EXP_LUT, 1, out)
    return out[0]


def pmf_numpy(lg: np.ndarray) -> np.ndarray:
    """`pmf_from_logits` in numpy: the integers held in float64, all below 2**53, so every step
    is exact; the division is rounded and then corrected to the exact floor (the rounded
    quotient is at most one above it, and the sign of the remainder a - q * sum(w) tells).

    Args:
        lg: integer-valued logits [n, K] (any real dtype), entries within +-2**40.

    Returns:
        int64 array [n, K], as `pmf_from_logits`.
    """
    lg = lg.astype(np.float64)
    n, k = lg.shape
    rows = np.arange(n)
    top = lg.argmax(1)  # the first index of the largest logit
    d = lg[rows, top][:, None] - lg
    d *= 1.0 / (1 << LUT_STEP_SHIFT)
    np.floor(d, out=d)
    np.minimum(d, LUT_LEN - 1, out=d)
    a = _EXP_LUT_F64.take(d.astype(np.intp))
    total = a.sum(1, keepdims=True)
    a *= (1 << PMF_BITS) - k
    q = np.floor(a / total)
    q[a - q * total < 0] -= 1
    q += 1
    q[rows, top] += (1 << PMF_BITS) - q.sum(1)
    return q.astype(np.int64)
