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
    """K: codebook size; channels: width of both stacks; layers: gated layers L."""

    K: int = 1024
    channels: int = 128
    layers: int = 6

    def to_dict(self) -> dict:
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
    """One gated layer: (v, h) -> (v', h').  `first` applies the causal 'mask A' shifts."""

    def __init__(self, c: int, first: bool):
        super().__init__()
        self.first = first
        self.v = nn.Conv2d(c, 2 * c, (1, 3) if first else (2, 3))
        self.v2h = nn.Conv2d(2 * c, 2 * c, 1)
        self.h = nn.Conv2d(c, 2 * c, (1, 1) if first else (1, 2))
        self.res = nn.Conv2d(c, c, 1)

    def forward(self, v, h):
        vp = self.v(_pad_v_first(v) if self.first else _pad_v(v))
        c = vp.shape[1] // 2
        hp = self.h(_pad_h_first(h) if self.first else _pad_h(h)) + self.v2h(vp)
        out = self.res(intops.gate(hp[:, :c], hp[:, c:]))
        return intops.gate(vp[:, :c], vp[:, c:]), out if self.first else h + out


class GatedPixelCNN(nn.Module):
    """Float gated PixelCNN: idx int64 [N, H, W] -> logits float32 [N, K, H, W]."""

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
        x = self.embed(idx).permute(0, 3, 1, 2)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h)
        return self.out2(F.relu(self.out1(F.relu(h))))


def exp_table() -> np.ndarray:
    """int64 [LUT_LEN]: round(2**30 * exp(-i / 16)), computed with `decimal` (exactly rounded,
    identical on every platform).  Part of the bitstream definition (format/SPEC.md)."""
    with localcontext(Context(prec=50, rounding=ROUND_HALF_EVEN)):
        one = Decimal(1 << LUT_ONE_BITS)
        step = Decimal(1) / Decimal(1 << (intops.ACT_FRAC_BITS - LUT_STEP_SHIFT))
        vals = [int((one * (-(step * i)).exp()).to_integral_value()) for i in range(LUT_LEN)]
    return np.array(vals, dtype=np.int64)


EXP_LUT = exp_table()


def pmf_from_logits(logits: np.ndarray) -> np.ndarray:
    """Integer PMF from integer logits: int64 [n, K] -> int64 [n, K], each row sums to 2**20,
    every entry >= 1.  Pure integer arithmetic (see format/SPEC.md, "Entropy model").

    w_k = EXP_LUT[min((max(l) - l_k) >> 4, 511)];  p_k = 1 + floor(w_k * (2**20 - K) / sum(w));
    the remainder 2**20 - sum(p) goes to the first index of the largest logit.
    """
    lg = np.asarray(logits, dtype=np.int64)
    n, k = lg.shape
    top = lg.argmax(1)
    d = lg[np.arange(n), top][:, None] - lg
    w = EXP_LUT[np.minimum(d >> LUT_STEP_SHIFT, LUT_LEN - 1)]
    free = (1 << PMF_BITS) - k
    p = 1 + (w * free) // w.sum(1, keepdims=True)
    p[np.arange(n), top] += (1 << PMF_BITS) - p.sum(1)
    return p


class IntPrior:
    """Integer-exact twin of a trained `GatedPixelCNN` (weights as in `vqcodec.intops`).

    `logits(idx)` is the parallel pass used by the encoder; `decode(...)` the wavefront decoder.
    Both give bit-identical integer logits for the same context on any device, batch size or
    thread count.
    """

    def __init__(self, model: GatedPixelCNN, device: torch.device | str = "cpu"):
        self.cfg = model.cfg
        self.device = torch.device(device)
        conv = lambda m: intops.IntConv.from_float(m).to(self.device)  # noqa: E731
        self.embed = intops.quantize_activation(model.embed.weight).to(self.device)
        self.layers = [(conv(l.v), conv(l.v2h), conv(l.h), conv(l.res)) for l in model.layers]
        self.out1, self.out2 = conv(model.out1), conv(model.out2)

    # ---- shared pieces -------------------------------------------------------------------
    def _h_step(self, l: int, hconv, vh, h_prev):
        _, _, _, res = self.layers[l]
        c = self.cfg.channels
        hp = hconv + vh  # [N, 2C, H, W] in the parallel pass, [N, 2C] in the decoder
        out = res(intops.int_gate(hp[:, :c], hp[:, c:]))
        return out if l == 0 else (h_prev + out).clamp_(-intops.ACT_CLAMP, intops.ACT_CLAMP)

    # ---- parallel pass -------------------------------------------------------------------
    @torch.no_grad()
    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """idx int64 [N, H, W] -> integer logits float64 [N, H, W, K] (one parallel pass)."""
        c = self.cfg.channels
        x = self.embed[idx.to(self.device)].permute(0, 3, 1, 2).contiguous()
        v, h = x, x
        for l, (cv, cv2h, ch, _) in enumerate(self.layers):
            first = l == 0
            vp = cv(_pad_v_first(v) if first else _pad_v(v))
            hconv = ch(_pad_h_first(h) if first else _pad_h(h))
            h = self._h_step(l, hconv, cv2h(vp), h)
            v = intops.int_gate(vp[:, :c], vp[:, c:])
        out = self.out2(intops.int_relu(self.out1(intops.int_relu(h))))
        return out.permute(0, 2, 3, 1)

    # ---- wavefront decoder ---------------------------------------------------------------
    def schedule(self, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Wavefront order: entry t holds (rows, cols) of positions with j + (L+1) i == t."""
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
        """Decode n index grids of shape (height, width) in lock-step.

        decode_step(rows, cols, pmfs) receives the positions of one wavefront and the integer
        PMFs int64 [n, len(rows), K] and returns the decoded indices int64 [n, len(rows)].
        Returns the index grids int64 [n, height, width].  State is kept channels-last:
        embeddings and vertical-stack outputs padded by one row on top and one column each
        side, horizontal-stack outputs by one column on the left.
        """
        L, c, dev = self.cfg.layers, self.cfg.channels, self.device
        # float32 holds every stored value exactly (all are integers clamped to +-2**20)
        f32 = dict(dtype=torch.float32, device=dev)
        emb = torch.zeros(n, height + 1, width + 2, c, **f32)
        vg = [torch.zeros(n, height + 1, width + 2, c, **f32) for _ in range(L)]
        vh = [torch.zeros(n, height, width, 2 * c, **f32) for _ in range(L)]
        hs = [torch.zeros(n, height, width + 1, c, **f32) for _ in range(L)]
        out = np.zeros((n, height, width), dtype=np.int64)
        sched = self.schedule(height, width)
        pos = [tuple(torch.from_numpy(a).to(dev) for a in rc) for rc in sched]
        for s in range(-L, len(sched)):
            if s >= 0 and len(sched[s][0]):
                rows, cols = sched[s]
                logits = self._decode_positions(*pos[s], emb, vh, hs)
                pmfs = pmf_from_logits(logits.cpu().numpy().reshape(-1, self.cfg.K).astype(np.int64))
                sym = decode_step(rows, cols, pmfs.reshape(n, len(rows), -1))
                out[:, rows, cols] = sym
                emb[:, pos[s][0] + 1, pos[s][1] + 1] = self.embed[torch.from_numpy(sym).to(dev)].float()
            for l in range(L):
                t = s + L - l
                if 0 <= t < len(sched) and len(sched[t][0]):
                    self._vertical(l, *pos[t], emb if l == 0 else vg[l - 1], vg[l], vh[l])
        return out

    def _vertical(self, l, rows, cols, src, vg_out, vh_out) -> None:
        """Vertical stack of layer l at the given positions, from `src` (padded, channels-last)."""
        cv, cv2h, _, _ = self.layers[l]
        c = self.cfg.channels
        kh = 1 if l == 0 else 2  # padded row i is input row i-1 (src is padded by one on top)
        r = rows[:, None, None] + torch.arange(kh, device=self.device)[None, :, None]
        cix = cols[:, None, None] + torch.arange(3, device=self.device)[None, None, :]
        patch = src[:, r, cix]  # [N, n, kh, 3, C]
        nb, npos = patch.shape[:2]
        vp = cv.matmul(patch.reshape(nb * npos, -1).double())
        vg_out[:, rows + 1, cols + 1] = intops.int_gate(vp[:, :c], vp[:, c:]).view(nb, npos, c).float()
        vh_out[:, rows, cols] = cv2h.matmul(vp).view(nb, npos, 2 * c).float()

    def _decode_positions(self, rows, cols, emb, vh, hs) -> torch.Tensor:
        """Horizontal stacks and head at one wavefront: integer logits [N, n, K]."""
        nb, npos = emb.shape[0], rows.numel()
        h = None
        for l, (_, _, ch, _) in enumerate(self.layers):
            if l == 0:
                src = emb[:, rows + 1, cols]  # column j-1 in emb's padded coordinates
            else:
                src = hs[l - 1][:, rows[:, None], cols[:, None] + torch.arange(2, device=self.device)]
            hconv = ch.matmul(src.reshape(nb * npos, -1).double())
            h = self._h_step(l, hconv, vh[l][:, rows, cols].reshape(nb * npos, -1).double(), h)
            hs[l][:, rows, cols + 1] = h.view(nb, npos, -1).float()
        logits = self.out2.matmul(intops.int_relu(self.out1.matmul(intops.int_relu(h))))
        return logits.view(nb, npos, -1)
