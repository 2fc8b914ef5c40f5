"""Range coding of an index grid with the integer prior's PMFs (constriction's range coder).

Each tile of the grid is an independent stream: its indices are written in the prior's
wavefront order (`EntropyPrior.schedule`), each with the categorical PMF the prior gives it.

A multi-stage prior (architecture "rvq": a prior with a `stages` attribute, e.g.
`vqcodec.prior_stages_int8.Int8StagePrior`) codes "codes" int64 [S, H, W] instead of an index
grid [H, W]: for each wavefront step, for each stage s < S, the step's positions in increasing
row order (format/SPEC.md, "Coding order"); PMFs from `prior.logits(codes [N, S, H, W]) ->
[N, S, H, W, K]` when encoding and from `prior.decode(n, h, w, step, stages=S)` when decoding.
Single-stage priors (no `stages` attribute) keep [H, W] grids and their payloads byte for byte.
Encoding takes every PMF from one parallel pass of the prior; decoding is autoregressive and
runs all tiles of the same shape in one batch, one wavefront at a time.

constriction: `stream.queue.RangeEncoder` / `RangeDecoder` with the model family
`stream.model.Categorical(perfect=False)`; the integer PMFs (total 2**20) are handed over as
float64 values, which represent them exactly, so both ends give constriction identical input.
A payload is the coder's 32-bit words, little-endian.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

import constriction
import numpy as np
import torch

from vqcodec.constants import MAX_PRIOR_TILE, MAX_PRIOR_TILE_POSITIONS
from vqcodec.errors import VqcFormatError, VqcLimitError
from vqcodec.pmf import pmf_from_logits
from vqcodec.interfaces import EntropyPrior

_MODEL = constriction.stream.model.Categorical(perfect=False)

TileSlices = list[tuple[slice, slice]]


ENCODE_BATCH = 4  # tiles per parallel prior pass: about 100 MB per 64x64 tile at K=512

# Decoder budget (format/SPEC.md, "Resource limits"): tiles of equal shape are decoded in lock-step
# while their wavefront state (`EntropyPrior.state_bytes`), their positions and one step's PMFs (about
# 6 int64/float64 copies, 8 bytes per entry) stay within these bounds.
PRIOR_STATE_BYTES = 64 * 2**20  # wavefront state of the tiles in flight (3.7 MB per 64x64 tile at C=128, L=4)
DECODE_POSITIONS = 2**16  # latent positions of the tiles in flight (indices: ~0.3 KB per position)
PMF_ENTRIES = 2**20  # PMF entries (positions x K) of one wavefront step (~8 MB per copy)


def check_tile_shape(h: int, w: int) -> None:
    """Check that an h x w prior tile fits the decoder's budget (format/SPEC.md, "Decoder limits").

    Args:
        h: tile rows, in latent positions.
        w: tile columns, in latent positions.

    Raises:
        VqcLimitError: a side is above MAX_PRIOR_TILE or h * w is above
            MAX_PRIOR_TILE_POSITIONS.
    """
    if h > MAX_PRIOR_TILE or w > MAX_PRIOR_TILE or h * w > MAX_PRIOR_TILE_POSITIONS:
        raise VqcLimitError(f"prior tiles of {h}x{w} latent positions are above this decoder's limit "
                            f"({MAX_PRIOR_TILE} per side, {MAX_PRIOR_TILE_POSITIONS} positions; vqc writes 64x64)")


def is_multistage(prior) -> bool:
    """True for a multi-stage prior (architecture "rvq": it has a `stages` attribute, S_max),
    whose codes are int64 [S, H, W]; False for a single-stage prior ([H, W] grids)."""
    return getattr(prior, "stages", None) is not None


def decode_batch_size(prior: EntropyPrior, h: int, w: int, stages: int = 1) -> int:
    """How many h x w tiles to decode in lock-step within the decoder budget.

    Args:
        prior: the integer prior (its layers L, channels C and codebook size K set the costs).
        h: tile rows, in latent positions.
        w: tile columns, in latent positions.
        stages: S, stages coded per position (1 for a single-stage prior): a wavefront step
            has S times the PMF entries (one batch per stage); the state is per position.

    Returns:
        The largest n >= 1 with n tiles' state within PRIOR_STATE_BYTES, n * h * w within
        DECODE_POSITIONS and one wavefront step's PMFs, all S stages, within PMF_ENTRIES
        (n = 1 always).
    """
    cfg = prior.cfg
    wavefront = min(h, -(-w // (cfg.layers + 1)))  # most positions of one tile in one step
    return max(1, min(PRIOR_STATE_BYTES // prior.state_bytes(1, h, w), DECODE_POSITIONS // (h * w),
                      PMF_ENTRIES // (wavefront * cfg.K * stages)))


def group_by_shape(grid_shape: tuple[int, int], tiles: Sequence[tuple[slice, slice]],
                    batch: Callable[[int, int], int]) -> Iterator[tuple[tuple[int, int], list[int]]]:
    """Group tiles of equal shape in batches of at most batch(h, w) tiles.

    Lazy: holds at most one pending batch per shape (a grid has at most 4 tile shapes).

    Args:
        grid_shape: (H, W) of the index grid, in latent positions (resolves open slices).
        tiles: (row slice, column slice) per tile, in the container's order.
        batch: (h, w) -> the most tiles of that shape per batch.

    Yields:
        ((h, w), [tile numbers]): full batches as they fill up, then the remainders.
    """
    pending: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k in range(len(tiles)):
        rs, cs = tiles[k]
        shape = (len(range(*rs.indices(grid_shape[0]))), len(range(*cs.indices(grid_shape[1]))))
        members = pending[shape]
        members.append(k)
        if len(members) >= batch(*shape):
            yield shape, pending.pop(shape)
    yield from pending.items()


def _order(prior: EntropyPrior, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    sched = prior.schedule(h, w)
    return np.concatenate([r for r, _ in sched]), np.concatenate([c for _, c in sched])


def coding_order(prior, h: int, w: int, stages: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The coding order of an h x w tile of `stages` stages (format/SPEC.md, "Coding order"):
    for each wavefront step of `prior.schedule(h, w)`, for each stage s < stages, the step's
    positions in increasing row order.

    Args:
        prior: a prior with `schedule(h, w)` (its layers L set the wavefront).
        h: tile rows, in latent positions.
        w: tile columns, in latent positions.
        stages: S >= 1.

    Returns:
        (stage, rows, cols), int64 arrays of S * h * w entries: the i-th coded index is
        codes[stage[i], rows[i], cols[i]].
    """
    parts = [(np.full(len(r), s, dtype=np.int64), r, c)
             for r, c in prior.schedule(h, w) if len(r) for s in range(stages)]
    return tuple(np.concatenate([p[i] for p in parts]).astype(np.int64) for i in range(3))


def _tile(idx: np.ndarray, tile: tuple[slice, slice]) -> np.ndarray:
    """One tile of a grid [H, W] or of codes [S, H, W] (the last two axes are sliced)."""
    return idx[(Ellipsis, *tile)]


def _check_codes(prior, idx: np.ndarray) -> None:
    """ValueError unless idx is [S, H, W] (1 <= S <= prior.stages) for a multi-stage prior and
    [H, W] for a single-stage one."""
    if is_multistage(prior):
        if idx.ndim != 3 or not 1 <= idx.shape[0] <= prior.stages:
            raise ValueError(f"codes of a {prior.stages}-stage prior must be [S, H, W] with "
                             f"1 <= S <= {prior.stages}, got shape {idx.shape}")
    elif idx.ndim != 2:
        raise ValueError(f"index grid of a single-stage prior must be [H, W], got shape {idx.shape}")


def encode_grid(prior: EntropyPrior, idx: np.ndarray, tiles: TileSlices) -> list[bytes]:
    """Range-code an index grid, one payload per tile (format/SPEC.md, "Range coder", "Encoder").

    Every PMF comes from one parallel pass of the prior (`EntropyPrior.logits`, ENCODE_BATCH tiles
    at a time); indices are written in the coding order ("Coding order": the prior's wavefront
    order, and for a multi-stage prior, per wavefront step, stage by stage).

    Args:
        prior: the integer prior of the model (single- or multi-stage, `is_multistage`).
        idx: index grid int64 [H, W] (single-stage prior) or codes int64 [S, H, W] with
            1 <= S <= prior.stages (multi-stage prior), values in [0, K).
        tiles: (row slice, column slice) per tile, in the container's order.

    Returns:
        The payloads (bytes, a multiple of 4 long: little-endian 32-bit words), one per tile,
        in that order.

    Raises:
        ValueError: idx has the wrong number of dimensions or stages for the prior.
    """
    _check_codes(prior, idx)
    payloads: list[bytes] = [b""] * len(tiles)
    for (h, w), members in group_by_shape(idx.shape[-2:], tiles, lambda h, w: ENCODE_BATCH):
        batch = np.stack([_tile(idx, tiles[k]) for k in members])
        logits = prior.logits(torch.from_numpy(batch)).to(torch.int64).cpu().numpy()
        if idx.ndim == 3:
            order = coding_order(prior, h, w, idx.shape[0])
        else:
            order = _order(prior, h, w)
        for b, k in enumerate(members):
            pmfs = pmf_from_logits(logits[(b, *order)])
            enc = constriction.stream.queue.RangeEncoder()
            enc.encode(batch[(b, *order)].astype(np.int32), _MODEL, pmfs.astype(np.float64))
            payloads[k] = enc.get_compressed().astype("<u4").tobytes()
    return payloads


class _TileStream:
    """The range decoder of one tile's payload and the conformance rule of format/SPEC.md
    ("Resource limits and conforming payloads"): the decoder needs 2 words to start and one per
    renormalisation; it may need at most one word past the payload's n words (read as 0), and
    when the tile is done it must have needed at least n words.

    The renormalisation count R is kept by re-encoding the decoded indices with the same PMFs
    (`RangeEncoder.pos()[0]` is R; the coder's range evolves identically in both directions).
    """

    def __init__(self, k: int, payload: bytes) -> None:
        words = np.frombuffer(payload, dtype="<u4").astype(np.uint32)
        self.k, self.n = k, len(words)
        if self.n == 0:
            raise VqcFormatError(f"payload of tile {k} is empty: a tile's payload needs at least one 32-bit word")
        self.dec = constriction.stream.queue.RangeDecoder(words)
        self.enc = constriction.stream.queue.RangeEncoder()

    def needed(self) -> int:
        """Words the decoder has needed so far: 2 + renormalisations."""
        return 2 + self.enc.pos()[0]

    def decode(self, pmfs: np.ndarray) -> np.ndarray:
        """Decode one index per row of pmfs float64 [n, K]; VqcFormatError as soon as the
        decoder needs more than one word past the payload's end."""
        try:
            sym = self.dec.decode(_MODEL, pmfs)
            self.enc.encode(sym, _MODEL, pmfs)
        except Exception as exc:  # constriction raises plain errors on invalid streams
            raise VqcFormatError(f"payload of tile {self.k} is not decodable: {exc}") from None
        if self.needed() > self.n + 1:
            raise VqcFormatError(f"payload of tile {self.k} is too short: its {self.n} words run out "
                                 "before the tile's last index (not a conforming payload)")
        return sym

    def finish(self) -> None:
        """VqcFormatError if words remain unread after the tile's last index."""
        if self.needed() < self.n:
            raise VqcFormatError(f"payload of tile {self.k} has {self.n - self.needed()} unused 32-bit "
                                 "words after the tile's last index (not a conforming payload)")


def decode_grid(prior: EntropyPrior, payloads: Sequence[bytes], grid_h: int, grid_w: int,
                tiles: Sequence[tuple[slice, slice]], stages: int = 1) -> np.ndarray:
    """Inverse of `encode_grid`: payloads -> index grid (format/SPEC.md, "Range coder", "Decoder").

    Tiles of equal shape are decoded in lock-step, as many as `decode_batch_size` allows, so
    the memory in use depends on the model and the budget above, never on the header alone;
    `tiles` may be a lazy sequence (e.g. `container.Header.tiles`).

    Args:
        prior: the integer prior of the model named by the file.
        payloads: one payload (bytes, little-endian 32-bit words) per tile.
        grid_h: latent grid rows.
        grid_w: latent grid columns.
        tiles: (row slice, column slice) per tile, in the container's order.
        stages: S, the file's stages (`container.Header.stages`): 1..prior.stages for a
            multi-stage prior, 1 for a single-stage one (the caller checks it against the
            model first: a larger S is a format error, `codec`).

    Returns:
        Index grid int64 [grid_h, grid_w] (single-stage prior) or codes int64 [S, grid_h,
        grid_w] (multi-stage prior, `is_multistage`), values in [0, K).

    Raises:
        VqcFormatError: a payload is not conforming (empty, too short, words left over) or not
            decodable; raised as soon as it is detected.
        VqcLimitError: a tile is above MAX_PRIOR_TILE / MAX_PRIOR_TILE_POSITIONS.
        ValueError: stages outside 1..prior.stages (1 for a single-stage prior).
    """
    multi = is_multistage(prior)
    if not 1 <= stages <= (prior.stages if multi else 1):
        raise ValueError(f"{stages} stages for a prior of {prior.stages if multi else 1}")
    out = np.zeros((stages, grid_h, grid_w) if multi else (grid_h, grid_w), dtype=np.int64)
    batch = lambda h, w: decode_batch_size(prior, h, w, stages)  # noqa: E731
    for (h, w), members in group_by_shape((grid_h, grid_w), tiles, batch):
        check_tile_shape(h, w)
        streams = [_TileStream(k, payloads[k]) for k in members]

        def step(rows, cols, pmfs):
            sym = np.empty((len(streams), len(rows)), dtype=np.int64)
            for b, stream in enumerate(streams):
                sym[b] = stream.decode(pmfs[b].astype(np.float64))
            return sym

        if multi:
            grids = prior.decode(len(members), h, w, step, stages=stages)
        else:
            grids = prior.decode(len(members), h, w, step)
        for b, k in enumerate(members):
            streams[b].finish()
            out[(Ellipsis, *tiles[k])] = grids[b]
    return out


def ideal_bits(prior: EntropyPrior, idx: np.ndarray) -> float:
    """Information content of a whole index grid (or multi-stage codes) under the integer
    prior, coded as one tile.

    The sum of -log2(p) with p = pmf / 2**20 (`pmf_from_logits`).  For evaluation, not for
    coding: the real payloads are per tile and add the range coder's overhead.

    Args:
        prior: the integer prior.
        idx: index grid int64 [H, W] (single-stage prior) or codes int64 [S, H, W]
            (multi-stage prior), values in [0, K).

    Returns:
        The information content in bits (float).

    Raises:
        ValueError: idx has the wrong number of dimensions or stages for the prior.
    """
    _check_codes(prior, idx)
    logits = prior.logits(torch.from_numpy(idx[None])).cpu().numpy().astype(np.int64)[0]
    pmfs = pmf_from_logits(logits.reshape(-1, logits.shape[-1]))
    p = pmfs[np.arange(idx.size), idx.reshape(-1)] / float(pmfs[0].sum())
    return float(-np.log2(p).sum())
