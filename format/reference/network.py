"""Model file and integer networks of a .vqc decoder, written from format/SPEC.md.

Sections used: "Model file", "Integer layers", "Prior network", "PMF from logits",
"VQ-VAE decoder".  Activations are int64 arrays, channels last.  A matrix product of integer
arrays is done in float64 (`exact_matmul`): every product and partial sum is an integer below
2**46 in magnitude, so float64 holds each one exactly and the order of summation cannot change
the result.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_tensors

ACT_FRAC_BITS = 8  # activations are integers in units of 2**-8
ACT_MAX = 1 << 20  # every stored activation is clamped to [-2**20, 2**20]
WEIGHT_BITS = 11  # integer weights have |w| <= 2**11
MAX_FAN_IN = 1 << 14
MAX_BIAS = 1 << 45
PMF_TOTAL = 1 << 20
MAX_MODEL_FILE = 32 * 2**20  # SPEC.md "Model file": a model file is at most 32 MiB
MAX_MODEL_HEADER = 2**20  # and its JSON header at most 1 MiB
MODEL_DTYPES = {"F16", "I8", "I32"}
# SPEC.md "Model file", "Ranges": (config, field) -> (min, max), both included; f is also a
# power of two.  Transcribed from the spec's table, independently of vqcodec's.
RANGES = {
    ("vqvae_config", "f"): (4, 64),
    ("vqvae_config", "K"): (2, 65536),
    ("vqvae_config", "D"): (1, 256),
    ("vqvae_config", "c_lo"): (1, 512),
    ("vqvae_config", "c_hi"): (1, 512),
    ("vqvae_config", "n_res"): (0, 8),
    ("prior_config", "K"): (2, 65536),
    ("prior_config", "channels"): (1, 512),
    ("prior_config", "layers"): (1, 8),
}
EXP_LUT_FILE = Path(__file__).resolve().parent.parent / "exp-lut.txt"
EXP_LUT_SHA256 = "aa10ec54f9f4bd7adeeb0ff0718520db41a6d6f6c2f3e4f7b1d1bdefd9d3f8b4"


class ModelError(Exception):
    """The model file is malformed or does not fit the architecture SPEC.md describes."""


def exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matrix product a @ b (int64 in, int64 out), computed in float64 (exact here)."""
    return (a.astype(np.float64) @ b).astype(np.int64)


def rescale(acc: np.ndarray, shift: int) -> np.ndarray:
    """clamp(floor(acc / 2**shift + 1/2), -2**20, 2**20) for an int64 accumulator."""
    if shift > 0:
        acc = (acc + (1 << (shift - 1))) >> shift
    elif shift < 0:
        acc = acc << -shift
    return np.clip(acc, -ACT_MAX, ACT_MAX)


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0)


def gate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer gated unit: t = clamp(a, -256, 256), g = clamp(b + 256, 0, 512),
    floor(t * g / 512 + 1/2)."""
    t = np.clip(a, -256, 256)
    g = np.clip(b + 256, 0, 512)
    return (t * g + 256) >> 9


def table(values: np.ndarray) -> np.ndarray:
    """Embedding / codebook table: clamp(round_half_even(E * 2**8), -2**20, 2**20) as int64."""
    return np.clip(np.round(values.astype(np.float64) * 256.0), -ACT_MAX, ACT_MAX).astype(np.int64)


class Conv:
    """A convolution in integer form, from fp16 weight [O, I, kh, kw] and bias [O].

    `apply(patches)` takes int64 [..., kh * kw * I] gathered in the order (kernel row,
    kernel column, input channel) and returns rescaled int64 [..., O].
    """

    def __init__(self, name: str, weight: np.ndarray, bias: np.ndarray):
        w = weight.astype(np.float64)
        b = bias.astype(np.float64)
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ModelError(f"{name}: weights are not finite")
        out_ch, in_ch, kh, kw = w.shape
        if in_ch * kh * kw > MAX_FAN_IN:
            raise ModelError(f"{name}: fan-in {in_ch * kh * kw} is above {MAX_FAN_IN}")
        peak = float(np.abs(w).max())
        self.shift = 0 if peak == 0.0 else WEIGHT_BITS - math.frexp(peak)[1]
        wq = np.round(w * 2.0**self.shift)  # exact scaling, round half to even
        bq = np.round(b * 2.0 ** (self.shift + ACT_FRAC_BITS))
        if np.abs(bq).max() >= MAX_BIAS:
            raise ModelError(f"{name}: integer bias is not below 2**45")
        self.matrix = wq.transpose(2, 3, 1, 0).reshape(kh * kw * in_ch, out_ch)
        self.bias = bq.astype(np.int64)
        self.kernel = (kh, kw)

    def apply(self, patches: np.ndarray) -> np.ndarray:
        return rescale(exact_matmul(patches, self.matrix) + self.bias, self.shift)

    def conv2d(self, x: np.ndarray) -> np.ndarray:
        """'Same' convolution of a whole map x int64 [H, W, I], zero padding of (k - 1) / 2 on
        each side (odd square kernels only) -> int64 [H, W, O]."""
        kh, kw = self.kernel
        p = kh // 2
        h, w, c = x.shape
        xp = np.pad(x, ((p, p), (p, p), (0, 0)))
        acc = np.zeros((h * w, self.matrix.shape[1]), dtype=np.float64)
        for dy in range(kh):
            for dx in range(kw):
                rows = self.matrix[(dy * kw + dx) * c:(dy * kw + dx + 1) * c]
                acc += xp[dy:dy + h, dx:dx + w].reshape(h * w, c).astype(np.float64) @ rows
        out = rescale(acc.astype(np.int64) + self.bias, self.shift)
        return out.reshape(h, w, -1)


# ------------------------------------------------------------------------------ model file


def read_model_file(path: Path) -> tuple[bytes, dict[str, np.ndarray], dict]:
    """(file bytes, tensors by name, configs) of a model file; ModelError if malformed.  The
    checks of SPEC.md "Model file" that need no network come first: the size caps, the header's
    tensor entries, the configuration ranges; then the tensors are read and F16 ones checked
    for finite values."""
    try:
        size = path.stat().st_size
        if size > MAX_MODEL_FILE:
            raise ModelError(f"model file {path.name} is {size} bytes, above {MAX_MODEL_FILE}")
        with open(path, "rb") as fh:
            data = fh.read(MAX_MODEL_FILE + 1)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}") from None
    if len(data) > MAX_MODEL_FILE:
        raise ModelError(f"model file {path.name} is above {MAX_MODEL_FILE} bytes")
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n > MAX_MODEL_HEADER or n > len(data) - 8:
            raise ValueError(f"header of {n} bytes: above {MAX_MODEL_HEADER} or the file")
        header = json.loads(data[8:8 + n], object_pairs_hook=_no_repeated_keys)
        meta = header["__metadata__"]
        for name, entry in header.items():
            if name != "__metadata__" and (entry["dtype"] not in MODEL_DTYPES or len(entry["shape"]) > 4):
                raise ValueError(f"tensor {name[:40]} is {entry['dtype']} with {len(entry['shape'])} dimensions")
        configs = {"vqvae": json.loads(meta["vqvae_config"]), "prior": json.loads(meta["prior_config"]),
                   "profile": meta.get("profile", "exact"), "arch": meta.get("arch", "vq")}
    except Exception as exc:
        raise ModelError(f"model file {path.name} is malformed ({str(exc)[:200]})") from None
    check_configs(configs["vqvae"], configs["prior"])
    try:
        tensors = load_tensors(data)
    except Exception as exc:
        raise ModelError(f"model file {path.name} is malformed ({str(exc)[:200]})") from None
    for name, t in tensors.items():
        if t.dtype == np.float16 and not np.isfinite(t).all():
            raise ModelError(f"tensor {name} has values that are not finite")
    return data, tensors, configs


def _no_repeated_keys(pairs: list) -> dict:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("a key appears twice in one JSON object of the header")
    return dict(pairs)


def check_configs(vqvae: object, prior: object) -> None:
    """Every field of RANGES is an integer in its range (f a power of two); the two K agree."""
    configs = {"vqvae_config": vqvae, "prior_config": prior}
    for (config, key), (lo, hi) in RANGES.items():
        cfg = configs[config]
        v = cfg.get(key) if isinstance(cfg, dict) else None
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi or (key == "f" and v & (v - 1)):
            shown = repr(v) if not isinstance(v, int) or v.bit_length() < 64 else "a huge integer"
            raise ModelError(f"{config} {key}={shown[:40]} is not an integer in {lo}..{hi}"
                             + (" and a power of two" if key == "f" else ""))
    if vqvae["K"] != prior["K"]:
        raise ModelError(f"prior K={prior['K']} differs from codebook K={vqvae['K']}")


def model_id(data: bytes) -> bytes:
    """The 8-byte model hash a .vqc header names: first 8 bytes of SHA-256 of the file."""
    return hashlib.sha256(data).digest()[:8]


def _tensor(tensors: dict, name: str, shape: tuple) -> np.ndarray:
    t = tensors.get(name)
    if t is None or t.dtype != np.float16 or tuple(t.shape) != shape:
        got = "missing" if t is None else f"{t.dtype} {tuple(t.shape)}"
        raise ModelError(f"tensor {name}: expected float16 {shape}, got {got}")
    return t


def _conv(tensors: dict, name: str, out_ch: int, in_ch: int, kh: int, kw: int) -> Conv:
    return Conv(name, _tensor(tensors, f"{name}.weight", (out_ch, in_ch, kh, kw)),
                _tensor(tensors, f"{name}.bias", (out_ch,)))


def _int_field(cfg: dict, config: str, key: str) -> int:
    """A configuration field, an integer in its range of RANGES."""
    lo, hi = RANGES[(config, key)]
    v = cfg.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ModelError(f"model config {key}={str(v)[:40]} is not an integer in {lo}..{hi}")
    return v


# ------------------------------------------------------------------------------ prior


def load_exp_lut() -> np.ndarray:
    """EXP_LUT int64 [512] from format/exp-lut.txt, checked against its pinned SHA-256."""
    raw = EXP_LUT_FILE.read_bytes()
    if hashlib.sha256(raw).hexdigest() != EXP_LUT_SHA256:
        raise ModelError(f"{EXP_LUT_FILE} does not match its SHA-256 in SPEC.md")
    return np.array([int(v) for v in raw.split()], dtype=np.int64)


def pmf_from_logits(logits: np.ndarray, exp_lut: np.ndarray) -> np.ndarray:
    """Integer logits int64 [n, K] -> PMFs int64 [n, K], each summing to 2**20, all >= 1."""
    n, k = logits.shape
    top = logits.argmax(1)  # first index of the largest logit
    d = logits[np.arange(n), top][:, None] - logits
    w = exp_lut[np.minimum(d >> 4, len(exp_lut) - 1)]
    p = 1 + (w * (PMF_TOTAL - k)) // w.sum(1, keepdims=True)
    p[np.arange(n), top] += PMF_TOTAL - p.sum(1)
    return p


class Prior:
    """The integer gated PixelCNN of a model (SPEC.md "Prior network")."""

    def __init__(self, tensors: dict, cfg: dict, exp_lut: np.ndarray):
        self.exp_lut = exp_lut
        self.K = _int_field(cfg, "prior_config", "K")
        c = self.C = _int_field(cfg, "prior_config", "channels")
        self.L = _int_field(cfg, "prior_config", "layers")
        self.embed = table(_tensor(tensors, "prior.embed.weight", (self.K, c)))
        self.layers = []
        for l in range(self.L):
            p = f"prior.layers.{l}"
            self.layers.append({
                "v": _conv(tensors, f"{p}.v", 2 * c, c, 1 if l == 0 else 2, 3),
                "v2h": _conv(tensors, f"{p}.v2h", 2 * c, 2 * c, 1, 1),
                "h": _conv(tensors, f"{p}.h", 2 * c, c, 1, 1 if l == 0 else 2),
                "res": _conv(tensors, f"{p}.res", c, c, 1, 1),
            })
        self.out1 = _conv(tensors, "prior.out1", c, c, 1, 1)
        self.out2 = _conv(tensors, "prior.out2", self.K, c, 1, 1)

    def wavefront(self, h: int, w: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Coding order of an h x w tile: step t holds the positions with j + (L+1) i = t,
        in increasing i."""
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

        Each activation map is computed position by position as soon as its inputs exist: at
        step s the positions of step s are decoded, then the vertical stack of layer l at the
        positions of step s + L - l.  Maps are zero outside the tile: `emb` and `vg` carry one
        padding row on top and a padding column on each side, `hs` one padding column on the
        left.
        """
        c, L = self.C, self.L
        emb = np.zeros((h + 1, w + 2, c), dtype=np.int64)  # E(i, j) at emb[i + 1, j + 1]
        vg = [np.zeros((h + 1, w + 2, c), dtype=np.int64) for _ in range(L)]  # V_l
        vh = [np.zeros((h, w, 2 * c), dtype=np.int64) for _ in range(L)]  # v2h(vp_l)
        hs = [np.zeros((h, w + 1, c), dtype=np.int64) for _ in range(L)]  # H_l(i, j) at [i, j + 1]
        grid = np.zeros((h, w), dtype=np.int64)
        steps = self.wavefront(h, w)
        for s in range(-L, len(steps)):
            if s >= 0 and len(steps[s][0]):  # a step is empty in a tile narrower than L + 1
                rows, cols = steps[s]
                pmfs = pmf_from_logits(self._logits(rows, cols, emb, vh, hs), self.exp_lut)
                grid[rows, cols] = decode_symbols(pmfs)
                emb[rows + 1, cols + 1] = self.embed[grid[rows, cols]]
            for l in range(L):
                t = s + L - l
                if 0 <= t < len(steps) and len(steps[t][0]):
                    self._vertical(l, *steps[t], emb if l == 0 else vg[l - 1], vg[l], vh[l])
        return grid

    def _vertical(self, l, rows, cols, src, vg_out, vh_out) -> None:
        """V_l and v2h(vp_l) at (rows, cols): vp_l reads src at rows i-1 (layer 0) or i-1..i,
        columns j-1..j+1 (padded coordinates: rows i.., columns j..j+2)."""
        layer, c = self.layers[l], self.C
        kh = 1 if l == 0 else 2
        r = rows[:, None, None] + np.arange(kh)[None, :, None]
        q = cols[:, None, None] + np.arange(3)[None, None, :]
        vp = layer["v"].apply(src[r, q].reshape(len(rows), -1))
        vg_out[rows + 1, cols + 1] = gate(vp[:, :c], vp[:, c:])
        vh_out[rows, cols] = layer["v2h"].apply(vp)

    def _logits(self, rows, cols, emb, vh, hs) -> np.ndarray:
        """Horizontal stacks and output head at (rows, cols) -> integer logits int64 [n, K]."""
        c, n = self.C, len(rows)
        h = None
        for l, layer in enumerate(self.layers):
            if l == 0:
                src = emb[rows + 1, cols]  # E(i, j - 1)
            else:
                src = hs[l - 1][rows[:, None], cols[:, None] + np.arange(2)].reshape(n, -1)
            hp = layer["h"].apply(src) + vh[l][rows, cols]
            out = layer["res"].apply(gate(hp[:, :c], hp[:, c:]))
            h = out if l == 0 else np.clip(h + out, -ACT_MAX, ACT_MAX)
            hs[l][rows, cols + 1] = h
        return self.out2.apply(relu(self.out1.apply(relu(h))))


# ------------------------------------------------------------------------------ VQ-VAE decoder


def pixel_shuffle(x: np.ndarray) -> np.ndarray:
    """[H, W, 4C] -> [2H, 2W, C]: out[2i + dy, 2j + dx, c] = x[i, j, 4c + 2dy + dx]."""
    h, w, c4 = x.shape
    c = c4 // 4
    return x.reshape(h, w, c, 2, 2).transpose(0, 3, 1, 4, 2).reshape(2 * h, 2 * w, c)


def decoder_layers(d: int, c_lo: int, c_hi: int, n_res: int, f: int) -> list[tuple[str, int, int, int, int, int]]:
    """The VQ-VAE decoder's layer list of SPEC.md "VQ-VAE decoder", as written there: entry n is
    (n, kind, input channels, output channels, kernel, factor); kind "conv" (kernel 1 or 3),
    "res" (residual block, kernel 3: its first convolution), "shuffle" (pixel shuffle, factor 2,
    4c -> c channels) or "relu"; kernel 0 and factor 1 where they do not apply."""
    out: list[tuple[str, int, int, int, int, int]] = []

    def add(kind, i, o, kernel=0, factor=1):
        out.append((len(out), kind, i, o, kernel, factor))

    add("conv", d, c_hi, 3)
    for _ in range(n_res):
        add("res", c_hi, c_hi, 3)
    for _ in range(int(math.log2(f)) - 2):
        add("conv", c_hi, 4 * c_hi, 1)
        add("shuffle", 4 * c_hi, c_hi, 0, 2)
        add("res", c_hi, c_hi, 3)
    add("conv", c_hi, 4 * c_lo, 1)
    add("shuffle", 4 * c_lo, c_lo, 0, 2)
    add("res", c_lo, c_lo, 3)
    add("relu", c_lo, c_lo)
    add("conv", c_lo, 12, 3)
    add("shuffle", 12, 3, 0, 2)
    return out


class Decoder:
    """The integer VQ-VAE decoder of a model (SPEC.md "VQ-VAE decoder"): its layer list is a
    function of the config (f, K, D, c_lo, c_hi, n_res), `decoder_layers`."""

    def __init__(self, tensors: dict, cfg: dict):
        f = _int_field(cfg, "vqvae_config", "f")
        if f & (f - 1):
            raise ModelError(f"model config f={f} is not a power of two")
        self.f = f
        self.K = _int_field(cfg, "vqvae_config", "K")
        d = _int_field(cfg, "vqvae_config", "D")
        c_lo = _int_field(cfg, "vqvae_config", "c_lo")
        c_hi = _int_field(cfg, "vqvae_config", "c_hi")
        n_res = _int_field(cfg, "vqvae_config", "n_res")
        self.codebook = table(_tensor(tensors, "vqvae.quantizer.codebook", (self.K, d)))
        self.ops: list[tuple] = []
        for n, kind, i, o, k, _ in decoder_layers(d, c_lo, c_hi, n_res, f):
            name = f"vqvae.decoder.net.{n}"  # n: the index of the entry's tensors
            if kind == "conv":
                self.ops.append(("conv", _conv(tensors, name, o, i, k, k)))
            elif kind == "res":
                self.ops.append(("res", _conv(tensors, f"{name}.conv3", i, i, 3, 3),
                                 _conv(tensors, f"{name}.conv1", i, i, 1, 1)))
            else:
                self.ops.append((kind,))

    def __call__(self, grid: np.ndarray) -> np.ndarray:
        """Index grid int64 [h, w] -> pixels uint8 [f*h, f*w, 3] (R, G, B)."""
        x = self.codebook[grid]
        for op in self.ops:
            if op[0] == "conv":
                x = op[1].conv2d(x)
            elif op[0] == "res":
                y = op[1].conv2d(relu(x))
                x = np.clip(x + op[2].conv2d(relu(y)), -ACT_MAX, ACT_MAX)
            elif op[0] == "shuffle":
                x = pixel_shuffle(x)
            else:
                x = relu(x)
        return np.clip((255 * x + 32768) >> 8, 0, 255).astype(np.uint8)


class Model:
    """A model file: its id, its arithmetic profile, its prior and its decoder.  ModelError if
    it does not fit.  The metadata key "arch" must be absent, "vq" or "rvq" (SPEC.md "Model file",
    "Architecture rvq"); for arch vq the key "profile" selects the networks: absent or "exact",
    the networks of this module; "int8", those of `network_int8`; arch rvq is profile int8
    only (`network_int8.StagePrior`)."""

    def __init__(self, path: Path):
        data, tensors, configs = read_model_file(path)
        self.id = model_id(data)
        self.profile = configs["profile"]
        self.arch = configs["arch"]
        self.stages = 1  # S_max: stages of indices per position (SPEC.md "Architecture rvq")
        if self.arch == "rvq":
            self._rvq(path, tensors, configs)
            return
        if self.arch != "vq":
            raise ModelError(f"model file {path.name} has the architecture {str(self.arch)[:40]!r}, "
                             "which this decoder does not know")
        if self.profile == "exact":
            prior_class, decoder_class = Prior, Decoder
        elif self.profile == "int8":
            import network_int8  # imports this module: load it only when needed

            prior_class, decoder_class = network_int8.Prior, network_int8.Decoder
        else:
            raise ModelError(f"model file {path.name} has the arithmetic profile {self.profile!r}, "
                             "which this decoder does not know")
        self.prior = prior_class(tensors, configs["prior"], load_exp_lut())
        self.decoder = decoder_class(tensors, configs["vqvae"])
        if self.prior.K != self.decoder.K:
            raise ModelError(f"prior K={self.prior.K} differs from codebook K={self.decoder.K}")
        self.f = self.decoder.f

    def _rvq(self, path: Path, tensors: dict, configs: dict) -> None:
        """Arch rvq (SPEC.md "Architecture rvq"): profile int8 only, `stages` (S_max) in 1..8 in
        both configs and equal; the stage prior and the decoder of `network_int8`."""
        if self.profile != "int8":
            raise ModelError(f"model file {path.name} of arch 'rvq' has the profile "
                             f"{str(self.profile)[:40]!r}: arch rvq is profile int8 only")
        stages = [configs[k].get("stages") for k in ("vqvae", "prior")]
        if any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 8 for v in stages) \
                or stages[0] != stages[1]:
            raise ModelError(f"model file {path.name}: stages {stages} are not one integer in 1..8")
        import network_int8

        self.stages = stages[0]
        self.prior = network_int8.StagePrior(tensors, configs["prior"], load_exp_lut(), self.stages)
        self.decoder = network_int8.Decoder(tensors, configs["vqvae"], stages=self.stages)
        if self.prior.K != self.decoder.K:
            raise ModelError(f"prior K={self.prior.K} differs from codebook K={self.decoder.K}")
        self.f = self.decoder.f
