"""A fake multi-stage prior and decoder (architecture "rvq") with the interfaces of
format/SPEC.md, "Architecture rvq" ("Python interfaces"), for testing the container, range coding and codec paths
before the integer networks (`vqcodec.prior_stages_int8.Int8StagePrior`, `Int8StageDecoder`)
exist.  The logits are a deterministic function of what precedes each index in the coding order
(the left neighbour's stages and the earlier stages at the same position), so a decoder that
takes the wrong order or the wrong context decodes other indices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class FakeCfg:
    K: int = 16
    channels: int = 4
    layers: int = 2
    stages: int = 3


class FakeStagePrior:
    """Multi-stage prior: logits_s(i, j)[k] = 256 * ((k * (1 + a) + 3 * b + s) % 7), where a is the
    sum of every stage at (i, j-1) (an earlier wavefront step) and b the sum of stages < s at
    (i, j)."""

    def __init__(self, cfg: FakeCfg = FakeCfg(), device: str = "cpu"):
        self.cfg, self.stages, self.device = cfg, cfg.stages, torch.device(device)

    def schedule(self, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray]]:
        step = self.cfg.layers + 1
        rows = np.arange(h)
        out = []
        for t in range(w + step * (h - 1)):
            cols = t - step * rows
            ok = (cols >= 0) & (cols < w)
            out.append((rows[ok], cols[ok]))
        return out

    def _logits_at(self, codes: np.ndarray, s: int, rows, cols) -> np.ndarray:
        """codes int64 [n, S, h, w] (entries after (s, rows, cols) in coding order unused)."""
        left = np.where(cols > 0, codes[:, :, rows, np.maximum(cols - 1, 0)].sum(1), 0)  # [n, npos]
        before = codes[:, :s, rows, cols].sum(1) if s else np.zeros_like(left)
        k = np.arange(self.cfg.K)
        return 256 * ((k * (1 + left[..., None]) + 3 * before[..., None] + s) % 7)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        codes = idx.cpu().numpy()
        n, S, h, w = codes.shape
        assert 1 <= S <= self.stages
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        rows, cols = rows.ravel(), cols.ravel()
        out = np.stack([self._logits_at(codes, s, rows, cols) for s in range(S)], 1)
        return torch.from_numpy(out.reshape(n, S, h, w, self.cfg.K))

    def decode(self, n: int, h: int, w: int, decode_step, stages: int = 1) -> np.ndarray:
        from vqcodec.pmf import pmf_from_logits

        assert 1 <= stages <= self.stages
        codes = np.zeros((n, stages, h, w), dtype=np.int64)
        for rows, cols in self.schedule(h, w):
            if not len(rows):
                continue
            for s in range(stages):
                lg = self._logits_at(codes, s, rows, cols)
                pmfs = pmf_from_logits(lg.reshape(-1, self.cfg.K)).reshape(n, len(rows), -1)
                codes[:, s, rows, cols] = np.asarray(decode_step(rows, cols, pmfs), dtype=np.int64)
        return codes

    def state_bytes(self, n: int, h: int, w: int) -> int:
        return n * h * w * 8


class FakeStageDecoder:
    """Codes int64 [N, S, h, w] -> uint8 [N, 3, f*h, f*w]: each pixel block is the clamp of the
    sum of its stages' codes times 9, 5, 3 (R, G, B) — a local operator (halo 0)."""

    halo = 0

    def __init__(self, f: int = 4, device: str = "cpu"):
        self.f, self.device = f, torch.device(device)

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        z = idx.sum(1)  # [N, h, w]
        rgb = torch.stack([z * 9, z * 5, z * 3], 1).clamp(0, 255).to(torch.uint8)
        return rgb.repeat_interleave(self.f, 2).repeat_interleave(self.f, 3)
