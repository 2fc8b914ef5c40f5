"""Integer-exact network arithmetic shared by the prior and the VQ-VAE decoder.

Every tensor on the coding path holds integers stored in float64.  Products of integer weights
(|w| <= 2**WEIGHT_MAG_BITS) and integer activations (|a| <= ACT_CLAMP) summed over a fan-in of
at most MAX_FAN_IN stay far below 2**53, so any summation order (any BLAS, any GPU kernel, any
thread count) gives the same exact integer.  This is the "integer network" idea of Ballé,
Johnston and Minnen, "Integer Networks for Data Compression with Latent-Variable Models",
ICLR 2019, with power-of-two rescaling so that rescaling is exact too.

Fixed-point convention: an activation value v is stored as round(v * 2**ACT_FRAC_BITS); a layer's
weight w as round(w * 2**s) with a per-layer shift s chosen from the weights themselves
(`weight_shift`), and its bias in units of 2**-(s + ACT_FRAC_BITS).  The encoder's parallel
prior pass runs convolutions through `torch.nn.functional.conv2d` in float64 with cuDNN
switched off: the native kernels are im2col plus a float64 matrix product, never Winograd, FFT
or TF32.  The decoders (wavefront prior, integer VQ-VAE decoder) use float64 matrix products
on gathered or shifted inputs with the rescaling folded into the weights (`IntConv.folded`):
the same integers, with fewer copies and passes.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Activations are integers in units of 2**-ACT_FRAC_BITS (format/SPEC.md, "Integer arithmetic").
ACT_FRAC_BITS = 8
#: The activation value 1.0 in those units (2**ACT_FRAC_BITS = 256).
ACT_ONE = 1 << ACT_FRAC_BITS
#: Integer weights satisfy |Wq| <= 2**WEIGHT_MAG_BITS.
WEIGHT_MAG_BITS = 11
#: Every stored activation is clamped to [-ACT_CLAMP, ACT_CLAMP] = [-2**20, 2**20].
ACT_CLAMP = float(1 << 20)
#: Largest fan-in I * kh * kw of a convolution for which the sums stay exact.
MAX_FAN_IN = 1 << 14  # 2**11 * 2**20 * 2**14 = 2**45 < 2**53
#: Integer biases stay below 2**MAX_BIAS_BITS, so |acc| < 2**46 (format/SPEC.md, "Integer arithmetic").
MAX_BIAS_BITS = 45


def weight_shift(w: torch.Tensor) -> int:
    """Per-layer weight shift s: the largest s with max|w| * 2**s < 2**WEIGHT_MAG_BITS.

    format/SPEC.md, "Integer arithmetic" (fp16 to integer): s = 11 - e where max|w| = mu * 2**e,
    0.5 <= mu < 1.  Uses `math.frexp`, which is exact, so every machine derives the same s from
    the same weights.

    Args:
        w: a conv weight [O, I, kh, kw], any float dtype (fp16 for released models).

    Returns:
        s (may be negative for weights >= 2**11); 0 for an empty or all-zero w.
    """
    m = float(w.detach().abs().max()) if w.numel() else 0.0
    if m == 0.0:
        return 0
    _, exp = math.frexp(m)  # m = mant * 2**exp, 0.5 <= mant < 1
    return WEIGHT_MAG_BITS - exp


def quantize_weight(w: torch.Tensor, shift: int) -> torch.Tensor:
    """Integer weights Wq = round_half_even(w * 2**shift) (format/SPEC.md, "Integer arithmetic").

    Exact: w is fp16/fp32, so w * 2**shift is exact in float64 and only the rounding changes it.

    Args:
        w: weight tensor, any shape, fp16 or fp32.
        shift: the layer's `weight_shift`.

    Returns:
        float64 tensor of integers, same shape as w (|Wq| <= 2**WEIGHT_MAG_BITS when shift is
        `weight_shift(w)`).
    """
    return torch.round(w.detach().to(torch.float64) * (2.0**shift))


def quantize_activation(x: torch.Tensor) -> torch.Tensor:
    """Integer table Eq = clamp(round_half_even(x * 2**ACT_FRAC_BITS), -ACT_CLAMP, ACT_CLAMP).

    Used for the tables (prior embedding, VQ-VAE codebook; format/SPEC.md, "Integer arithmetic").

    Args:
        x: float tensor, any shape (e.g. a codebook [K, D]).

    Returns:
        float64 tensor of integers in units of 2**-ACT_FRAC_BITS, same shape as x.
    """
    return torch.round(x.detach().to(torch.float64) * ACT_ONE).clamp_(-ACT_CLAMP, ACT_CLAMP)


def rescale(acc: torch.Tensor, shift: int) -> torch.Tensor:
    """A layer's rescaling y = clamp(floor(acc / 2**shift + 1/2), -ACT_CLAMP, ACT_CLAMP).

    Round-half-up, exact in float64 (format/SPEC.md, "Integer arithmetic", "A layer").

    Args:
        acc: float64 integer accumulators (|acc| < 2**46), any shape.
        shift: the layer's weight shift s.

    Returns:
        float64 integer activations in units of 2**-ACT_FRAC_BITS, same shape as acc.
    """
    return torch.floor(acc * (2.0**-shift) + 0.5).clamp_(-ACT_CLAMP, ACT_CLAMP)


@contextlib.contextmanager
def exact_kernels():
    """Context manager that disables cuDNN (its float64 algorithms may include FFT) inside the
    integer path, so convolutions use the exact im2col + float64 matrix product kernels.

    Yields:
        None.
    """
    with torch.backends.cudnn.flags(enabled=False):
        yield


def idle_cores() -> int:
    """Cores this process may use that no other process's runnable thread wants now.

    Runnable threads system-wide (/proc/loadavg, 4th field; a CPU-bound process is always
    among them) minus this process's own runnable threads (/proc/self/task/*/stat, e.g.
    OpenMP workers still spinning).  About 0.1 ms; where /proc is not there, every usable
    core counts as idle.

    Returns:
        Number of idle usable cores, at least 1.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        others = running - _own_runnable_threads()
    except (OSError, ValueError, IndexError):
        return cores
    return max(1, cores - max(0, others))


def _own_runnable_threads() -> int:
    n = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat") as f:
                n += f.read().rsplit(")", 1)[1].split()[0] == "R"
        except OSError:  # the thread ended meanwhile
            pass
    return n


class LoadAwareThreads:
    """Context manager that runs its block on at most `idle_cores()` CPU threads.

    Never more threads than were set before; the thread count is restored afterwards;
    `update()` looks at the load again (long loops call it now and then).  On a non-CPU
    device it changes nothing.

    On a machine where other processes keep cores busy, extra OpenMP threads only wait for
    their time slice at every barrier (the integer decoders run thousands of small parallel
    regions), so a decode with as many threads as cores can be many times slower than with
    the idle ones only.  The result does not depend on the thread count (module docstring).

    Args:
        device: the device the integer network runs on; only "cpu" adjusts threads.
    """

    def __init__(self, device: torch.device):
        self.cpu = device.type == "cpu"

    def __enter__(self) -> "LoadAwareThreads":
        self.before = torch.get_num_threads()
        self.update()
        return self

    def update(self) -> None:
        """Set torch's intra-op thread count from the current load (CPU only)."""
        if self.cpu:
            want = max(1, min(self.before, idle_cores()))
            if want != torch.get_num_threads():
                torch.set_num_threads(want)

    def __exit__(self, *exc) -> None:
        if torch.get_num_threads() != self.before:
            torch.set_num_threads(self.before)


@dataclass
class IntConv:
    """A convolution in integer form (format/SPEC.md, "Integer arithmetic").

    `from_float` converts an `nn.Conv2d` (padding is applied by the caller, not here).

    Attributes:
        weight: float64 integers Wq [O, I, kh, kw], |Wq| <= 2**WEIGHT_MAG_BITS.
        bias: float64 integers bq [O], in units of 2**-(shift + ACT_FRAC_BITS).
        shift: the per-layer weight shift s (`weight_shift`).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    shift: int

    @classmethod
    def from_float(cls, conv: torch.nn.Conv2d) -> "IntConv":
        """Quantize `conv.weight` with a per-layer power-of-two scale and its bias to match.

        Wq = round_half_even(W * 2**s), bq = round_half_even(b * 2**(s + ACT_FRAC_BITS))
        (format/SPEC.md, "Integer arithmetic", fp16 to integer).

        Args:
            conv: float conv layer with weight [O, I, kh, kw] and optional bias [O].

        Returns:
            The integer layer, on the CPU.

        Raises:
            ValueError: the fan-in I * kh * kw exceeds MAX_FAN_IN, an integer bias reaches
                2**MAX_BIAS_BITS (sums would not be exact), or a value is not finite.
        """
        shift = weight_shift(conv.weight)
        fan_in = conv.weight[0].numel()
        if fan_in > MAX_FAN_IN:
            raise ValueError(f"fan-in {fan_in} exceeds the exactness bound {MAX_FAN_IN}")
        weight = quantize_weight(conv.weight, shift)
        if conv.bias is None:
            bias = torch.zeros(weight.shape[0], dtype=torch.float64)
        else:
            bias = torch.round(conv.bias.detach().to(torch.float64) * 2.0 ** (shift + ACT_FRAC_BITS))
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise ValueError("weights or biases are not finite")
        if bias.numel() and float(bias.abs().max()) >= 2.0**MAX_BIAS_BITS:
            raise ValueError(f"an integer bias reaches 2**{MAX_BIAS_BITS} (sums would not be exact)")
        return cls(weight, bias, shift)

    def to(self, device: torch.device | str) -> "IntConv":
        """Copy of this layer on `device`.

        Args:
            device: target device.

        Returns:
            A new `IntConv` with weight and bias on `device`.
        """
        return IntConv(self.weight.to(device), self.bias.to(device), self.shift)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve and rescale (format/SPEC.md, "Integer arithmetic", "A layer").

        Args:
            x: float64 integer activations [N, I, H, W], already padded, on the layer's device.

        Returns:
            float64 integer activations [N, O, H-kh+1, W-kw+1], rescaled and clamped to
            +-ACT_CLAMP.
        """
        with exact_kernels():
            acc = F.conv2d(x, self.weight, self.bias)
        return rescale(acc, self.shift)

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer with its rescaling folded in, for the fast decoders.

        taps = weight * 2**-shift in kernel-row, kernel-column order, bias = bias * 2**-shift
        + 1/2.  Then, before the clamp,
        floor(bias + sum over taps and channels of x * taps) == `rescale(acc, shift)` exactly:
        scaling by a power of two is exact, every product and partial sum is a multiple of
        2**-max(shift, 1) below 2**(45 - shift) (module docstring), hence representable in
        float64, so every summation order still gives the exact value.

        Returns:
            (taps float64 [kh*kw, I, O], bias float64 [O]), on the layer's device.
        """
        o, i = self.weight.shape[:2]
        scale = 2.0**-self.shift
        taps = (self.weight * scale).permute(2, 3, 1, 0).reshape(-1, i, o).contiguous()
        return taps, self.bias * scale + 0.5


def floor_clamp_(x: torch.Tensor, low: float = -ACT_CLAMP) -> torch.Tensor:
    """In place: floor(x) clamped to [low, ACT_CLAMP]; ends an `IntConv.folded` product.

    Args:
        x: float64 tensor, any shape; overwritten.
        low: lower clamp; -ACT_CLAMP for a plain layer, 0 to also apply a following `int_relu`.

    Returns:
        x itself.
    """
    return x.floor_().clamp_(low, ACT_CLAMP)


def int_gate_(x: torch.Tensor) -> torch.Tensor:
    """In-place form of `int_gate(x[:, :C], x[:, C:])` for the fast decoders.

    Uses clamp(b + S, 0, 2S) = clamp(b, -S, S) + S, so one clamp serves both halves.

    Args:
        x: float64 integer activations [M, 2C]; overwritten.

    Returns:
        A new float64 integer tensor [M, C], bit-identical to `int_gate`.
    """
    c = x.shape[-1] // 2
    u = x.clamp_(-ACT_ONE, ACT_ONE)
    g = u[:, c:].add_(ACT_ONE)
    return torch.addcmul(_HALF.to(x.device), u[:, :c], g, value=1.0 / (2 * ACT_ONE)).floor_()


_HALF = torch.tensor(0.5, dtype=torch.float64)


def int_relu(x: torch.Tensor) -> torch.Tensor:
    """Integer ReLU, max(x, 0) (format/SPEC.md, "Integer arithmetic", other operations).

    Args:
        x: float64 integer tensor, any shape.

    Returns:
        A new tensor of the same shape and dtype.
    """
    return x.clamp(min=0)


def int_gate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Integer gated unit hardtanh(a) * hardsigmoid(b), hardsigmoid(b) = clamp((b + 1) / 2, 0, 1).

    format/SPEC.md, "Integer arithmetic", other operations.  With S = 2**ACT_FRAC_BITS:
    t = clamp(a, -S, S), g = clamp(b + S, 0, 2S) (units 1/(2S)), result = floor(t * g / (2S)
    + 1/2) in units 1/S, so |result| <= S.  `gate` is the float twin used in training.

    Args:
        a: float64 integer activations (units 2**-ACT_FRAC_BITS), any shape.
        b: same shape as a.

    Returns:
        float64 integer tensor, same shape.
    """
    t = a.clamp(-ACT_ONE, ACT_ONE)
    g = (b + ACT_ONE).clamp(0, 2 * ACT_ONE)
    return torch.floor(t * g * (1.0 / (2 * ACT_ONE)) + 0.5)


def gate(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Float gated unit used in training: hardtanh(a) * clamp((b + 1) / 2, 0, 1).

    The gated activation of van den Oord et al., "Conditional Image Generation with PixelCNN
    Decoders", NeurIPS 2016, with tanh and sigmoid replaced by their hard (piecewise-linear)
    forms so that `int_gate` is its exact integer twin.

    Args:
        a: float tensor, any shape.
        b: float tensor, same shape.

    Returns:
        Float tensor of the same shape, in [-1, 1].
    """
    return F.hardtanh(a) * ((b + 1) * 0.5).clamp(0, 1)
