"""The gated PixelCNN prior in the int8 arithmetic profile (format/SPEC.md, profile int8;
/work/coord/INT8.md during development).

Same network as `vqcodec.prior.GatedPixelCNN` (van den Oord et al., "Conditional Image
Generation with PixelCNN Decoders", NeurIPS 2016), with int8 weights, s8/u8 activations, exact
integer accumulators and requantisation by an integer multiplier and shift (Jacob et al.,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
CVPR 2018).  `Int8Prior`, like `vqcodec.prior_exact.ExactPrior`, is a
`vqcodec.interfaces.EntropyPrior` (schedule, decode, logits, state_bytes), so the entropy coder
uses either.

Three paths compute the same integers:

- `Int8Prior.logits`, the encoder's parallel pass: convolutions as int8 GEMMs (`int8.mm`) on
  shifted channels-last inputs, requantisation and gates by `int8.requantize` / `int8.gate`
  literally as the formulas are written.
- the wavefront decoder on the CPU (`_FusedWavefront`): `_Int8Wavefront`'s state and GEMMs,
  with everything between the GEMMs (requantisation, gates, gathers, scatters, the PMF) in
  compiled integer kernels (`vqcodec.kernels`, numba), a few calls per layer and step.
- the torch-only wavefront decoder (`_Int8Wavefront`; other devices, and the reference the
  tests compare the fused one with): int8 state in `ExactPrior`'s ring layout
  (`wavefront.wavefront_slots`), int8 GEMMs, and each requantisation in float64 as
  floor(clamp(acc * (M / 2**S) + (B * M + 2**(S-1)) / 2**S, lo, hi)): every term is a multiple
  of 2**-S below 2**41 / 2**S, so float64 holds it exactly and the result is the integer
  formula's.  Constant offsets (the gate's +T, the u8 storage offset) are folded into the
  per-channel constants.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vqcodec import int8, wavefront
from vqcodec.int8 import Int8Layer, check_bound
from vqcodec.pmf import EXP_LUT, pmf_from_logits
from vqcodec.prior import PriorConfig
from vqcodec.wavefront import vertical_ranges, wavefront_slots

PREFIX = "int8.prior."


def _taps_v(first: bool) -> list[tuple[int, int]]:
    """(row, column) offsets of the vertical kernel, in kernel-row, kernel-column order."""
    rows = (-1,) if first else (-1, 0)
    return [(dy, dx) for dy in rows for dx in (-1, 0, 1)]


def _taps_h(first: bool) -> list[tuple[int, int]]:
    """(row, column) offsets of the horizontal kernel (mask A for layer 0)."""
    return [(0, -1)] if first else [(0, -1), (0, 0)]


def _shifted(x: torch.Tensor, taps: list[tuple[int, int]]) -> torch.Tensor:
    """x int8 [N, H, W, C] -> int8 [N * H * W, len(taps) * C]: x at each tap offset, zero outside."""
    n, h, w, c = x.shape
    xp = F.pad(x, (0, 0, 1, 1, 1, 0))  # one zero row above, one zero column left and right
    cols = [xp[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w] for dy, dx in taps]
    return torch.cat(cols, -1).reshape(n * h * w, -1)


# ---- file form, shared with the stage prior (`vqcodec.prior_stages_int8`) -------------------
def read_layer(tensors: dict[str, torch.Tensor], name: str, shape: tuple[int, ...], known: set[str],
               **kw) -> Int8Layer:
    """Read `int8.prior.<name>` (`Int8Layer.from_tensors`) and add its tensor names to `known`.

    Raises:
        ValueError: as `Int8Layer.from_tensors`.
    """
    lay = Int8Layer.from_tensors(tensors, PREFIX + name, shape, **kw)
    known.update(lay.tensors(PREFIX + name))
    return lay


def read_embed(tensors: dict[str, torch.Tensor], shape: tuple[int, ...], known: set[str]) -> torch.Tensor:
    """Read the s8 embedding table `int8.prior.embed` (v2: [K, C]; rvq: [S, K, C]).

    Returns:
        int8 tensor of `shape` (a copy), values in [-127, 127].

    Raises:
        ValueError: missing, wrong dtype or shape, or a value -128.
    """
    embed = int8._tensor(tensors, PREFIX + "embed", torch.int8, shape)
    known.add(PREFIX + "embed")
    if embed.numel() and int(embed.min()) < -int8.S8_MAX:
        raise ValueError(f"tensor {PREFIX}embed has the value -128 (s8 is [-127, 127])")
    return embed.clone()


def read_trunk(tensors: dict[str, torch.Tensor], cfg: PriorConfig, known: set[str]) -> list[dict]:
    """Read and validate the trunk's `int8.prior.layers.{l}.*` tensors (format/SPEC.md, profile
    int8, "Prior network"): weights, multipliers, shifts, gate T in [1, 127] and every
    accumulator bound.

    Args:
        tensors: the file's tensors.
        cfg: K, C, L.
        known: the names read are added to it.

    Returns:
        Per layer {"v", "h", "v2h", "res": `Int8Layer`, "tv", "th": int}.

    Raises:
        ValueError: a tensor is missing, of the wrong dtype or shape, out of range, or an
            accumulator can reach 2**24.
    """
    c = cfg.channels

    def gate_t(name):
        t = int8._tensor(tensors, PREFIX + name, torch.int32, (1,))
        known.add(PREFIX + name)
        if not 1 <= int(t[0]) <= int8.S8_MAX:
            raise ValueError(f"tensor {PREFIX + name} = {int(t[0])} is outside [1, 127]")
        return int(t[0])

    layers = []
    for l in range(cfg.layers):
        first = l == 0
        p = f"layers.{l}."
        d = dict(v=read_layer(tensors, p + "v", (2 * c, c, 1 if first else 2, 3), known),
                 h=read_layer(tensors, p + "h", (2 * c, c, 1, 1 if first else 2), known),
                 v2h=read_layer(tensors, p + "v2h", (2 * c, 2 * c, 1, 1), known, weight_only=True),
                 res=read_layer(tensors, p + "res", (c, c, 1, 1), known, resid=not first),
                 tv=gate_t(p + "v_gate"), th=gate_t(p + "h_gate"))
        check_bound(PREFIX + p + "v", int8.S8_MAX, d["v"])
        check_bound(PREFIX + p + "h", int8.S8_MAX, d["h"], d["v2h"])
        check_bound(PREFIX + p + "res", int8.S8_MAX, d["res"])
        layers.append(d)
    return layers


def reject_unexpected(tensors: dict[str, torch.Tensor], known: set[str]) -> None:
    """Raise ValueError naming every `int8.prior.*` tensor not in `known`."""
    extra = sorted(k for k in tensors if k.startswith(PREFIX) and k not in known)
    if extra:
        raise ValueError(f"unexpected tensors {', '.join(extra)}")


def trunk_tensors(layers: list[dict]) -> dict[str, torch.Tensor]:
    """The `int8.prior.layers.{l}.*` tensors of trunk layers (inverse of `read_trunk`)."""
    out = {}
    for l, d in enumerate(layers):
        p = f"{PREFIX}layers.{l}."
        for key in ("v", "h", "v2h", "res"):
            out.update(d[key].tensors(p + key))
        out[p + "v_gate"] = torch.tensor([d["tv"]], dtype=torch.int32)
        out[p + "h_gate"] = torch.tensor([d["th"]], dtype=torch.int32)
    return out


def trunk_parallel(f: "_TrunkWeights", layers: list[dict], x: torch.Tensor) -> torch.Tensor:
    """The trunk's parallel pass (the encoder's side), written as the profile's formulas: int8
    GEMMs on shifted inputs, `int8.requantize`, `int8.gate`.

    Args:
        f: the trunk's GEMM weights (`_TrunkWeights`), on the device x is on.
        layers: the trunk's layers (`read_trunk`).
        x: the trunk input E, int8 [N, H, W, C] (s8).

    Returns:
        relu(H_{L-1}), int8 [N * H * W, C], values in [0, 127] (the heads' input).
    """
    n, hh, ww, c = x.shape
    dev = x.device
    v = h = x
    for l, d in enumerate(layers):
        first = l == 0
        acc = f.v_ref[l][1] + int8.mm(_shifted(v, _taps_v(first)), f.v_ref[l][0])
        vp = int8.requantize(acc, d["v"].mult.to(dev), d["v"].shift, *int8.S8)
        vp8 = vp.to(torch.int8)
        acc = (f.h_ref[l][1] + int8.mm(_shifted(h, _taps_h(first)), f.h_ref[l][0])
               + int8.mm(vp8, f.v2h_ref[l]))
        hp = int8.requantize(acc, d["h"].mult.to(dev), d["h"].shift, *int8.S8)
        g = int8.gate(hp[:, :c], hp[:, c:], d["th"]).to(torch.int8)
        acc = f.res_ref[l][1] + int8.mm(g, f.res_ref[l][0])
        if not first:
            acc = acc + d["res"].resid.to(dev) * h.reshape(-1, c)
        h = int8.requantize(acc, d["res"].mult.to(dev), d["res"].shift, *int8.S8)
        h = h.to(torch.int8).view(n, hh, ww, c)
        v = int8.gate(vp[:, :c], vp[:, c:], d["tv"]).to(torch.int8).view(n, hh, ww, c)
    return h.reshape(-1, c).clamp(min=0)


class Int8Prior:
    """Integer prior of profile int8 (format/SPEC.md, "Prior network", profile int8).

    Built from a model file's `int8.prior.*` tensors (`from_tensors`), e.g. those written by
    `vqcodec.train.calibrate_prior`.  Logits, from the parallel pass or the wavefront decoder,
    are bit-identical on every device, batch size, thread count and oneDNN ISA.

    Attributes:
        cfg: the architecture (K, C, L).
        device: where the integer network runs.
    """

    #: decode on the CPU with the compiled kernels (`_FusedWavefront`); False: the torch-only
    #: wavefront (`_Int8Wavefront`, the reference the tests compare with; always used elsewhere)
    fused = True

    def schedule(self, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The wavefront coding order of one tile (v1's): `wavefront.schedule(L, height, width)`."""
        return wavefront.schedule(self.cfg.layers, height, width)

    @torch.no_grad()
    def decode(self, n: int, height: int, width: int,
               decode_step: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
        """Decode n index grids of shape (height, width) in lock-step, in coding order.

        `wavefront.decode`'s driver and callback contract, on this prior's int8 wavefront
        (CPU: `_FusedWavefront`, int8 GEMMs with compiled integer kernels between them; other
        devices or `fused = False`: `_Int8Wavefront`, torch operations only).

        Args:
            n: number of grids (tiles) decoded together.
            height: grid height in latent positions.
            width: grid width in latent positions.
            decode_step: called once per non-empty wavefront step as decode_step(rows, cols,
                pmfs): rows, cols int64 [npos] are the step's positions, pmfs int64
                [n, npos, K] their integer PMFs (`pmf.pmf_from_logits`); it returns the
                decoded indices, int64 [n, npos] (array-like), values in [0, K).

        Returns:
            The index grids, int64 [n, height, width].

        Raises:
            IndexError: decode_step returned an index outside [0, K) (exceptions raised by
                decode_step itself propagate unchanged).
        """
        return wavefront.decode(self._wavefront, self.cfg.layers, self.device, n, height, width, decode_step)

    def __init__(self, cfg: PriorConfig, embed: torch.Tensor, layers: list[dict],
                 out1: Int8Layer, out2: Int8Layer, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.embed_q = embed
        self.layers = layers
        self.out1, self.out2 = out1, out2
        self._fast = _FastWeights(self)

    # ---- file form -------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], cfg: PriorConfig,
                     device: torch.device | str = "cpu") -> "Int8Prior":
        """Read and validate the `int8.prior.*` tensors of a model file.

        Args:
            tensors: the file's tensors (others than `int8.prior.*` are ignored).
            cfg: the prior's architecture (the file's "prior_config").
            device: where the network runs.

        Returns:
            The prior.

        Raises:
            ValueError: a tensor is missing, unexpected, of the wrong dtype or shape, a value
                is outside its range (weights [-63, 63], embeddings [-127, 127], multipliers,
                shifts, gate T in [1, 127]), or an accumulator can reach 2**24.
        """
        known: set[str] = set()
        embed = read_embed(tensors, (cfg.K, cfg.channels), known)
        layers = read_trunk(tensors, cfg, known)
        out1 = read_layer(tensors, "out1", (cfg.channels, cfg.channels, 1, 1), known)
        out2 = read_layer(tensors, "out2", (cfg.K, cfg.channels, 1, 1), known)
        check_bound(PREFIX + "out1", int8.S8_MAX, out1)
        check_bound(PREFIX + "out2", int8.U8_MAX, out2)
        reject_unexpected(tensors, known)
        return cls(cfg, embed.clone(), layers, out1, out2, device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The `int8.prior.*` tensors of a model file (inverse of `from_tensors`).

        Returns:
            name -> CPU tensor (int8 weights and embeddings, int32 everything else).
        """
        out = {PREFIX + "embed": self.embed_q.cpu().contiguous(), **trunk_tensors(self.layers)}
        out.update(self.out1.tensors(PREFIX + "out1"))
        out.update(self.out2.tensors(PREFIX + "out2"))
        return out

    # ---- parallel pass (reference arithmetic) ----------------------------------------------
    @torch.no_grad()
    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Integer logits of every position in one parallel pass (the encoder's side).

        Written as the profile's formulas: int8 GEMMs on shifted inputs, `int8.requantize`,
        `int8.gate`.

        Args:
            idx: index grids int64 [N, H, W], values in [0, K), on any device.

        Returns:
            Integer logits int64 [N, H, W, K] in units of 2**-8 nats, in [-2**20, 2**20], on
            `self.device`.
        """
        f = self._fast
        n, hh, ww = idx.shape
        x = trunk_parallel(f, self.layers, f.embed[idx.to(self.device)])  # embed: int8 [N, H, W, C]
        return f.head.parallel(x).view(n, hh, ww, -1)

    # ---- wavefront decoder -----------------------------------------------------------------
    def state_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of wavefront state `decode` allocates for n grids of height x width.

        Args:
            n: grids decoded in lock-step.
            height: grid rows.
            width: grid columns.

        Returns:
            Bytes of the int8 ring states: n x height x min(width, L + 4) slots per kind,
            (2L - 1) kinds of C channels (plus one zero row) and L kinds of 2C channels (vp);
            the horizontal GEMM input adds L x 4C bytes per position of the largest step.
        """
        return trunk_state_bytes(self.cfg, n, height, width)

    def _wavefront(self, n: int, height: int, width: int):
        if self.fused and self.device.type == "cpu":
            return _FusedWavefront(self, n, height, width)
        return _Int8Wavefront(self, n, height, width)



def trunk_state_bytes(cfg: PriorConfig, n: int, height: int, width: int) -> int:
    """Bytes of the int8 trunk's wavefront state for n grids of height x width (`Int8Prior.state_bytes`,
    also the stage prior's): the ring states, (2L - 1) kinds of C channels plus one zero row and
    L kinds of 2C channels, each n x height x min(width, L + 4) slots."""
    L, c = cfg.layers, cfg.channels
    plane = n * height * min(width, L + 4)
    return ((2 * L - 1) * plane + 1) * c + L * plane * 2 * c


def _requant_consts(layer: Int8Layer, bias: torch.Tensor, offset: torch.Tensor | float = 0.0):
    """(scale, const) float64 [O] with floor(acc * scale + const) = floor((B*M + acc*M + 2**(S-1))
    / 2**S) + offset, exact in float64 (module docstring); acc excludes the bias."""
    m = layer.mult.to(torch.float64)
    p = 2.0 ** -layer.shift
    const = (bias.to(torch.float64) * m + 2.0 ** (layer.shift - 1)) * p + offset
    return m * p, const


def _fused_consts(lay: Int8Layer, bias: torch.Tensor, resid: bool = False) -> np.ndarray:
    """A layer's per-channel integer constants for the compiled kernels (`vqcodec.kernels`):
    int64 numpy [2, O] (bias, mult) or, with resid, [3, O] (bias, mult, R; R = 0 if none)."""
    rows = [bias, lay.mult] + ([torch.zeros(len(bias)) if lay.resid is None else lay.resid] if resid else [])
    return np.ascontiguousarray(torch.stack([r.cpu().to(torch.int64) for r in rows]).numpy())


class _Head:
    """One prior head, out1 (s8 -> u8) then out2 (u8 -> logits), in the forms of the three paths
    (v2's head; each stage of `vqcodec.prior_stages_int8` has one).

    acc1 = out1.B + conv_out1(r) (+ cond, the stage prior's conditioning rows);
    u = rq_out1(acc1, u8); logits = rq_out2(out2.B + conv_out2(u), -2**20, 2**20)
    (format/SPEC.md, profile int8, "Prior network").

    Attributes:
        out1, out2: the layers.
        o1_ref, o2_ref: (taps int8 [C, C] / [C, K], bias int64) on the device (`Int8Layer.gemm`;
            out2's bias has the u8 offset folded in).
        o1_sc, o1_c, o2_sc, o2_c: float64 [O] requantisation constants of the torch wavefront
            (`_requant_consts`; out1's include the -128 of the stored u8).
        o1_w, o2_w: the taps on the CPU; o1, o2: int64 numpy [2, O] (bias, mult); o1_s, o2_s:
            shifts (the fused wavefront's kernels).
    """

    def __init__(self, out1: Int8Layer, out2: Int8Layer, device: torch.device):
        self.out1, self.out2, self.device = out1, out2, device
        self.o1_ref = tuple(t.to(device) for t in out1.gemm())
        self.o2_ref = tuple(t.to(device) for t in out2.gemm(True))
        sc, cst = _requant_consts(out1, out1.bias, -int8.U8_OFFSET)
        self.o1_sc, self.o1_c = sc.to(device), cst.to(device)
        sc, cst = _requant_consts(out2, self.o2_ref[1].cpu())
        self.o2_sc, self.o2_c = sc.to(device), cst.to(device)
        self.o1_w, self.o2_w = self.o1_ref[0].cpu().contiguous(), self.o2_ref[0].cpu().contiguous()
        self.o1, self.o1_s = _fused_consts(out1, self.o1_ref[1]), int(out1.shift)
        self.o2, self.o2_s = _fused_consts(out2, self.o2_ref[1]), int(out2.shift)

    def parallel(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """The head as the profile's formulas (`int8.requantize`).

        Args:
            x: relu(H_{L-1}), int8 [m, C], values in [0, 127], on the device.
            cond: int64 [m, C] added to out1's accumulator (the stage prior's conditioning
                rows), or None.

        Returns:
            Integer logits int64 [m, K] (units 2**-8 nats) in [-2**20, 2**20].
        """
        acc = self.o1_ref[1] + int8.mm(x, self.o1_ref[0])
        if cond is not None:
            acc = acc + cond
        y = int8.requantize(acc, self.out1.mult.to(self.device), self.out1.shift, *int8.U8)
        y = (y - int8.U8_OFFSET).to(torch.int8)  # u8 input of out2, stored as x - 128
        acc = self.o2_ref[1] + int8.mm(y, self.o2_ref[0])
        return int8.requantize(acc, self.out2.mult.to(self.device), self.out2.shift, *int8.LOGITS)


class _TrunkWeights:
    """The trunk's weights in GEMM form on a device, and the float64 constants of the
    wavefront's fused requantisations (`_requant_consts`) and gates.

    Args:
        layers: the trunk (`read_trunk`).
        c: channels C.
        dev: the device.
    """

    def __init__(self, layers: list[dict], c: int, dev: torch.device):
        to = lambda t: t.to(dev)  # noqa: E731
        gemm = lambda lay, u8=False: tuple(to(t) for t in lay.gemm(u8))  # noqa: E731
        self.v_ref = [gemm(d["v"]) for d in layers]
        self.h_ref = [gemm(d["h"]) for d in layers]
        self.v2h_ref = [gemm(d["v2h"])[0] for d in layers]
        self.res_ref = [gemm(d["res"]) for d in layers]

        half = torch.cat([torch.zeros(c), torch.ones(c)]).double()
        self.v_sc, self.v_c, self.h_sc, self.h_c, self.h_lo, self.h_hi = [], [], [], [], [], []
        self.res_sc, self.res_c, self.res_r, self.gv, self.gh, self.tv = [], [], [], [], [], []
        self.h_w = []
        for l, d in enumerate(layers):
            v, h, res, tv, th = d["v"], d["h"], d["res"], d["tv"], d["th"]
            sc, cst = _requant_consts(v, v.bias)
            self.v_sc.append(to(sc)), self.v_c.append(to(cst))
            # h + v2h: the gate's b half is stored + Th, both halves clamped to the gate's range
            sc, cst = _requant_consts(h, h.bias, half * th)
            self.h_sc.append(to(sc)), self.h_c.append(to(cst))
            self.h_lo.append(to((half - 1) * th)), self.h_hi.append(to((half + 1) * th))
            sc, cst = _requant_consts(res, res.bias)
            self.res_sc.append(to(sc)), self.res_c.append(to(cst))
            self.res_r.append(None if res.resid is None else
                              to(res.resid.double() * res.mult.double() * 2.0 ** -res.shift))
            self.gv.append(int8.gate_mult(tv) * 2.0 ** -int8.GATE_SHIFT)
            self.gh.append(int8.gate_mult(th) * 2.0 ** -int8.GATE_SHIFT)
            self.tv.append(tv)
            # horizontal GEMM input [h(i, j-1) | h(i, j) | vp]; layer 0 sees only h(i, j-1) (zero rows)
            w = self.h_ref[l][0]
            if l == 0:
                w = torch.cat([w, torch.zeros_like(w)])
            self.h_w.append(torch.cat([w, self.v2h_ref[l]]).contiguous())
        self.half = torch.tensor(0.5, dtype=torch.float64, device=dev)


class _FastWeights(_TrunkWeights):
    """An `Int8Prior`'s weights on its device: the trunk (`_TrunkWeights`), `embed` int8 [K, C]
    and `head` (`_Head`, out1 and out2)."""

    def __init__(self, prior: Int8Prior):
        super().__init__(prior.layers, prior.cfg.channels, prior.device)
        self.embed = prior.embed_q.to(prior.device)
        self.head = _Head(prior.out1, prior.out2, prior.device)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """A contiguous int8 matrix viewed as int64 words ([r, c] -> [r, c / 8]) when c % 8 == 0:
    torch gathers and scatters rows of 8-byte elements several times faster than int8 ones."""
    return x.view(torch.int64) if x.shape[-1] % 8 == 0 else x


class _Int8Wavefront:
    """State of one `Int8Prior.decode` run: `prior_exact._Wavefront`'s ring layout and schedule
    (`wavefront_slots`), with int8 state and int8 GEMMs.

    Ring `a` (width C) holds the embeddings, the vertical-stack gate outputs and the horizontal
    outputs as in v1; ring `p` (width 2C, same slot of a position per kind l = layer) holds each
    layer's vp, written by the vertical stack at step t - L + l and read by the horizontal stack
    at step t (so the vertical-to-horizontal link is part of the horizontal GEMM).  Per step:
    two gathers, per layer one GEMM and about seven elementwise operations per stack, one scatter
    per stack and layer.
    """

    def __init__(self, prior: Int8Prior, n: int, height: int, width: int):
        L, c = prior.cfg.layers, prior.cfg.channels
        self.L, self.c = L, c
        self.sched = prior.schedule(height, width)
        wavefront_slots(self, self.sched, n, height, width, L, prior.device)
        self.a = torch.zeros(self.zero + 1, c, dtype=torch.int8, device=prior.device)
        plane = self.zero // (2 * L - 1)  # n * height * ring slots per kind
        self.p = torch.zeros(L * plane, 2 * c, dtype=torch.int8, device=prior.device)
        self.vp_at = [self.emb_at] + self.vg_at  # slot of kind l at each position
        # per step, the vp slots of all L layers ([L, rows of the step] blocks, as h_prev_at)
        self.vp_step_at = torch.cat([torch.stack([x[a:b] for x in self.vp_at]).reshape(-1)
                                     for a, b in self.bounds])
        self.f = prior._fast
        self.embed = _rows(self.f.embed)
        # horizontal GEMM inputs [L, rows, h(i, j-1) | h(i, j) | vp]; layer 0's h(i, j) stays 0
        most = max(b - a for a, b in self.bounds)
        self.x = torch.zeros(L, most, 4 * c, dtype=torch.int8, device=prior.device)

    def put_indices(self, s: int, sym: np.ndarray) -> None:
        """Store the embeddings of step s's decoded indices sym int64 [n, npos]."""
        a, b = self.bounds[s]
        flat = torch.from_numpy(np.ascontiguousarray(sym.T).reshape(-1)).to(self.a.device)
        _rows(self.a).index_copy_(0, self.emb_at[a:b], self.embed.index_select(0, flat))

    def pmfs(self, s: int) -> np.ndarray:
        """PMFs of step s's positions, int64 [n, npos, K] (`pmf.pmf_from_logits`)."""
        a, b = self.bounds[s]
        n = (b - a) // len(self.sched[s][0])
        return pmf_from_logits(self.horizontal(s)).reshape(-1, n, self.f.head.o2_ref[0].shape[1]).transpose(1, 0, 2)

    def horizontal(self, s: int) -> torch.Tensor:
        """Horizontal stacks and head at step s: integer logits float64 [npos * n, K]."""
        return self.head(self.trunk(s), self.f.head)

    def trunk(self, s: int) -> torch.Tensor:
        """Horizontal stacks at step s (their outputs but the last stored in ring a).

        Returns:
            relu(H_{L-1}) of the step's rows, float64 [npos * n, C] holding integers in [0, 127].
        """
        L, c, f = self.L, self.c, self.f
        a, b = self.bounds[s]
        m = b - a
        x = self.x[:, :m]
        x[:, :, :c] = _rows(self.a).index_select(0, self.h_prev_at[L * a:L * b]).view(torch.int8).view(L, m, c)
        x[:, :, 2 * c:] = _rows(self.p).index_select(0, self.vp_step_at[L * a:L * b]).view(torch.int8).view(L, m, 2 * c)
        h = None
        for l in range(L):
            z = torch.addcmul(f.h_c[l], int8.mm(x[l], f.h_w[l]), f.h_sc[l])
            z.clamp_(f.h_lo[l], f.h_hi[l]).floor_()  # [a | b + Th], each in the gate's range
            g = torch.addcmul(f.half, z[:, :c], z[:, c:], value=f.gh[l]).floor_().to(torch.int8)
            z = torch.addcmul(f.res_c[l], int8.mm(g, f.res_ref[l][0]), f.res_sc[l])
            if l:
                z.addcmul_(h, f.res_r[l])
            h = z.clamp_(0 if l == L - 1 else -int8.S8_MAX, int8.S8_MAX).floor_()  # last: relu
            if l < L - 1:
                x[l + 1, :, c:2 * c] = h
        if L > 1:
            _rows(self.a).index_copy_(0, self.hs_at[(L - 1) * a:(L - 1) * b], _rows(x[1:, :, c:2 * c].reshape(-1, c)))
        return h

    @staticmethod
    def head(h: torch.Tensor, hd: _Head, cond: torch.Tensor | None = None) -> torch.Tensor:
        """One head on trunk rows (`_Head`'s formulas, requantised in float64, exact).

        Args:
            h: relu(H_{L-1}), float64 [m, C] (`trunk`).
            hd: the head.
            cond: int32 [m, C] added to out1's accumulator, or None.

        Returns:
            Integer logits float64 [m, K].
        """
        acc = int8.mm(h.to(torch.int8), hd.o1_ref[0])
        if cond is not None:
            acc += cond
        y = torch.addcmul(hd.o1_c, acc, hd.o1_sc)
        y = y.clamp_(-int8.U8_OFFSET, int8.U8_MAX - int8.U8_OFFSET).floor_().to(torch.int8)
        z = torch.addcmul(hd.o2_c, int8.mm(y, hd.o2_ref[0]), hd.o2_sc)
        return z.clamp_(-int8.LOGIT_CLAMP, int8.LOGIT_CLAMP).floor_()

    def vertical(self, s: int) -> None:
        """Vertical stacks: layer l at the positions of step s + L - l."""
        L, c, f = self.L, self.c, self.f
        for l, a, b in vertical_ranges(self.bounds, L, s):
            w, _ = f.v_ref[l]
            patch = _rows(self.a).index_select(0, self.patch_at[l][a:b].view(-1)).view(torch.int8).view(b - a, -1)
            vp = torch.addcmul(f.v_c[l], int8.mm(patch, w), f.v_sc[l])
            vp.floor_().clamp_(-int8.S8_MAX, int8.S8_MAX)
            _rows(self.p).index_copy_(0, self.vp_at[l][a:b], _rows(vp.to(torch.int8)))
            if l < L - 1:
                tv = f.tv[l]
                vp.clamp_(-tv, tv)
                vp[:, c:] += tv
                y = torch.addcmul(f.half, vp[:, :c], vp[:, c:], value=f.gv[l]).floor_()
                _rows(self.a).index_copy_(0, self.vg_at[l][a:b], _rows(y.to(torch.int8)))


class _FusedWavefront:
    """`_Int8Wavefront`'s state layout and schedule on the CPU, with everything between the
    GEMMs in compiled integer kernels (`vqcodec.kernels`).  Per step: two gathers; per layer of
    the horizontal stack GEMM, requantisation + gate, GEMM, residual requantisation + scatter;
    per layer of the vertical stack gather, GEMM, requantisation + gate + scatters; the head's
    last layer fused with the PMF.  GEMM inputs and outputs live in preallocated buffers (torch
    tensors for `torch._int_mm`, numpy views of the same memory for the kernels).

    The kernels compute the profile's integer formulas literally (int64), so the PMFs are those
    of `Int8Prior.logits` + `pmf.pmf_from_logits` on every CPU.
    """

    def __init__(self, prior: Int8Prior, n: int, height: int, width: int):
        from vqcodec import kernels

        self.k = kernels
        L, c, K = prior.cfg.layers, prior.cfg.channels, prior.cfg.K
        self.L, self.c, self.n, self.K = L, c, n, K
        self.sched = prior.schedule(height, width)
        wavefront_slots(self, self.sched, n, height, width, L, "cpu")
        plane = self.zero // (2 * L - 1)
        self.a = np.zeros((self.zero + 1, c), dtype=np.int8)
        self.p = np.zeros((L * plane, 2 * c), dtype=np.int8)
        words = c % 8 == 0  # copy rows as int64 words where they are whole words
        self.wd = 8 if words else 1
        self.a_w, self.p_w = (x.view(np.int64) if words else x for x in (self.a, self.p))
        np_ = lambda t: None if t is None else t.numpy()  # noqa: E731
        self.emb_at, self.h_prev_at = np_(self.emb_at), np_(self.h_prev_at)
        self.hs_at = np_(self.hs_at) if L > 1 else np.zeros(0, dtype=np.int64)
        self.patch_at = [np_(t) for t in self.patch_at]
        self.vg_at = [np_(t) for t in self.vg_at] + [np.zeros(0, dtype=np.int64)]
        self.vp_at = [self.emb_at] + self.vg_at[:L - 1]
        self.vp_step_at = np.concatenate([np.stack([x[a:b] for x in self.vp_at]).reshape(-1)
                                          for a, b in self.bounds])
        self.embed = prior._fast.embed.numpy()
        self.head = getattr(prior._fast, "head", None)  # v2's head (`_Head`); the stage prior has several
        self.w = _FusedWeights(prior._fast, prior.layers, c)
        most = max(b - a for a, b in self.bounds)
        t8 = lambda *shape: torch.zeros(*shape, dtype=torch.int8)  # noqa: E731
        t32 = lambda *shape: torch.zeros(*shape, dtype=torch.int32)  # noqa: E731
        # GEMM inputs; horizontal: [L, rows, h(i, j-1) | h(i, j) | vp], layer 0's h(i, j) = 0
        self.x_t, self.g_t, self.h_t, self.y_t = t8(L, most, 4 * c), t8(most, c), t8(most, c), t8(most, c)
        self.patch_t = [t8(most, pa.shape[1] * c) for pa in self.patch_at]
        # GEMM outputs: [rows, 2C] (v, h), [rows, C] (res, out1), [rows, K] (out2)
        self.acc2_t, self.acc1_t, self.acck_t = t32(most, 2 * c), t32(most, c), t32(most, K)
        self.x, self.g, self.h, self.y = (t.numpy() for t in (self.x_t, self.g_t, self.h_t, self.y_t))
        self.x_w = self.x.view(np.int64) if words else self.x
        self.patch_w = [t.numpy().view(np.int64) if words else t.numpy() for t in self.patch_t]
        self.acc2, self.acc1, self.acck = (t.numpy() for t in (self.acc2_t, self.acc1_t, self.acck_t))
        self.views: dict[int, tuple] = {}

    def _views(self, m: int) -> tuple:
        """The GEMM operands' first m rows (torch views), cached per row count."""
        v = self.views.get(m)
        if v is None:
            v = self.views[m] = ([x[:m] for x in self.x_t], self.g_t[:m], self.h_t[:m], self.y_t[:m],
                                 [x[:m] for x in self.patch_t], self.acc2_t[:m], self.acc1_t[:m],
                                 self.acck_t[:m])
        return v

    def put_indices(self, s: int, sym: np.ndarray) -> None:
        """Store the embeddings of step s's decoded indices sym int64 [n, npos].

        Raises:
            IndexError: an index is outside [0, K).
        """
        a, b = self.bounds[s]
        flat = np.ascontiguousarray(sym.T).reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.K):
            raise IndexError(f"decoded index outside [0, {self.K})")
        self.a[self.emb_at[a:b]] = self.embed[flat]

    def pmfs(self, s: int) -> np.ndarray:
        """Horizontal stacks and head at step s: the PMFs int64 [n, npos, K]."""
        return self.head_pmfs(self.trunk(s), self.head)

    def trunk(self, s: int) -> int:
        """Horizontal stacks at step s: relu(H_{L-1}) of the step's m rows into `self.h[:m]`
        (int8, values in [0, 127]); the other layers' outputs into ring a.

        Returns:
            m, the step's rows (npos * n).
        """
        L, c, w, k, mm = self.L, self.c, self.w, self.k, torch._int_mm
        a, b = self.bounds[s]
        m = b - a
        xs, g, _, _, _, acc2, acc1, _ = self._views(m)
        k.gather_layers(self.a_w, self.h_prev_at[L * a:L * b], m, self.x_w, 0)
        k.gather_layers(self.p_w, self.vp_step_at[L * a:L * b], m, self.x_w, 2 * c // self.wd)
        hs_at = self.hs_at[(L - 1) * a:(L - 1) * b]
        for l in range(L):
            mm(xs[l], w.h_w[l], out=acc2)
            k.horizontal_gate(self.acc2, m, w.h[l], w.h_s[l], w.th[l], w.mgh[l], self.g)
            mm(g, w.res_w[l], out=acc1)
            if l < L - 1:
                k.residual(self.acc1, m, w.res[l], w.res_s[l], self.x[l], c, -int8.S8_MAX, self.x[l + 1], c,
                           self.a, hs_at[l * m:(l + 1) * m])
            else:  # relu(h_L), the head's input
                k.residual(self.acc1, m, w.res[l], w.res_s[l], self.x[l], c, 0, self.h, 0, self.a, hs_at[:0])
        return m

    def head_pmfs(self, m: int, hd: _Head, cond: np.ndarray | None = None) -> np.ndarray:
        """One head on the trunk rows `self.h[:m]` (`trunk`), fused with the PMF.

        Args:
            m: rows.
            hd: the head.
            cond: int32 [m, C] added to out1's int32 accumulator before its requantisation
                (the stage prior's conditioning rows), or None.

        Returns:
            PMFs int64 [n, m / n, K].
        """
        _, _, h, y, _, _, acc1, acck = self._views(m)
        torch._int_mm(h, hd.o1_w, out=acc1)
        if cond is not None:
            self.acc1[:m] += cond
        self.k.requant_u8(self.acc1, m, hd.o1, hd.o1_s, self.y)
        torch._int_mm(y, hd.o2_w, out=acck)
        out = np.empty((self.n, m // self.n, self.K), dtype=np.int64)
        self.k.logits_pmf(self.acck, m, hd.o2, hd.o2_s, -int8.LOGIT_CLAMP, int8.LOGIT_CLAMP, EXP_LUT, self.n, out)
        return out

    def vertical(self, s: int) -> None:
        """Vertical stacks: layer l at the positions of step s + L - l."""
        L, w, k = self.L, self.w, self.k
        for l, a, b in vertical_ranges(self.bounds, L, s):
            _, _, _, _, patch, acc2, _, _ = self._views(b - a)
            k.gather_patch(self.a_w, self.patch_at[l][a:b], self.patch_w[l])
            torch._int_mm(patch[l], w.v_w[l], out=acc2)
            k.vertical(self.acc2, b - a, w.v[l], w.v_s[l], w.tv[l], w.mgv[l], self.p, self.vp_at[l][a:b],
                       self.a, self.vg_at[l][a:b])


class _FusedWeights:
    """A trunk's GEMM weights (CPU torch int8) and per-layer integer constants for
    `_FusedWavefront`: int64 numpy [2, O] (bias, mult) or [3, O] (bias, mult, resid), shifts,
    gate T and Mg (the heads' are in `_Head`).

    Args:
        f: the trunk's weights (`_TrunkWeights`).
        layers: the trunk (`read_trunk`).
        c: channels C.
    """

    def __init__(self, f: _TrunkWeights, layers: list[dict], c: int):
        self.h_w = [w.cpu().contiguous() for w in f.h_w]
        self.res_w = [w.cpu().contiguous() for w, _ in f.res_ref]
        self.v_w = [w.cpu().contiguous() for w, _ in f.v_ref]
        ls = layers
        self.v = [_fused_consts(d["v"], f.v_ref[l][1]) for l, d in enumerate(ls)]
        self.h = [_fused_consts(d["h"], f.h_ref[l][1]) for l, d in enumerate(ls)]
        self.res = [_fused_consts(d["res"], f.res_ref[l][1], resid=True) for l, d in enumerate(ls)]
        self.v_s, self.h_s, self.res_s = ([int(d[key].shift) for d in ls] for key in ("v", "h", "res"))
        self.tv, self.th = [d["tv"] for d in ls], [d["th"] for d in ls]
        self.mgv, self.mgh = [int8.gate_mult(t) for t in self.tv], [int8.gate_mult(t) for t in self.th]
