"""Post-training calibration of the gated PixelCNN prior into the int8 profile.

`python -m vqcodec.train.calibrate_prior --model vqc-f4k512-v1 --out prior-int8.safetensors`

From a trained float prior (`vqcodec.prior.GatedPixelCNN`) and index grids of TRAINING crops
(never the evaluation images), choose per-tensor activation scales, gate ranges T and per-channel
weight scales, and write the `int8.prior.*` tensors of format/SPEC.md's profile int8
(post-training quantisation after Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", CVPR 2018; the scales are the float activations'
clipping percentile, chosen among a few by the coded size on held-out training grids).

Scales (real value of one integer unit): embeddings and h_0 = v_0: s_e = max|E| / 127; gate
outputs 1/127; the vertical stack's vp in units 1/Tv with Tv = floor(127 / max(1, a)), a the
clipping level of |vp| (vp also feeds the vertical-to-horizontal link unclipped); the horizontal
gate input in units 1/127 (the gate clips it to [-1, 1] anyway); h_l: a_l / 127; out1's ReLU
output: a / 255; logits 2**-8 nats.  Input scales are folded into the weights before
`int8.quantize_layer`; h and v2h share one accumulator and are quantised jointly.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from vqcodec import int8, intops
from vqcodec.int8 import Int8Layer, quantize_layer
from vqcodec.pmf import pmf_from_logits
from vqcodec.prior import GatedPixelCNN, _pad_h, _pad_h_first, _pad_v, _pad_v_first
from vqcodec.prior_int8 import Int8Prior

#: Clipping percentiles of |activation| tried by `search` (100 = the maximum).
PERCENTILES = (100.0, 99.999, 99.99, 99.9)
#: Largest number of values kept per activation tensor to find a percentile (top-k).
_TOPK = 1 << 18


class TopLevels:
    """Clipping levels (percentiles of |x|) of named activation tensors seen over many batches,
    from the largest `_TOPK` values of each (exact for percentiles above 1 - _TOPK / count)."""

    def __init__(self):
        self.tops: dict[str, torch.Tensor] = {}
        self.count: dict[str, int] = {}

    def keep(self, key: str, x: torch.Tensor) -> None:
        """Add the values of x (any shape, float) to activation `key`."""
        x = x.detach().abs().flatten().double()
        k = min(_TOPK, x.numel())
        t = torch.topk(x, k).values
        tops = self.tops
        tops[key] = torch.topk(torch.cat([tops[key], t]), min(_TOPK, len(tops[key]) + k)).values \
            if key in tops else t
        self.count[key] = self.count.get(key, 0) + x.numel()

    def level(self, key: str, p: float) -> float:
        """The p-th percentile of |x| of activation `key` (p = 100: the maximum)."""
        rank = int(math.floor(self.count[key] * (1 - p / 100.0)))  # values strictly above the level
        return float(self.tops[key][min(rank, len(self.tops[key]) - 1)])


def trunk_forward(layers, x: torch.Tensor, levels: TopLevels | None = None) -> torch.Tensor:
    """The float gated trunk (`prior.GatedLayer`s) on input x, recording vp{l} and h{l}.

    Args:
        layers: the float prior's `layers`.
        x: the trunk input, float [N, C, H, W].
        levels: where the activations are recorded (None: nowhere).

    Returns:
        h_{L-1}, float [N, C, H, W] (before the heads' ReLU).
    """
    v, h = x, x
    for l, layer in enumerate(layers):
        first = l == 0
        vp = layer.v(_pad_v_first(v) if first else _pad_v(v))
        c = vp.shape[1] // 2
        hp = layer.h(_pad_h_first(h) if first else _pad_h(h)) + layer.v2h(vp)
        out = layer.res(intops.gate(hp[:, :c], hp[:, c:]))
        h = out if first else h + out
        v = intops.gate(vp[:, :c], vp[:, c:])
        if levels is not None:
            levels.keep(f"vp{l}", vp)
            levels.keep(f"h{l}", h)
    return h


def trunk_levels(levels: TopLevels, L: int, p: float) -> dict:
    """{"vp": [L floats], "h": [L floats]} at percentile p (`quantize_trunk`'s levels)."""
    return {"vp": [levels.level(f"vp{l}", p) for l in range(L)],
            "h": [levels.level(f"h{l}", p) for l in range(L)]}


@torch.no_grad()
def activation_levels(prior: GatedPixelCNN, grids: list[np.ndarray],
                      percentiles: tuple[float, ...] = PERCENTILES, batch: int = 8) -> dict:
    """Clipping levels of the float prior's activations on training grids.

    Args:
        prior: the float prior.
        grids: index grids int64 [h, w] (any sizes; grids of equal shape are batched).
        percentiles: percentiles of |x| to report (100 = max).
        batch: grids per forward pass.

    Returns:
        {percentile: {"vp": [L floats], "h": [L floats, h_1..h_L], "out1": float}}.
    """
    levels = TopLevels()
    for idx in batches(grids, batch):
        h = trunk_forward(prior.layers, prior.embed(idx).permute(0, 3, 1, 2), levels)
        levels.keep("out1", F.relu(prior.out1(F.relu(h))))
    return {p: {**trunk_levels(levels, prior.cfg.layers, p), "out1": levels.level("out1", p)}
            for p in percentiles}


def batches(grids: list[np.ndarray], batch: int):
    """Yield int64 tensors [b, ...] of up to `batch` grids of equal shape (grids grouped by shape)."""
    by_shape: dict[tuple, list[np.ndarray]] = {}
    for g in grids:
        by_shape.setdefault(g.shape, []).append(g)
    for same in by_shape.values():
        for i in range(0, len(same), batch):
            yield torch.from_numpy(np.stack(same[i:i + batch]).astype(np.int64))


def quantize_trunk(layers, s_e: float, levels: dict) -> tuple[list[dict], float]:
    """The int8 trunk for given clipping levels (scales: module docstring).

    Args:
        layers: the float prior's `layers` (`prior.GatedLayer`s).
        s_e: the real value of one unit of the s8 trunk input (the embeddings).
        levels: {"vp": [L], "h": [L]} (`trunk_levels`).

    Returns:
        (the integer layers as `prior_int8.read_trunk` gives them, the real value of one unit
        of h_{L-1}).

    Raises:
        ValueError: a layer cannot meet the accumulator bound (`int8.quantize_layer`).
    """
    w = lambda conv: conv.weight.detach().double()  # noqa: E731
    b = lambda conv: conv.bias.detach().double()  # noqa: E731
    s_h = [s_e] + [max(a, 1e-6) / int8.S8_MAX for a in levels["h"]]
    s_v, th = s_e, int8.S8_MAX
    out = []
    for l, layer in enumerate(layers):
        c = layer.res.weight.shape[0]
        tv = max(1, min(int8.S8_MAX, int(int8.S8_MAX // max(1.0, levels["vp"][l]))))
        v = quantize_layer(w(layer.v) * s_v, b(layer.v), 1.0 / tv)
        wh, wv2h = w(layer.h) * s_h[l], w(layer.v2h) / tv
        kw = wh.shape[-1]
        joint = torch.cat([wh.flatten(1), wv2h.flatten(1)], 1)[:, :, None, None]
        hq = quantize_layer(joint, b(layer.h) + b(layer.v2h), 1.0 / th)
        h = Int8Layer(hq.weight[:, :c * kw].reshape(2 * c, c, 1, kw).contiguous(), hq.bias, hq.mult, hq.shift)
        v2h = Int8Layer(hq.weight[:, c * kw:].reshape(2 * c, 2 * c, 1, 1).contiguous(),
                        torch.zeros(2 * c, dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 0)
        resid = None if l == 0 else torch.full((c,), s_h[l], dtype=torch.float64)
        res = quantize_layer(w(layer.res) / int8.S8_MAX, b(layer.res), s_h[l + 1], resid)
        out.append(dict(v=v, h=h, v2h=v2h, res=res, tv=tv, th=th))
        s_v = 1.0 / int8.S8_MAX
    return out, s_h[-1]


def quantize_prior(prior: GatedPixelCNN, levels: dict, device: str | torch.device = "cpu") -> Int8Prior:
    """The int8 prior for given clipping levels (see the module docstring for the scales).

    Args:
        prior: the float prior.
        levels: one entry of `activation_levels`: {"vp": [L], "h": [L], "out1": float}.
        device: where the integer prior runs.

    Returns:
        The integer prior (its `tensors()` are the file's `int8.prior.*` tensors).

    Raises:
        ValueError: a layer cannot meet the accumulator bound (`int8.quantize_layer`).
    """
    cfg = prior.cfg
    w = lambda conv: conv.weight.detach().double()  # noqa: E731
    b = lambda conv: conv.bias.detach().double()  # noqa: E731
    emb = prior.embed.weight.detach().double()
    s_e = float(emb.abs().max()) / int8.S8_MAX or 1.0
    embed = torch.round(emb / s_e).clamp_(-int8.S8_MAX, int8.S8_MAX).to(torch.int8)
    layers, s_r = quantize_trunk(prior.layers, s_e, levels)
    s_o1 = max(levels["out1"], 1e-6) / int8.U8_MAX
    out1 = quantize_layer(w(prior.out1) * s_r, b(prior.out1), s_o1)
    out2 = quantize_layer(w(prior.out2) * s_o1, b(prior.out2), 2.0 ** -intops.ACT_FRAC_BITS,
                          amax_in=int8.U8_MAX)
    q = Int8Prior(cfg, embed, layers, out1, out2, device)
    return Int8Prior.from_tensors(q.tensors(), cfg, device)  # validated as a file would be


def bits(prior: Int8Prior, grids: list[np.ndarray], batch: int = 4) -> float:
    """Information content (bits) of grids under the integer prior, each coded as one tile.

    Args:
        prior: the int8 prior.
        grids: index grids int64 [h, w].
        batch: grids per parallel pass.

    Returns:
        Sum over grids of -log2(pmf[idx] / 2**20) (`prior.pmf_from_logits`).
    """
    total = 0.0
    for i in range(0, len(grids), batch):
        same = grids[i:i + batch]
        if any(g.shape != same[0].shape for g in same):
            total += sum(bits(prior, [g]) for g in same)
            continue
        idx = np.stack(same).astype(np.int64)
        lg = prior.logits(torch.from_numpy(idx)).cpu().numpy()
        pmf = pmf_from_logits(lg.reshape(-1, lg.shape[-1]))
        p = pmf[np.arange(idx.size), idx.reshape(-1)]
        total += float(-np.log2(p / float(1 << 20)).sum())
    return total


def calibrate_prior(prior: GatedPixelCNN, grids: list[np.ndarray],
                    percentiles: tuple[float, ...] = PERCENTILES, log=None) -> dict[str, torch.Tensor]:
    """Calibrate a float prior into the int8 profile on training index grids.

    Activation levels come from every other grid; the clipping percentile is the one with
    the fewest bits (`bits`) on the remaining grids.

    Args:
        prior: the trained float prior.
        grids: index grids int64 [h, w] of TRAINING crops (never evaluation images).
        percentiles: clipping percentiles to try.
        log: optional callable(str) for progress lines.

    Returns:
        The `int8.prior.*` tensors (name -> CPU tensor), ready for safetensors.

    Raises:
        ValueError: fewer than 2 grids, or a layer cannot meet the accumulator bound.
    """
    if len(grids) < 2:
        raise ValueError("calibration needs at least 2 training grids")
    fit, held = grids[0::2], grids[1::2]
    levels = activation_levels(prior, fit, percentiles)
    return fewest_bits(percentiles, lambda p: quantize_prior(prior, levels[p]), bits, held, log).tensors()


def fewest_bits(percentiles, quantize, count_bits, held: list[np.ndarray], log=None):
    """The integer prior, among one per clipping percentile, that codes `held` in the fewest bits.

    Args:
        percentiles: the clipping percentiles tried.
        quantize: percentile -> integer prior.
        count_bits: (integer prior, held) -> bits (float).
        held: held-out training index grids or codes (int64 arrays).
        log: optional callable(str): one line per percentile, bits per index.

    Returns:
        The integer prior with the fewest bits (the first one on ties).
    """
    best = None
    for p in percentiles:
        q = quantize(p)
        n = count_bits(q, held)
        if log:
            log(f"percentile {p}: {n / sum(g.size for g in held):.5f} bits per index on {len(held)} held-out arrays")
        if best is None or n < best[0]:
            best = (n, q)
    return best[1]


def main(argv: list[str] | None = None) -> int:
    """CLI: calibrate a released model's prior on the cached training grids and write the tensors."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="released v1 model name, e.g. vqc-f4k512-v1")
    ap.add_argument("--grids", help="npz of training index grids (default: "
                                    "/work/coord/cache/train_<model>.npz)")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many grids (0: all)")
    ap.add_argument("--out", required=True, help="output .safetensors file (int8.prior.* tensors)")
    args = ap.parse_args(argv)
    from safetensors.torch import save_file

    from vqcodec import zoo
    from vqcodec.errors import VqcError

    if os.path.exists(args.out):
        print(f"error: {args.out} exists (not overwritten)", file=sys.stderr)
        return 2
    try:
        prior = zoo.float_prior(args.model).double()
        path = args.grids or f"/work/coord/cache/train_{args.model}.npz"
        with np.load(path) as npz:
            grids = [npz[k].astype(np.int64) for k in sorted(npz.files)]
    except (VqcError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit:
        grids = grids[:args.limit]
    try:
        tensors = calibrate_prior(prior, grids, log=lambda s: print(s, file=sys.stderr))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    tmp = f"{args.out}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata={"profile": "int8", "name": args.model,
                                      "prior_config": json.dumps(prior.cfg.to_dict())})
    os.replace(tmp, args.out)  # never a partial file
    print(f"wrote {len(tensors)} tensors to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
