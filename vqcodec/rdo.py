"""Rate-distortion optimised choice of the index grid: entropy-constrained vector quantisation.

The nearest-neighbour encoder picks, at each latent position, the codebook vector closest to the
encoder output z.  Entropy-constrained VQ (Chou, Lookabaugh, Gray, "Entropy-constrained vector
quantization", IEEE Trans. ASSP 37(1), 1989) picks instead

    k* = argmin_k  ||z - e_k||^2 + lambda * (-log2 p(k | context))

so an index the prior finds much cheaper may win over a slightly closer one.  Only the encoder
changes: any index grid is a valid `.vqc` payload and decodes with the existing decoder.

How the rate is known exactly: the choice runs *inside* the prior's wavefront pass
(`EntropyPrior.decode` with a step that chooses instead of decoding), so at every position the
context is the indices already chosen, and p(k | context) is the very integer PMF
(`vqcodec.pmf.pmf_from_logits`) the range coder then uses.  The chosen indices are range-coded
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

The quality scale (`plan`) maps a quality Q in [0, 100] to a released model, a lambda and a
scale; `EFFORTS` maps an effort 0..9 to the encoder's search (0 = nearest neighbour).

Quality scale.  Resolution is a coding tool (DESIGN 10): a file may code the image downscaled
(Pillow Lanczos, the encoder's choice) to `coded_size(H, W, scale)`, and the decoder upsamples it
with the normative filter (`vqcodec.upsample`).  `QUALITY_SEGMENTS` is data measured on 48
training crops, never on Kodak (`benchmarks/scale_rd.py`, benchmarks/results/scale_rd_train.json):
both models at the scales 1/2, 9/16, ..., 1 and 8-9 lambdas each, at effort 6, whole files, PSNR
at the display size after the normative upsampler.  The scale follows the upper envelope of those
curves: along the rate, the (model, scale) with the most mean PSNR, the small model first and
never again once the large one has won, and never a sag: the next (model, scale) takes over
only where it gives 0.085 dB more than the PSNR already reached (where the current curve ends at
its nearest-neighbour grid, the rate jumps to that point).  The margin is two standard errors of
a 24-image mean of the per-crop PSNR step at a break (sd about 0.21 dB on the crops), so the mean
curve of another set does not sag at a break either.  Q is linear in the training
rate, Q = 100 (bpp - 0.0246) / (0.3292 - 0.0246), about 0.003 bpp per Q there (Kodak's images
need fewer bits: about 0.0028).  The envelope turns out to change the scale, not lambda: each
scale serves from lambda about 0.15-0.3 down to (nearly) its nearest-neighbour grid, then the next
scale takes over; Q 0-19 is vqc-f8k1024-v2 at 1/2..7/8 of the size, Q 19-88 vqc-f4k512-v2 at
1/2..15/16, Q 88-100 vqc-f4k512-v2 at full size (Q 100: its nearest-neighbour grid, as before).
In a stretch lambda follows `Segment.lam`, fitted to the curve.  The size is continuous in Q
inside a stretch and may jump (a little) at `quality_breaks`; `search_quality` locates the
stretch first.  Training figures (mean of the 48 crops, interpolated on the curves): Q 0
0.025 bpp / 19.8 dB, Q 50 (3/4 of the size) 0.177 bpp / 25.5 dB, Q 76 (7/8) 0.256 bpp /
26.5 dB, Q 90 (DEFAULT_QUALITY: full size, lambda 0.10) 0.299 bpp / 27.0 dB, Q 100 0.329 bpp /
27.3 dB.

Per-image scale (efforts 8 and 9, `Effort.scales`).  The encoder also codes the plan's model at
its lambda at the neighbouring `SCALE_STEPS` (1/16 smaller and larger, at most full size),
decodes each at the display size, and keeps the one with the highest PSNR - slope * bpp
(`pick_scale`), slope being the quality scale's dB per bpp at Q (`rd_slope`): a neighbour wins
only when it lies above the quality scale's tangent through the plan's point for this image.
On 16 training crops not used for the scale, effort 9 against 7 raised that score by 0.02-0.14 dB
at Q 30-95 (`benchmarks/scale_rd.py --compare-efforts`, results/scale_effort_train.json).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import constriction
import numpy as np
import torch

from vqcodec.constants import DEFAULT_EFFORT, MAX_UPSCALE, PMF_BITS

__all__ = ["Effort", "EFFORTS", "DEFAULT_EFFORT", "Plan", "plan", "coded_size", "QUALITY_SEGMENTS", "Segment", "effort",
           "rd_slope", "quality_breaks", "SCALE_STEPS", "scale_candidates", "pick_scale",
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
        scales: per image, also code the plan's model and lambda at this many neighbouring
            `SCALE_STEPS` on each side of the plan's scale and keep the best by `pick_scale`
            (0: the plan's scale only).
    """

    candidates: int
    rdo: bool
    guard: bool = False
    scales: int = 0


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
    8: Effort(32, True, guard=True, scales=1),
    9: Effort(0, True, guard=True, scales=1),
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
    """A stretch [q_lo, q_hi] of the quality scale served by one model at one scale.

    lambda falls from `lam_lo` at q_lo to `lam_hi` at q_hi (0: the nearest-neighbour grid)
    along lam = lam_hi + (lam_lo - lam_hi) * (2**(s * t') - 1) / (2**s - 1) with
    t' = (q_hi - Q) / (q_hi - q_lo) and steepness `s` (about geometric for s = log2(lam_lo / lam_hi)).

    Attributes:
        model: name of the released model serving the stretch.
        q_lo: lowest quality of the stretch.
        q_hi: highest quality of the stretch (lambda `lam_hi` there).
        lam_lo: lambda at q_lo, relative distortion per bit.
        steep: steepness s of the fall.
        scale: coded / display size per axis (`Plan.scale`), in (0, 1].
        lam_hi: lambda at q_hi, relative distortion per bit (0 = nearest neighbour).
        slope: the rate-distortion exchange rate across the stretch on the training crops, dB per
            bpp (PSNR gained per bpp spent; `rd_slope`, used by the per-image scale choice).
    """

    model: str
    q_lo: float
    q_hi: float
    lam_lo: float
    steep: float = 6.0
    scale: float = 1.0
    lam_hi: float = 0.0
    slope: float = 20.0

    def lam(self, q: float) -> float:
        """Lambda at a quality of this stretch.

        Args:
            q: Q in [q_lo, q_hi] (not checked; `plan` clamps it).

        Returns:
            lambda in relative distortion per bit: lam_lo at q_lo, lam_hi at q_hi.
        """
        t = (self.q_hi - q) / (self.q_hi - self.q_lo)
        fall = (2.0 ** (self.steep * t) - 1.0) / (2.0 ** self.steep - 1.0)
        return self.lam_hi + (self.lam_lo - self.lam_hi) * fall


#: The quality scale, low to high: see the module docstring, "Quality scale".  Data, derived by
#: `python -m benchmarks.scale_rd` from benchmarks/results/scale_rd_train.json (training crops).
QUALITY_SEGMENTS: tuple[Segment, ...] = (
    Segment("vqc-f8k1024-v2", 0.00, 3.55, 1.0, 0.5, scale=0.5, lam_hi=0.0, slope=171.8),
    Segment("vqc-f8k1024-v2", 3.55, 5.73, 0.2908, 0.25, scale=0.5625, lam_hi=0.0, slope=59.7),
    Segment("vqc-f8k1024-v2", 5.73, 8.18, 0.2852, 0.25, scale=0.625, lam_hi=0.0, slope=49.7),
    Segment("vqc-f8k1024-v2", 8.18, 10.78, 0.2561, 0.25, scale=0.6875, lam_hi=0.0, slope=36.4),
    Segment("vqc-f8k1024-v2", 10.78, 13.65, 0.2393, 0.25, scale=0.75, lam_hi=0.0, slope=28.5),
    Segment("vqc-f8k1024-v2", 13.65, 16.68, 0.228, 0.25, scale=0.8125, lam_hi=0.0, slope=27.2),
    Segment("vqc-f8k1024-v2", 16.68, 18.78, 0.1644, 0.25, scale=0.875, lam_hi=0.08199, slope=28.5),
    Segment("vqc-f4k512-v2", 18.78, 23.56, 0.2617, 0.5, scale=0.5, lam_hi=0.0, slope=32.9),
    Segment("vqc-f4k512-v2", 23.56, 30.61, 0.2078, 0.25, scale=0.5625, lam_hi=0.0, slope=24.8),
    Segment("vqc-f4k512-v2", 30.61, 38.43, 0.1816, 0.25, scale=0.625, lam_hi=0.0, slope=20.4),
    Segment("vqc-f4k512-v2", 38.43, 46.96, 0.1713, 0.25, scale=0.6875, lam_hi=0.0, slope=17.0),
    Segment("vqc-f4k512-v2", 46.96, 56.16, 0.1626, 0.25, scale=0.75, lam_hi=0.0, slope=15.0),
    Segment("vqc-f4k512-v2", 56.16, 66.24, 0.1502, 0.5, scale=0.8125, lam_hi=0.0, slope=12.8),
    Segment("vqc-f4k512-v2", 66.24, 76.84, 0.1323, 0.25, scale=0.875, lam_hi=0.0, slope=12.0),
    Segment("vqc-f4k512-v2", 76.84, 88.27, 0.1271, 0.25, scale=0.9375, lam_hi=0.0, slope=10.7),
    Segment("vqc-f4k512-v2", 88.27, 100.00, 0.1238, 0.25, scale=1.0, lam_hi=0.0, slope=10.9),
)


def _segment(quality: float) -> Segment:
    """The segment serving a quality (checked: a finite number in [0, 100])."""
    q = float(quality)
    if not (math.isfinite(q) and 0.0 <= q <= 100.0):
        raise ValueError(f"quality must be a number from 0 to 100, got {quality!r}")
    for seg in QUALITY_SEGMENTS:
        if q <= seg.q_hi:
            return seg
    return QUALITY_SEGMENTS[-1]


def plan(quality: float) -> Plan:
    """The model, lambda and scale of a quality on the continuous scale.

    Args:
        quality: Q in [0, 100] (float or int); larger is better and bigger.

    Returns:
        The `Plan` of the `QUALITY_SEGMENTS` stretch holding Q (the lower one at a shared end).

    Raises:
        ValueError: Q is not a finite number in [0, 100].
    """
    seg = _segment(quality)
    q = min(max(float(quality), seg.q_lo), seg.q_hi)
    return Plan(seg.model, seg.lam(q), seg.scale)


def rd_slope(quality: float) -> float:
    """The quality scale's exchange rate at Q: PSNR gained per bpp spent, dB per bpp (measured
    on the training crops across Q's stretch).

    Args:
        quality: Q in [0, 100].

    Returns:
        dB per bpp, > 0.

    Raises:
        ValueError: Q is not a finite number in [0, 100].
    """
    return _segment(quality).slope


def quality_breaks() -> tuple[float, ...]:
    """Qualities where the (model, scale) changes: the q_hi of every stretch whose successor codes
    with another model or scale; the file size may jump just above them.

    Returns:
        Ascending Q values in (0, 100).
    """
    segs = QUALITY_SEGMENTS
    return tuple(a.q_hi for a, b in zip(segs, segs[1:]) if (a.model, a.scale) != (b.model, b.scale))


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


#: The scales the per-image choice may try (coded / display per axis): 1/16 steps from 1/2 to 1,
#: the ladder `benchmarks/scale_rd.py` measures.
SCALE_STEPS: tuple[float, ...] = tuple((8 + k) / 16 for k in range(9))


def scale_candidates(quality: float, level: int) -> list[Plan]:
    """The plans an effort tries for a quality: `plan(quality)` first, then the same model and
    lambda at the `Effort.scales` nearest `SCALE_STEPS` below and above the plan's scale.

    Args:
        quality: Q in [0, 100].
        level: effort 0..9.

    Returns:
        Plans, the quality's own first; one plan when the effort tries no other scale.

    Raises:
        ValueError: bad quality or effort.
    """
    p, eff = plan(quality), effort(level)
    out = [p]
    if not eff.scales:
        return out
    below = [s for s in SCALE_STEPS if s < p.scale][::-1][:eff.scales]
    above = [s for s in SCALE_STEPS if s > p.scale][:eff.scales]
    for s in below + above:
        out.append(Plan(p.model, p.lam, s))
    return out


def pick_scale(points: list[tuple[float, float]], slope: float) -> int:
    """The rule of the per-image scale choice: the candidate with the highest PSNR - slope * bpp.

    Candidates coded at the same lambda land at different rates; `slope` (dB per bpp, the quality
    scale's exchange rate there, `rd_slope`) compares them on the tangent of the quality scale:
    one that is above the line through another at that slope buys more PSNR per bit.

    Args:
        points: (bpp of the whole file, PSNR in dB at the display size) of each candidate, the
            plan's own first.
        slope: dB per bpp, >= 0.

    Returns:
        Index of the chosen candidate; the first on ties.
    """
    scores = [db - slope * bpp for bpp, db in points]
    return int(max(range(len(points)), key=lambda i: (scores[i], -i)))


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

    Every probe is a real encode.  Q = 100 is tried first, then Q = 0.  While a break b (where
    the size may jump: the model or scale changes above b) lies inside the bracket, the next
    probe is the break nearest the interpolated guess, so a few probes find the stretch holding
    the answer; when b fits, b + 0.01 (the next stretch's bottom) is probed too, and b is the
    answer when that is too large.  Inside one stretch, where the size is continuous in Q, the
    next probe interpolates log(size) linearly in Q (regula falsi, with bisection when an end
    repeats), until the fitting file is within `SEARCH_CLOSE` of the target, the interval is
    narrower than `SEARCH_Q_STEP`, or `SEARCH_MAX_PROBES` encodes.

    Args:
        encode_at: Q in [0, 100] -> the bytes of the file at that quality.
        target: the largest acceptable file size in bytes, >= 1 (`target_bytes`).
        breaks: qualities where one (model, scale) stretch ends (`quality_breaks`).

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
        inside = [br for br in breaks if lo_q < br < hi_q]
        if inside:  # first find the stretch: probe the break nearest the guess
            br = min(inside, key=lambda x: abs(x - q))
            n = probe(br)
            if n > target:
                hi_q, hi_n = br, n
                continue
            lo_q, lo_n = br, n
            above = round(br + 0.01, 2)
            if above < hi_q and len(probes) < SEARCH_MAX_PROBES and n < SEARCH_CLOSE * target:
                n = probe(above)
                if n > target:  # the answer is br: the next stretch starts too big
                    break
                lo_q, lo_n = above, n
            side = 0
            continue
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
