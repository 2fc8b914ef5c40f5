"""Tests of the exactness bound of the integer arithmetic (vqcodec/intops.py): the fan-in guard
that keeps every partial sum below 2**53, and exactness right at that bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqcodec import intops
from vqcodec.intops import ACT_CLAMP, MAX_FAN_IN, WEIGHT_MAG_BITS, IntConv


def conv_with_fan_in(channels: int, k: int = 4) -> torch.nn.Conv2d:
    """A 1-output conv with fan-in channels * k * k and weights in [-1, 1)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(channels, 1, k)
    with torch.no_grad():
        conv.weight.uniform_(-1, 1)
    return conv


def test_fan_in_at_the_bound_is_accepted():
    layer = IntConv.from_float(conv_with_fan_in(MAX_FAN_IN // 16))
    assert layer.weight[0].numel() == MAX_FAN_IN
    # max|w| * 2**shift < 2**11 before rounding, so |w| <= 2**11 after (the module's bound)
    assert 2**(WEIGHT_MAG_BITS - 1) <= float(layer.weight.abs().max()) <= 2**WEIGHT_MAG_BITS


def test_fan_in_over_the_bound_is_refused():
    with pytest.raises(ValueError, match=f"fan-in {MAX_FAN_IN + 16} exceeds the exactness bound {MAX_FAN_IN}"):
        IntConv.from_float(conv_with_fan_in(MAX_FAN_IN // 16 + 1))


@pytest.mark.parametrize("bad", ["nan_weight", "inf_bias", "huge_bias"])
def test_non_finite_or_oversized_values_are_refused(bad):
    conv = conv_with_fan_in(2, 3)
    with torch.no_grad():
        if bad == "nan_weight":
            conv.weight[0, 0, 0, 0] = float("nan")
        elif bad == "inf_bias":
            conv.bias[0] = float("inf")
        else:  # weights ~1 give shift 10, so the integer bias is b * 2**18: 2**27 reaches 2**45
            conv.bias[0] = 2.0**27
    with pytest.raises(ValueError, match="not finite|reaches 2\\*\\*45"):
        IntConv.from_float(conv)


def test_worst_case_sum_at_the_bound_is_exact_in_any_order():
    """|w| <= 2**11, |a| <= 2**20, fan-in 2**14: float64 sums equal the exact integer sum whatever
    the order (here: forward, reversed, and blocked the way a BLAS might)."""
    assert (2**WEIGHT_MAG_BITS) * ACT_CLAMP * MAX_FAN_IN <= 2**53
    rng = np.random.default_rng(0)
    w = rng.integers(-(2**WEIGHT_MAG_BITS), 2**WEIGHT_MAG_BITS + 1, MAX_FAN_IN)
    w[:64] = 2**WEIGHT_MAG_BITS
    a = int(ACT_CLAMP) * np.sign(w)  # every product positive: the largest possible sum
    exact = int(np.dot(w.astype(object), a.astype(object)))
    assert abs(exact) > 2**44  # really near the bound
    wt, at = torch.from_numpy(w.astype(np.float64)), torch.from_numpy(a.astype(np.float64))
    sums = [float(torch.dot(wt, at)), float(torch.dot(wt.flip(0), at.flip(0))),
            float((wt * at).reshape(128, 128).sum(0).sum()), float(torch.addmm(
                torch.zeros(1, dtype=torch.float64), at[None], wt[:, None])[0, 0])]
    assert all(s == exact for s in sums)
    layer = IntConv(torch.from_numpy(w.astype(np.float64)).reshape(1, MAX_FAN_IN // 16, 4, 4),
                    torch.zeros(1, dtype=torch.float64), shift=0)
    x = torch.from_numpy(a.astype(np.float64)).reshape(1, MAX_FAN_IN // 16, 4, 4)
    with intops.exact_kernels():
        acc = torch.nn.functional.conv2d(x, layer.weight, layer.bias)
    assert float(acc) == exact
