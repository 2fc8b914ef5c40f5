"""The VQ-VAE decoder in the int8 arithmetic profile (format/SPEC.md, "VQ-VAE decoder", profile
int8; /work/coord/INT8.md): s8/u8 activations, int8 weights, exact int32 accumulation and
requantisation by an integer multiplier and shift (`vqcodec.int8`).

`Int8Decoder`, like `vqcodec.vqvae.IntDecoder`, is a `vqcodec.vqvae.GridDecoder` and so a
`vqcodec.interfaces.PixelDecoder` (`__call__`, `halo`, `device`): `codec.decode_pixels` tiles it
the same way.  Its layers are the v1 decoder's slots (`vqvae.decoder_layers`), read from the
model file's `int8.decoder.*` tensors.
"""

from __future__ import annotations

import torch

from vqcodec import int8
from vqcodec.int8 import S8_MAX, U8_MAX, U8_OFFSET, Int8Layer
from vqcodec.vqvae import (GridDecoder, LayerSpec, VQVAEConfig, _interior, _zeros_bordered, decoder_layers,
                           receptive_halo, run_ops, zero_border)

#: Prefix of the decoder's tensors in a model file of profile int8.
PREFIX = "int8.decoder."

# Output kinds of a layer: s8, u8 stored as x - 128 in int8, u8 kept as uint8 (the pixels).
_S8, _U8, _PIXEL = "s8", "u8", "pixel"


class _Gemm:
    """One integer layer prepared for the fast path: taps int8 [k*k*I, O] and the constants of
    an exact requantisation (`_requantize_int32`, `_requantize_float64`).

    int32 path, for layers where it cannot overflow (every calibrated layer): acc is clamped per
    channel to [L, H], the accumulators beyond which the output is at its clamp bound anyway;
    then acc * M + 2**(S-1) (- 128 * 2**S for stored u8) fits int32 and the arithmetic shift
    gives the output directly.  Otherwise float64: acc * M / 2**S is a multiple of 2**-S below
    2**41 in magnitude, exact in float64's 53 bits.
    """

    def __init__(self, layer: Int8Layer, u8_input: bool, out: str, device: torch.device):
        taps, bias = layer.gemm(u8_input=u8_input)
        self.k = layer.weight.shape[2]
        self.taps = taps.to(device)
        self.out = out
        self.resid = None if layer.resid is None else layer.resid.to(torch.int32).to(device)
        lo, hi = (-S8_MAX, S8_MAX) if out == _S8 else (0, U8_MAX)
        m, shift = layer.mult, layer.shift
        one = 1 << shift
        # L = the largest acc with y <= lo, H = the smallest with y >= hi (y steps by <= 1
        # when M <= 2**S, so y(L) = lo and y(H) = hi); M = 0: y = 0 everywhere.
        h = torch.where(m > 0, -((one // 2 - hi * one) // m.clamp(min=1)), 0)
        low = torch.where(m > 0, -(((one // 2 - (lo + 1) * one)) // m.clamp(min=1)) - 1, 0)
        offset = -U8_OFFSET * one if out == _U8 else 0
        big = torch.maximum((low * m).abs(), (h * m).abs()) + abs(offset) + one
        self.int32 = bool(int(m.max()) <= one and int(big.max()) < (1 << 31)) if m.numel() else True
        if self.int32:
            self.bias = bias.to(torch.int32).to(device)
            self.low, self.high = low.to(torch.int32).to(device), h.to(torch.int32).to(device)
            self.mult = m.to(torch.int32).to(device)
            self.round = torch.tensor(one // 2 + offset, dtype=torch.int32, device=device)
            self.shift = shift
        else:
            scale = m.double() * 2.0 ** -shift  # M / 2**S, exact
            # + 128 for s8, so that every clamped value is >= 0 and truncation is the floor
            self.scale = scale.to(device)
            self.const = (bias.double() * scale + (0.5 + (U8_OFFSET if out == _S8 else 0))).to(device)
            self.lo, self.hi = (1.0, 255.0) if out == _S8 else (0.0, float(U8_MAX))


class Int8Decoder(GridDecoder):
    """Integer VQ-VAE decoder of profile int8: identical pixels on every machine and kernel.

    Per slot of the v1 decoder (`vqvae.decoder_layers`): a convolution outputs s8 (the last one u8, the
    pixel value itself); a `ResBlock` computes u = conv3(relu(x)) (u8) and x' = conv1(u) + R * x
    (s8); ReLU and pixel shuffle are as in v1.  Activations live channels-last in zero-bordered
    flat int8 maps [(h+2)*(w+2), C] (`vqvae._zeros_bordered`; u8 ones as x - 128).  A 3x3
    convolution is one `int8.mm` on a k*k*I-column int8 matrix gathered from the nine shifted row
    ranges of that map (an int8 copy is cheaper than nine small GEMMs and their int32 sums).
    Requantisation is exact in int32 (accumulators clamped first, `_Gemm`) or float64.
    Everything is integer-exact, so the result does not depend on threads, batch, ISA or device.
    Jacob et al., CVPR 2018.

    Attributes:
        cfg: the architecture.
        device: where the decoder runs.
        halo: receptive-field radius in latent positions (`vqvae.receptive_halo`); tiles
            decoded with that overlap are bit-identical to a whole-image decode.
        codebook: int8 [K, D], s8.
        layers: {slot name: `Int8Layer`} as in the model file (on the CPU).
    """

    def __init__(self, cfg: VQVAEConfig, codebook: torch.Tensor, layers: dict[str, Int8Layer],
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.codebook = codebook
        self.layers = layers
        specs = decoder_layers(cfg)
        self.halo = receptive_halo(specs)
        self._cb = codebook.to(self.device)
        self.ops = []
        last = _last_conv(specs)
        for spec in specs:
            name = f"net.{spec.slot}"
            if spec.kind == "conv":
                out = _PIXEL if spec.slot == last else _S8
                self.ops.append(("conv", _Gemm(layers[name], False, out, self.device)))
            elif spec.kind == "res":
                self.ops.append(("res", _Gemm(layers[f"{name}.conv3"], False, _U8, self.device),
                                 _Gemm(layers[f"{name}.conv1"], True, _S8, self.device)))
            elif spec.kind == "shuffle":
                self.ops.append(("shuffle", spec.factor))
            else:
                self.ops.append(("relu",))

    # ---- file form -------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], cfg: VQVAEConfig,
                     device: torch.device | str = "cpu") -> "Int8Decoder":
        """Read and validate the `int8.decoder.*` tensors of a model file (profile int8).

        Args:
            tensors: the file's tensors (other prefixes are ignored).
            cfg: the file's vqvae_config.
            device: where the decoder runs.

        Returns:
            The decoder.

        Raises:
            ValueError: a tensor is missing, unexpected, of the wrong dtype or shape, or has a
                value outside its range (codebook outside [-127, 127], weights outside
                [-63, 63], multipliers, shifts), or a layer's accumulator can reach 2**24
                (`int8.check_bound`).
        """
        cb = int8._tensor(tensors, PREFIX + "codebook", torch.int8, cls._codebook_shape(cfg))
        if cb.numel() and int(cb.min()) < -S8_MAX:
            raise ValueError(f"{PREFIX}codebook has values outside [-{S8_MAX}, {S8_MAX}]")
        expected = {PREFIX + "codebook"}
        layers: dict[str, Int8Layer] = {}
        for name, shape, amax_in, resid in _layer_specs(cfg):
            full = PREFIX + name
            layer = Int8Layer.from_tensors(tensors, full, shape, resid=resid)
            int8.check_bound(full, amax_in, layer)
            layers[name] = layer
            expected |= set(layer.tensors(full))
        extra = sorted(k for k in tensors if k.startswith(PREFIX) and k not in expected)
        if extra:
            raise ValueError(f"unexpected decoder tensors: {', '.join(extra)}")
        return cls(cfg, cb.clone(), layers, device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The decoder's tensors as stored in a model file (`int8.decoder.*`, CPU).

        Returns:
            {name: tensor}: the codebook int8 [K, D] and, per layer, weight int8 [O, I, k, k],
            bias, mult int32 [O], shift int32 [1] and (ResBlock conv1) resid int32 [O].
        """
        out = {PREFIX + "codebook": self.codebook.to(torch.int8).cpu().contiguous()}
        for name, layer in self.layers.items():
            out.update(layer.tensors(PREFIX + name))
        return out

    # ---- decoding --------------------------------------------------------------------------
    @staticmethod
    def _codebook_shape(cfg: VQVAEConfig) -> tuple[int, ...]:
        """Shape of `int8.decoder.codebook`: (K, D)."""
        return (cfg.K, cfg.D)

    def _input(self, idx: torch.Tensor) -> torch.Tensor:
        """The decoder's s8 input of one grid: codebook rows, int8 [h, w, D] (idx int64 [h, w])."""
        return self._cb[idx]

    def _decode_one(self, idx: torch.Tensor) -> torch.Tensor:
        h, w = idx.shape[-2:]
        x = _zeros_bordered(h, w, self._cb.shape[-1], self._cb)
        _interior(x, h, w).copy_(self._input(idx))
        x, h, w = run_ops(self.ops, x, h, w, _layer,
                          lambda x, h, w, g3, g1: _layer(_layer(x.clamp(min=0), h, w, g3), h, w, g1, resid=x))
        return _interior(x, h, w).permute(2, 0, 1)  # the last layer emits the pixels


def _layer(x: torch.Tensor, h: int, w: int, g: _Gemm, resid: torch.Tensor | None = None) -> torch.Tensor:
    """One integer layer on a zero-bordered flat int8 map x [(h+2)*(w+2), I] -> zero-bordered
    [(h+2)*(w+2), O]: int8 for s8 and stored-u8 outputs, uint8 for pixels (borders 0)."""
    wp = w + 2
    n = h * wp - 2  # flat rows from the first to the last inner cell
    if g.k == 1:
        cols = x[wp + 1:wp + 1 + n]
    else:  # the k*k shifted row ranges side by side, in kernel-row, kernel-column order
        c = x.shape[1]
        r = g.k // 2
        cols = x[(1 - r) * (wp + 1):].as_strided((n, g.k, g.k, c), (c, wp * c, c, 1))
        cols = cols.contiguous().view(n, g.k * g.k * c)  # a copy (reshape may give a view)
    acc = int8.mm(cols, g.taps)
    if g.resid is not None:
        acc.addcmul_(resid[wp + 1:wp + 1 + n], g.resid)
    y = torch.empty(x.shape[0], g.taps.shape[1], dtype=torch.uint8 if g.out == _PIXEL else torch.int8,
                    device=x.device)
    if g.int32:
        y[wp + 1:wp + 1 + n].copy_(_requantize_int32(acc, g))
    else:
        y[wp + 1:wp + 1 + n].copy_(_requantize_float64(acc, g))
        if g.out != _PIXEL:  # the stored value is y + 128 (s8) or y (u8) in uint8: minus 128
            y = y.view(torch.uint8).bitwise_xor_(U8_OFFSET).view(torch.int8)
    return zero_border(y, h, w)


def _requantize_int32(acc: torch.Tensor, g: _Gemm) -> torch.Tensor:
    """`int8.requantize` of acc + bias in int32 (s8 outputs, u8 outputs minus 128, or pixels):
    int32 [n, O] (in place)."""
    acc.add_(g.bias).clamp_(g.low, g.high)
    return torch.addcmul(g.round, acc, g.mult, out=acc).bitwise_right_shift_(g.shift)


def _requantize_float64(acc: torch.Tensor, g: _Gemm) -> torch.Tensor:
    """`int8.requantize` of acc + bias in float64, shifted to be >= 0 and clamped: float64
    [n, O] whose truncation to uint8 is the output (+128 for s8).  Clamping before the floor
    equals clamping after it."""
    return torch.addcmul(g.const, acc.double(), g.scale).clamp_(g.lo, g.hi)


def _last_conv(specs: list[LayerSpec]) -> int:
    return max(s.slot for s in specs if s.kind == "conv")


def _layer_specs(cfg: VQVAEConfig) -> list[tuple[str, tuple[int, ...], int, bool]]:
    """(name, weight shape, amax of the input, has resid) of each integer layer, in slot order."""
    specs = []
    for s in decoder_layers(cfg):
        if s.kind == "conv":
            specs.append((f"net.{s.slot}", (s.out_ch, s.in_ch, s.kernel, s.kernel), S8_MAX, False))
        elif s.kind == "res":
            c = s.in_ch
            specs.append((f"net.{s.slot}.conv3", (c, c, 3, 3), S8_MAX, False))
            specs.append((f"net.{s.slot}.conv1", (c, c, 1, 1), U8_MAX, True))
    return specs
