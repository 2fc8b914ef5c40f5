"""The integer-exact prior of profile "exact" (v1 models; format/SPEC.md, "Prior network"):
the float64 twin of a trained `vqcodec.prior.GatedPixelCNN`.

Weights become integers as in `vqcodec.intops` (integer networks after Ballé et al., ICLR 2019).
`ExactPrior.logits` is the parallel pass (the encoder's side) with whole-grid convolutions;
`ExactPrior.decode` the wavefront decoder (`vqcodec.wavefront`'s coding order and driver):
position (i, j) is decoded at step t = j + (L + 1) * i, all positions of one step (and of every
tile in the batch) at once, and each layer's activations are computed exactly once, as soon as
their inputs exist.  Both give the same integers.

Shapes: index grids int64 [N, H, W] with values in [0, K); integer logits float64 [N, H, W, K]
in units of 2**-ACT_FRAC_BITS nats.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vqcodec import intops, wavefront
from vqcodec.pmf import pmf_from_logits
from vqcodec.prior import GatedPixelCNN, _pad_h, _pad_h_first, _pad_v, _pad_v_first


class ExactPrior:
    """Integer-exact twin of a trained `GatedPixelCNN` (format/SPEC.md, "Prior network").

    Weights become integers as in `vqcodec.intops` (integer networks after Ballé et al., ICLR
    2019).  `logits(idx)` is the parallel pass used by the encoder; `decode(...)` the wavefront
    decoder.  Both give bit-identical integer logits for the same context on any device, batch
    size or thread count.

    Args:
        model: the trained float prior.
        device: where the integer network runs.

    Raises:
        ValueError: a convolution's fan-in exceeds `intops.MAX_FAN_IN`.
    """

    def __init__(self, model: GatedPixelCNN, device: torch.device | str = "cpu"):
        self.cfg = model.cfg
        self.device = torch.device(device)
        conv = lambda m: intops.IntConv.from_float(m).to(self.device)  # noqa: E731
        self.embed = intops.quantize_activation(model.embed.weight).to(self.device)
        self.layers = [(conv(l.v), conv(l.v2h), conv(l.h), conv(l.res)) for l in model.layers]
        self.out1, self.out2 = conv(model.out1), conv(model.out2)
        self.folded = _fold(self)

    # ---- parallel pass -------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Integer logits of every position in one parallel pass (the encoder's side).

        Args:
            idx: index grids int64 [N, H, W], values in [0, K), on any device.

        Returns:
            Integer logits float64 [N, H, W, K] in units of 2**-ACT_FRAC_BITS nats, on
            `self.device`.
        """
        c = self.cfg.channels
        x = self.embed[idx.to(self.device)].permute(0, 3, 1, 2).contiguous()
        v, h = x, x
        for l, (cv, cv2h, ch, res) in enumerate(self.layers):
            first = l == 0
            vp = cv(_pad_v_first(v) if first else _pad_v(v))
            hp = ch(_pad_h_first(h) if first else _pad_h(h)) + cv2h(vp)
            out = res(intops.int_gate(hp[:, :c], hp[:, c:]))
            h = out if first else (h + out).clamp_(-intops.ACT_CLAMP, intops.ACT_CLAMP)
            v = intops.int_gate(vp[:, :c], vp[:, c:])
        out = self.out2(intops.int_relu(self.out1(intops.int_relu(h))))
        return out.permute(0, 2, 3, 1)

    # ---- wavefront decoder ---------------------------------------------------------------
    def schedule(self, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The wavefront coding order of one tile: `wavefront.schedule(L, height, width)`."""
        return wavefront.schedule(self.cfg.layers, height, width)

    @torch.no_grad()
    def decode(self, n: int, height: int, width: int,
               decode_step: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
        """Decode n index grids of shape (height, width) in lock-step, in coding order.

        Each wavefront step is a handful of fused operations (`_Wavefront`): the state lives in
        one preallocated float64 buffer, read and written through precomputed flat indices,
        and every layer runs on the integer-exact GEMMs of `IntConv.folded`.  Runs on at most
        the idle cores (`intops.LoadAwareThreads`), looked up every 64 steps.

        Args:
            n: number of grids (tiles) decoded together.
            height: grid height in latent positions.
            width: grid width in latent positions.
            decode_step: called once per non-empty wavefront step as decode_step(rows, cols,
                pmfs): rows, cols int64 [npos] are the step's positions, pmfs int64
                [n, npos, K] their integer PMFs (`pmf_from_logits`); it returns the decoded
                indices, int64 [n, npos] (array-like), values in [0, K).

        Returns:
            The index grids, int64 [n, height, width].

        Raises:
            IndexError: decode_step returned an index outside [0, K) (CPU; exceptions raised
                by decode_step itself propagate unchanged).
        """
        return wavefront.decode(self._wavefront, self.cfg.layers, self.device, n, height, width, decode_step)

    def state_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of wavefront state `decode` allocates for n grids of height x width.

        Args:
            n: grids decoded in lock-step.
            height: grid rows.
            width: grid columns.

        Returns:
            Bytes of the float64 state: (2L - 1) kinds x n x height x a ring of min(width, L + 4)
            columns x C channels, plus one zero row (see `_Wavefront`); the precomputed indices
            add about 8 bytes x L x 8 per position.
        """
        L, c = self.cfg.layers, self.cfg.channels
        return ((2 * L - 1) * n * height * min(width, L + 4) + 1) * c * 8

    def _wavefront(self, n: int, height: int, width: int) -> "_Wavefront":
        return _Wavefront(self, n, height, width)


class _Wavefront:
    """State and precomputed indices of one `ExactPrior.decode` run (n grids of height x width).

    Rows of a step's matrices are its positions in schedule order, each repeated for the n
    grids (row k * n + b: position k of grid b).  Buffer `a` (width C) holds, per kind, the
    embeddings (kind 0), vertical-stack outputs of layers 0..L-2 (kinds 1..L-1) and
    horizontal-stack outputs of layers 0..L-2 (kinds L..2L-2; the last layer's feed only the
    head); its last row is zero and stands
    for every position outside the grid (the convolutions' zero padding).  The
    vertical-to-horizontal terms of step t (`vh[t]`, one [rows, 2C] tensor per layer) are kept
    as computed until step t's horizontal stacks use them.  A position's slot in `a` is
    ((kind * n + grid) * height + row) * ring + column % ring.  The longest-lived value is a
    vertical output of layer l at (i, j): written at step t(i, j) - L + l, last read by layer
    l + 1 at (i + 1, j + 1), at step t(i + 1, j + 1) - L + l + 1 = t(i, j) + l + 3, i.e. L + 3
    steps later, after that step's layer-l writes.  So a ring of L + 4 columns never overwrites
    a value still needed and keeps the state small (O(height) instead of O(height * width)).
    """

    def __init__(self, prior: ExactPrior, n: int, height: int, width: int):
        L, c = prior.cfg.layers, prior.cfg.channels
        self.L, self.c, self.n, self.K = L, c, n, prior.cfg.K
        self.sched = prior.schedule(height, width)
        wavefront.wavefront_slots(self, self.sched, n, height, width, L, prior.device)
        self.a = torch.zeros(self.zero + 1, c, dtype=torch.float64, device=prior.device)
        self.embed = prior.embed
        self.vh: dict[int, list[torch.Tensor]] = {}
        (self.v, self.v2h, self.res, self.h_prev_w, self.h_bias, self.h_cur_w,
         self.out1, self.out2) = prior.folded

    def put_indices(self, s: int, sym: np.ndarray) -> None:
        """Store the embeddings of step s's decoded indices sym int64 [n, npos]."""
        a, b = self.bounds[s]
        flat = torch.from_numpy(np.ascontiguousarray(sym.T).reshape(-1)).to(self.a.device)
        self.a.index_copy_(0, self.emb_at[a:b], self.embed.index_select(0, flat))

    def pmfs(self, s: int) -> np.ndarray:
        """Integer PMFs of step s's positions, int64 [n, npos, K] (`pmf_from_logits`)."""
        n = self.n
        return pmf_from_logits(self.horizontal(s)).reshape(-1, n, self.K).transpose(1, 0, 2)

    def horizontal(self, s: int) -> torch.Tensor:
        """Horizontal stacks and head at step s: integer logits float64 [npos * n, K]."""
        L, c = self.L, self.c
        a, b = self.bounds[s]
        m = b - a
        prev = self.a.index_select(0, self.h_prev_at[L * a:L * b]).view(L, m, c)
        vh = self.vh.pop(s)
        acc = torch.baddbmm(self.h_bias, prev, self.h_prev_w)  # [L, m, 2C]
        hs = torch.empty(L, m, c, dtype=acc.dtype, device=acc.device)
        for l in range(L):
            hp = acc[l]
            if l:
                hp.addmm_(hs[l - 1], self.h_cur_w[l])
            intops.floor_clamp_(hp).add_(vh[l])
            w, bias = self.res[l]
            h = intops.floor_clamp_(torch.addmm(bias, intops.int_gate_(hp), w, out=hs[l]))
            if l:
                h.add_(hs[l - 1]).clamp_(-intops.ACT_CLAMP, intops.ACT_CLAMP)
        if L > 1:
            self.a.index_copy_(0, self.hs_at[(L - 1) * a:(L - 1) * b], hs[:L - 1].view(-1, c))
        (w1, b1), (w2, b2) = self.out1, self.out2
        y = intops.floor_clamp_(torch.addmm(b1, hs[L - 1].clamp(min=0), w1), low=0)
        return intops.floor_clamp_(torch.addmm(b2, y, w2))

    def vertical(self, s: int) -> None:
        """Vertical stacks: layer l at the positions of step s + L - l."""
        L = self.L
        for l, a, b in wavefront.vertical_ranges(self.bounds, L, s):
            w, bias = self.v[l]
            patch = self.a.index_select(0, self.patch_at[l][a:b].view(-1)).view(b - a, -1)
            vp = intops.floor_clamp_(torch.addmm(bias, patch, w))
            w, bias = self.v2h[l]
            self.vh.setdefault(s + L - l, []).append(intops.floor_clamp_(torch.addmm(bias, vp, w)))
            if l < L - 1:
                self.a.index_copy_(0, self.vg_at[l][a:b], intops.int_gate_(vp))


def _fold(prior: ExactPrior) -> tuple:
    """The integer layers of `prior` in the form `_Wavefront` uses (see `IntConv.folded`)."""
    c = prior.cfg.channels
    fold = [[conv.folded() for conv in layer] for layer in prior.layers]
    v = [(t.reshape(-1, 2 * c), bias) for t, bias in (f[0] for f in fold)]
    v2h = [(t[0], bias) for t, bias in (f[1] for f in fold)]
    res = [(t[0], bias) for t, bias in (f[3] for f in fold)]
    # horizontal conv split by kernel column: j-1 for every layer (one batched GEMM), j for l >= 1
    h = [f[2] for f in fold]
    h_prev_w = torch.stack([t[0] for t, _ in h])
    h_bias = torch.stack([bias for _, bias in h])[:, None]
    h_cur_w = [None] + [t[1] for t, _ in h[1:]]
    (w1, b1), (w2, b2) = prior.out1.folded(), prior.out2.folded()
    return v, v2h, res, h_prev_w, h_bias, h_cur_w, (w1[0], b1), (w2[0], b2)
