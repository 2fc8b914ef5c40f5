"""Integer networks of a model file of profile int8, written from format/SPEC.md.

Sections used: "Profile int8" (its integers, layer, bound, requantisation, gate, tensors, prior
network and VQ-VAE decoder) and "Architecture rvq" (the stage prior: trunk on the clamped sum of
the stage embeddings, one head per stage with its conditioning tables; the decoder's input the
clamped sum of the stage codewords); the PMF from logits, coding order and everything outside the
networks are those of `network.py`.  Activations are int64 arrays, channels last, holding the
s8 ([-127, 127]) or u8 ([0, 255]) integers of the spec.  Sums of products are computed in
float64 (`dot`): the accumulator bound, checked when the model loads, keeps every product and
partial sum an integer below 2**24 in magnitude, so float64 (like int32 or float32) holds each
one exactly in any summation order.  Everything else is int64 arithmetic; `>>` on int64 is an
arithmetic shift, i.e. floor division by a power of two.
"""

from __future__ import annotations

import numpy as np

from network import ModelError, _int_field, decoder_layers, pixel_shuffle, pmf_from_logits

S8 = (-127, 127)  # an s8 activation
U8 = (0, 255)  # a u8 activation
LOGITS = (-(1 << 20), 1 << 20)  # the prior's integer logits, units 2**-8 nats
AMAX = {S8: 127, U8: 255}  # amax_in of a layer whose input is of that kind
W_MAX = 63  # integer weights are in [-63, 63]
ACC_BOUND = 1 << 24  # |B| + amax_in * sum |W| + 127 * |R| < 2**24
MULT_BOUND = 1 << 16  # multipliers are in [0, 2**16)
MAX_SHIFT = 40  # shifts are in [1, 40]
GATE_SHIFT = 24
INT32 = (-(1 << 31), (1 << 31) - 1)


def _int_tensor(tensors: dict, name: str, dtype, shape: tuple, lo: int, hi: int) -> np.ndarray:
    """An integer tensor of the file, checked for dtype, shape and range -> int64."""
    t = tensors.get(name)
    if t is None or t.dtype != dtype or tuple(t.shape) != shape:
        got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
        raise ModelError(f"tensor {name}: expected {np.dtype(dtype).name} {shape}, got {got}")
    t = t.astype(np.int64)
    if t.size and (t.min() < lo or t.max() > hi):
        raise ModelError(f"tensor {name} has values outside [{lo}, {hi}]")
    return t


class Tensors(dict):
    """The file's tensors, recording which ones were read: every tensor under a profile int8
    prefix must be one the spec lists (`check_all_read`)."""

    def __init__(self, tensors: dict):
        super().__init__(tensors)
        self.read: set[str] = set()

    def get(self, name, default=None):
        self.read.add(name)
        return super().get(name, default)

    def check_all_read(self, prefix: str) -> None:
        extra = sorted(k for k in self if k.startswith(prefix) and k not in self.read)
        if extra:
            raise ModelError(f"unexpected tensors {', '.join(extra)} (SPEC.md, profile int8)")


def requantize(acc: np.ndarray, mult: np.ndarray, shift: int, out: tuple[int, int]) -> np.ndarray:
    """y = clamp(floor((acc * M + 2**(S-1)) / 2**S), lo, hi), M per output channel (last axis)."""
    return np.clip((acc * mult + (1 << (shift - 1))) >> shift, *out)


def gate(a: np.ndarray, b: np.ndarray, t: int) -> np.ndarray:
    """G_T(a, b) of s8 inputs in units 1/T -> s8 in units 1/127."""
    mg = (127 * (1 << GATE_SHIFT) + t * t) // (2 * t * t)
    tc = np.clip(a, -t, t)
    g = np.clip(b + t, 0, 2 * t)
    return np.clip((tc * g * mg + (1 << (GATE_SHIFT - 1))) >> GATE_SHIFT, *S8)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def dot(patches: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Integer matrix product int64 [n, k] @ [k, O] -> int64 [n, O], exact (see the module doc)."""
    return (patches.astype(np.float64) @ matrix).astype(np.int64)


class Layer:
    """One integer layer: acc[o] = B[o] + sum W x (+ every `extra` part's sum) (+ R[o] r[o]),
    y = requantize(acc) clamped to `out`.

    `parts` are the weights whose products add into this accumulator: the layer's own weight
    [O, I, kh, kw] and those of weight-only layers (`extra`, e.g. the prior's v2h).  Their
    inputs are given in the same order, each as patches gathered in the order (kernel row,
    kernel column, input channel).  The accumulator bound is checked here.
    """

    def __init__(self, tensors: dict, name: str, shape: tuple, inp: tuple, out: tuple,
                 resid: bool = False, extra: tuple = ()):
        o = shape[0]
        self.name, self.out, self.kernel = name, out, shape[2:]
        self.parts = [(part, part_shape) for part, part_shape, _ in ((name, shape, inp), *extra)]
        self.bias = _int_tensor(tensors, f"{name}.bias", np.int32, (o,), *INT32)
        self.mult = _int_tensor(tensors, f"{name}.mult", np.int32, (o,), 0, MULT_BOUND - 1)
        self.shift = int(_int_tensor(tensors, f"{name}.shift", np.int32, (1,), 1, MAX_SHIFT)[0])
        self.resid = _int_tensor(tensors, f"{name}.resid", np.int32, (o,), *INT32) if resid else None
        bound = np.abs(self.bias)
        self.matrices = []
        for part, part_shape, part_inp in ((name, shape, inp), *extra):
            w = _int_tensor(tensors, f"{part}.weight", np.int8, part_shape, -W_MAX, W_MAX)
            bound = bound + AMAX[part_inp] * np.abs(w).reshape(o, -1).sum(1)
            self.matrices.append(w.transpose(2, 3, 1, 0).reshape(-1, o).astype(np.float64))
        if resid:
            bound = bound + 127 * np.abs(self.resid)
        if bound.max() >= ACC_BOUND:
            raise ModelError(f"{name}: an accumulator can reach {int(bound.max())}, "
                             f"not below 2**24 (SPEC.md, profile int8, accumulator bound)")

    def __call__(self, *patches: np.ndarray, r: np.ndarray | None = None,
                 add: np.ndarray | None = None) -> np.ndarray:
        """Patches int64 [n, kh*kw*I] per part (+ residual input r int64 [n, O]) (+ a term `add`
        int64 [n, O] summed into the accumulator, the conditioning of a stage head) -> int64
        [n, O]."""
        acc = self.bias + sum(dot(p, m) for p, m in zip(patches, self.matrices))
        if self.resid is not None:
            acc = acc + self.resid * r
        if add is not None:
            acc = acc + add
        return requantize(acc, self.mult, self.shift, self.out)

    def conv2d(self, x: np.ndarray, r: np.ndarray | None = None) -> np.ndarray:
        """'Same' convolution of a whole map x int64 [H, W, I] (zero padding k // 2, odd square
        kernels) (+ residual input r int64 [H, W, O]) -> int64 [H, W, O]."""
        kh, kw = self.kernel
        p = kh // 2
        h, w, c = x.shape
        xp = np.pad(x, ((p, p), (p, p), (0, 0)))
        patches = np.concatenate([xp[dy:dy + h, dx:dx + w] for dy in range(kh) for dx in range(kw)], 2)
        out = self(patches.reshape(h * w, kh * kw * c), r=None if r is None else r.reshape(h * w, -1))
        return out.reshape(h, w, -1)


def _gate_t(tensors: dict, name: str) -> int:
    return int(_int_tensor(tensors, name, np.int32, (1,), 1, 127)[0])


# ------------------------------------------------------------------------------ prior


class Prior:
    """The int8 gated PixelCNN of a model (SPEC.md "Profile int8", "Prior network, int8").

    Same interface as `network.Prior`: `decode_tile(h, w, decode_symbols)`.
    """

    def __init__(self, tensors: dict, cfg: dict, exp_lut: np.ndarray):
        self.exp_lut = exp_lut
        tensors = Tensors(tensors)
        self.K = _int_field(cfg, "prior_config", "K")
        c = self.C = _int_field(cfg, "prior_config", "channels")
        self.L = _int_field(cfg, "prior_config", "layers")
        self.embed = self._read_embed(tensors)
        self.layers = []
        for l in range(self.L):
            p = f"int8.prior.layers.{l}"
            k = 1 if l == 0 else 2
            self.layers.append({
                "v": Layer(tensors, f"{p}.v", (2 * c, c, k, 3), S8, S8),
                "tv": _gate_t(tensors, f"{p}.v_gate"),
                "h": Layer(tensors, f"{p}.h", (2 * c, c, 1, k), S8, S8,
                           extra=((f"{p}.v2h", (2 * c, 2 * c, 1, 1), S8),)),
                "th": _gate_t(tensors, f"{p}.h_gate"),
                "res": Layer(tensors, f"{p}.res", (c, c, 1, 1), S8, S8, resid=l > 0),
            })
        self._read_head(tensors)
        tensors.check_all_read("int8.prior.")

    def _read_embed(self, tensors: dict) -> np.ndarray:
        return _int_tensor(tensors, "int8.prior.embed", np.int8, (self.K, self.C), *S8)

    def _read_head(self, tensors: dict) -> None:
        c = self.C
        self.out1 = Layer(tensors, "int8.prior.out1", (c, c, 1, 1), S8, U8)
        self.out2 = Layer(tensors, "int8.prior.out2", (self.K, c, 1, 1), U8, LOGITS)

    def wavefront(self, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Coding order of an h x w tile (as v1): step t holds the positions with
        j + (L+1) i = t, in increasing i."""
        rows = np.arange(h)
        steps = []
        for t in range(w + (self.L + 1) * (h - 1)):
            cols = t - (self.L + 1) * rows
            ok = (cols >= 0) & (cols < w)
            steps.append((rows[ok], cols[ok]))
        return steps

    def decode_tile(self, h: int, w: int, decode_symbols) -> np.ndarray:
        """Decode one h x w tile.  decode_symbols(pmfs int64 [n, K]) -> n indices, called once
        per wavefront step with the PMFs of its positions in order.  Returns int64 [h, w].

        As in `network.Prior.decode_tile`: at step s the positions of step s are decoded, then
        the vertical stack of layer l at the positions of step s + L - l.  Maps are zero outside
        the tile: `emb` and `vg` carry one padding row on top and a padding column on each
        side, `hs` one padding column on the left.
        """
        c, L = self.C, self.L
        emb = np.zeros((h + 1, w + 2, c), dtype=np.int64)  # E(i, j) at emb[i + 1, j + 1]
        vg = [np.zeros((h + 1, w + 2, c), dtype=np.int64) for _ in range(L)]  # V_l
        vp = [np.zeros((h, w, 2 * c), dtype=np.int64) for _ in range(L)]  # vp_l (input of v2h)
        hs = [np.zeros((h, w + 1, c), dtype=np.int64) for _ in range(L)]  # H_l(i, j) at [i, j + 1]
        grid = np.zeros((h, w), dtype=np.int64)
        steps = self.wavefront(h, w)
        for s in range(-L, len(steps)):
            if s >= 0 and len(steps[s][0]):  # a step is empty in a tile narrower than L + 1
                rows, cols = steps[s]
                pmfs = pmf_from_logits(self._logits(rows, cols, emb, vp, hs), self.exp_lut)
                grid[rows, cols] = decode_symbols(pmfs)
                emb[rows + 1, cols + 1] = self.embed[grid[rows, cols]]
            for l in range(L):
                t = s + L - l
                if 0 <= t < len(steps) and len(steps[t][0]):
                    self._vertical(l, *steps[t], emb if l == 0 else vg[l - 1], vg[l], vp[l])
        return grid

    def _vertical(self, l, rows, cols, src, vg_out, vp_out) -> None:
        """vp_l and V_l = G_Tv(vp_l) at (rows, cols): vp_l reads src at row i-1 (layer 0) or
        rows i-1..i, columns j-1..j+1 (padded coordinates: rows i.., columns j..j+2)."""
        layer, c = self.layers[l], self.C
        kh = 1 if l == 0 else 2
        r = rows[:, None, None] + np.arange(kh)[None, :, None]
        q = cols[:, None, None] + np.arange(3)[None, None, :]
        out = layer["v"](src[r, q].reshape(len(rows), -1))
        vg_out[rows + 1, cols + 1] = gate(out[:, :c], out[:, c:], layer["tv"])
        vp_out[rows, cols] = out

    def _logits(self, rows, cols, emb, vp, hs) -> np.ndarray:
        """Horizontal stacks and output head at (rows, cols) -> integer logits int64 [n, K]."""
        return self.out2(self.out1(relu(self._trunk(rows, cols, emb, vp, hs))))

    def _trunk(self, rows, cols, emb, vp, hs) -> np.ndarray:
        """Horizontal stacks at (rows, cols) -> H_{L-1}, int64 [n, C] (s8)."""
        c, n = self.C, len(rows)
        h = None
        for l, layer in enumerate(self.layers):
            if l == 0:
                src = emb[rows + 1, cols]  # E(i, j - 1)
            else:
                src = hs[l - 1][rows[:, None], cols[:, None] + np.arange(2)].reshape(n, -1)
            hp = layer["h"](src, vp[l][rows, cols])  # conv_h and conv_v2h: one accumulator
            g = gate(hp[:, :c], hp[:, c:], layer["th"])
            h = layer["res"](g) if l == 0 else layer["res"](g, r=h)
            hs[l][rows, cols + 1] = h
        return h


class StagePrior(Prior):
    """The int8 stage prior of a model of arch rvq (SPEC.md "Architecture rvq", "Prior network,
    arch rvq, int8"): the trunk of `Prior` on E = clamp(sum_{s<S} embed[s, i_s], -127, 127), and
    per stage s a head: acc1[o] = out1_s.B[o] + conv_out1_s(relu(H))[o]
    + sum_{t<s} cond_mult_s[t, o] * cond_s[t, i_t, o], u = rq_out1_s(acc1, u8),
    logits_s = rq_out2_s(out2_s.B + conv_out2_s(u)).

    `decode_tile(h, w, decode_symbols, stages)` decodes codes int64 [stages, h, w] in the coding
    order with stages: per wavefront step, per stage, the step's positions.
    """

    def __init__(self, tensors: dict, cfg: dict, exp_lut: np.ndarray, stages: int):
        self.stages = stages
        super().__init__(tensors, cfg, exp_lut)

    def _read_embed(self, tensors: dict) -> np.ndarray:
        return _int_tensor(tensors, "int8.prior.embed", np.int8, (self.stages, self.K, self.C), *S8)

    def _read_head(self, tensors: dict) -> None:
        c, K = self.C, self.K
        self.heads = []
        for s in range(self.stages):
            p = f"int8.prior.heads.{s}"
            out1 = Layer(tensors, f"{p}.out1", (c, c, 1, 1), S8, U8)
            cond = cond_mult = None
            if s:  # s8 tables, a multiplier per (earlier stage, channel); out1_s's bound with them
                cond = _int_tensor(tensors, f"{p}.cond", np.int8, (s, K, c), *S8)
                cond_mult = _int_tensor(tensors, f"{p}.cond_mult", np.int32, (s, c), 0, MULT_BOUND - 1)
                w = _int_tensor(tensors, f"{p}.out1.weight", np.int8, (c, c, 1, 1), -W_MAX, W_MAX)
                bound = (np.abs(out1.bias) + 127 * np.abs(w).reshape(c, -1).sum(1)
                         + 127 * cond_mult.sum(axis=0))
                if bound.max() >= ACC_BOUND:
                    raise ModelError(f"{p}.out1: an accumulator can reach {int(bound.max())}, "
                                     "not below 2**24 (SPEC.md, arch rvq, accumulator bound)")
            self.heads.append((out1, Layer(tensors, f"{p}.out2", (K, c, 1, 1), U8, LOGITS), cond, cond_mult))

    def decode_tile(self, h: int, w: int, decode_symbols, stages: int = 1) -> np.ndarray:
        """Decode one h x w tile of `stages` stages.  decode_symbols(pmfs int64 [n, K]) -> n
        indices, called once per (wavefront step, stage) with the PMFs of the step's positions
        in order.  Returns int64 [stages, h, w].

        As `Prior.decode_tile`, with the trunk input written once all stages of a position are
        decoded: E = clamp(sum of the stage embeddings).
        """
        c, L = self.C, self.L
        emb = np.zeros((h + 1, w + 2, c), dtype=np.int64)
        vg = [np.zeros((h + 1, w + 2, c), dtype=np.int64) for _ in range(L)]
        vp = [np.zeros((h, w, 2 * c), dtype=np.int64) for _ in range(L)]
        hs = [np.zeros((h, w + 1, c), dtype=np.int64) for _ in range(L)]
        codes = np.zeros((stages, h, w), dtype=np.int64)
        steps = self.wavefront(h, w)
        for t_step in range(-L, len(steps)):
            if t_step >= 0 and len(steps[t_step][0]):
                rows, cols = steps[t_step]
                r = relu(self._trunk(rows, cols, emb, vp, hs))
                for s in range(stages):
                    pmfs = pmf_from_logits(self._head(s, r, codes[:s, rows, cols]), self.exp_lut)
                    codes[s, rows, cols] = decode_symbols(pmfs)
                total = sum(self.embed[s][codes[s, rows, cols]] for s in range(stages))
                emb[rows + 1, cols + 1] = np.clip(total, *S8)
            for l in range(L):
                t = t_step + L - l
                if 0 <= t < len(steps) and len(steps[t][0]):
                    self._vertical(l, *steps[t], emb if l == 0 else vg[l - 1], vg[l], vp[l])
        return codes

    def _head(self, s: int, r: np.ndarray, before: np.ndarray) -> np.ndarray:
        """Logits of stage s: r = relu(H_{L-1}) int64 [n, C], before = the stages < s at the
        same positions int64 [s, n] -> int64 [n, K]."""
        out1, out2, cond, cond_mult = self.heads[s]
        add = sum(cond_mult[t] * cond[t][before[t]] for t in range(s)) if s else None
        return out2(out1(r, add=add))


# ------------------------------------------------------------------------------ VQ-VAE decoder


class Decoder:
    """The int8 VQ-VAE decoder of a model (SPEC.md "VQ-VAE decoder, int8"): the layer list of
    v1, a function of the config (f, K, D, c_lo, c_hi, n_res), with int8 layers."""

    def __init__(self, tensors: dict, cfg: dict, stages: int | None = None):
        """stages: S_max of a model of arch rvq (the codebook is [S_max, K, D] and the input is
        the clamped sum of the coded stages' codewords); None for arch vq."""
        tensors = Tensors(tensors)
        f = _int_field(cfg, "vqvae_config", "f")
        if f & (f - 1):
            raise ModelError(f"model config f={f} is not a power of two")
        self.f = f
        self.K = _int_field(cfg, "vqvae_config", "K")
        d = _int_field(cfg, "vqvae_config", "D")
        c_lo = _int_field(cfg, "vqvae_config", "c_lo")
        c_hi = _int_field(cfg, "vqvae_config", "c_hi")
        n_res = _int_field(cfg, "vqvae_config", "n_res")
        shape = (self.K, d) if stages is None else (stages, self.K, d)
        self.codebook = _int_tensor(tensors, "int8.decoder.codebook", np.int8, shape, *S8)
        self.ops: list[tuple] = []
        layers = decoder_layers(d, c_lo, c_hi, n_res, f)
        last = max(n for n, kind, *_ in layers if kind == "conv")
        for n, kind, i, o, k, _ in layers:
            name = f"int8.decoder.net.{n}"  # n: the index of the entry's tensors
            if kind == "conv":  # the last convolution's u8 outputs are the pixels
                self.ops.append(("conv", Layer(tensors, name, (o, i, k, k), S8, U8 if n == last else S8)))
            elif kind == "res":
                self.ops.append(("res", Layer(tensors, f"{name}.conv3", (i, i, 3, 3), S8, U8),
                                 Layer(tensors, f"{name}.conv1", (i, i, 1, 1), U8, S8, resid=True)))
            else:
                self.ops.append((kind,))
        tensors.check_all_read("int8.decoder.")

    def __call__(self, grid: np.ndarray) -> np.ndarray:
        """Index grid int64 [h, w] (arch vq), or codes int64 [S, h, w] (arch rvq) -> pixels uint8
        [f*h, f*w, 3] (R, G, B)."""
        if self.codebook.ndim == 3:  # arch rvq: clamp of the summed stage codewords
            x = np.clip(sum(self.codebook[s][grid[s]] for s in range(grid.shape[0])), *S8)
        else:
            x = self.codebook[grid]
        for op in self.ops:
            if op[0] == "conv":
                x = op[1].conv2d(x)
            elif op[0] == "res":
                y = op[1].conv2d(relu(x))  # u8: the clamp to [0, 255] is the block's inner relu
                x = op[2].conv2d(y, r=x)
            elif op[0] == "shuffle":
                x = pixel_shuffle(x)
            else:
                x = relu(x)
        return x.astype(np.uint8)
