"""Range coding of an index grid with the integer prior's PMFs (constriction's range coder).

Each tile of the grid is an independent stream: its indices are written in the prior's
wavefront order (`IntPrior.schedule`), each with the categorical PMF the prior gives it.
Encoding takes every PMF from one parallel pass of the prior; decoding is autoregressive and
runs all tiles of the same shape in one batch, one wavefront at a time.

constriction: `stream.queue.RangeEncoder` / `RangeDecoder` with the model family
`stream.model.Categorical(perfect=False)`; the integer PMFs (total 2**20) are handed over as
float64 values, which represent them exactly, so both ends give constriction identical input.
A payload is the coder's 32-bit words, little-endian.
"""

from __future__ import annotations

from collections import defaultdict

import constriction
import numpy as np
import torch

from vqcodec.errors import VqcFormatError
from vqcodec.prior import IntPrior, pmf_from_logits

_MODEL = constriction.stream.model.Categorical(perfect=False)

TileSlices = list[tuple[slice, slice]]


DECODE_BATCH = 8  # tiles decoded in lock-step: about 40 MB of state per 64x64 tile
ENCODE_BATCH = 4  # tiles per parallel prior pass: about 100 MB per 64x64 tile at K=512


def _group_by_shape(grid_shape: tuple[int, int], tiles: TileSlices,
                    batch: int) -> list[tuple[tuple[int, int], list[int]]]:
    """Tiles of equal shape in batches of at most `batch`: [((h, w), [tile numbers])]."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k, (rs, cs) in enumerate(tiles):
        h = len(range(*rs.indices(grid_shape[0])))
        w = len(range(*cs.indices(grid_shape[1])))
        groups[(h, w)].append(k)
    return [(shape, members[i:i + batch]) for shape, members in groups.items()
            for i in range(0, len(members), batch)]


def _order(prior: IntPrior, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    sched = prior.schedule(h, w)
    return np.concatenate([r for r, _ in sched]), np.concatenate([c for _, c in sched])


def encode_grid(prior: IntPrior, idx: np.ndarray, tiles: TileSlices) -> list[bytes]:
    """Range-code an index grid, one payload per tile.

    idx: int64 [H, W] with values in [0, K); tiles: (row slice, column slice) per tile, in the
    container's order.  Returns the payloads (bytes, a multiple of 4 long) in that order.
    """
    payloads: list[bytes] = [b""] * len(tiles)
    for (h, w), members in _group_by_shape(idx.shape, tiles, ENCODE_BATCH):
        batch = np.stack([idx[tiles[k]] for k in members])
        logits = prior.logits(torch.from_numpy(batch)).to(torch.int64).cpu().numpy()
        rows, cols = _order(prior, h, w)
        for b, k in enumerate(members):
            pmfs = pmf_from_logits(logits[b, rows, cols])
            enc = constriction.stream.queue.RangeEncoder()
            enc.encode(batch[b, rows, cols].astype(np.int32), _MODEL, pmfs.astype(np.float64))
            payloads[k] = enc.get_compressed().astype("<u4").tobytes()
    return payloads


def decode_grid(prior: IntPrior, payloads: list[bytes], grid_h: int, grid_w: int,
                tiles: TileSlices) -> np.ndarray:
    """Inverse of `encode_grid`: payloads -> index grid int64 [grid_h, grid_w].

    Raises VqcFormatError when a payload cannot be decoded (e.g. a crafted file whose CRC is
    valid but whose payload is not a range-coder stream).
    """
    out = np.zeros((grid_h, grid_w), dtype=np.int64)
    for (h, w), members in _group_by_shape((grid_h, grid_w), tiles, DECODE_BATCH):
        decoders = []
        for k in members:
            words = np.frombuffer(payloads[k], dtype="<u4").astype(np.uint32)
            decoders.append(constriction.stream.queue.RangeDecoder(words))

        def step(rows, cols, pmfs):
            sym = np.empty((len(decoders), len(rows)), dtype=np.int64)
            for b, dec in enumerate(decoders):
                try:
                    sym[b] = dec.decode(_MODEL, pmfs[b].astype(np.float64))
                except Exception as exc:  # constriction raises plain errors on invalid streams
                    raise VqcFormatError(f"payload of tile {members[b]} is not decodable: {exc}") from None
            return sym

        grids = prior.decode(len(members), h, w, step)
        for b, k in enumerate(members):
            out[tiles[k]] = grids[b]
    return out


def ideal_bits(prior: IntPrior, idx: np.ndarray) -> float:
    """Information content in bits of a whole index grid int64 [H, W] under the integer prior
    (one tile): sum of -log2(p) with p = pmf / 2**20.  For evaluation, not for coding."""
    logits = prior.logits(torch.from_numpy(idx[None])).cpu().numpy().astype(np.int64)[0]
    pmfs = pmf_from_logits(logits.reshape(-1, logits.shape[-1]))
    p = pmfs[np.arange(idx.size), idx.reshape(-1)] / float(pmfs[0].sum())
    return float(-np.log2(p).sum())
