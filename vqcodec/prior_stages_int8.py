"""The stage prior of architecture "rvq" in the int8 arithmetic profile (format/SPEC.md,
"Architecture rvq"; profile int8 as format/SPEC.md, "Profile int8").

The integer twin of `vqcodec.prior_stages.StagePrior`: v2's gated PixelCNN trunk (van den Oord
et al., "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016), evaluated once per
latent position, and a small depth head per stage (Lee et al., "Autoregressive Image Generation
using Residual Quantization", CVPR 2022), all in int8 weights, s8/u8 activations, exact integer
accumulators and requantisation by an integer multiplier and shift (Jacob et al., CVPR 2018).

The exact integers, with S the stages a file codes (1 <= S <= S_max = `cfg.stages`):

- trunk input E(p) = clamp(sum_{s<S} embed[s, i_s(p)], -127, 127) (an int32 sum, then the clamp);
- trunk layers 0..L-1 exactly as v2 (`vqcodec.prior_int8`), giving r = relu(H_{L-1}(p));
- head of stage s: acc1[o] = out1_s.B[o] + conv_out1_s(r)[o]
  + sum_{t<s} cond_mult_s[t, o] * cond_s[t, i_t(p), o] (cond_s s8, cond_mult_s in [0, 2**16));
  u = rq_out1_s(acc1, u8); logits_s(p) = rq_out2_s(out2_s.B + conv_out2_s(u), -2**20, 2**20);
  the PMF as format/SPEC.md, "PMF from logits".

Coding order within a tile: for each wavefront step t of v2's schedule, for each stage
s = 0..S-1, the step's positions in increasing row order.  With S = 1 every integer is v2's
(embed[0] as v2's embed, heads.0 as out1/out2), which the tests check.

Three paths compute the same integers, as for v2: `Int8StagePrior.logits` (the encoder's
parallel pass, written as the formulas: `prior_int8.trunk_parallel` and `_Head.parallel`), the
fused CPU wavefront (`_StageFusedWavefront`: v2's `_FusedWavefront` trunk and compiled kernels,
the conditioning rows added to out1's int32 accumulator before `kernels.requant_u8`) and the
torch-only wavefront (`_StageWavefront`: v2's `_Int8Wavefront` trunk, float64-exact
requantisation; other devices, and the reference the tests compare the fused one with).  Each
position's trunk embedding is stored once its last stage is decoded.  All three add the int32
products cond_mult_s[t, None, :] * cond_s[t] (|value| <= 127 * (2**16 - 1) < 2**23, exact),
tabulated once when the prior is built (`_StageWeights`).

Shapes: codes int64 [N, S, H, W] (stage-major), values in [0, K); logits int64
[N, S, H, W, K] in units of 2**-8 nats; PMFs int64 [..., K] summing to 2**20.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from vqcodec import int8, intops
from vqcodec.int8 import ACC_BOUND, Int8Layer, check_bound
from vqcodec import wavefront
from vqcodec.pmf import pmf_from_logits
from vqcodec.prior_int8 import (PREFIX, _FusedWavefront, _Head, _Int8Wavefront, _rows,
                                _TrunkWeights, read_embed, trunk_state_bytes, read_layer, read_trunk, reject_unexpected,
                                trunk_parallel, trunk_tensors)
from vqcodec.prior_stages import StagePriorConfig

DecodeStep = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class Int8StagePrior:
    """Integer stage prior of profile int8 (module docstring; format/SPEC.md, "Architecture rvq").

    Built from a model file's `int8.prior.*` tensors (`from_tensors`), e.g. those written by
    `vqcodec.train.calibrate_stages`.  Logits and PMFs, from the parallel pass or either
    wavefront decoder, are bit-identical on every device, batch size and thread count.

    Attributes:
        cfg: the architecture (K, C, L, stages = S_max).
        device: where the integer network runs.
        embed_q: int8 [S_max, K, C], s8.
        layers: the trunk (`prior_int8.read_trunk`'s dicts).
        heads: per stage s, (out1 `Int8Layer` [C, C, 1, 1], out2 `Int8Layer` [K, C, 1, 1],
            cond int8 [s, K, C] in [-127, 127], cond_mult int32 [s, C] in [0, 2**16); both
            None for s = 0).
        fused: decode on the CPU with the compiled kernels (`_StageFusedWavefront`); False:
            the torch-only wavefront (`_StageWavefront`; always used on other devices).
    """

    fused = True

    def __init__(self, cfg: StagePriorConfig, embed: torch.Tensor, layers: list[dict],
                 heads: list[tuple[Int8Layer, Int8Layer, torch.Tensor | None, torch.Tensor | None]],
                 device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.embed_q = embed
        self.layers = layers
        self.heads = heads
        self._fast = _StageWeights(self)

    @property
    def stages(self) -> int:
        """S_max: the most stages this prior codes."""
        return self.cfg.stages

    # ---- file form -------------------------------------------------------------------------
    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], cfg: StagePriorConfig,
                     device: torch.device | str = "cpu") -> "Int8StagePrior":
        """Read and validate the `int8.prior.*` tensors of an rvq model file.

        Expected: `embed` I8 [S, K, C]; `layers.{l}.*` as v2; per stage s < S
        `heads.{s}.out1` (layer [C, C, 1, 1], s8 input) and `heads.{s}.out2` (layer
        [K, C, 1, 1], u8 input); `heads.{s}.cond` I8 [s, K, C] and `heads.{s}.cond_mult` I32
        [s, C] for s >= 1 only.  Nothing else under `int8.prior.` (no v2 `out1`/`out2`).

        Args:
            tensors: the file's tensors (others than `int8.prior.*` are ignored).
            cfg: the prior's architecture (the file's "prior_config", with "stages").
            device: where the network runs.

        Returns:
            The prior.

        Raises:
            ValueError (one line): a tensor is missing, unexpected, of the wrong dtype or shape,
                a value is outside its range (weights [-63, 63], embeddings [-127, 127],
                multipliers, shifts, gate T in [1, 127], cond in [-127, 127], cond_mult in
                [0, 2**16)), or an accumulator can reach 2**24 (out1_s's bound counts its
                conditioning terms, 127 * cond_mult).
        """
        K, c, S = cfg.K, cfg.channels, cfg.stages
        known: set[str] = set()
        embed = read_embed(tensors, (S, K, c), known)
        layers = read_trunk(tensors, cfg, known)
        heads = [_read_head(tensors, s, K, c, known) for s in range(S)]
        reject_unexpected(tensors, known)
        return cls(cfg, embed, layers, heads, device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The `int8.prior.*` tensors of a model file (inverse of `from_tensors`).

        Returns:
            name -> CPU tensor (int8 weights, embeddings and conditioning tables, int32
            everything else).
        """
        out = {PREFIX + "embed": self.embed_q.cpu().contiguous(), **trunk_tensors(self.layers)}
        for s, (out1, out2, cond, cond_mult) in enumerate(self.heads):
            out.update(out1.tensors(f"{PREFIX}heads.{s}.out1"))
            out.update(out2.tensors(f"{PREFIX}heads.{s}.out2"))
            if cond is not None:
                out[f"{PREFIX}heads.{s}.cond"] = cond.to(torch.int8).cpu().contiguous()
                out[f"{PREFIX}heads.{s}.cond_mult"] = cond_mult.to(torch.int32).cpu().contiguous()
        return out

    # ---- coding order ----------------------------------------------------------------------
    def schedule(self, height: int, width: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """v2's wavefront steps of one tile (format/SPEC.md, "Coding order"); every stage of a
        step is coded before the next step (`decode`).

        Returns:
            As `vqcodec.wavefront.schedule`: per step t, (rows, cols) int64 of the
            positions with j + (L + 1) i == t, in increasing row order.
        """
        return wavefront.schedule(self.cfg.layers, height, width)

    def _stages(self, stages: int | None) -> int:
        s = self.stages if stages is None else stages
        if not 1 <= s <= self.stages:
            raise ValueError(f"stages must be in 1..{self.stages}, got {s}")
        return s

    # ---- parallel pass (reference arithmetic) ----------------------------------------------
    @torch.no_grad()
    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """Integer logits of every stage of every position in one parallel pass (the encoder's
        side), written as the formulas of the module docstring.

        Args:
            idx: codes int64 [N, S, H, W], 1 <= S <= S_max, values in [0, K), any device.

        Returns:
            int64 [N, S, H, W, K] in units of 2**-8 nats, in [-2**20, 2**20], on `self.device`.

        Raises:
            ValueError: idx is not 4-D or S is outside 1..S_max.
        """
        if idx.dim() != 4:
            raise ValueError(f"codes must be [N, S, H, W], got shape {tuple(idx.shape)}")
        n, S, hh, ww = idx.shape
        self._stages(S)
        f = self._fast
        idx = idx.to(self.device)
        e = sum(f.embed32[s][idx[:, s]] for s in range(S)).clamp_(-int8.S8_MAX, int8.S8_MAX)
        r = trunk_parallel(f, self.layers, e.to(torch.int8))
        flat = [idx[:, s].reshape(-1) for s in range(S)]
        out = []
        for s in range(S):
            cond = sum(f.cond[s][t][flat[t]].to(torch.int64) for t in range(s)) if s else None
            out.append(f.heads[s].parallel(r, cond).view(n, hh, ww, -1))
        return torch.stack(out, 1)

    # ---- wavefront decoder -----------------------------------------------------------------
    @torch.no_grad()
    def decode(self, n: int, height: int, width: int, decode_step: DecodeStep,
               stages: int | None = None) -> np.ndarray:
        """Decode n tiles of height x width positions and `stages` stages in lock-step, in the
        coding order (module docstring).

        Per wavefront step: the trunk's horizontal stacks once (relu(H_{L-1}) of the step's
        positions), then per stage its head and one decode_step call, then the positions'
        trunk embeddings E; then the vertical stacks.  CPU: `_StageFusedWavefront`; other
        devices or `fused = False`: `_StageWavefront`.  Runs on at most the idle cores
        (`intops.LoadAwareThreads`).

        Args:
            n: tiles decoded together.
            height: tile height in latent positions.
            width: tile width in latent positions.
            decode_step: called once per (non-empty wavefront step, stage) as decode_step(rows,
                cols, pmfs): rows, cols int64 [npos] the step's positions, pmfs int64
                [n, npos, K] the stage's integer PMFs there; returns the decoded indices
                int64 [n, npos] (array-like), values in [0, K).
            stages: S, 1..S_max (None: S_max).

        Returns:
            The codes, int64 [n, stages, height, width].

        Raises:
            ValueError: stages outside 1..S_max.
            IndexError: decode_step returned an index outside [0, K) (exceptions raised by
                decode_step itself propagate unchanged).
        """
        S = self._stages(stages)
        with intops.LoadAwareThreads(self.device) as threads:
            wf = self._wavefront(n, height, width, S)
            out = np.zeros((n, S, height, width), dtype=np.int64)
            sched = wf.sched
            for t in range(-self.cfg.layers, len(sched)):
                if t % 64 == 63:
                    threads.update()
                if t >= 0 and len(sched[t][0]):
                    rows, cols = sched[t]
                    wf.begin(t)
                    for s in range(S):
                        sym = np.asarray(decode_step(rows, cols, wf.stage_pmfs(s)), dtype=np.int64)
                        out[:, s, rows, cols] = sym
                        wf.put_stage(sym)
                    wf.store_embeddings(t)
                wf.vertical(t)
        return out

    def state_bytes(self, n: int, height: int, width: int) -> int:
        """Bytes of wavefront state `decode` allocates for n tiles of height x width: v2's
        trunk state (`prior_int8.trunk_state_bytes`; the stages add only per-step rows).

        Returns:
            Bytes (int).
        """
        return trunk_state_bytes(self.cfg, n, height, width)

    def _wavefront(self, n: int, height: int, width: int, stages: int):
        if self.fused and self.device.type == "cpu":
            return _StageFusedWavefront(self, n, height, width, stages)
        return _StageWavefront(self, n, height, width, stages)


def _read_head(tensors: dict[str, torch.Tensor], s: int, K: int, c: int, known: set[str]
               ) -> tuple[Int8Layer, Int8Layer, torch.Tensor | None, torch.Tensor | None]:
    """Read and validate stage s's head: out1, out2 and (s >= 1) cond I8 [s, K, C] with
    cond_mult I32 [s, C].

    Returns:
        (out1, out2, cond int8 [s, K, C] (a copy) or None, cond_mult int32 [s, C] (a copy) or
        None).

    Raises:
        ValueError: as `Int8StagePrior.from_tensors`.
    """
    p = f"heads.{s}."
    out1 = read_layer(tensors, p + "out1", (c, c, 1, 1), known)
    out2 = read_layer(tensors, p + "out2", (K, c, 1, 1), known)
    cond = cond_mult = None
    if s:
        name = PREFIX + p + "cond"
        cond = int8._tensor(tensors, name, torch.int8, (s, K, c)).clone()
        known.add(name)
        if cond.numel() and int(cond.min()) < -int8.S8_MAX:
            raise ValueError(f"tensor {name} has the value -128 (s8 is [-127, 127])")
        name = PREFIX + p + "cond_mult"
        cond_mult = int8._tensor(tensors, name, torch.int32, (s, c)).clone()
        known.add(name)
        if cond_mult.numel() and (int(cond_mult.min()) < 0 or int(cond_mult.max()) >= int8.MULT_BOUND):
            raise ValueError(f"tensor {name} has values outside [0, 2**16)")
    check_out1_bound(PREFIX + p + "out1", out1, cond_mult)
    check_bound(PREFIX + p + "out2", int8.U8_MAX, out2)
    return out1, out2, cond, cond_mult


def check_out1_bound(name: str, out1: Int8Layer, cond_mult: torch.Tensor | None) -> None:
    """The accumulator bound of a stage head's out1 (format/SPEC.md, "Architecture rvq"):
    |B[o]| + 127 * sum_i |W[o, i]| + sum_{t<s} 127 * cond_mult[t, o] < 2**24 for every o
    (each conditioning term cond_mult[t, o] * cond[t, k, o] has |cond| <= 127).

    Args:
        name: for the message.
        out1: the layer (s8 input).
        cond_mult: integer [s, C], values >= 0, or None (s = 0).

    Raises:
        ValueError: some channel's bound reaches 2**24.
    """
    total = out1.bias.abs() + out1.acc_bound(int8.S8_MAX)
    if cond_mult is not None and cond_mult.numel():
        total = total + int8.S8_MAX * cond_mult.to(torch.int64).abs().sum(0)
    if total.numel() and int(total.max()) >= ACC_BOUND:
        raise ValueError(f"{name}: an accumulator can reach {int(total.max())} >= 2**24")


class _StageWeights(_TrunkWeights):
    """An `Int8StagePrior`'s weights on its device: the trunk (`_TrunkWeights`), the embeddings
    (`embed` int8 and `embed32` int32 [S, K, C], `embed32_np` numpy int32 on the CPU), per
    stage a `_Head` and its conditioning tables (`cond[s]`: s tables int32 [K, C] on the device,
    the products cond_mult[t, None, :] * cond[t], |value| < 2**23; `cond_np[s]` the same in
    numpy)."""

    def __init__(self, prior: Int8StagePrior):
        dev = prior.device
        super().__init__(prior.layers, prior.cfg.channels, dev)
        self.embed = prior.embed_q.to(dev)
        self.embed32 = self.embed.to(torch.int32)
        self.embed32_np = prior.embed_q.to(torch.int32).numpy()
        self.heads = [_Head(o1, o2, dev) for o1, o2, _, _ in prior.heads]
        tables = [None if c is None else c.cpu().to(torch.int32) * m.cpu().to(torch.int32)[:, None, :]
                  for _, _, c, m in prior.heads]
        self.cond = [[] if c is None else [t.to(dev) for t in c] for c in tables]
        self.cond_np = [[] if c is None else list(c.numpy()) for c in tables]


def _flat(sym: np.ndarray, K: int) -> np.ndarray:
    """Decoded indices int64 [n, npos] -> the wavefront's row order (position-major), checked.

    Raises:
        IndexError: an index is outside [0, K).
    """
    flat = np.ascontiguousarray(np.asarray(sym, dtype=np.int64).T).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= K):
        raise IndexError(f"decoded index outside [0, {K})")
    return flat


class _StageWavefront(_Int8Wavefront):
    """The torch-only wavefront of `Int8StagePrior.decode`: v2's `_Int8Wavefront` trunk state
    and horizontal/vertical stacks, plus the stage heads (`_Int8Wavefront.head` with the
    conditioning rows gathered by the step's decoded stages) and the summed embeddings."""

    def __init__(self, prior: Int8StagePrior, n: int, height: int, width: int, stages: int):
        super().__init__(prior, n, height, width)
        self.n, self.K, self.stages = n, prior.cfg.K, stages
        self.sw = prior._fast
        self.dev = prior.device

    def begin(self, t: int) -> None:
        """The trunk's horizontal stacks at step t (once for all stages)."""
        self.r = self.trunk(t)
        self.flat: list[torch.Tensor] = []

    def stage_pmfs(self, s: int) -> np.ndarray:
        """PMFs of stage s at the current step, int64 [n, npos, K]."""
        sw = self.sw
        cond = sum(sw.cond[s][t].index_select(0, self.flat[t]) for t in range(s)) if s else None
        lg = self.head(self.r, sw.heads[s], cond)
        return pmf_from_logits(lg).reshape(-1, self.n, self.K).transpose(1, 0, 2)

    def put_stage(self, sym: np.ndarray) -> None:
        """Record the next stage's decoded indices int64 [n, npos] at the current step."""
        self.flat.append(torch.from_numpy(_flat(sym, self.K)).to(self.dev))

    def store_embeddings(self, t: int) -> None:
        """E = clamp(sum of the decoded stages' embeddings, -127, 127) of step t's positions."""
        a, b = self.bounds[t]
        e = sum(self.sw.embed32[s].index_select(0, f) for s, f in enumerate(self.flat))
        e = e.clamp_(-int8.S8_MAX, int8.S8_MAX).to(torch.int8)
        _rows(self.a).index_copy_(0, self.emb_at[a:b], _rows(e))


class _StageFusedWavefront(_FusedWavefront):
    """The fused CPU wavefront of `Int8StagePrior.decode`: v2's `_FusedWavefront` trunk and
    compiled kernels; per stage `_FusedWavefront.head_pmfs` with the conditioning rows added to
    out1's int32 accumulator before `kernels.requant_u8`."""

    def __init__(self, prior: Int8StagePrior, n: int, height: int, width: int, stages: int):
        super().__init__(prior, n, height, width)
        self.stages = stages
        self.sw = prior._fast

    def begin(self, t: int) -> None:
        """The trunk's horizontal stacks at step t (once for all stages)."""
        self.m = self.trunk(t)
        self.flat: list[np.ndarray] = []

    def stage_pmfs(self, s: int) -> np.ndarray:
        """PMFs of stage s at the current step, int64 [n, npos, K]."""
        cond = None
        if s:
            tables = self.sw.cond_np[s]
            cond = tables[0][self.flat[0]]
            for t in range(1, s):
                cond += tables[t][self.flat[t]]
        return self.head_pmfs(self.m, self.sw.heads[s], cond)

    def put_stage(self, sym: np.ndarray) -> None:
        """Record the next stage's decoded indices int64 [n, npos] at the current step."""
        self.flat.append(_flat(sym, self.K))

    def store_embeddings(self, t: int) -> None:
        """E = clamp(sum of the decoded stages' embeddings, -127, 127) of step t's positions."""
        a, b = self.bounds[t]
        emb = self.sw.embed32_np
        e = emb[0][self.flat[0]]
        for s in range(1, len(self.flat)):
            e += emb[s][self.flat[s]]
        self.a[self.emb_at[a:b]] = np.clip(e, -int8.S8_MAX, int8.S8_MAX).astype(np.int8)
