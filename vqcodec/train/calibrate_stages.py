"""Post-training calibration of an rvq model (`vqcodec.rvq.RVQVAE` + `vqcodec.prior_stages.StagePrior`)
into the int8 profile: the `int8.prior.*` tensors of `Int8StagePrior` and the `int8.decoder.*`
tensors of `Int8StageDecoder` (format/SPEC.md, "Architecture rvq"; format/SPEC.md, "Profile int8").

As v2 (`calibrate_prior`, `calibrate_decoder`; post-training quantisation after Jacob et al.,
CVPR 2018), on the codes of TRAINING crops (never the evaluation images):

- activation scales are clipping percentiles of the float model's activations, the percentile
  chosen among `calibrate_prior.PERCENTILES` by the bits of held-out training codes;
- weights per output channel to +-63 (`int8.quantize_layer`);
- the stage embeddings share one s8 scale, chosen so that their sums rarely clip: the larger of
  max |embed| and the percentile of |sum_{s<S'} embed[s, i_s]| over the calibration codes;
- each head's conditioning tables are expressed in its out1's accumulator scale (per output
  channel, `int8.channel_scales`) and stored as s8 with an integer multiplier per (earlier
  stage, output channel): cond_mult = ceil(max_k |cond_acc| / 127), cond = round(cond_acc /
  cond_mult), so cond_mult * cond adds into the integer accumulator; out1's weight range is
  halved until its bound (conditioning included, 127 * cond_mult) holds and cond_mult < 2**16;
- the stage codebooks share one s8 scale, the larger of max |codebook| and the
  `SUM_PERCENTILE`-th percentile of |sum_{s<S'} C_s[i_s]|; the decoder network is then
  calibrated by `calibrate_decoder` on the exact integer inputs clamp(sum codebook_q) (see
  `calibrate_stage_decoder`).

The calibration codes use S' = S - (g mod S) stages for the g-th code array, so the statistics
cover every stage count a file may code.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vqcodec import int8, intops
from vqcodec.int8 import Int8Layer
from vqcodec.pmf import pmf_from_logits
from vqcodec.prior_stages import StagePrior
from vqcodec.prior_stages_int8 import Int8StagePrior, check_out1_bound
from vqcodec.rvq import RVQVAE
from vqcodec.train.calibrate_decoder import calibrate_decoder
from vqcodec.train.calibrate_prior import (PERCENTILES, TopLevels, batches, fewest_bits, quantize_trunk, trunk_forward,
                                          trunk_levels)
from vqcodec.vqvae import VQVAEConfig
from vqcodec.vqvae_int8 import PREFIX as DECODER_PREFIX

#: Percentile of |sum of stage codewords| that the shared codebook scale maps to 127.
SUM_PERCENTILE = 99.99
#: Most values `torch.quantile` is given.
_QUANTILE_MAX = 1 << 22


def depth_cycled(codes: list[np.ndarray]) -> list[np.ndarray]:
    """The g-th code array [S, h, w] cut to its first S - (g mod S) stages (the first array keeps
    all, so every stage's head has statistics)."""
    return [c[:c.shape[0] - g % c.shape[0]] for g, c in enumerate(codes)]


# ---- prior -----------------------------------------------------------------------------------
@torch.no_grad()
def stage_activation_levels(prior: StagePrior, codes: list[np.ndarray],
                            percentiles: tuple[float, ...] = PERCENTILES, batch: int = 8) -> dict:
    """Clipping levels of the float stage prior's activations.

    Args:
        prior: the float stage prior.
        codes: int64 [S', h, w] code arrays (S' may differ; equal shapes are batched).
        percentiles: percentiles of |x| to report (100 = max).
        batch: code arrays per forward pass.

    Returns:
        {percentile: {"embed": float (|trunk input|), "vp": [L], "h": [L], "out1": [S] (relu of
        head s's out1 + cond; a stage no code array reaches gets the largest other level)}}.
    """
    levels = TopLevels()
    for idx in batches(codes, batch):
        x = sum(prior.embed[s][idx[:, s]] for s in range(idx.shape[1])).permute(0, 3, 1, 2)
        levels.keep("embed", x)
        r = F.relu(trunk_forward(prior.layers, x, levels))
        for s in range(idx.shape[1]):
            levels.keep(f"out1.{s}", F.relu(_head_out1(prior.heads[s], r, idx)))
    seen = [s for s in range(prior.cfg.stages) if f"out1.{s}" in levels.count]
    out = {}
    for p in percentiles:
        out1 = {s: levels.level(f"out1.{s}", p) for s in seen}
        out[p] = {**trunk_levels(levels, prior.cfg.layers, p), "embed": levels.level("embed", p),
                  "out1": [out1.get(s, max(out1.values())) for s in range(prior.cfg.stages)]}
    return out


def _head_out1(head, r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """a_s = out1_s(r) + sum_{t<s} cond_s[t][i_t] of a float `StageHead`, [N, C, H, W]."""
    a = head.out1(r)
    if head.cond is not None:
        a = a + sum(head.cond[t][idx[:, t]] for t in range(head.cond.shape[0])).permute(0, 3, 1, 2)
    return a


def quantize_cond(cond_acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditioning tables in accumulator units -> s8 tables and per-channel multipliers.

    Per (earlier stage t, output channel o): m = ceil(max_k |cond_acc[t, k, o]| / 127) (0 for a
    channel of zeros) and cond[t, k, o] = round(cond_acc[t, k, o] / m), so m * cond is within
    m / 2 of cond_acc.

    Args:
        cond_acc: float64 [s, K, C], the tables in out1's accumulator units.

    Returns:
        (cond int8 [s, K, C] in [-127, 127], cond_mult int64 [s, C] >= 0; the caller checks
        cond_mult < 2**16).
    """
    m = torch.ceil(cond_acc.abs().amax(1) / int8.S8_MAX).to(torch.int64)  # [s, C]
    ci = torch.round(cond_acc / m.clamp(min=1)[:, None, :].double())
    return ci.clamp_(-int8.S8_MAX, int8.S8_MAX).to(torch.int8), m


def quantize_out1(w_eff: torch.Tensor, b_eff: torch.Tensor, cond: torch.Tensor | None,
                  out_scale: float, w_max: int = int8.W_MAX
                  ) -> tuple[Int8Layer, torch.Tensor | None, torch.Tensor | None]:
    """out1_s of a stage head and its conditioning tables (s8 with multipliers) in out1's
    accumulator units.

    `int8.quantize_layer`'s arithmetic (`channel_scales`, `scaled_layer`); the tables cond / q[o]
    in accumulator units go through `quantize_cond`.  w_max is halved until every multiplier
    is below 2**16 and the bound of `prior_stages_int8.check_out1_bound` holds.

    Args:
        w_eff: float64 [C, C, 1, 1] (input scale folded in); b_eff: float64 [C].
        cond: float64 [s, K, C] (real values added to out1's output), or None.
        out_scale: real value of one u8 output unit.
        w_max: the first weight range tried.

    Returns:
        (the layer, cond int8 [s, K, C] or None, cond_mult int32 [s, C] or None).

    Raises:
        ValueError: no w_max >= 1 fits.
    """
    while True:
        q = int8.channel_scales(w_eff, b_eff, w_max)
        layer = Int8Layer(*int8.scaled_layer(w_eff, b_eff, q, out_scale, w_max))
        ci, mult = (None, None) if cond is None else quantize_cond(cond / q)
        try:
            if mult is not None and mult.numel() and int(mult.max()) >= int8.MULT_BOUND:
                raise ValueError("conditioning multiplier beyond 2**16")
            check_out1_bound("out1", layer, mult)
            return layer, ci, None if mult is None else mult.to(torch.int32)
        except ValueError:
            if w_max <= 1:
                raise
            w_max //= 2


def quantize_stage_prior(prior: StagePrior, levels: dict, device: str | torch.device = "cpu") -> Int8StagePrior:
    """The int8 stage prior for given clipping levels (module docstring).

    Args:
        prior: the float stage prior.
        levels: one entry of `stage_activation_levels`.
        device: where the integer prior runs.

    Returns:
        The integer prior, validated as a file would be (`Int8StagePrior.from_tensors`).

    Raises:
        ValueError: a layer cannot meet its accumulator bound.
    """
    cfg = prior.cfg
    w = lambda conv: conv.weight.detach().double()  # noqa: E731
    b = lambda conv: conv.bias.detach().double()  # noqa: E731
    emb = prior.embed.detach().double()
    s_e = max(float(emb.abs().max()), levels["embed"]) / int8.S8_MAX or 1.0
    embed = torch.round(emb / s_e).clamp_(-int8.S8_MAX, int8.S8_MAX).to(torch.int8)
    layers, s_r = quantize_trunk(prior.layers, s_e, levels)
    heads = []
    for s, head in enumerate(prior.heads):
        s_o1 = max(levels["out1"][s], 1e-6) / int8.U8_MAX
        cond = None if head.cond is None else head.cond.detach().double()
        out1, cond_q, cond_mult = quantize_out1(w(head.out1) * s_r, b(head.out1), cond, s_o1)
        out2 = int8.quantize_layer(w(head.out2) * s_o1, b(head.out2), 2.0 ** -intops.ACT_FRAC_BITS,
                                   amax_in=int8.U8_MAX)
        heads.append((out1, out2, cond_q, cond_mult))
    q = Int8StagePrior(cfg, embed, layers, heads, device)
    return Int8StagePrior.from_tensors(q.tensors(), cfg, device)


def stage_bits(prior: Int8StagePrior, codes: list[np.ndarray], batch: int = 4) -> float:
    """Information content (bits) of code arrays under the integer stage prior, each one tile.

    Args:
        prior: the int8 stage prior.
        codes: int64 [S', h, w] code arrays.
        batch: arrays per parallel pass.

    Returns:
        Sum of -log2(pmf[i] / 2**20) over every stage of every position.
    """
    total = 0.0
    for idx in batches(codes, batch):
        lg = prior.logits(idx).cpu().numpy()
        pmf = pmf_from_logits(lg.reshape(-1, lg.shape[-1]))
        p = pmf[np.arange(idx.numel()), idx.numpy().reshape(-1)]
        total += float(-np.log2(p / float(1 << 20)).sum())
    return total


def calibrate_stage_prior(prior: StagePrior, codes: list[np.ndarray],
                          percentiles: tuple[float, ...] = PERCENTILES, log=None) -> dict[str, torch.Tensor]:
    """Calibrate a float stage prior into the int8 profile.

    Levels come from every other code array (depth-cycled, `depth_cycled`); the percentile is
    the one with the fewest bits on the others, coded with all S stages.

    Args:
        prior: the trained float stage prior.
        codes: int64 [S, h, w] codes of TRAINING crops (S = the prior's stages).
        percentiles: clipping percentiles to try.
        log: optional callable(str) for progress lines.

    Returns:
        The `int8.prior.*` tensors (name -> CPU tensor).

    Raises:
        ValueError: fewer than 2 code arrays, or a layer cannot meet its accumulator bound.
    """
    if len(codes) < 2:
        raise ValueError("calibration needs at least 2 training code arrays")
    prior = prior.double().eval()
    fit, held = depth_cycled(codes[0::2]), codes[1::2]
    levels = stage_activation_levels(prior, fit, percentiles)
    return fewest_bits(percentiles, lambda p: quantize_stage_prior(prior, levels[p]), stage_bits, held,
                       log).tensors()


# ---- decoder ---------------------------------------------------------------------------------
def stage_codebook(rvq: RVQVAE, codes: list[np.ndarray], percentile: float = SUM_PERCENTILE
                   ) -> tuple[torch.Tensor, float]:
    """The shared-scale s8 stage codebooks.

    Args:
        rvq: the float residual VQ-VAE.
        codes: int64 [S', h, w] calibration codes.
        percentile: of |sum_{s<S'} C_s[i_s]| over the codes, mapped to 127.

    Returns:
        (int8 [S, K, D], the scale: real value of one integer unit).
    """
    cb = torch.stack([st.codebook.detach().double() for st in rvq.quantizer.stages])
    sums = torch.cat([sum(cb[s][torch.from_numpy(c[s])] for s in range(c.shape[0])).abs().flatten()
                      for c in codes]) if codes else torch.zeros(1, dtype=torch.float64)
    if len(sums) > _QUANTILE_MAX:  # torch.quantile's input limit: a fixed random sample
        sums = sums[torch.randperm(len(sums), generator=torch.Generator().manual_seed(0))[:_QUANTILE_MAX]]
    level = float(torch.quantile(sums, percentile / 100))
    scale = max(float(cb.abs().max()), level) / int8.S8_MAX or 1.0
    return torch.round(cb / scale).clamp_(-int8.S8_MAX, int8.S8_MAX).to(torch.int8), scale


class _InputsAsCodebook(nn.Module):
    """A `VQVAE` stand-in for `calibrate_decoder`: its codebook [V, D] lists the distinct integer
    decoder inputs x = clamp(sum_s codebook_q[s, i_s]) of the calibration codes (in real units),
    plus one entry of value 127 everywhere so that the calibrated codebook scale is the shared
    stage scale; `decoder` is the rvq model's."""

    def __init__(self, rvq: RVQVAE, inputs: torch.Tensor, scale: float):
        super().__init__()
        fields = {k: v for k, v in dataclasses.asdict(rvq.cfg).items() if k != "stages"}
        self.cfg = VQVAEConfig(**{**fields, "K": inputs.shape[0] + 1})
        full = torch.full((1, inputs.shape[1]), int8.S8_MAX, dtype=inputs.dtype)
        self.quantizer = nn.Module()
        self.quantizer.register_buffer("codebook", torch.cat([inputs, full]).double() * scale)
        self.decoder = rvq.decoder


def calibrate_stage_decoder(rvq: RVQVAE, codes: list[np.ndarray], sum_percentile: float = SUM_PERCENTILE,
                            **kw) -> dict[str, torch.Tensor]:
    """The `int8.decoder.*` tensors of an rvq model (`Int8StageDecoder`).

    The stage codebooks get one shared scale (`stage_codebook`); each calibration code array
    (depth-cycled) becomes the grid of its integer decoder inputs, numbered among all distinct
    ones, and `calibrate_decoder` calibrates the network on those exact inputs (its float
    targets decode the same inputs in real units).

    Args:
        rvq: the float residual VQ-VAE (its stage codebooks and decoder are used).
        codes: int64 [S, h, w] codes of TRAINING crops.
        sum_percentile: as `stage_codebook`.
        **kw: passed to `calibrate_decoder` (percentile, search, w_max, max_grids, ...).

    Returns:
        {name: tensor} as `Int8StageDecoder.tensors()`: codebook int8 [S, K, D] and the network.

    Raises:
        ValueError: no codes, or a layer cannot meet the accumulator bound.
    """
    if not codes:
        raise ValueError("no calibration codes")
    rvq = rvq.float().eval()
    codes = depth_cycled(codes)
    cb_q, scale = stage_codebook(rvq, codes, sum_percentile)
    cb32 = cb_q.to(torch.int32)
    inputs = [sum(cb32[s][torch.from_numpy(c[s])] for s in range(c.shape[0])).clamp_(-int8.S8_MAX, int8.S8_MAX)
              for c in codes]  # int32 [h, w, D] each
    flat = torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs])
    distinct, number = torch.unique(flat, dim=0, return_inverse=True)
    grids, at = [], 0
    for x in inputs:
        h, w, _ = x.shape
        grids.append(number[at:at + h * w].reshape(h, w).numpy().astype(np.int64))
        at += h * w
    tensors = calibrate_decoder(_InputsAsCodebook(rvq, distinct, scale), grids, **kw)
    tensors[DECODER_PREFIX + "codebook"] = cb_q
    return tensors
