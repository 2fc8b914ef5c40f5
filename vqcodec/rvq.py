"""Residual VQ-VAE (architecture "rvq"): the VQ-VAE's encoder and decoder with S stages of
indices per latent position, z = sum_s C_s[i_s].

Residual vector quantisation after Zeghidour et al., "SoundStream: An End-to-End Neural Audio
Codec", 2021, and Lee et al., "Autoregressive Image Generation using Residual Quantization"
(RQ-VAE), CVPR 2022: stage 0 quantises the encoder output, stage s the residual left by stages
< s.  Decoding the first S' <= S stages gives a coarser image from fewer bits, so one model
serves several rates; training draws S' per step (quantiser dropout, SoundStream section 3.3).

Shapes: images float32 [N, 3, H, W] in [0, 1]; latents float32 [N, D, H/f, W/f]; codes int64
[N, S', H/f, W/f] (stage-major), values in [0, K).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqcodec.vqvae import Decoder, Encoder, VectorQuantizer, VQVAEConfig

#: Most stages an rvq model may have (model-file range of "stages").
MAX_STAGES = 8


@dataclass(frozen=True)
class RVQConfig(VQVAEConfig):
    """Architecture of a residual VQ-VAE: `VQVAEConfig` plus the number of stages.

    Attributes:
        stages: S, codebooks (stages of indices) per latent position, 1..MAX_STAGES; each
            has K entries of dimension D.

    Raises:
        ValueError: f is not a power of two >= 4, or stages is outside 1..MAX_STAGES.
    """

    stages: int = 4

    def __post_init__(self):
        super().__post_init__()
        if not 1 <= self.stages <= MAX_STAGES:
            raise ValueError(f"stages must be in 1..{MAX_STAGES}, got {self.stages}")


class ResidualVQ(nn.Module):
    """S `VectorQuantizer`s applied in turn to the residual (EMA codebooks, k-means init,
    dead-code restart per stage, as `VectorQuantizer`).

    Every stage is quantised (and, in training mode, updated) on every call, so all codebooks
    keep learning; the returned latents sum only the first `depth` stages.

    Args:
        K: codebook size of each stage.
        D: code dimension.
        stages: S.
        decay: EMA decay.
    """

    def __init__(self, K: int, D: int, stages: int, decay: float = 0.99):
        super().__init__()
        self.K, self.D = K, D
        self.stages = nn.ModuleList(VectorQuantizer(K, D, decay) for _ in range(stages))

    def forward(self, z: torch.Tensor, depth: int | None = None):
        """Quantise encoder outputs stage by stage.

        Args:
            z: float [N, D, h, w].
            depth: stages summed into the output, 1..S (None: S).

        Returns:
            (z_q, idx, commit, stats): z_q the straight-through sum of the first `depth` stages'
            codewords [N, D, h, w] in z's dtype; idx int64 [N, S, h, w] (all stages); commit the
            commitment loss mean((z - sg(z_q))**2) of the first `depth` stages, float32 scalar;
            stats float32 scalars "perplexity" and "usage" (mean over stages) and "rel_err"
            (|z - z_q|^2 / |z|^2 at `depth`).
        """
        depth = len(self.stages) if depth is None else depth
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            residual = z
            total = torch.zeros_like(z)
            idxs, perp, usage = [], [], []
            for s, vq in enumerate(self.stages):
                q, idx, _, st = vq(residual.detach())
                q = q.detach()  # vq returns residual + (C - residual).detach(): keep C only
                residual = residual - q
                if s < depth:
                    total = total + q
                idxs.append(idx)
                perp.append(st["perplexity"])
                usage.append(st["usage"])
            commit = F.mse_loss(z, total)
            z_q = z + (total - z).detach()
            stats = {"perplexity": torch.stack(perp).mean(), "usage": torch.stack(usage).mean(),
                     "rel_err": ((z - total).pow(2).sum() / z.pow(2).sum().clamp(min=1e-12)).detach()}
        return z_q, torch.stack(idxs, 1), commit, stats

    @torch.no_grad()
    def encode(self, z: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Greedy residual quantisation (no codebook update).

        Args:
            z: float [N, D, h, w].
            depth: stages to compute, 1..S (None: S).

        Returns:
            int64 [N, depth, h, w].
        """
        depth = len(self.stages) if depth is None else depth
        n, d, h, w = z.shape
        residual = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        out = []
        for vq in list(self.stages)[:depth]:
            idx = vq.nearest(residual)
            residual = residual - vq.codebook[idx]
            out.append(idx.view(n, h, w))
        return torch.stack(out, 1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Latents of codes: the sum of each coded stage's codeword.

        Args:
            idx: int64 [N, S', h, w], S' <= S, values in [0, K).

        Returns:
            float32 [N, D, h, w].
        """
        z = sum(self.stages[s].codebook[idx[:, s]] for s in range(idx.shape[1]))
        return z.permute(0, 3, 1, 2)


class RVQVAE(nn.Module):
    """VQ-VAE with a residual quantiser: `vqvae.Encoder` -> `ResidualVQ` -> `vqvae.Decoder`.

    Its state dict has the VQ-VAE's `encoder.*` and `decoder.*` and, per stage,
    `quantizer.stages.{s}.codebook` [K, D] (plus EMA statistics, not saved in model files).

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: RVQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = ResidualVQ(cfg.K, cfg.D, cfg.stages, cfg.ema_decay)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor, depth: int | None = None):
        """Training pass: encode, quantise `depth` stages (updating every codebook in training
        mode), decode.

        Args:
            x: float32 [N, 3, H, W] in [0, 1], H and W multiples of f.
            depth: stages decoded, 1..S (None: S); draw it at random per step for quantiser
                dropout.

        Returns:
            (x_hat, idx, commit, stats, z): x_hat float [N, 3, H, W] (not clamped), idx int64
            [N, S, H/f, W/f], commit and stats as `ResidualVQ.forward`, z the encoder output
            float [N, D, H/f, W/f] (for rate terms that need it).
        """
        z = self.encoder(x)
        z_q, idx, commit, stats = self.quantizer(z, depth)
        return self.decoder(z_q), idx, commit, stats, z

    @torch.no_grad()
    def encode(self, x: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Codes of images (greedy residual quantisation; no gradient, no codebook update).

        Args:
            x: float32 [N, 3, H, W] in [0, 1], H and W multiples of f.
            depth: stages, 1..S (None: S).

        Returns:
            int64 [N, depth, H/f, W/f], values in [0, K).
        """
        return self.quantizer.encode(self.encoder(x), depth)

    @torch.no_grad()
    def decode_float(self, idx: torch.Tensor) -> torch.Tensor:
        """Float (training-time) decoder; not bit-exact across machines.

        Args:
            idx: int64 [N, S', h, w], S' <= S.

        Returns:
            float32 [N, 3, f*h, f*w], pixel values / 255 clamped to [0, 1].
        """
        return self.decoder(self.quantizer.lookup(idx)).clamp(0, 1)
