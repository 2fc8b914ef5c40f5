"""Float prior over multi-stage codes (architecture "rvq"): a gated PixelCNN trunk evaluated once
per position, and a small depth head per stage.

Stage s at position p is conditioned on every stage at earlier positions (through the trunk,
whose input at a position is the sum of its stages' embeddings) and on stages < s at p (through
the head's conditioning tables), as the depth transformer of Lee et al., "Autoregressive Image
Generation using Residual Quantization" (RQ-VAE / RQ-Transformer), CVPR 2022, with the trunk of
van den Oord et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016
(`vqcodec.prior.GatedLayer`).  Head s: a_s = out1_s(relu(h)) + sum_{t<s} cond_s[t][i_t];
logits_s = out2_s(relu(a_s)).  With one stage this is the v2 prior.  The integer twin is
`vqcodec.prior_stages_int8.Int8StagePrior` (format/SPEC.md).

Shapes: codes int64 [N, S', H, W] (S' <= S stages, stage-major), values in [0, K); logits
float32 [N, S', K, H, W] in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqcodec.prior import GatedLayer, PriorConfig


@dataclass(frozen=True)
class StagePriorConfig(PriorConfig):
    """Architecture of a stage prior: `PriorConfig` (K, channels C, layers L) plus the stages.

    Attributes:
        stages: S, the stages the prior can code (the VQ-VAE's `stages`).
    """

    stages: int = 4


class StageHead(nn.Module):
    """The depth head of one stage s: out1 (C -> C), the conditioning tables cond [s, K, C] of the
    stages before it (none for s = 0), out2 (C -> K).

    Args:
        c: trunk channels C.
        K: codebook size.
        s: the stage.
    """

    def __init__(self, c: int, K: int, s: int):
        super().__init__()
        self.out1 = nn.Conv2d(c, c, 1)
        self.out2 = nn.Conv2d(c, K, 1)
        self.cond = nn.Parameter(torch.randn(s, K, c) * 0.1) if s else None

    def forward(self, r: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Logits of this stage.

        Args:
            r: relu of the trunk output, float [N, C, H, W].
            idx: codes int64 [N, >= s, H, W]: the stages before this one at the same positions.

        Returns:
            float [N, K, H, W] (nats).
        """
        a = self.out1(r)
        if self.cond is not None:
            a = a + sum(self.cond[t][idx[:, t]] for t in range(self.cond.shape[0])).permute(0, 3, 1, 2).to(a.dtype)
        return self.out2(F.relu(a))


class StagePrior(nn.Module):
    """Float stage prior, used for training (module docstring).

    Parameters: `embed` [S, K, C] (stage embeddings summed into the trunk's input), `layers`
    (L `GatedLayer`s), `heads` (S `StageHead`s).

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: StagePriorConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.channels
        self.embed = nn.Parameter(torch.randn(cfg.stages, cfg.K, c) * (0.5 / cfg.stages ** 0.5))
        self.layers = nn.ModuleList(GatedLayer(c, i == 0) for i in range(cfg.layers))
        self.heads = nn.ModuleList(StageHead(c, cfg.K, s) for s in range(cfg.stages))

    def trunk(self, idx: torch.Tensor) -> torch.Tensor:
        """relu of the trunk output at every position, from the stages coded at earlier positions.

        Args:
            idx: codes int64 [N, S', H, W], 1 <= S' <= S.

        Returns:
            float [N, C, H, W].
        """
        x = sum(self.embed[s][idx[:, s]] for s in range(idx.shape[1])).permute(0, 3, 1, 2)
        v, h = x, x
        for layer in self.layers:
            v, h = layer(v, h)
        return F.relu(h)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of every stage of every position given what precedes it in coding order.

        Args:
            idx: codes int64 [N, S', H, W], 1 <= S' <= S.

        Returns:
            float32 [N, S', K, H, W] in nats (bfloat16 under autocast).
        """
        r = self.trunk(idx)
        return torch.stack([self.heads[s](r, idx) for s in range(idx.shape[1])], 1)


def macs_per_position(cfg: PriorConfig, stages: int = 1) -> int:
    """Multiply-accumulates of one latent position in the prior's decoder: the trunk once, the
    head once per coded stage (embedding and conditioning lookups are additions, not counted).

    Args:
        cfg: the prior's architecture (K, C, L).
        stages: stages coded.

    Returns:
        MACs per latent position (int).
    """
    c, L, K = cfg.channels, cfg.layers, cfg.K
    trunk = 0
    for l in range(L):
        taps_v, taps_h = (3, 1) if l == 0 else (6, 2)
        trunk += 2 * c * c * (taps_v + taps_h) + 4 * c * c + c * c  # v, h, v2h, res
    return trunk + stages * (c * c + c * K)


def macs_per_pixel(cfg: PriorConfig, f: int, stages: int = 1) -> float:
    """`macs_per_position` / f**2: the prior's MACs per pixel of the coded image.

    Args:
        cfg: the prior's architecture.
        f: the VQ-VAE's downsampling factor (pixels per latent position per side).
        stages: stages coded.

    Returns:
        MACs per pixel (float).
    """
    return macs_per_position(cfg, stages) / (f * f)
