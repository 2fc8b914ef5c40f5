"""Gated PixelCNN prior over the VQ-VAE index grid: the float network used for training.

Architecture after van den Oord et al., "Conditional Image Generation with PixelCNN Decoders",
NeurIPS 2016: a vertical stack (rows above) and a horizontal stack (left in the current row)
with gated units and a vertical-to-horizontal link, so there is no blind spot.  The gate is
hardtanh(a) * hardsigmoid(b) (`vqcodec.intops.gate`) so the integer twins need no
transcendental function.  With L layers of 3-wide kernels the context of position (i, j) is
rows i-L..i-1, columns j-L..j+L, plus row i, columns j-L..j-1.

The integer twins the codec runs live elsewhere: `vqcodec.prior_exact.ExactPrior` (profile
"exact") and `vqcodec.prior_int8.Int8Prior` (profile "int8"); their shared coding order is
`vqcodec.wavefront`, the format's PMF `vqcodec.pmf`.

Shapes: index grids int64 [N, H, W] with values in [0, K); float logits [N, K, H, W].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqcodec import intops


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
    C -> K.  Its integer twins are `vqcodec.prior_exact.ExactPrior` and `vqcodec.prior_int8.Int8Prior`.

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
