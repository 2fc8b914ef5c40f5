"""The VQ-VAE decoder of architecture "rvq" in the int8 profile (format/SPEC.md,
"Architecture rvq"): v2's int8 decoder (`vqcodec.vqvae_int8.Int8Decoder`) on the input
x(p) = clamp(sum_{s<S} codebook[s, i_s(p)], -127, 127) (an int32 sum of s8 codewords, then the
clamp), S the stages the file codes.  Residual vector quantisation after Zeghidour et al.,
"SoundStream", 2021, and Lee et al., "RQ-VAE", CVPR 2022.
"""

from __future__ import annotations

import torch

from vqcodec.int8 import S8_MAX
from vqcodec.vqvae import VQVAEConfig
from vqcodec.vqvae_int8 import Int8Decoder


class Int8StageDecoder(Int8Decoder):
    """Integer decoder of an rvq model: identical pixels on every machine, thread count and tile
    split (tiles overlapping by `halo` positions equal a whole-image decode).

    `__call__(idx)` takes codes int64 [N, S, h, w] (1 <= S <= S_max, values in [0, K)) and
    returns uint8 [N, 3, f*h, f*w]; everything after the input is `Int8Decoder`'s.

    Attributes:
        codebook: int8 [S_max, K, D], s8 (the file's `int8.decoder.codebook`).
        cfg, device, halo, layers: as `Int8Decoder` (cfg is an `rvq.RVQConfig`).
    """

    @staticmethod
    def _codebook_shape(cfg: VQVAEConfig) -> tuple[int, ...]:
        """Shape of an rvq file's `int8.decoder.codebook`: (S_max, K, D)."""
        return (cfg.stages, cfg.K, cfg.D)

    def __init__(self, cfg: VQVAEConfig, codebook: torch.Tensor, layers: dict, device: torch.device | str = "cpu"):
        super().__init__(cfg, codebook, layers, device)
        self._cb32 = self._cb.to(torch.int32)

    def _input(self, idx: torch.Tensor) -> torch.Tensor:
        """x = clamp(sum_{s<S} codebook[s, idx[s]], -127, 127): int8 [h, w, D] from codes int64
        [S, h, w].

        Raises:
            ValueError: S is outside 1..S_max.
            IndexError: an index is outside [0, K) (CPU).
        """
        if not 1 <= idx.shape[0] <= self._cb32.shape[0]:
            raise ValueError(f"codes have {idx.shape[0]} stages, the decoder 1..{self._cb32.shape[0]}")
        x = self._cb32[0][idx[0]]
        for s in range(1, idx.shape[0]):
            x += self._cb32[s][idx[s]]
        return x.clamp_(-S8_MAX, S8_MAX).to(torch.int8)
