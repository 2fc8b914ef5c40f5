"""Gated PixelCNN prior over the VQ-VAE index grid, in float (training) and integer-exact form.

Architecture after van den Oord et al., "Conditional Image Generation with PixelCNN Decoders",
NeurIPS 2016: a vertical stack (rows above) and a horizontal stack (left in the current row)
with gated units and a vertical-to-horizontal link, so there is no blind spot.  The gate is
hardtanh(a) * hardsigmoid(b) (`vqcodec.intops.gate`) so the integer twin needs no
transcendental function.  With L layers of 3-wide kernels the context of position (i, j) is
rows i-L..i-1, columns j-L..j+L, plus row i, columns j-L..j-1.

Decoding is serial; `IntPrior.decode` runs a wavefront: position (i, j) is decoded at step
t = j + (L + 1) * i, all positions of one step (and of every tile in the batch) at once, and
each layer's activations are computed exactly once, as soon as their inputs exist.  The
parallel pass `IntPrior.logits` computes the same integers with whole-grid convolutions.

Shapes: index grids int64 [N, H, W] with values in [0, K); float logits [N, K, H, W];
integer logits float64 [N, H, W, K] in units of 2**-ACT_FRAC_BITS nats.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from decimal import ROUND_HALF_EVEN, Context, Decimal, localcontext
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vqcodec import intops
from vqcodec.constants import LUT_LEN, LUT_ONE_BITS, LUT_STEP_SHIFT, PMF_BITS


@dataclass(frozen=True)
class PriorConfig:
    """Architecture of a gated PixelCNN prior (`prior_config` in format/SPEC.md).

    Attributes:
        K: codebook size (number of logits per position).
        channels: width C of both stacks.
        layers: number L of gated layers.
    """

    K: int = 1024
    channels: int = 128
    layers: int = 6

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (stored as the model file's "prior_config")."""
        return asdict(self)


def _pad_v_first(x):  # row i sees row i-1, columns j-1..j+1 (mask A)
    return F.pad(x, (1, 1, 1, 0))[..., :-1, :]


def _pad_v(x):  # row i sees rows i-1..i, columns j-1..j+1
    return F.pad(x, (1, 1, 1, 0))


def _pad_h_first(x):  # column j sees column j-1 (mask A)
    return F.pad(x, (1, 0, 0, 0))[..., :-1]


def _pad_h(x):  # column j sees columns j-1..j
    return F.pad(x, (1, 0, 0, 0))


class GatedLayer(nn.Module):
    """One gated layer of van den Oord et al. 2016 (their figure 2): (v, h) -> (v', h').

    Vertical stack: 2x3 kernel over rows i-1..i (1x3 over row i-1 for the first layer);
    horizontal stack: 1x2 kernel over columns j-1..j (1x1 over column j-1 for the first layer),
    plus a 1x1 vertical-to-horizontal link and a 1x1 residual convolution (format/SPEC.md,
    "Prior network").

    Args:
        c: channels C of both stacks.
        first: True for layer 0, which applies the causal "mask A" shifts and has no residual
            connection on the horizontal stack.
    """

    def __init__(self, c: int, first: bool):
        super().__init__()
        self.first = first
        self.v = nn.Conv2d(c, 2 * c, (1, 3) if first else (2, 3))
        self.v2h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h = nn.Conv2d(c, 2 * c, (1, 1) if first else (1, 2))
        self.res = nn.Conv2d(c, c, 1)

    def forward(self, v, h):
        """Apply the layer.

        Args:
            v: vertical-stack input, float [N, C, H, W].
            h: horizontal-stack input, float [N, C, H, W].

        Returns:
            (v', h'), each float [N, C, H, W] (the input dtype, or bfloat16 under autocast).
        """
        vp = self.v(_pad_v_first(v) if self.first else _pad_v(v))
        c = vp.shape[1] // 2
        hp = self.h(_pad_h_first(h) if self.first else _pad_h(h)) + self.v2h(vp)
        out = self.res(intops.gate(hp[:, :c], hp[:, c:]))
        return intops.gate(vp[:, :c], vp[:, c:]), out if self.first else h + out


class GatedPixelCNN(nn.Module):
    """Float gated PixelCNN prior over index grids, used for training (van den Oord et al.,
    "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016).

    Embedding [K, C], `cfg.layers` `GatedLayer`s, then relu, 1x1 conv C -> C, relu, 1x1 conv
    C -> K.  Its integer twin is `IntPrior`.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: PriorConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.embed = nn.Embedding(cfg.K, c)
        nn.init.normal_(self.embed.weight, std=0.5)
        self.layers = nn.ModuleList(GatedLayer(c, i == 0) for i in range(cfg.layers))
        self.out1 = nn.Conv2d(c, c, 1)
        self.out2 = nn.Conv2d(c, cfg.K, 1)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of every position given the positions before it in raster order.

        Args:
            idx: index grids int64 [N, H, W], values in [0, K).

        Returns:
            Logits float32 [N, K, H, W] in nats (bfloat16 under autocast).
        """
        x = self.embed(idx).permute(0, 3, 1, 2)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h)
        return self.out2(F.relu(self.out1(F.relu(h))))


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
            (e.g. float64 from `IntPrior`, on any device).

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


class IntPrior:
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
        """The wavefront coding order of one tile (format/SPEC.md, "Coding order").

        Args:
            height: tile height H in latent positions.
            width: tile width W in latent positions.

        Returns:
            W + (L+1)(H-1) steps; entry t is (rows, cols), int64 arrays of the positions with
            j + (L+1) i == t, in increasing row order.
        """
        step = self.cfg.layers + 1
        steps = []
        for t in range(width + step * (height - 1)):
            rows = np.arange(height)
            cols = t - step * rows
            ok = (cols >= 0) & (cols < width)
            steps.append((rows[ok], cols[ok]))
        return steps

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
        with intops.LoadAwareThreads(self.device) as threads:
            return self._decode(n, height, width, decode_step, threads)

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

    def _decode(self, n, height, width, decode_step, threads: intops.LoadAwareThreads) -> np.ndarray:
        wf = self._wavefront(n, height, width)
        out = np.zeros((n, height, width), dtype=np.int64)
        sched = wf.sched
        for s in range(-self.cfg.layers, len(sched)):
            if s % 64 == 63:
                threads.update()
            if s >= 0 and len(sched[s][0]):
                rows, cols = sched[s]
                sym = np.asarray(decode_step(rows, cols, wf.pmfs(s)), dtype=np.int64)
                out[:, rows, cols] = sym
                wf.put_indices(s, sym)
            wf.vertical(s)
        return out


def vertical_ranges(bounds: list[tuple[int, int]], layers: int, s: int):
    """The vertical-stack work of wavefront step s: layer l runs at the positions of step
    s + L - l (`_Wavefront`).

    Args:
        bounds: per step, its (start, end) rows in the flat [positions * n] order.
        layers: L.
        s: the step, -L <= s < len(bounds).

    Yields:
        (l, start, end) for each layer with a non-empty step.
    """
    for l in range(layers):
        t = s + layers - l
        if 0 <= t < len(bounds):
            a, b = bounds[t]
            if a < b:
                yield l, a, b


class _Wavefront:
    """State and precomputed indices of one `IntPrior.decode` run (n grids of height x width).

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

    def __init__(self, prior: IntPrior, n: int, height: int, width: int):
        L, c = prior.cfg.layers, prior.cfg.channels
        self.L, self.c, self.n, self.K = L, c, n, prior.cfg.K
        self.sched = prior.schedule(height, width)
        wavefront_slots(self, self.sched, n, height, width, L, prior.device)
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
        for l, a, b in vertical_ranges(self.bounds, L, s):
            w, bias = self.v[l]
            patch = self.a.index_select(0, self.patch_at[l][a:b].view(-1)).view(b - a, -1)
            vp = intops.floor_clamp_(torch.addmm(bias, patch, w))
            w, bias = self.v2h[l]
            self.vh.setdefault(s + L - l, []).append(intops.floor_clamp_(torch.addmm(bias, vp, w)))
            if l < L - 1:
                self.a.index_copy_(0, self.vg_at[l][a:b], intops.int_gate_(vp))


def wavefront_slots(wf, sched, n: int, height: int, width: int, L: int, dev) -> None:
    """Set the flat state slots and step bounds of a wavefront decoder on `wf` (`_Wavefront`'s
    layout, shared with `vqcodec.prior_int8`).

    Sets: zero (the index of the zero row), bounds (per step, its [start, end) rows in the flat
    [positions * n] order), emb_at, h_prev_at, hs_at, patch_at, vg_at (int64 index tensors on dev).
    """
    ring = min(width, L + 4)
    plane = n * height * ring
    wf.zero = (2 * L - 1) * plane

    # positions of all steps in schedule order; step t is rows start[t]:end[t] of a flat
    # [positions * n] array (row k * n + b: position k of grid b)
    r = np.concatenate([rr for rr, _ in sched])[:, None]
    cc = np.concatenate([cols for _, cols in sched])[:, None]
    end = np.cumsum([len(rr) for rr, _ in sched]) * n
    wf.bounds = list(zip((end - np.diff(end, prepend=0)).tolist(), end.tolist()))
    grid = np.arange(n)[None, :]

    def slots(kind, dr=0, dc=0, check=False) -> np.ndarray:
        s = ((kind * n + grid) * height + r + dr) * ring + (cc + dc) % ring
        if check:
            s = np.where((r + dr >= 0) & (cc + dc >= 0) & (cc + dc < width), s, wf.zero)
        return s.reshape(-1)

    def by_step(per_layer: list[np.ndarray]) -> np.ndarray:
        # [L] arrays in position order -> per step an [L, rows of the step] block
        return np.concatenate([np.stack([x[a:b] for x in per_layer]).reshape(-1)
                               for a, b in wf.bounds])

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(dev)

    wf.emb_at = tensor(slots(0))
    wf.h_prev_at = tensor(by_step([slots(0 if l == 0 else L + l - 1, 0, -1, True)
                                   for l in range(L)]))
    wf.hs_at = tensor(by_step([slots(L + l) for l in range(L - 1)])) if L > 1 else None
    # vertical stack of layer l: input patch rows i-1 (l = 0) or i-1..i, columns j-1..j+1
    wf.patch_at = [tensor(np.stack([slots(l, dr, dc, True) for dr in ((-1,) if l == 0 else (-1, 0))
                                    for dc in (-1, 0, 1)], 1)) for l in range(L)]
    wf.vg_at = [tensor(slots(l + 1)) for l in range(L - 1)]


def _fold(prior: IntPrior) -> tuple:
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
