"""The coding order shared by the integer priors (format/SPEC.md, "Coding order") and the
machinery of their wavefront decoders.

Position (i, j) of a tile is coded at step t = j + (L + 1) * i (L: the prior's layers), so a
step's positions have all their context in earlier steps and are decoded together.  A prior's
wavefront decoder is a state object (`vqcodec.interfaces.WavefrontState`: `sched`, `pmfs(s)`,
`put_indices(s, sym)`, `vertical(s)`) that `decode` drives; `wavefront_slots` lays out its state
in rings of L + 4 columns, `vertical_ranges` says which layer's vertical stack runs at a step.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vqcodec import intops
from vqcodec.interfaces import DecodeStep, WavefrontState


def schedule(layers: int, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The wavefront coding order of one tile (format/SPEC.md, "Coding order").

    Args:
        layers: the prior's layers L.
        height: tile height H in latent positions.
        width: tile width W in latent positions.

    Returns:
        W + (L+1)(H-1) steps; entry t is (rows, cols), int64 arrays of the positions with
        j + (L+1) i == t, in increasing row order.
    """
    step = layers + 1
    steps = []
    for t in range(width + step * (height - 1)):
        rows = np.arange(height)
        cols = t - step * rows
        ok = (cols >= 0) & (cols < width)
        steps.append((rows[ok], cols[ok]))
    return steps


@torch.no_grad()
def decode(make_state: Callable[[int, int, int], WavefrontState], layers: int, device: torch.device,
           n: int, height: int, width: int, decode_step: DecodeStep) -> np.ndarray:
    """Decode n index grids of shape (height, width) in lock-step, in coding order, on at most
    the idle cores (`intops.LoadAwareThreads`, looked up every 64 steps).

    Args:
        make_state: make_state(n, height, width) -> the prior's wavefront state
            (`vqcodec.interfaces.WavefrontState`), built once the thread count is set.
        layers: the prior's layers L: the vertical stacks run L steps ahead of the horizontal
            ones, so the loop starts at step -L.
        device: where the prior runs (threads are limited only on the CPU).
        n: number of grids (tiles) decoded together.
        height: grid height in latent positions.
        width: grid width in latent positions.
        decode_step: called once per non-empty wavefront step as decode_step(rows, cols,
            pmfs): rows, cols int64 [npos] are the step's positions, pmfs int64 [n, npos, K]
            their integer PMFs (`vqcodec.pmf.pmf_from_logits`); it returns the decoded
            indices, int64 [n, npos] (array-like), values in [0, K).

    Returns:
        The index grids, int64 [n, height, width].

    Raises:
        IndexError: decode_step returned an index outside [0, K) (raised by the state's
            put_indices; exceptions raised by decode_step itself propagate unchanged).
    """
    with intops.LoadAwareThreads(device) as threads:
        return drive(make_state(n, height, width), layers, n, height, width, decode_step, threads)


def drive(wf: WavefrontState, layers: int, n: int, height: int, width: int, decode_step: DecodeStep,
          threads: intops.LoadAwareThreads) -> np.ndarray:
    """`decode`'s loop over the steps of one wavefront state `wf` (same arguments and result);
    `threads` is looked at again every 64 steps."""
    out = np.zeros((n, height, width), dtype=np.int64)
    sched = wf.sched
    for s in range(-layers, len(sched)):
        if s % 64 == 63:
            threads.update()
        if s >= 0 and len(sched[s][0]):
            rows, cols = sched[s]
            sym = np.asarray(decode_step(rows, cols, wf.pmfs(s)), dtype=np.int64)
            out[:, rows, cols] = sym
            wf.put_indices(s, sym)
        wf.vertical(s)
    return out


def vertical_ranges(bounds: list[tuple[int, int]], layers: int, s: int):
    """The vertical-stack work of wavefront step s: layer l runs at the positions of step
    s + L - l (`vqcodec.prior_exact._Wavefront`).

    Args:
        bounds: per step, its (start, end) rows in the flat [positions * n] order.
        layers: L.
        s: the step, -L <= s < len(bounds).

    Yields:
        (l, start, end) for each layer with a non-empty step.
    """
    for l in range(layers):
        t = s + layers - l
        if 0 <= t < len(bounds):
            a, b = bounds[t]
            if a < b:
                yield l, a, b


def wavefront_slots(wf, sched, n: int, height: int, width: int, L: int, dev) -> None:
    """Set the flat state slots and step bounds of a wavefront decoder on `wf` (the layout of
    `vqcodec.prior_exact._Wavefront`, shared with `vqcodec.prior_int8`).

    Sets: zero (the index of the zero row), bounds (per step, its [start, end) rows in the flat
    [positions * n] order), emb_at, h_prev_at, hs_at, patch_at, vg_at (int64 index tensors on dev).
    """
    ring = min(width, L + 4)
    plane = n * height * ring
    wf.zero = (2 * L - 1) * plane

    # positions of all steps in schedule order; step t is rows start[t]:end[t] of a flat
    # [positions * n] array (row k * n + b: position k of grid b)
    r = np.concatenate([rr for rr, _ in sched])[:, None]
    cc = np.concatenate([cols for _, cols in sched])[:, None]
    end = np.cumsum([len(rr) for rr, _ in sched]) * n
    wf.bounds = list(zip((end - np.diff(end, prepend=0)).tolist(), end.tolist()))
    grid = np.arange(n)[None, :]

    def slots(kind, dr=0, dc=0, check=False) -> np.ndarray:
        s = ((kind * n + grid) * height + r + dr) * ring + (cc + dc) % ring
        if check:
            s = np.where((r + dr >= 0) & (cc + dc >= 0) & (cc + dc < width), s, wf.zero)
        return s.reshape(-1)

    def by_step(per_layer: list[np.ndarray]) -> np.ndarray:
        # [L] arrays in position order -> per step an [L, rows of the step] block
        return np.concatenate([np.stack([x[a:b] for x in per_layer]).reshape(-1)
                               for a, b in wf.bounds])

    def tensor(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)).to(dev)

    wf.emb_at = tensor(slots(0))
    wf.h_prev_at = tensor(by_step([slots(0 if l == 0 else L + l - 1, 0, -1, True)
                                   for l in range(L)]))
    wf.hs_at = tensor(by_step([slots(L + l) for l in range(L - 1)])) if L > 1 else None
    # vertical stack of layer l: input patch rows i-1 (l = 0) or i-1..i, columns j-1..j+1
    wf.patch_at = [tensor(np.stack([slots(l, dr, dc, True) for dr in ((-1,) if l == 0 else (-1, 0))
                                    for dc in (-1, 0, 1)], 1)) for l in range(L)]
    wf.vg_at = [tensor(slots(l + 1)) for l in range(L - 1)]
