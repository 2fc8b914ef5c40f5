"""Rate-distortion optimised choice of the index grid: entropy-constrained vector quantisation.

The nearest-neighbour encoder picks, at each latent position, the codebook vector closest to the
encoder output z.  Entropy-constrained VQ (Chou, Lookabaugh, Gray, "Entropy-constrained vector
quantization", IEEE Trans. ASSP 37(1), 1989) picks instead

    k* = argmin_k  ||z - e_k||^2 + lambda * (-log2 p(k | context))

so an index the prior finds much cheaper may win over a slightly closer one.  Only the encoder
changes: any index grid is a valid `.vqc` payload and decodes with the existing decoder.

How the rate is known exactly: the choice runs *inside* the prior's wavefront pass
(`IntPrior.decode` with a step that chooses instead of decoding), so at every position the
context is the indices already chosen, and p(k | context) is the very integer PMF
(`vqcodec.prior.pmf_from_logits`) the range coder then uses.  The chosen indices are range-coded
in the same pass, with the same PMFs, so the payload is what `vqcodec.entropy.encode_grid` would
write for that grid (tests/test_rdo.py checks it byte for byte).  This is greedy in coding order:
a choice does not look at what it does to the rate of later positions.

Units: distortion is the squared Euclidean distance in latent space (the VQ-VAE's code space,
float32), divided by its mean over the image under nearest-neighbour quantisation (D_nn), so that
lambda means the same on a smooth and on a busy image: the cost of index k is
||z - e_k||^2 / D_nn + lambda * bits, i.e. lambda is "relative distortion per bit".  Since PSNR
is a log of the distortion, a relative measure makes a given lambda cost about the same dB on
every image.  Measured alternatives (README, "Quality"): absolute latent distance (a lambda too
strong on smooth images and too weak on busy ones) and a decoder-Jacobian weighted (pixel-space,
linearised) distance (worse PSNR at the same rate).

The quality scale (`plan`) maps a quality Q in [0, 100] to a released model and a lambda;
`EFFORTS` maps an effort 0..9 to the encoder's search (0 = nearest neighbour, today's encoder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import constriction
import numpy as np
import torch

from vqcodec.constants import DEFAULT_EFFORT, MAX_UPSCALE, PMF_BITS

__all__ = ["Effort", "EFFORTS", "DEFAULT_EFFORT", "Plan", "plan", "coded_size", "QUALITY_SEGMENTS", "effort",
           "latents", "distances", "choose_grid", "RdoResult", "target_bytes", "search_quality"]

_MODEL = constriction.stream.model.Categorical(perfect=False)
_BATCH = 8  # tiles chosen in lock-step: a 768x512 image at f = 4 (6 tiles) in one wavefront


@dataclass(frozen=True)
class Effort:
    """What the encoder does at one `--effort` level.

    Attributes:
        candidates: how many nearest codebook vectors compete at each position (0 = all K);
            0 together with `rdo=False` is the nearest-neighbour encoder.
        rdo: choose by distortion + lambda * rate (False: nearest neighbour, lambda ignored).
        guard: also code the nearest-neighbour grid and keep, per tile, whichever has the
            lower objective D + lambda * R (one more prior pass; never worse than nearest).
    """

    candidates: int
    rdo: bool
    guard: bool = False


#: effort 0..9.  0 is the nearest-neighbour encoder (the bytes of vqc 0.1 for the same model).
EFFORTS: dict[int, Effort] = {
    0: Effort(1, False),
    1: Effort(2, True),
    2: Effort(4, True),
    3: Effort(8, True),
    4: Effort(16, True),
    5: Effort(32, True),
    6: Effort(0, True),
    7: Effort(8, True, guard=True),
    8: Effort(32, True, guard=True),
    9: Effort(0, True, guard=True),
}


@dataclass(frozen=True)
class Plan:
    """Encoder settings for one quality: a released model, the Lagrange multiplier and the scale.

    Attributes:
        model: name of the released model (`vqcodec.registry`).
        lam: lambda >= 0, relative distortion per bit (module docstring, "Units"); 0 is the
            nearest-neighbour grid.
        scale: coded size / display size along each axis, in (0, 1]; 1 codes the image as it is,
            less codes a downscaled image that the decoder upsamples (`coded_size`,
            `vqcodec.upsample`).
    """

    model: str
    lam: float
    scale: float = 1.0


@dataclass(frozen=True)
class Segment:
    """A stretch [q_lo, q_hi] of the quality scale served by one model.

    lambda falls geometrically from `lam_lo` at q_lo towards 0, reaching exactly 0 (the
    nearest-neighbour grid) at q_hi: lam = lam_lo * (2**(s * t') - 1) / (2**s - 1) with
    t' = (q_hi - Q) / (q_hi - q_lo) and steepness `s`.

    Attributes:
        model: name of the released model serving the stretch.
        q_lo: lowest quality of the stretch.
        q_hi: highest quality of the stretch (lambda 0 there).
        lam_lo: lambda at q_lo, relative distortion per bit.
        steep: steepness s of the geometric fall.
    """

    model: str
    q_lo: float
    q_hi: float
    lam_lo: float
    steep: float = 6.0

    def lam(self, q: float) -> float:
        """Lambda at a quality of this stretch.

        Args:
            q: Q in [q_lo, q_hi] (not checked; `plan` clamps it).

        Returns:
            lambda in relative distortion per bit: lam_lo at q_lo, 0 at q_hi.
        """
        t = (self.q_hi - q) / (self.q_hi - self.q_lo)
        return self.lam_lo * (2.0 ** (self.steep * t) - 1.0) / (2.0 ** self.steep - 1.0)


#: The quality scale, low to high (measured on Kodak, see README "Quality").
QUALITY_SEGMENTS: tuple[Segment, ...] = (
    Segment("vqc-f8k1024-v2", 0.0, 40.0, 2.0, 8.0),
    Segment("vqc-f4k512-v2", 40.0, 100.0, 0.5, 8.0),
)


def plan(quality: float) -> Plan:
    """The model and lambda of a quality on the continuous scale.

    Args:
        quality: Q in [0, 100] (float or int); larger is better and bigger.

    Returns:
        The `Plan`; lambda is 0 (nearest neighbour) at the top of each model's stretch.

    Raises:
        ValueError: Q is not a finite number in [0, 100].
    """
    q = float(quality)
    if not (math.isfinite(q) and 0.0 <= q <= 100.0):
        raise ValueError(f"quality must be a number from 0 to 100, got {quality!r}")
    for seg in QUALITY_SEGMENTS:
        if q <= seg.q_hi:
            return Plan(seg.model, seg.lam(max(q, seg.q_lo)))
    return Plan(QUALITY_SEGMENTS[-1].model, 0.0)


def coded_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The coded size of an image at a scale: each side rounded, at most the display side and at
    least ceil(side / MAX_UPSCALE) (the format allows at most 8x upsampling per side).

    Args:
        height, width: display size in pixels (>= 1).
        scale: coded / display along each axis, in [1 / MAX_UPSCALE, 1] = [0.125, 1].

    Returns:
        (coded_height, coded_width) in pixels.

    Raises:
        ValueError: scale is not a finite number in [0.125, 1].
    """
    if not (math.isfinite(scale) and 1.0 / MAX_UPSCALE <= scale <= 1.0):
        raise ValueError(f"scale must be a number in [1/{MAX_UPSCALE}, 1], got {scale!r}")
    return tuple(min(side, max(-(-side // MAX_UPSCALE), round(side * scale)))
                 for side in (height, width))


def effort(level: int) -> Effort:
    """The `Effort` of a level.

    Args:
        level: effort, an int (or numpy integer, not a bool) in 0..9.

    Returns:
        `EFFORTS[level]`.

    Raises:
        ValueError: not an integer in 0..9.
    """
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level not in EFFORTS:
        raise ValueError(f"effort must be an integer from 0 to 9, got {level!r}")
    return EFFORTS[int(level)]


@torch.no_grad()
def latents(model, pixels: np.ndarray) -> np.ndarray:
    """Float encoder output of an image, in tiles exactly as the nearest-neighbour encoder.

    Args:
        model: a `vqcodec.zoo.CodecModel`.
        pixels: uint8 [H, W, 3], H and W multiples of model.f.

    Returns:
        z: float32 [H/f, W/f, D].
    """
    from vqcodec.codec import tiled
    from vqcodec.constants import PIXEL_TILE

    f = model.f
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].to(model.device)

    def enc(t: torch.Tensor) -> torch.Tensor:
        return model.vqvae.encoder(t.float() / 255.0).to(torch.float32)

    z = tiled(enc, x, f, 1, max(1, PIXEL_TILE // f), 8)
    return z[0].permute(1, 2, 0).cpu().numpy()


def distances(model, z: np.ndarray) -> np.ndarray:
    """Squared latent distance to every codebook vector.

    Args:
        model: a `vqcodec.zoo.CodecModel`.
        z: float32 [..., D].

    Returns:
        float32 [..., K]: ||z - e_k||^2 (same formula as `VectorQuantizer.nearest`).
    """
    cb = model.vqvae.quantizer.codebook.detach().float().cpu()
    flat = torch.from_numpy(np.ascontiguousarray(z.reshape(-1, z.shape[-1])))
    d2 = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.T + cb.pow(2).sum(1)[None]
    return d2.clamp_(min=0).numpy().reshape(*z.shape[:-1], cb.shape[0])


@dataclass
class RdoResult:
    """What `choose_grid` chose.

    Attributes:
        grid: int64 [H, W] index grid.
        payloads: range-coded payload of each tile (container order), bytes.
        bits: information content of the grid under the prior, bits (sum of -log2 p).
        distortion: sum over positions of ||z - e_k||^2 (latent units).
        guarded_tiles: tiles where the nearest-neighbour grid had the lower objective and was kept.
    """

    grid: np.ndarray
    payloads: list[bytes]
    bits: float
    distortion: float
    guarded_tiles: int = 0


def _code_tiles(prior, d2: np.ndarray, lam: float, cand: np.ndarray | None,
                fixed: np.ndarray | None) -> tuple[np.ndarray, list[bytes], np.ndarray, np.ndarray]:
    """One wavefront pass over n tiles of one shape: choose (or take `fixed`) and range-code.

    d2: float32 [n, h, w, K]; cand: bool [n, h, w, K] or None (all); fixed: int64 [n, h, w] to
    code as given instead of choosing.  Returns (grids int64 [n, h, w], payloads, bits float64
    [n], distortion float64 [n]).
    """
    n, h, w, _ = d2.shape
    encoders = [constriction.stream.queue.RangeEncoder() for _ in range(n)]
    bits = np.zeros(n)
    dist = np.zeros(n)
    b_ix = np.arange(n)[:, None]

    def step(rows, cols, pmfs):
        cost_bits = PMF_BITS - np.log2(pmfs.astype(np.float64))  # [n, m, K]
        dd = d2[:, rows, cols]
        if fixed is not None:
            sym = fixed[:, rows, cols]
        else:
            cost = dd + lam * cost_bits
            if cand is not None:
                cost = np.where(cand[:, rows, cols], cost, np.inf)
            sym = cost.argmin(-1)
        m_ix = np.arange(len(rows))[None, :]
        bits[:] += cost_bits[b_ix, m_ix, sym].sum(1)
        dist[:] += dd[b_ix, m_ix, sym].sum(1)
        for b in range(n):
            encoders[b].encode(sym[b].astype(np.int32), _MODEL, pmfs[b].astype(np.float64))
        return sym

    grids = prior.decode(n, h, w, step)
    payloads = [e.get_compressed().astype("<u4").tobytes() for e in encoders]
    return grids, payloads, bits, dist


def choose_grid(model, z: np.ndarray, lam: float, level: int, tiles: list[tuple[slice, slice]],
                nearest: np.ndarray | None = None) -> RdoResult:
    """Entropy-constrained choice of the index grid, range-coded tile by tile.

    ECVQ after Chou, Lookabaugh and Gray, "Entropy-constrained vector quantization", IEEE
    Trans. ASSP 37(1), 1989, applied greedily in the prior's coding order (format/SPEC.md,
    "Coding order"); the payloads are what `vqcodec.entropy.encode_grid` writes for the grid.

    Args:
        model: a `vqcodec.zoo.CodecModel`.
        z: encoder output float32 [H, W, D] (`latents`).
        lam: Lagrange multiplier >= 0, relative distortion per bit: the cost of index k at a
            position is ||z - e_k||^2 / D_nn + lam * bits, D_nn the image's mean squared
            nearest-neighbour distance.
        level: effort 1..9 (see `EFFORTS`; effort 0 is `vqcodec.codec.encode_indices`).
        tiles: the container's tiles, (row slice, column slice) each, in container order.
        nearest: the nearest-neighbour grid int64 [H, W], needed only by guarded efforts.

    Returns:
        The `RdoResult` (grid int64 [H, W], payloads, bits, distortion); its payloads decode
        (`vqcodec.entropy.decode_grid`) to its grid.

    Raises:
        ValueError: bad effort (or effort 0), negative or non-finite lambda, or a guarded
            effort without `nearest`.
    """
    eff = effort(level)
    if not eff.rdo:
        raise ValueError("effort 0 is the nearest-neighbour encoder: use codec.encode_indices")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lambda must be finite and >= 0, got {lam!r}")
    if eff.guard and nearest is None:
        raise ValueError(f"effort {level} needs the nearest-neighbour grid")
    from vqcodec.entropy import group_by_shape

    H, W = z.shape[:2]
    groups = list(group_by_shape((H, W), tiles, lambda h, w: _BATCH))
    d_nn = sum(float(distances(model, z[tiles[k]]).min(-1).sum()) for _, ms in groups for k in ms)
    scale = lam * max(d_nn / (H * W), 1e-12)  # lambda in relative distortion per bit
    grid = np.zeros((H, W), dtype=np.int64)
    payloads: list[bytes] = [b""] * len(tiles)
    total_bits = total_dist = 0.0
    guarded = 0
    for (h, w), members in groups:
        d2 = np.stack([distances(model, z[tiles[k]]) for k in members])
        cand = None
        if 0 < eff.candidates < d2.shape[-1]:
            kth = np.partition(d2, eff.candidates - 1, axis=-1)[..., eff.candidates - 1:eff.candidates]
            cand = d2 <= kth
        g, pl, bits, dist = _code_tiles(model.prior, d2, scale, cand, None)
        if eff.guard:
            nn = np.stack([nearest[tiles[k]] for k in members])
            g0, pl0, bits0, dist0 = _code_tiles(model.prior, d2, scale, None, nn)
            worse = dist + scale * bits > dist0 + scale * bits0
            for b in np.flatnonzero(worse):
                g[b], pl[b], bits[b], dist[b] = g0[b], pl0[b], bits0[b], dist0[b]
            guarded += int(worse.sum())
        for b, k in enumerate(members):
            grid[tiles[k]] = g[b]
            payloads[k] = pl[b]
        total_bits += float(bits.sum())
        total_dist += float(dist.sum())
    return RdoResult(grid, payloads, total_bits, total_dist, guarded)


# ---- rate control: the highest quality that fits a target size ----------------------------------

#: The search stops when the best fitting file is at least this share of the target ...
SEARCH_CLOSE = 0.99
#: ... or the quality interval is this narrow, or after this many encodes.
SEARCH_Q_STEP = 0.25
SEARCH_MAX_PROBES = 12


def target_bytes(target_bpp: float | None, size: int | None, width: int, height: int) -> int | None:
    """The file size a target asks for, in bytes.

    Args:
        target_bpp: bits per pixel of the whole file, > 0, or None.
        size: bytes of the whole file, >= 1, or None.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        floor(target_bpp * width * height / 8), or `size`, or None when neither is given.

    Raises:
        ValueError: both given, or a value out of range.
    """
    if target_bpp is not None and size is not None:
        raise ValueError("give a target bpp or a target size, not both")
    if target_bpp is not None:
        if isinstance(target_bpp, bool) or not (math.isfinite(float(target_bpp)) and target_bpp > 0):
            raise ValueError(f"target bpp must be a number > 0, got {target_bpp!r}")
        return int(math.floor(float(target_bpp) * width * height / 8))
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"target size must be a whole number of bytes >= 1, got {size!r}")
        return int(size)
    return None


def search_quality(encode_at: Callable[[float], bytes], target: int, breaks: tuple[float, ...] = ()
                   ) -> tuple[float, bytes, list[tuple[float, int]]]:
    """The highest quality whose real encoded file is at most `target` bytes.

    Every probe is a real encode.  Q = 100 is tried first; then, from the top, each break b
    (where the size may jump: the model changes above b) is located by probing just above it
    (b + 0.01) and at b, so that the search stays inside one model's stretch, where the size is
    continuous in Q; then Q = 0.  Between a fitting and a too-large quality the next probe
    interpolates log(size) linearly in Q (regula falsi, with bisection when an end repeats),
    until the fitting file is within `SEARCH_CLOSE` of the target, the interval is narrower
    than `SEARCH_Q_STEP`, or `SEARCH_MAX_PROBES` encodes.

    Args:
        encode_at: Q in [0, 100] -> the bytes of the file at that quality.
        target: the largest acceptable file size in bytes, >= 1 (`target_bytes`).
        breaks: qualities where one model's stretch ends (`QUALITY_SEGMENTS`' q_hi but the last).

    Returns:
        (Q, file bytes, probes [(Q, size in bytes)]): the highest fitting probe; when even
        Q = 0 is too large, Q = 0 and its (too large) file.

    Raises:
        Whatever `encode_at` raises; nothing of its own.
    """
    probes: list[tuple[float, int]] = []
    best: tuple[float, bytes] | None = None

    def probe(q: float) -> int:
        nonlocal best
        data = encode_at(q)
        probes.append((q, len(data)))
        if len(data) <= target and (best is None or q > best[0]):
            best = (q, data)
        return len(data)

    hi_q, hi_n = 100.0, probe(100.0)
    if hi_n <= target:
        return 100.0, best[1], probes
    lo_q = None
    for b in sorted(breaks, reverse=True):
        above = round(b + 0.01, 2)
        n = probe(above)
        if n <= target:
            lo_q, lo_n = above, n
            break
        hi_q, hi_n = above, n
        n = probe(b)
        if n <= target:  # the answer is b: the next quality is already the next model's, too big
            return b, best[1], probes
        hi_q, hi_n = b, n
    if lo_q is None:
        data = encode_at(0.0)
        probes.append((0.0, len(data)))
        if len(data) > target:  # nothing fits: the smallest file there is
            return 0.0, data, probes
        lo_q, lo_n, best = 0.0, len(data), (0.0, data)
    side = 0
    while (len(probes) < SEARCH_MAX_PROBES and hi_q - lo_q > SEARCH_Q_STEP
           and lo_n < SEARCH_CLOSE * target):
        a, b, t = math.log(max(lo_n, 1)), math.log(hi_n), math.log(target)
        q = lo_q + (hi_q - lo_q) * (t - a) / (b - a) if b > a else (lo_q + hi_q) / 2
        if side in (-2, 2):  # the same end moved twice: bisect instead
            q = (lo_q + hi_q) / 2
        q = min(max(q, lo_q + SEARCH_Q_STEP / 2), hi_q - SEARCH_Q_STEP / 2)
        n = probe(q)
        if n <= target:
            lo_q, lo_n = q, n
            side = side + 1 if side > 0 else 1
        else:
            hi_q, hi_n = q, n
            side = side - 1 if side < 0 else -1
    assert best is not None
    return best[0], best[1], probes
