"""VQ-VAE: convolutional encoder, EMA vector quantizer and decoder, plus the integer-exact decoder.

After van den Oord, Vinyals, Kavukcuoglu, "Neural Discrete Representation Learning",
NeurIPS 2017 (EMA codebook updates: their appendix A.1).  Full-resolution work is avoided with
pixel-unshuffle / pixel-shuffle stems: the first and last convolutions already run at H/2.

Shapes: images are float32 [N, 3, H, W] in [0, 1] with H, W multiples of f; latents are
float32 [N, D, H/f, W/f]; index grids are int64 [N, H/f, W/f] with values in [0, K).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from vqcodec import intops


@dataclass(frozen=True)
class VQVAEConfig:
    """Architecture of a VQ-VAE (`vqvae_config` in format/SPEC.md).

    Attributes:
        f: downsampling factor, pixels per latent position along each axis (power of two, >= 4).
        K: codebook size.
        D: code dimension.
        c_lo: channels at H/2.
        c_hi: channels at H/4 and below.
        n_res: residual blocks per resolution at H/4 and below.
        beta: commitment loss weight (van den Oord et al. 2017, eq. 3).
        ema_decay: codebook EMA decay (their appendix A.1).

    Raises:
        ValueError: f is not a power of two >= 4.
    """

    f: int = 8
    K: int = 1024
    D: int = 32
    c_lo: int = 64
    c_hi: int = 128
    n_res: int = 2
    beta: float = 0.25
    ema_decay: float = 0.99

    def __post_init__(self):
        if self.f < 4 or self.f & (self.f - 1):
            raise ValueError(f"f must be a power of two >= 4, got {self.f}")

    @property
    def n_extra_down(self) -> int:
        """Number of 2x downsamplings below H/4: log2(f) - 2."""
        return int(math.log2(self.f)) - 2

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict (stored as the model file's "vqvae_config")."""
        return asdict(self)


class ResBlock(nn.Module):
    """Residual block x + conv1x1(relu(conv3x3(relu(x)))), channels preserved.

    Args:
        c: number of channels.
    """

    def __init__(self, c: int):
        super().__init__()
        self.conv3 = nn.Conv2d(c, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block.

        Args:
            x: float [N, c, H, W].

        Returns:
            Float [N, c, H, W], same dtype.
        """
        return x + self.conv1(F.relu(self.conv3(F.relu(x))))


class Encoder(nn.Module):
    """VQ-VAE encoder: images [N, 3, H, W] in [0, 1] -> latents [N, D, H/f, W/f].

    Pixel-unshuffle stems (2x each), a 3x3 convolution and residual blocks at H/2, 1x1
    convolutions and `ResBlock`s at H/4 and below, then relu and a 1x1 convolution to D.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        layers: list[nn.Module] = [
            nn.PixelUnshuffle(2), nn.Conv2d(12, cfg.c_lo, 3, padding=1), ResBlock(cfg.c_lo),
            nn.PixelUnshuffle(2), nn.Conv2d(4 * cfg.c_lo, cfg.c_hi, 1),
            *[ResBlock(cfg.c_hi) for _ in range(cfg.n_res)],
        ]
        for _ in range(cfg.n_extra_down):
            layers += [nn.PixelUnshuffle(2), nn.Conv2d(4 * cfg.c_hi, cfg.c_hi, 1),
                       *[ResBlock(cfg.c_hi) for _ in range(cfg.n_res)]]
        layers += [nn.ReLU(), nn.Conv2d(cfg.c_hi, cfg.D, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode images.

        Args:
            x: float32 [N, 3, H, W], pixel values / 255 in [0, 1]; H and W multiples of f.

        Returns:
            Latents float32 [N, D, H/f, W/f] (bfloat16 under autocast).

        Raises:
            RuntimeError: H or W is not a multiple of f (from `nn.PixelUnshuffle`).
        """
        return self.net(x - 0.5)


@dataclass(frozen=True)
class LayerSpec:
    """One entry of the decoder's layer list (format/SPEC.md, "VQ-VAE decoder").

    Attributes:
        slot: its index n: the tensors of entry n are `decoder.net.{n}.*` (relu and pixel
            shuffle have none but take an index).
        kind: "conv" (a k x k convolution, "same" zero padding), "res" (a `ResBlock`: 3x3
            convolution then 1x1, channels preserved), "shuffle" (pixel shuffle) or "relu".
        in_ch: input channels.
        out_ch: output channels (shuffle: in_ch / factor**2; res and relu: in_ch).
        kernel: the convolution's kernel size (1 or 3); res: 3 (its first convolution); 0 for
            shuffle and relu.
        factor: upscaling factor (shuffle: 2); 1 for the others.
    """

    slot: int
    kind: str
    in_ch: int
    out_ch: int
    kernel: int = 0
    factor: int = 1


def decoder_layers(cfg: VQVAEConfig) -> list[LayerSpec]:
    """The decoder's layer list, a function of the configuration (format/SPEC.md, "VQ-VAE
    decoder"): conv 3x3 D -> c_hi; n_res residual blocks on c_hi; log2(f) - 2 times (conv 1x1
    c_hi -> 4 c_hi, shuffle, residual block on c_hi); conv 1x1 c_hi -> 4 c_lo, shuffle, residual
    block on c_lo, relu, conv 3x3 c_lo -> 12, shuffle.

    The float `Decoder` is built from it, the integer decoders (`IntDecoder`,
    `vqcodec.vqvae_int8.Int8Decoder`) read it, and format/reference/network.py states the same
    rule independently (tests/test_vqvae.py compares them).

    Args:
        cfg: the architecture (D, c_lo, c_hi, n_res, f are used).

    Returns:
        The entries in slot order (slot = position in the list).
    """
    out: list[LayerSpec] = []

    def add(kind: str, i: int, o: int, kernel: int = 0, factor: int = 1) -> None:
        out.append(LayerSpec(len(out), kind, i, o, kernel, factor))

    def shuffle(c: int) -> None:
        add("shuffle", 4 * c, c, factor=2)

    add("conv", cfg.D, cfg.c_hi, 3)
    for _ in range(cfg.n_res):
        add("res", cfg.c_hi, cfg.c_hi, 3)
    for _ in range(cfg.n_extra_down):
        add("conv", cfg.c_hi, 4 * cfg.c_hi, 1)
        shuffle(cfg.c_hi)
        add("res", cfg.c_hi, cfg.c_hi, 3)
    add("conv", cfg.c_hi, 4 * cfg.c_lo, 1)
    shuffle(cfg.c_lo)
    add("res", cfg.c_lo, cfg.c_lo, 3)
    add("relu", cfg.c_lo, cfg.c_lo)
    add("conv", cfg.c_lo, 12, 3)
    shuffle(3)
    return out


def _module(spec: LayerSpec) -> nn.Module:
    """The float module of one `LayerSpec`."""
    if spec.kind == "conv":
        return nn.Conv2d(spec.in_ch, spec.out_ch, spec.kernel, padding=spec.kernel // 2)
    if spec.kind == "res":
        return ResBlock(spec.in_ch)
    if spec.kind == "shuffle":
        return nn.PixelShuffle(spec.factor)
    return nn.ReLU()


class Decoder(nn.Module):
    """VQ-VAE decoder: quantized latents [N, D, h, w] -> images [N, 3, f*h, f*w].

    The mirror of `Encoder` with pixel-shuffle upsampling; `net` holds one module per entry of
    `decoder_layers(cfg)` (format/SPEC.md, "VQ-VAE decoder").  `IntDecoder` is its integer-exact
    twin.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.net = nn.Sequential(*[_module(spec) for spec in decoder_layers(cfg)])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Decode latents.

        Args:
            z: float [N, D, h, w] (codebook vectors).

        Returns:
            Float [N, 3, f*h, f*w], pixel values / 255, not clamped to [0, 1].
        """
        return self.net(z) + 0.5


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantizer with EMA codebook updates and dead-code restart.

    The codebook [K, D] is a buffer updated by exponential moving averages of assigned encoder
    outputs (van den Oord et al. 2017, appendix A.1); it is initialised by k-means on the first
    training batch, and codes whose EMA usage falls below `dead_threshold` assignments per step
    are restarted at random encoder outputs of the current batch.  Under torch.distributed the
    statistics are all-reduced so every rank keeps the same codebook.

    Args:
        K: codebook size.
        D: code dimension.
        decay: EMA decay of the code counts and sums.
        eps: Laplace smoothing of the code counts (avoids division by zero).
        dead_threshold: EMA count (assignments per step) below which a code is restarted.
    """

    def __init__(self, K: int, D: int, decay: float = 0.99, eps: float = 1e-5,
                 dead_threshold: float = 0.03):
        super().__init__()
        self.K, self.D, self.decay, self.eps, self.dead_threshold = K, D, decay, eps, dead_threshold
        self.register_buffer("codebook", torch.randn(K, D) * 0.1)
        self.register_buffer("cluster_size", torch.ones(K))
        self.register_buffer("embed_sum", self.codebook.clone())
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """Nearest codebook entry of each vector (squared Euclidean distance).

        Args:
            flat: float32 [M, D].

        Returns:
            int64 [M], indices in [0, K).
        """
        cb = self.codebook
        dist2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.T + cb.pow(2).sum(1)[None]
        return dist2.argmin(1)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Codebook vectors of an index grid.

        Args:
            idx: int64 [N, h, w], values in [0, K).

        Returns:
            float32 [N, D, h, w] (a permuted view, not contiguous).
        """
        return self.codebook[idx].permute(0, 3, 1, 2)

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor, iters: int = 10) -> None:
        pick = torch.randperm(flat.shape[0], device=flat.device)[: self.K]
        if pick.numel() < self.K:
            pick = pick.repeat(math.ceil(self.K / pick.numel()))[: self.K]
        centers = flat[pick].clone()
        for _ in range(iters):
            self.codebook.copy_(centers)
            idx = self.nearest(flat)
            sums = torch.zeros_like(centers).index_add_(0, idx, flat)
            counts = torch.bincount(idx, minlength=self.K).float()
            centers = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], centers)
        _broadcast(centers)
        self.codebook.copy_(centers)
        self.embed_sum.copy_(centers)
        self.cluster_size.fill_(1.0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.K).float()
        sums = torch.zeros(self.K, self.D, device=flat.device).index_add_(0, idx, flat)
        _all_reduce(counts)
        _all_reduce(sums)
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.K * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed[:, None])
        dead = self.cluster_size < self.dead_threshold
        n_dead = int(dead.sum())
        if n_dead:
            pick = torch.randint(0, flat.shape[0], (n_dead,), device=flat.device)
            fresh = flat[pick].clone()
            _broadcast(fresh)
            self.codebook[dead] = fresh
            self.embed_sum[dead] = fresh
            self.cluster_size[dead] = 1.0

    def forward(self, z: torch.Tensor):
        """Quantize encoder outputs (van den Oord et al. 2017, section 3.1 and appendix A.1).

        In training mode this also updates the codebook: k-means initialisation on the first
        call, then an EMA update and dead-code restart per call.  Runs in float32 even under
        autocast.

        Args:
            z: encoder outputs, float [N, D, h, w].

        Returns:
            (z_q, idx, commit, stats): z_q the straight-through quantized latents [N, D, h, w]
            in z's dtype (gradients flow to z); idx int64 [N, h, w]; commit the commitment loss
            mean((z - sg(codebook[idx]))**2), float32 scalar (the caller weights it by beta);
            stats a dict of float32 scalars, "perplexity" (exp of the entropy of this batch's
            code usage, in codes) and "usage" (share of the K codes used in this batch).
        """
        with torch.autocast(z.device.type, enabled=False):
            return self._quantize(z)

    def _quantize(self, z: torch.Tensor):
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        if self.training and not bool(self.initialized):
            self._kmeans_init(flat.detach())
        idx = self.nearest(flat.detach())
        if self.training:
            self._ema_update(flat.detach(), idx)
        q = self.codebook[idx]
        commit = F.mse_loss(flat, q.detach())
        q_st = flat + (q - flat).detach()
        probs = torch.bincount(idx, minlength=self.K).float() / idx.numel()
        stats = {
            "perplexity": torch.exp(-(probs * torch.log(probs + 1e-10)).sum()),
            "usage": (probs > 0).float().mean(),
        }
        z_q = q_st.view(n, h, w, d).permute(0, 3, 1, 2).to(z.dtype)
        return z_q, idx.view(n, h, w), commit, stats


def _all_reduce(t: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)


def _broadcast(t: torch.Tensor) -> None:
    if dist.is_available() and dist.is_initialized():
        dist.broadcast(t, 0)


class VQVAE(nn.Module):
    """VQ-VAE of van den Oord et al., NeurIPS 2017: encoder + vector quantizer + decoder.

    Args:
        cfg: the architecture.
    """

    def __init__(self, cfg: VQVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = VectorQuantizer(cfg.K, cfg.D, cfg.ema_decay)
        self.decoder = Decoder(cfg)

    def forward(self, x: torch.Tensor):
        """Training pass: encode, quantize (updating the codebook in training mode), decode.

        Args:
            x: float32 [N, 3, H, W] in [0, 1], H and W multiples of f.

        Returns:
            (x_hat, idx, commit, stats): x_hat float [N, 3, H, W] (not clamped; bfloat16 under
            autocast), idx int64 [N, H/f, W/f], and commit and stats as in
            `VectorQuantizer.forward`.
        """
        z = self.encoder(x)
        z_q, idx, commit, stats = self.quantizer(z)
        return self.decoder(z_q), idx, commit, stats

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Index grid of images (no gradient, no codebook update).

        Args:
            x: float32 [N, 3, H, W] in [0, 1], H and W multiples of f.

        Returns:
            idx int64 [N, H/f, W/f], values in [0, K).

        Raises:
            RuntimeError: H or W is not a multiple of f.
        """
        z = self.encoder(x)
        n, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        return self.quantizer.nearest(flat).view(n, h, w)

    @torch.no_grad()
    def decode_float(self, idx: torch.Tensor) -> torch.Tensor:
        """Float (training-time) decoder; not bit-exact across machines (see `IntDecoder`).

        Args:
            idx: int64 [N, h, w], values in [0, K).

        Returns:
            float32 [N, 3, f*h, f*w], pixel values / 255 clamped to [0, 1].
        """
        return self.decoder(self.quantizer.lookup(idx)).clamp(0, 1)


class GridDecoder:
    """Base of the integer decoders (`IntDecoder`, `vqcodec.vqvae_int8.Int8Decoder`): decodes a
    batch grid by grid on at most the idle cores (`intops.LoadAwareThreads`).  A subclass sets
    `device` and `halo` and defines `_decode_one`; it is then a `vqcodec.interfaces.PixelDecoder`.

    Attributes:
        device: where the decoder runs.
        halo: receptive-field radius in latent positions (`receptive_halo`).
    """

    device: torch.device
    halo: int

    @torch.no_grad()
    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """Decode index grids to pixels.

        Args:
            idx: int64 [N, h, w], values in [0, K), on any device.

        Returns:
            uint8 [N, 3, f*h, f*w] (R, G, B), on `self.device`.

        Raises:
            IndexError: an index is outside [0, K) (CPU).
        """
        with intops.LoadAwareThreads(self.device):
            return torch.stack([self._decode_one(g) for g in idx.to(self.device)])

    def _decode_one(self, idx: torch.Tensor) -> torch.Tensor:
        """One grid int64 [h, w] (on `device`) -> uint8 [3, f*h, f*w]."""
        raise NotImplementedError


class IntDecoder(GridDecoder):
    """Integer-exact twin of `Decoder` (see `vqcodec.intops`): identical pixels on every machine.

    `__call__(idx)` takes int64 [N, h, w] and returns uint8 [N, 3, f*h, f*w].  The receptive
    field radius in latent positions is `halo` (`receptive_halo`), so tiles decoded with that
    much overlap are seamless and bit-identical to a whole-image decode.

    Activations are kept channels-last in a flat, zero-bordered layout: a [H, W, C] map is a
    [(H + 2) * (W + 2), C] float64 matrix whose first and last rows and columns are zero (the
    convolutions' zero padding).  A k x k convolution is then k * k GEMMs, each on a contiguous
    row range of that matrix shifted by the kernel tap, accumulated into one output (no im2col
    copy); outputs at the border columns are garbage from the wrap-around and are zeroed.  All
    sums are exact (`IntConv.folded`), so the result equals `F.conv2d` bit for bit.  Runs on
    at most the idle cores (`intops.LoadAwareThreads`).  Specified in format/SPEC.md, "VQ-VAE
    decoder"; integer networks after Ballé et al., ICLR 2019.

    Args:
        model: the trained float VQ-VAE (its codebook and decoder are used).
        device: where the integer decoder runs.

    Raises:
        TypeError: the decoder contains a layer type with no integer form.
        ValueError: a convolution's fan-in exceeds `intops.MAX_FAN_IN`.
    """

    def __init__(self, model: VQVAE, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.codebook = intops.quantize_activation(model.quantizer.codebook).to(self.device)
        layers = decoder_layers(model.cfg)
        self.ops = [self._convert(spec, m) for spec, m in zip(layers, model.decoder.net, strict=True)]
        self.halo = receptive_halo(layers)

    def _convert(self, spec: LayerSpec, m: nn.Module):
        def fold(conv):
            taps, bias = intops.IntConv.from_float(conv).to(self.device).folded()
            return taps, bias, conv.kernel_size[0]

        if spec.kind == "conv":
            return ("conv", fold(m))
        if spec.kind == "res":
            return ("res", fold(m.conv3), fold(m.conv1))
        if spec.kind == "shuffle":
            return ("shuffle", spec.factor)
        if spec.kind == "relu":
            return ("relu",)
        raise TypeError(f"no integer form for {spec.kind!r}")

    def _decode_one(self, idx: torch.Tensor) -> torch.Tensor:
        h, w = idx.shape
        x = _zeros_bordered(h, w, self.codebook.shape[1], self.codebook)
        _interior(x, h, w).copy_(self.codebook[idx])

        def res(x, h, w, conv3, conv1):
            y = _conv(x.clamp(min=0), h, w, *conv3, low=0.0)
            return _conv(y, h, w, *conv1).add_(x).clamp_(-intops.ACT_CLAMP, intops.ACT_CLAMP)

        x, h, w = run_ops(self.ops, x, h, w, lambda x, h, w, g: _conv(x, h, w, *g), res)
        # pixel = clamp(floor((255 * x + 32640) / 256 + 1/2), 0, 255) (format/SPEC.md, "VQ-VAE
        # decoder"), i.e. round(255 * (x / 2**ACT_FRAC_BITS + 0.5)), exact in float64
        x = _interior(x, h, w)
        pix = torch.floor((x * 255 + 255 * intops.ACT_ONE // 2) * (1.0 / intops.ACT_ONE) + 0.5)
        return pix.clamp_(0, 255).to(torch.uint8).permute(2, 0, 1)


def run_ops(ops: list, x: torch.Tensor, h: int, w: int, conv, res) -> tuple[torch.Tensor, int, int]:
    """Walk an integer decoder's layer list over a zero-bordered flat map (shared by
    `IntDecoder` and `vqcodec.vqvae_int8.Int8Decoder`).

    Args:
        ops: ("conv", g), ("res", g3, g1), ("shuffle", r) or ("relu",) entries.
        x: zero-bordered flat map [(h+2)*(w+2), C].
        h: map rows.
        w: map columns.
        conv: conv(x, h, w, g) -> the next map.
        res: res(x, h, w, g3, g1) -> the residual block's output map.

    Returns:
        (the last map, its rows, its columns).
    """
    for op in ops:
        kind = op[0]
        if kind == "conv":
            x = conv(x, h, w, op[1])
        elif kind == "res":
            x = res(x, h, w, op[1], op[2])
        elif kind == "shuffle":
            x, h, w = _pixel_shuffle(x, h, w, op[1]), h * op[1], w * op[1]
        else:
            x = x.clamp(min=0)
    return x, h, w


def _zeros_bordered(h: int, w: int, c: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros((h + 2) * (w + 2), c, dtype=like.dtype, device=like.device)


def _interior(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """[h, w, C] view of the inner cells of a zero-bordered flat map x [(h+2)*(w+2), C]."""
    return x.view(h + 2, w + 2, -1)[1:-1, 1:-1]


def _conv(x: torch.Tensor, h: int, w: int, taps: torch.Tensor, bias: torch.Tensor, k: int,
          low: float = -intops.ACT_CLAMP) -> torch.Tensor:
    """k x k convolution (k = 1 or 3, zero padding k // 2) of a zero-bordered flat map
    x [(h+2)*(w+2), I] with folded weights taps [k*k, I, O] -> zero-bordered [(h+2)*(w+2), O],
    clamped below at `low` (0: a following ReLU)."""
    wp = w + 2
    n = h * wp - 2  # flat rows from the first to the last inner cell
    y = torch.empty(x.shape[0], taps.shape[2], dtype=x.dtype, device=x.device)
    core = y[wp + 1:wp + 1 + n]
    r = k // 2
    offsets = [wp + 1 + dy * wp + dx for dy in range(-r, r + 1) for dx in range(-r, r + 1)]
    torch.addmm(bias, x[offsets[0]:offsets[0] + n], taps[0], out=core)
    for off, tap in zip(offsets[1:], taps[1:]):
        core.addmm_(x[off:off + n], tap)
    intops.floor_clamp_(core, low)
    return zero_border(y, h, w)


def zero_border(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Zero the border cells of a flat map y [(h+2)*(w+2), C] (in place; returns y): the
    wrap-around garbage a shifted GEMM leaves there becomes the next layer's zero padding."""
    wp = w + 2
    y[:wp + 1] = 0
    y[wp + 1 + h * wp - 2:] = 0
    grid = y.view(h + 2, wp, -1)
    grid[:, 0] = 0
    grid[:, -1] = 0
    return y


def _pixel_shuffle(x: torch.Tensor, h: int, w: int, r: int) -> torch.Tensor:
    """`F.pixel_shuffle` on a zero-bordered flat map: [(h+2)*(w+2), C*r*r] ->
    [(r*h+2)*(r*w+2), C] (input channel c*r*r + i*r + j goes to cell (r*y + i, r*x + j))."""
    c = x.shape[1] // (r * r)
    y = _zeros_bordered(r * h, r * w, c, x)
    src = _interior(x, h, w).view(h, w, c, r, r).permute(0, 3, 1, 4, 2)
    _interior(y, r * h, r * w).view(h, r, w, r, c).copy_(src)
    return y


def receptive_halo(layers: list[LayerSpec]) -> int:
    """Receptive-field radius of a decoder's layer list (`decoder_layers`) in latent positions.

    The smallest halo with which tiles decode exactly like the whole image.

    Follows the input cells one latent position's output pixels depend on backwards through
    the layers: a k x k convolution widens the interval by k // 2 cells each side, a
    `ResBlock` by 1 (its 3x3), and a pixel shuffle by r maps cells [a, b) to [a // r,
    (b - 1) // r + 1).  f=4 and f=8 decoders give 4: three 3x3 convolutions at the latent
    resolution (3) plus the finer ones, which together reach less than one more position.

    Args:
        layers: the decoder's entries (`LayerSpec`).

    Returns:
        The radius in latent positions.
    """
    big = 1 << 20  # a latent position far from 0, so that // is plain division of positives
    scale = 1
    for spec in layers:
        scale *= spec.factor
    a, b = big * scale, (big + 1) * scale
    for spec in reversed(layers):
        if spec.kind == "shuffle":
            r = spec.factor
            a, b = a // r, (b - 1) // r + 1
        elif spec.kind == "conv":
            a, b = a - spec.kernel // 2, b + spec.kernel // 2
        elif spec.kind == "res":
            a, b = a - 1, b + 1
    return max(big - a, b - (big + 1))
