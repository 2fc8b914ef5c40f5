"""What the codec needs from an architecture's integer networks, as `typing.Protocol`s.

`vqcodec.codec`, `vqcodec.entropy` and `vqcodec.rdo` use a model's prior and decoder only
through these interfaces, so a new architecture or arithmetic profile provides classes that
satisfy them (and registers a builder in `vqcodec.profiles`); nothing is inherited.  Today:

- `EntropyPrior`: `vqcodec.prior_exact.ExactPrior` (profile exact), `vqcodec.prior_int8.Int8Prior`
  (profile int8);
- `PixelDecoder`: `vqcodec.vqvae.IntDecoder` (exact), `vqcodec.vqvae_int8.Int8Decoder` (int8);
- `WavefrontState`: the per-run state objects that `vqcodec.wavefront.decode` drives.

The protocols are `runtime_checkable`: ``isinstance(x, EntropyPrior)`` checks that the members
exist (not their signatures; tests/test_interfaces.py checks the shipped classes).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np
import torch

#: decode_step(rows, cols, pmfs) -> indices: rows, cols int64 [npos] are a wavefront step's
#: positions, pmfs int64 [n, npos, K] their integer PMFs (`vqcodec.pmf.pmf_from_logits`, rows sum
#: to 2**PMF_BITS); it returns the decoded (or chosen) indices, int64 [n, npos], values in [0, K).
DecodeStep = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@runtime_checkable
class EntropyPrior(Protocol):
    """An integer-exact prior over index grids: the PMF of every position given the positions
    before it in the coding order, bit-identical on every device, batch size and thread count.

    Attributes:
        cfg: the architecture; the codec reads ``cfg.K`` (symbols per position), ``cfg.layers``
            and ``cfg.channels`` (the decoder's memory budget, `vqcodec.entropy.decode_batch_size`).
        device: the torch device the network runs on.
    """

    cfg: Any
    device: torch.device

    def schedule(self, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The coding order of one tile (format/SPEC.md, "Coding order").

        Args:
            height: tile height in latent positions.
            width: tile width in latent positions.

        Returns:
            One (rows, cols) pair of int64 arrays [npos] per step, possibly empty; every
            position appears exactly once.
        """
        ...

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Integer logits of every position in one parallel pass (the encoder's side).

        Args:
            idx: index grids int64 [N, H, W], values in [0, K), on any device.

        Returns:
            Integer-valued logits [N, H, W, K] (float64 or int64) in the profile's units of
            nats, on `device`; `vqcodec.pmf.pmf_from_logits` turns them into PMFs.
        """
        ...

    def decode(self, n: int, height: int, width: int, decode_step: DecodeStep) -> np.ndarray:
        """Decode n index grids of height x width in lock-step, in coding order.

        Args:
            n: grids (tiles) decoded together.
            height: grid height in latent positions.
            width: grid width in latent positions.
            decode_step: called once per non-empty step (`DecodeStep`).

        Returns:
            The index grids, int64 [n, height, width].

        Raises:
            IndexError: decode_step returned an index outside [0, K) (exceptions raised by
                decode_step itself propagate unchanged).
        """
        ...

    def state_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of decoder state `decode` allocates for n grids of height x width (the
        decoder's memory budget, format/SPEC.md "Resource limits")."""
        ...


@runtime_checkable
class StageEntropyPrior(EntropyPrior, Protocol):
    """An `EntropyPrior` over multi-stage codes (architecture "rvq", format/SPEC.md "Architecture
    rvq"): `logits` takes codes int64 [N, S, H, W] and gives [N, S, H, W, K]; `decode` takes
    the stage count and calls decode_step once per (wavefront step, stage), in the coding order.

    Attributes:
        stages: S_max, the most stages a file may code with this prior.
    """

    stages: int

    def decode(self, n: int, height: int, width: int, decode_step: DecodeStep,
               stages: int | None = None) -> np.ndarray:
        """Decode n tiles of `stages` stages (None: S_max); returns codes int64
        [n, stages, height, width]."""
        ...


@runtime_checkable
class PixelDecoder(Protocol):
    """An integer-exact decoder from index grids to pixels, identical on every machine.

    Attributes:
        device: the torch device the network runs on.
        halo: receptive-field radius in latent positions: tiles decoded with this much overlap
            on each side are bit-identical to a whole-image decode (`vqcodec.codec.decode_pixels`).
    """

    device: torch.device
    halo: int

    def __call__(self, idx: torch.Tensor) -> torch.Tensor:
        """Decode index grids to pixels.

        Args:
            idx: int64 [N, h, w], values in [0, K), on any device (a multi-stage decoder:
                codes int64 [N, S, h, w]).

        Returns:
            uint8 [N, 3, f*h, f*w] (R, G, B), on `device` (f: the model's downsampling factor).

        Raises:
            IndexError: an index is outside [0, K) (CPU).
        """
        ...


class WavefrontState(Protocol):
    """The state of one wavefront decode run (n grids of height x width), driven by
    `vqcodec.wavefront.decode`: at step s (from -L to len(sched) - 1) the driver calls
    ``pmfs(s)`` and ``put_indices(s, sym)`` when step s has positions, then ``vertical(s)``.

    Attributes:
        sched: the coding order, as `EntropyPrior.schedule`.
    """

    sched: list[tuple[np.ndarray, np.ndarray]]

    def pmfs(self, s: int) -> np.ndarray:
        """Integer PMFs of step s's positions, int64 [n, npos, K]."""
        ...

    def put_indices(self, s: int, sym: np.ndarray) -> None:
        """Store step s's decoded indices sym int64 [n, npos].

        Raises:
            IndexError: an index is outside [0, K) (CPU).
        """
        ...

    def vertical(self, s: int) -> None:
        """The work that runs ahead of the horizontal stacks at step s (vertical stacks)."""
        ...
