"""The int8 arithmetic profile: int8 weights, 8-bit activations, exact integer accumulation,
requantisation by an integer multiplier and shift (format/SPEC.md, "Integer arithmetic, profile
int8").

Integer-only inference after Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", CVPR 2018 (gemmlowp's requantisation), with two
choices that make every kernel exact:

- weights are in [-W_MAX, W_MAX] = [-63, 63], so the 16-bit pair sums of x86 kernels without
  VNNI (vpmaddubsw on u8 x s8) cannot saturate;
- every layer satisfies |B[o]| + amax_in * sum_i |W[o, i]| + 127 * |R[o]| < 2**24
  (`check_bound`), so the accumulator is the same integer in int32, float32 and float64, in any
  summation order: `mm` may use torch._int_mm (oneDNN, any ISA) on the CPU and a float32 matrix
  product on a GPU.

Activations are s8 (integers in [-127, 127]) or u8 ([0, 255]); no zero points.  In the fast paths
both live in int8 tensors, u8 ones as x - 128 (`U8_OFFSET`), with 128 * sum_i W[o, i] folded
into the bias (`Int8Layer.gemm`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: s8 activations are integers in [-S8_MAX, S8_MAX].
S8_MAX = 127
#: u8 activations are integers in [0, U8_MAX].
U8_MAX = 255
#: u8 activations are stored in int8 tensors as x - U8_OFFSET.
U8_OFFSET = 128
#: Integer weights are in [-W_MAX, W_MAX].
W_MAX = 63
#: |accumulator| < ACC_BOUND for every input (the per-layer bound).
ACC_BOUND = 1 << 24
#: Multipliers are in [0, MULT_BOUND).
MULT_BOUND = 1 << 16
#: Shifts are in [1, MAX_SHIFT].
MAX_SHIFT = 40
#: The prior's integer logits are clamped to [-LOGIT_CLAMP, LOGIT_CLAMP] (units 2**-8 nats).
LOGIT_CLAMP = 1 << 20
#: Gates compute t * g * Mg / 2**GATE_SHIFT.
GATE_SHIFT = 24

S8 = (-S8_MAX, S8_MAX)
U8 = (0, U8_MAX)
LOGITS = (-LOGIT_CLAMP, LOGIT_CLAMP)


def mm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Exact integer matrix product of int8 matrices.

    CPU: `torch._int_mm` (oneDNN; exact on every ISA for weights in [-W_MAX, W_MAX]).  Other
    devices: a float32 matrix product with TF32 off, exact because every partial sum is an
    integer below 2**24 (`check_bound`).

    Args:
        x: int8 [m, k] (activations), contiguous.
        w: int8 [k, n] (weights).

    Returns:
        int32 [m, n].
    """
    if x.device.type == "cpu":
        return torch._int_mm(x, w)
    allow = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return (x.float() @ w.float()).to(torch.int32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow


def requantize(acc: torch.Tensor, mult: torch.Tensor, shift: int, lo: int, hi: int) -> torch.Tensor:
    """y = clamp(floor((acc * M + 2**(S-1)) / 2**S), lo, hi), per output channel (last axis).

    Args:
        acc: integer accumulators [..., O] (int32 or int64), |acc| < 2**24.
        mult: int64 multipliers [O], in [0, 2**16).
        shift: the layer's shift S, 1 <= S <= 40.
        lo: lower clamp (-127 for s8, 0 for u8, -2**20 for logits).
        hi: upper clamp.

    Returns:
        int64 tensor, same shape as acc.
    """
    y = acc.to(torch.int64) * mult
    return y.add_(1 << (shift - 1)).bitwise_right_shift_(shift).clamp_(lo, hi)


def gate_mult(t: int) -> int:
    """Mg of a gate whose inputs are in units 1/t: floor((127 * 2**24 + t*t) / (2 * t*t))."""
    return (S8_MAX * (1 << GATE_SHIFT) + t * t) // (2 * t * t)


def gate(a: torch.Tensor, b: torch.Tensor, t: int) -> torch.Tensor:
    """Integer gated unit G_T(a, b): hardtanh(a / T) * clamp((b / T + 1) / 2, 0, 1), in units 1/127.

    The gated activation of van den Oord et al., "Conditional Image Generation with PixelCNN
    Decoders", NeurIPS 2016, with hard tanh and sigmoid (`vqcodec.intops.gate` is the float form).
    tc = clamp(a, -T, T); g = clamp(b + T, 0, 2T); y = clamp(floor((tc * g * Mg + 2**23) / 2**24),
    -127, 127) with Mg = `gate_mult(T)`.

    Args:
        a: integer tensor (any integer dtype), units 1/T.
        b: integer tensor of the same shape.
        t: T, an integer in [1, 127].

    Returns:
        int64 tensor of a's shape, values in [-127, 127].
    """
    tc = a.to(torch.int64).clamp(-t, t)
    g = b.to(torch.int64).add(t).clamp_(0, 2 * t)
    y = tc.mul_(g).mul_(gate_mult(t))
    return y.add_(1 << (GATE_SHIFT - 1)).bitwise_right_shift_(GATE_SHIFT).clamp_(-S8_MAX, S8_MAX)


@dataclass
class Int8Layer:
    """One integer layer of the int8 profile (a convolution, or a GEMM when kh = kw = 1).

    acc[o] = bias[o] + sum_i weight[o, i] * x[i] (+ resid[o] * r[o]);
    y = `requantize`(acc, mult, shift, lo, hi).

    Attributes:
        weight: int8 [O, I, kh, kw], values in [-63, 63].
        bias: int32 [O] (int64 in memory).
        mult: multipliers int32 [O] in [0, 2**16) (int64 in memory); empty for a layer that only
            adds into another layer's accumulator (the prior's v2h).
        shift: S in [1, 40] (0 when mult is empty).
        resid: int32 [O] residual multipliers R, or None.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    mult: torch.Tensor
    shift: int
    resid: torch.Tensor | None = None

    # ---- file form -------------------------------------------------------------------------
    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        """The layer's tensors as stored in a model file (format/SPEC.md, profile int8).

        Args:
            name: the layer's name, e.g. "int8.prior.layers.0.v".

        Returns:
            {name.weight: int8, name.bias: int32, name.mult: int32, name.shift: int32 [1],
            name.resid: int32 (if any)}; a weight-only layer gives {name.weight} only.
        """
        out = {f"{name}.weight": self.weight.to(torch.int8).contiguous()}
        if self.mult.numel():
            out[f"{name}.bias"] = self.bias.to(torch.int32).contiguous()
            out[f"{name}.mult"] = self.mult.to(torch.int32).contiguous()
            out[f"{name}.shift"] = torch.tensor([self.shift], dtype=torch.int32)
        if self.resid is not None:
            out[f"{name}.resid"] = self.resid.to(torch.int32).contiguous()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...],
                     weight_only: bool = False, resid: bool = False) -> "Int8Layer":
        """Read and validate a layer from a model file's tensors.

        Args:
            tensors: all tensors of the file.
            name: the layer's name.
            shape: the expected weight shape (O, I, kh, kw).
            weight_only: the layer has only a weight (its bias, mult and shift are another's).
            resid: the layer has a resid tensor.

        Returns:
            The layer, on the CPU (bias, mult, resid as int64).

        Raises:
            ValueError: a tensor is missing, has the wrong dtype or shape, or a value is out of
                its range (weights, multipliers, shift).  The accumulator bound is checked by
                `check_bound`, which needs the input kind.
        """
        w = _tensor(tensors, f"{name}.weight", torch.int8, shape)
        if w.numel() and (int(w.min()) < -W_MAX or int(w.max()) > W_MAX):  # abs(-128) is -128 in int8
            raise ValueError(f"{name}.weight has values outside [-{W_MAX}, {W_MAX}]")
        o = shape[0]
        if weight_only:
            return cls(w, torch.zeros(o, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 0)
        bias = _tensor(tensors, f"{name}.bias", torch.int32, (o,)).to(torch.int64)
        mult = _tensor(tensors, f"{name}.mult", torch.int32, (o,)).to(torch.int64)
        shift = int(_tensor(tensors, f"{name}.shift", torch.int32, (1,))[0])
        if not 1 <= shift <= MAX_SHIFT:
            raise ValueError(f"{name}.shift {shift} is outside [1, {MAX_SHIFT}]")
        if o and (int(mult.min()) < 0 or int(mult.max()) >= MULT_BOUND):
            raise ValueError(f"{name}.mult has values outside [0, 2**16)")
        r = _tensor(tensors, f"{name}.resid", torch.int32, (o,)).to(torch.int64) if resid else None
        return cls(w, bias, mult, shift, r)

    # ---- arithmetic ------------------------------------------------------------------------
    def acc_bound(self, amax_in: int) -> torch.Tensor:
        """Per output channel: amax_in * sum_i |W[o, i]| + 127 * |R[o]| (without the bias), int64 [O]."""
        b = self.weight.to(torch.int64).abs().flatten(1).sum(1) * amax_in
        if self.resid is not None:
            b += S8_MAX * self.resid.abs()
        return b

    def gemm(self, u8_input: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer in the form the fast paths use.

        Args:
            u8_input: the input is a u8 activation stored as x - 128; its 128 * sum_i W[o, i]
                is folded into the returned bias.

        Returns:
            (taps int8 [kh * kw * I, O] in kernel-row, kernel-column, channel order,
            bias int64 [O]).
        """
        o, i, kh, kw = self.weight.shape
        taps = self.weight.permute(2, 3, 1, 0).reshape(kh * kw * i, o).contiguous()
        bias = self.bias.clone()
        if u8_input:
            bias += U8_OFFSET * self.weight.to(torch.int64).flatten(1).sum(1)
        return taps, bias


def check_bound(name: str, amax_in: int, *layers: Int8Layer) -> None:
    """Check the accumulator bound of one accumulator (format/SPEC.md, profile int8).

    Args:
        name: for the error message.
        amax_in: 127 for s8 inputs, 255 for u8 inputs (per layer if they differ: pass the layers
            that share one accumulator, each with the same kind, or call once per kind).
        layers: the layers whose products add into this accumulator; the first one carries the
            bias.

    Raises:
        ValueError: |B[o]| + sum of the layers' bounds reaches 2**24 for some channel o.
    """
    total = layers[0].bias.abs().clone()
    for layer in layers:
        total += layer.acc_bound(amax_in)
    if total.numel() and int(total.max()) >= ACC_BOUND:
        raise ValueError(f"{name}: an accumulator can reach {int(total.max())} >= 2**24")


def _tensor(tensors: dict[str, torch.Tensor], key: str, dtype: torch.dtype,
            shape: tuple[int, ...]) -> torch.Tensor:
    if key not in tensors:
        raise ValueError(f"tensor {key} is missing")
    t = tensors[key]
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ValueError(f"tensor {key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
    return t


# ---- post-training calibration (non-normative) ----------------------------------------------
def quantize_layer(w_eff: torch.Tensor, b_eff: torch.Tensor, out_scale: float,
                   resid_eff: torch.Tensor | None = None, amax_in: int = S8_MAX,
                   w_max: int = W_MAX) -> Int8Layer:
    """Integer layer from a float layer whose input scales are already folded in.

    The float layer computes y = b_eff[o] + sum_i w_eff[o, i] * x[i] (+ resid_eff[o] * r[o]) on
    the INTEGER inputs x (and r); the integer layer outputs y / out_scale.  Weights are scaled
    per output channel to +-w_max (q[o] = max_i |w_eff[o, i]| / w_max); the shift is the largest
    that keeps every multiplier below 2**16.  If the accumulator bound fails, w_max is halved.

    Args:
        w_eff: float [O, I, kh, kw] (float64 recommended).
        b_eff: float [O].
        out_scale: the real value of one output integer unit.
        resid_eff: float [O], the real value per integer unit of the residual input, or None.
        amax_in: 127 (s8 input) or 255 (u8 input).
        w_max: largest integer weight magnitude.

    Returns:
        The layer.

    Raises:
        ValueError: no w_max >= 1 satisfies the bound.
    """
    w_eff, b_eff = w_eff.double(), b_eff.double()
    q = channel_scales(w_eff, b_eff, w_max)
    weight, bias, mult, shift = scaled_layer(w_eff, b_eff, q, out_scale, w_max)
    resid = None if resid_eff is None else torch.round(resid_eff.double() / q).to(torch.int64)
    layer = Int8Layer(weight, bias, mult, shift, resid)
    try:
        check_bound("layer", amax_in, layer)
    except ValueError:
        if w_max <= 1:
            raise
        return quantize_layer(w_eff, b_eff, out_scale, resid_eff, amax_in, w_max // 2)
    return layer


def channel_scales(w_eff: torch.Tensor, b_eff: torch.Tensor, w_max: int = W_MAX) -> torch.Tensor:
    """Per output channel, the real value of one accumulator unit `quantize_layer` chooses:
    q[o] = max_i |w_eff[o, i]| / w_max (a channel without weights: (max|b| + 1) / 2**22).

    Args:
        w_eff: float64 [O, ...]; b_eff: float64 [O]; w_max: largest integer weight magnitude.

    Returns:
        float64 [O], > 0.
    """
    q = w_eff.abs().flatten(1).amax(1) / w_max
    return torch.where(q > 0, q, torch.ones_like(q) * (float(b_eff.abs().max()) + 1.0) / (ACC_BOUND // 4))


def scaled_layer(w_eff: torch.Tensor, b_eff: torch.Tensor, q: torch.Tensor, out_scale: float,
                 w_max: int = W_MAX) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Integer weight, bias, multipliers and shift of a float layer at accumulator scales q
    (`quantize_layer`'s arithmetic, without the bound check).

    Args:
        w_eff: float64 [O, I, kh, kw]; b_eff: float64 [O]; q: float64 [O] (`channel_scales`);
        out_scale: the real value of one output unit; w_max: largest integer weight magnitude.

    Returns:
        (weight int8 [O, I, kh, kw], bias int64 [O], mult int64 [O], shift).

    Raises:
        ValueError: the output scale needs a shift below 1.
    """
    weight = torch.round(w_eff / q[:, None, None, None]).clamp_(-w_max, w_max).to(torch.int8)
    bias = torch.round(b_eff / q).to(torch.int64)
    ratio = q / out_scale
    shift = min(MAX_SHIFT, int(math.floor(math.log2((MULT_BOUND - 1) / float(ratio.max())))))
    if shift < 1:
        raise ValueError("output scale too small for a multiplier below 2**16")
    mult = torch.round(ratio * 2.0**shift).to(torch.int64).clamp_(0, MULT_BOUND - 1)
    return weight, bias, mult, shift
