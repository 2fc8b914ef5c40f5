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
        K, c, L = cfg.K, cfg.channels, cfg.layers
        known = set()

        def layer(name, shape, **kw):
            lay = Int8Layer.from_tensors(tensors, PREFIX + name, shape, **kw)
            known.update(lay.tensors(PREFIX + name))
            return lay

        def gate_t(name):
            t = int8._tensor(tensors, PREFIX + name, torch.int32, (1,))
            known.add(PREFIX + name)
            if not 1 <= int(t[0]) <= int8.S8_MAX:
                raise ValueError(f"tensor {PREFIX + name} = {int(t[0])} is outside [1, 127]")
            return int(t[0])

        embed = int8._tensor(tensors, PREFIX + "embed", torch.int8, (K, c))
        known.add(PREFIX + "embed")
        if embed.numel() and int(embed.min()) < -int8.S8_MAX:
            raise ValueError(f"tensor {PREFIX}embed has the value -128 (s8 is [-127, 127])")
        layers = []
        for l in range(L):
            first = l == 0
            p = f"layers.{l}."
            d = dict(v=layer(p + "v", (2 * c, c, 1 if first else 2, 3)),
                     h=layer(p + "h", (2 * c, c, 1, 1 if first else 2)),
                     v2h=layer(p + "v2h", (2 * c, 2 * c, 1, 1), weight_only=True),
                     res=layer(p + "res", (c, c, 1, 1), resid=not first),
                     tv=gate_t(p + "v_gate"), th=gate_t(p + "h_gate"))
            check_bound(PREFIX + p + "v", int8.S8_MAX, d["v"])
            check_bound(PREFIX + p + "h", int8.S8_MAX, d["h"], d["v2h"])
            check_bound(PREFIX + p + "res", int8.S8_MAX, d["res"])
            layers.append(d)
        out1 = layer("out1", (c, c, 1, 1))
        out2 = layer("out2", (K, c, 1, 1))
        check_bound(PREFIX + "out1", int8.S8_MAX, out1)
        check_bound(PREFIX + "out2", int8.U8_MAX, out2)
        extra = sorted(k for k in tensors if k.startswith(PREFIX) and k not in known)
        if extra:
            raise ValueError(f"unexpected tensors {', '.join(extra)}")
        return cls(cfg, embed.clone(), layers, out1, out2, device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The `int8.prior.*` tensors of a model file (inverse of `from_tensors`).

        Returns:
            name -> CPU tensor (int8 weights and embeddings, int32 everything else).
        """
        out = {PREFIX + "embed": self.embed_q.cpu().contiguous()}
        for l, d in enumerate(self.layers):
            p = f"{PREFIX}layers.{l}."
            for key in ("v", "h", "v2h", "res"):
                out.update(d[key].tensors(p + key))
            out[p + "v_gate"] = torch.tensor([d["tv"]], dtype=torch.int32)
            out[p + "h_gate"] = torch.tensor([d["th"]], dtype=torch.int32)
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
        c = self.cfg.channels
        n, hh, ww = idx.shape
        x = f.embed[idx.to(self.device)]  # int8 [N, H, W, C]
        v = h = x
        for l, d in enumerate(self.layers):
            first = l == 0
            acc = f.v_ref[l][1] + int8.mm(_shifted(v, _taps_v(first)), f.v_ref[l][0])
            vp = int8.requantize(acc, d["v"].mult.to(self.device), d["v"].shift, *int8.S8)
            vp8 = vp.to(torch.int8)
            acc = (f.h_ref[l][1] + int8.mm(_shifted(h, _taps_h(first)), f.h_ref[l][0])
                   + int8.mm(vp8, f.v2h_ref[l]))
            hp = int8.requantize(acc, d["h"].mult.to(self.device), d["h"].shift, *int8.S8)
            g = int8.gate(hp[:, :c], hp[:, c:], d["th"]).to(torch.int8)
            acc = f.res_ref[l][1] + int8.mm(g, f.res_ref[l][0])
            if not first:
                acc = acc + d["res"].resid.to(self.device) * h.reshape(-1, c)
            h = int8.requantize(acc, d["res"].mult.to(self.device), d["res"].shift, *int8.S8)
            h = h.to(torch.int8).view(n, hh, ww, c)
            v = int8.gate(vp[:, :c], vp[:, c:], d["tv"]).to(torch.int8).view(n, hh, ww, c)
        x = h.reshape(-1, c).clamp(min=0)
        y = int8.requantize(f.o1_ref[1] + int8.mm(x, f.o1_ref[0]), self.out1.mult.to(self.device),
                            self.out1.shift, *int8.U8)
        y = (y - int8.U8_OFFSET).to(torch.int8)  # u8 input of out2, stored as x - 128
        acc = f.o2_ref[1] + int8.mm(y, f.o2_ref[0])
        out = int8.requantize(acc, self.out2.mult.to(self.device), self.out2.shift, *int8.LOGITS)
        return out.view(n, hh, ww, -1)

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
        L, c = self.cfg.layers, self.cfg.channels
        plane = n * height * min(width, L + 4)
        return ((2 * L - 1) * plane + 1) * c + L * plane * 2 * c

    def _wavefront(self, n: int, height: int, width: int):
        if self.fused and self.device.type == "cpu":
            return _FusedWavefront(self, n, height, width)
        return _Int8Wavefront(self, n, height, width)



def _requant_consts(layer: Int8Layer, bias: torch.Tensor, offset: torch.Tensor | float = 0.0):
    """(scale, const) float64 [O] with floor(acc * scale + const) = floor((B*M + acc*M + 2**(S-1))
    / 2**S) + offset, exact in float64 (module docstring); acc excludes the bias."""
    m = layer.mult.to(torch.float64)
    p = 2.0 ** -layer.shift
    const = (bias.to(torch.float64) * m + 2.0 ** (layer.shift - 1)) * p + offset
    return m * p, const


class _FastWeights:
    """Weights of an `Int8Prior` in GEMM form on its device, and the float64 constants of the
    wavefront's fused requantisations (`_requant_consts`) and gates."""

    def __init__(self, prior: Int8Prior):
        dev = prior.device
        c = prior.cfg.channels
        to = lambda t: t.to(dev)  # noqa: E731
        self.embed = to(prior.embed_q)
        gemm = lambda lay, u8=False: tuple(to(t) for t in lay.gemm(u8))  # noqa: E731
        self.v_ref = [gemm(d["v"]) for d in prior.layers]
        self.h_ref = [gemm(d["h"]) for d in prior.layers]
        self.v2h_ref = [gemm(d["v2h"])[0] for d in prior.layers]
        self.res_ref = [gemm(d["res"]) for d in prior.layers]
        self.o1_ref = gemm(prior.out1)
        self.o2_ref = gemm(prior.out2, u8=True)

        half = torch.cat([torch.zeros(c), torch.ones(c)]).double()
        self.v_sc, self.v_c, self.h_sc, self.h_c, self.h_lo, self.h_hi = [], [], [], [], [], []
        self.res_sc, self.res_c, self.res_r, self.gv, self.gh, self.tv = [], [], [], [], [], []
        self.h_w = []
        for l, d in enumerate(prior.layers):
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
        sc, cst = _requant_consts(prior.out1, prior.out1.bias, -int8.U8_OFFSET)
        self.o1_sc, self.o1_c = to(sc), to(cst)
        sc, cst = _requant_consts(prior.out2, self.o2_ref[1].cpu())
        self.o2_sc, self.o2_c = to(sc), to(cst)
        self.half = torch.tensor(0.5, dtype=torch.float64, device=dev)


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
        return pmf_from_logits(self.horizontal(s)).reshape(-1, n, self.f.o2_ref[0].shape[1]).transpose(1, 0, 2)

    def horizontal(self, s: int) -> torch.Tensor:
        """Horizontal stacks and head at step s: integer logits float64 [npos * n, K]."""
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
        y = torch.addcmul(f.o1_c, int8.mm(h.to(torch.int8), f.o1_ref[0]), f.o1_sc)
        y = y.clamp_(-int8.U8_OFFSET, int8.U8_MAX - int8.U8_OFFSET).floor_().to(torch.int8)
        z = torch.addcmul(f.o2_c, int8.mm(y, f.o2_ref[0]), f.o2_sc)
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
        self.w = _FusedWeights(prior)
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
        L, c, w, k, mm = self.L, self.c, self.w, self.k, torch._int_mm
        a, b = self.bounds[s]
        m = b - a
        xs, g, h, y, _, acc2, acc1, acck = self._views(m)
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
        mm(h, w.o1_w, out=acc1)
        k.requant_u8(self.acc1, m, w.o1, w.o1_s, self.y)
        mm(y, w.o2_w, out=acck)
        out = np.empty((self.n, m // self.n, self.K), dtype=np.int64)
        k.logits_pmf(self.acck, m, w.o2, w.o2_s, -int8.LOGIT_CLAMP, int8.LOGIT_CLAMP, EXP_LUT, self.n, out)
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
    """An `Int8Prior`'s GEMM weights (CPU torch int8) and per-layer integer constants for
    `_FusedWavefront`: int64 numpy [2, O] (bias, mult) or [3, O] (bias, mult, resid), shifts,
    gate T and Mg."""

    def __init__(self, prior: Int8Prior):
        f = prior._fast
        c = prior.cfg.channels

        def consts(lay, bias, resid=False):
            rows = [bias, lay.mult] + ([torch.zeros(c) if lay.resid is None else lay.resid] if resid else [])
            return np.ascontiguousarray(torch.stack([r.cpu().to(torch.int64) for r in rows]).numpy())

        self.h_w = [w.cpu().contiguous() for w in f.h_w]
        self.res_w = [w.cpu().contiguous() for w, _ in f.res_ref]
        self.v_w = [w.cpu().contiguous() for w, _ in f.v_ref]
        self.o1_w, self.o2_w = f.o1_ref[0].cpu().contiguous(), f.o2_ref[0].cpu().contiguous()
        ls = prior.layers
        self.v = [consts(d["v"], f.v_ref[l][1]) for l, d in enumerate(ls)]
        self.h = [consts(d["h"], f.h_ref[l][1]) for l, d in enumerate(ls)]
        self.res = [consts(d["res"], f.res_ref[l][1], resid=True) for l, d in enumerate(ls)]
        self.v_s, self.h_s, self.res_s = ([int(d[key].shift) for d in ls] for key in ("v", "h", "res"))
        self.tv, self.th = [d["tv"] for d in ls], [d["th"] for d in ls]
        self.mgv, self.mgh = [int8.gate_mult(t) for t in self.tv], [int8.gate_mult(t) for t in self.th]
        self.o1, self.o1_s = consts(prior.out1, f.o1_ref[1]), int(prior.out1.shift)
        self.o2, self.o2_s = consts(prior.out2, f.o2_ref[1]), int(prior.out2.shift)
