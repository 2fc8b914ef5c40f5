"""Profile int8 in the reference decoder (format/reference/network_int8.py), on a synthetic model.

No released int8 model is needed: the test builds a small model file of profile int8 (the fp16
`vqvae.*` tensors of a seeded random VQ-VAE, as `vqcodec.serialise` writes them, plus random
integer layers within the ranges and the accumulator bound of format/SPEC.md, written in their
file form by `vqcodec.int8.Int8Layer`).  The reference decoder's logits and pixels are compared
with an independent computation written here from the formulas of /work/coord/INT8.md: whole-map
convolutions in float64 torch (exact: every sum is an integer below 2**24) with floor divisions,
where the reference runs the wavefront position by position in NumPy.  vqcodec's own int8
networks (`prior_int8.Int8Prior`, `vqvae_int8.Int8Decoder`) must give the same integers and
refuse the same faulty models.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conftest import load_script, tiny_model_bytes
from vqcodec import container, serialise
from vqcodec.int8 import Int8Layer, check_bound
from vqcodec.pmf import pmf_from_logits

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "format" / "reference"
K, C, L = 16, 8, 2  # the prior of conftest's tiny model
VQ = {"f": 4, "K": 16, "D": 4, "c_lo": 8, "c_hi": 8, "n_res": 1}
# decoder slots of that config (SPEC.md "VQ-VAE decoder"): conv, res, conv 1x1, shuffle, res,
# relu, last conv, shuffle
DECODER_SLOTS = [("conv", 4, 8, 3), ("res", 8), ("conv", 8, 32, 1), ("shuffle",), ("res", 8),
                 ("relu",), ("last", 8, 12, 3), ("shuffle",)]
TINY = {"K": K, "C": C, "L": L, "vq": VQ, "slots": DECODER_SLOTS}
# the sizes of vqc-f4k512-v1 (fan-ins up to 1,152), random weights
F4K512 = {"K": 512, "C": 128, "L": 4, "vq": {"f": 4, "K": 512, "D": 32, "c_lo": 64, "c_hi": 128, "n_res": 2},
          "slots": [("conv", 32, 128, 3), ("res", 128), ("res", 128), ("conv", 128, 256, 1), ("shuffle",),
                    ("res", 64), ("relu",), ("last", 64, 12, 3), ("shuffle",)]}
ISOLATED = ("import runpy, sys\n"
            "sys.modules.update(torch=None, constriction=None, vqcodec=None)\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def _reference():
    """The reference decoder's modules, imported by their plain names as decode.py does."""
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    return (importlib.import_module("network"), importlib.import_module("network_int8"),
            importlib.import_module("decode"))


# ------------------------------------------------------------------ a synthetic int8 model


def _random_layer(g: torch.Generator, shape: tuple, amax_in: int, target: float,
                  resid: bool = False, centre: float = 0.0, extra_spread: float = 0.0,
                  shift: int | None = None) -> Int8Layer:
    """A random integer layer whose outputs spread about +-target around `centre` (so that the
    clamps are hit now and then, not always).  Weights uniform in [-63, 63]; per-channel
    multipliers within a factor 2 of each other, near 2**14 unless `shift` is given."""
    o, fan = shape[0], math.prod(shape[1:])
    weight = torch.randint(-63, 64, shape, generator=g, dtype=torch.int64)
    spread = 36.4 * amax_in / 2 * math.sqrt(fan) + extra_spread  # typical |sum W x|
    ratio = target / spread
    if shift is None:
        shift = min(40, max(1, math.floor(math.log2(2**14 / ratio))))
    mult = ratio * 2**shift * (0.5 + 1.5 * torch.rand(o, generator=g, dtype=torch.float64))
    mult = mult.round().long().clamp(1, 2**16 - 1)
    bias = ((torch.rand(o, generator=g, dtype=torch.float64) - 0.5) * spread
            + centre * 2**shift / mult).round().long()
    r = None
    if resid:
        r = ((torch.rand(o, generator=g, dtype=torch.float64) - 0.5) * spread / 30).round().long()
    return Int8Layer(weight.to(torch.int8), bias, mult, shift, r)


def _weight_only(g: torch.Generator, shape: tuple) -> Int8Layer:
    weight = torch.randint(-63, 64, shape, generator=g, dtype=torch.int8)
    return Int8Layer(weight, torch.zeros(shape[0], dtype=torch.int64), torch.zeros(0, dtype=torch.int64), 0)


def synthetic_int8(seed: int = 0, arch: dict = TINY) -> dict:
    """The integer part of a synthetic int8 model of architecture `arch` (TINY, F4K512):
    {"arch", "embed", "codebook": int8 tensors, "layers": [per prior layer {"v", "v2h", "h",
    "res": Int8Layer, "tv", "th": int}], "out1", "out2": Int8Layer, "decoder": {slot: Int8Layer
    or (conv3, conv1)}}."""
    g = torch.Generator().manual_seed(seed)
    K, C, L = arch["K"], arch["C"], arch["L"]  # noqa: N806
    m = {"arch": arch, "embed": torch.randint(-127, 128, (K, C), generator=g, dtype=torch.int8),
         "codebook": torch.randint(-127, 128, (K, arch["vq"]["D"]), generator=g, dtype=torch.int8),
         "layers": []}
    for l in range(L):
        k = 1 if l == 0 else 2
        tv, th = (int(t) for t in torch.randint(4, 128, (2,), generator=g))
        v = _random_layer(g, (2 * C, C, k, 3), 127, 1.5 * tv)
        v2h = _weight_only(g, (2 * C, 2 * C, 1, 1))
        h = _random_layer(g, (2 * C, C, 1, k), 127, 1.5 * th, extra_spread=36.4 * 63 * math.sqrt(2 * C))
        res = _random_layer(g, (C, C, 1, 1), 127, 60, resid=l > 0)
        check_bound(f"layer {l} v", 127, v)
        check_bound(f"layer {l} h", 127, h, v2h)
        check_bound(f"layer {l} res", 127, res)
        m["layers"].append({"v": v, "v2h": v2h, "h": h, "res": res, "tv": tv, "th": th})
    m["out1"] = _random_layer(g, (C, C, 1, 1), 127, 80)
    m["out2"] = _random_layer(g, (K, C, 1, 1), 255, 1500, shift=6)
    m["out2"].mult[0] = 2**16 - 1  # logit 0 is far out of range: exercises the +-2**20 clamp
    check_bound("out1", 127, m["out1"])
    check_bound("out2", 255, m["out2"])
    dec = {}
    for slot, op in enumerate(arch["slots"]):
        if op[0] == "conv":
            dec[slot] = _random_layer(g, (op[2], op[1], op[3], op[3]), 127, 60)
        elif op[0] == "last":
            dec[slot] = _random_layer(g, (op[2], op[1], op[3], op[3]), 127, 90, centre=128)
        elif op[0] == "res":
            conv3 = _random_layer(g, (op[1], op[1], 3, 3), 127, 60, centre=20)
            conv1 = _random_layer(g, (op[1], op[1], 1, 1), 255, 60, resid=True)
            check_bound(f"net.{slot}.conv3", 127, conv3)
            check_bound(f"net.{slot}.conv1", 255, conv1)
            dec[slot] = (conv3, conv1)
            continue
        else:
            continue
        check_bound(f"net.{slot}", 127, dec[slot])
    m["decoder"] = dec
    return m


def int8_tensors(m: dict) -> dict[str, torch.Tensor]:
    """The model-file tensors int8.* of a synthetic model (names of SPEC.md, profile int8)."""
    t = {"int8.prior.embed": m["embed"], "int8.decoder.codebook": m["codebook"]}
    for l, layer in enumerate(m["layers"]):
        p = f"int8.prior.layers.{l}"
        for part in ("v", "v2h", "h", "res"):
            t.update(layer[part].tensors(f"{p}.{part}"))
        t[f"{p}.v_gate"] = torch.tensor([layer["tv"]], dtype=torch.int32)
        t[f"{p}.h_gate"] = torch.tensor([layer["th"]], dtype=torch.int32)
    t.update(m["out1"].tensors("int8.prior.out1"))
    t.update(m["out2"].tensors("int8.prior.out2"))
    for slot, layer in m["decoder"].items():
        if isinstance(layer, tuple):
            t.update(layer[0].tensors(f"int8.decoder.net.{slot}.conv3"))
            t.update(layer[1].tensors(f"int8.decoder.net.{slot}.conv1"))
        else:
            t.update(layer.tensors(f"int8.decoder.net.{slot}"))
    return t


@pytest.fixture(scope="module")
def model() -> dict:
    return synthetic_int8()


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("int8") / "test-int8.safetensors"
    return _write(path, int8_tensors(model))


# ------------------------------------------------------------------ independent computation


def _conv(x: torch.Tensor, layer: Int8Layer, pad: tuple = (0, 0, 0, 0), bias: bool = True) -> torch.Tensor:
    """Accumulator of a layer on an integer map x int64 [1, I, H, W] zero-padded by `pad`
    (F.pad order) -> int64 [1, O, H', W'] (float64 convolution: exact, all sums < 2**24)."""
    acc = F.conv2d(F.pad(x.double(), pad), layer.weight.double(),
                   layer.bias.double() if bias else None)
    return acc.round().long()


def _requant(acc: torch.Tensor, layer: Int8Layer, lo: int, hi: int) -> torch.Tensor:
    """clamp(floor((acc * M + 2**(S-1)) / 2**S), lo, hi), M per channel (dim 1)."""
    m = layer.mult.view(1, -1, 1, 1)
    y = torch.div(acc * m + 2 ** (layer.shift - 1), 2**layer.shift, rounding_mode="floor")
    return y.clamp(lo, hi)


def _gate(a: torch.Tensor, b: torch.Tensor, t: int) -> torch.Tensor:
    mg = (127 * 2**24 + t * t) // (2 * t * t)
    y = a.clamp(-t, t) * (b + t).clamp(0, 2 * t) * mg
    return torch.div(y + 2**23, 2**24, rounding_mode="floor").clamp(-127, 127)


def trunk_maps(m: dict, x: torch.Tensor) -> torch.Tensor:
    """The prior's layers on an embedding map x int64 [1, C, H, W] (whole maps, the shifts of
    SPEC.md's "Prior network"): H_{L-1} int64 [1, C, H, W] (also the rvq stage prior's trunk)."""
    C = m["arch"]["C"]  # noqa: N806
    v = h = x
    for l, layer in enumerate(m["layers"]):
        first = l == 0
        vin = F.pad(v, (0, 0, 1, 0))[..., :-1, :] if first else F.pad(v, (0, 0, 1, 0))
        vp = _requant(_conv(vin, layer["v"], (1, 1, 0, 0)), layer["v"], -127, 127)
        hin = F.pad(h, (1, 0))[..., :-1] if first else h
        acc = _conv(hin, layer["h"], (0, 0, 0, 0) if first else (1, 0, 0, 0))
        hp = _requant(acc + _conv(vp, layer["v2h"], bias=False), layer["h"], -127, 127)
        g = _gate(hp[:, :C], hp[:, C:], layer["th"])
        acc = _conv(g, layer["res"])
        if not first:
            acc = acc + layer["res"].resid.view(1, -1, 1, 1) * h
        h = _requant(acc, layer["res"], -127, 127)
        v = _gate(vp[:, :C], vp[:, C:], layer["tv"])
    return h


def expected_logits(m: dict, grid: np.ndarray) -> np.ndarray:
    """Integer logits int64 [H, W, K] of every position of an index grid, in one parallel pass
    of masked whole-grid convolutions (the shifts of SPEC.md's "Prior network")."""
    h = trunk_maps(m, m["embed"].long()[torch.from_numpy(grid)].permute(2, 0, 1)[None])
    u = _requant(_conv(h.clamp(min=0), m["out1"]), m["out1"], 0, 255)
    logits = _requant(_conv(u, m["out2"]), m["out2"], -(2**20), 2**20)
    return logits[0].permute(1, 2, 0).numpy()


def decoder_maps(m: dict, x: torch.Tensor) -> np.ndarray:
    """The int8 decoder on an input map x int64 [1, D, h, w]: pixels uint8 [f h, f w, 3]
    (whole map at once; also the rvq decoder after its input)."""
    for slot, op in enumerate(m["arch"]["slots"]):
        if op[0] in ("conv", "last"):
            layer, p = m["decoder"][slot], op[3] // 2
            lo, hi = (0, 255) if op[0] == "last" else (-127, 127)
            x = _requant(_conv(x, layer, (p, p, p, p)), layer, lo, hi)
        elif op[0] == "res":
            conv3, conv1 = m["decoder"][slot]
            y = _requant(_conv(x.clamp(min=0), conv3, (1, 1, 1, 1)), conv3, 0, 255)
            acc = _conv(y, conv1) + conv1.resid.view(1, -1, 1, 1) * x
            x = _requant(acc, conv1, -127, 127)
        elif op[0] == "shuffle":
            x = F.pixel_shuffle(x, 2)
        else:
            x = x.clamp(min=0)
    return x[0].permute(1, 2, 0).numpy().astype(np.uint8)


def expected_pixels(m: dict, grid: np.ndarray) -> np.ndarray:
    """Pixels uint8 [4 H, 4 W, 3] of an index grid: the int8 decoder, whole map at once."""
    return decoder_maps(m, m["codebook"].long()[torch.from_numpy(grid)].permute(2, 0, 1)[None])


# ------------------------------------------------------------------ the tests


def _reference_logits(prior, grid: np.ndarray) -> np.ndarray:
    """Logits of every position of a tile from the reference's wavefront decoder, fed the
    indices of `grid` (teacher forcing) -> int64 [H, W, K]."""
    h, w = grid.shape
    out = np.zeros((h, w, prior.K), dtype=np.int64)
    logits_of, positions = prior._logits, []

    def traced(rows, cols, *maps):
        logits = logits_of(rows, cols, *maps)
        out[rows, cols] = logits
        positions.append((rows.copy(), cols.copy()))
        return logits

    prior._logits = traced
    try:
        decoded = prior.decode_tile(h, w, lambda pmfs: grid[positions[-1]])
    finally:
        del prior._logits
    assert np.array_equal(decoded, grid)
    return out


def test_reference_int8_prior_matches_the_formulas(model, model_file):
    network, network_int8, _ = _reference()
    ref = network.Model(model_file)
    assert ref.profile == "int8" and isinstance(ref.prior, network_int8.Prior)
    grid = np.random.default_rng(1).integers(0, K, size=(6, 7))
    got = _reference_logits(ref.prior, grid)
    want = expected_logits(model, grid)
    assert np.array_equal(got, want)
    # the test exercises every clamp: the logit clamp, and both ends of the PMF's range
    assert (want[..., 0] == 2**20).any() or (want[..., 0] == -(2**20)).any()
    assert len(np.unique(want[..., 1:])) > 100
    pmfs = network.pmf_from_logits(got.reshape(-1, K), network.load_exp_lut())
    assert np.array_equal(pmfs, pmf_from_logits(want.reshape(-1, K)))  # the PMF is v1's
    # causality: changing a position changes no logits of positions before it in coding order
    later = grid.copy()
    later[3, 4] = (later[3, 4] + 1) % K
    changed = np.any(expected_logits(model, later) != want, axis=2)
    step = np.arange(7)[None, :] + (L + 1) * np.arange(6)[:, None]
    assert changed.any() and not changed[step <= step[3, 4]].any()


def test_reference_int8_decoder_matches_the_formulas(model, model_file):
    network, _, _ = _reference()
    ref = network.Model(model_file)
    grid = np.random.default_rng(2).integers(0, K, size=(5, 6))
    got = ref.decoder(grid)
    want = expected_pixels(model, grid)
    assert got.dtype == np.uint8 and got.shape == (20, 24, 3)
    assert np.array_equal(got, want)
    assert 0 < want.mean() < 255 and len(np.unique(want)) > 50  # not a saturated image


def _encode_tile(m: dict, tile: np.ndarray, rc) -> bytes:
    """Range-code one tile's indices in coding order with the PMFs of `expected_logits`."""
    logits = expected_logits(m, tile)
    h, w = tile.shape
    order = sorted(((j + (L + 1) * i, i, j) for i in range(h) for j in range(w)))
    enc = rc.RangeEncoder()
    for _, i, j in order:
        cdf = rc.cdf_from_pmf(pmf_from_logits(logits[i, j][None])[0])
        k = int(tile[i, j])
        enc.encode(cdf[k], cdf[k + 1] - cdf[k])
    return np.array(enc.finish(), dtype="<u4").tobytes()


def test_reference_decodes_a_vqc_file_of_an_int8_model(model, model_file, tmp_path):
    """End to end, in a process where torch, constriction and vqcodec cannot be imported:
    decode.py picks the int8 networks from the model file's "profile" and decodes a file of
    2 x 2 tiles (clipped) to the pixels of the formulas."""
    _, _, decode = _reference()
    rc = importlib.import_module("rangecoder")
    grid = np.random.default_rng(3).integers(0, K, size=(5, 6))
    payloads = tuple(_encode_tile(model, grid[r0:r0 + 3, c0:c0 + 4], rc) for r0 in (0, 3) for c0 in (0, 4))
    data = model_file.read_bytes()
    header = container.Header("test-int8", hashlib.sha256(data).digest()[:8], 22, 17,
                              container.Mode.RGB, 5, 6, 3, 4, version_minor=0)
    vqc = tmp_path / "x.vqc"
    vqc.write_bytes(container.write(container.VqcFile(header, payloads)))
    out = tmp_path / "x.png"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", ISOLATED, str(REFERENCE / "decode.py"), str(vqc),
                           str(out), "--models", str(model_file.parent), "--grid", str(tmp_path / "g.npy")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "g.npy"), grid)
    from PIL import Image

    pixels = np.array(Image.open(out))
    assert np.array_equal(pixels, expected_pixels(model, grid)[:17, :22])


REJECTED = {  # case -> what the model error names
    "weight-64": "v.weight has values outside [-63, 63]",
    "embed-minus-128": "embed has values outside [-127, 127]",
    "mult-2^16": "mult has values outside [0, 65535]",
    "shift-0": "shift has values outside [1, 40]",
    "shift-41": "shift has values outside [1, 40]",
    "gate-0": "h_gate has values outside [1, 127]",
    "gate-128": "h_gate has values outside [1, 127]",
    "bound": "conv1: an accumulator can reach 16777216",
    "missing-resid": "res.resid: expected int32 (8,), got missing",
    "bias-dtype": "int8.prior.out2.bias is I64",  # SPEC.md "Layout": F16, I8 and I32 only
    "profile": "arithmetic profile 'int4'",
    "arch": "architecture 'rvq9'",
    "extra-resid": "unexpected tensors int8.prior.layers.0.res.resid",
    "extra-decoder": "unexpected tensors int8.decoder.net.4.resid",
}


def _bound_case(t: dict) -> dict:
    """One output channel of a decoder conv1 with every weight at 63 and the bias that makes
    |B| + 255 * sum |W| + 127 * |R| exactly 2**24 (63 * 255 * 8 = 128,520 from the weights)."""
    conv1 = "int8.decoder.net.1.conv1"
    w = t[f"{conv1}.weight"].clone()
    w[2] = 63
    b = t[f"{conv1}.bias"].clone()
    b[2] = 2**24 - 63 * 255 * 8 - 127 * abs(int(t[f"{conv1}.resid"][2]))
    return {f"{conv1}.weight": w, f"{conv1}.bias": b}


def bad_tensors(t: dict, case: str) -> dict:
    """The int8.* tensors `t` with the fault `case` of REJECTED (all but "profile" and "arch")."""
    t = dict(t)

    def edit(name, index, value):
        x = t[name].clone()
        x[index] = value
        t[name] = x

    if case == "weight-64":
        edit("int8.prior.layers.1.v.weight", (0, 0, 0, 0), 64)
    elif case == "embed-minus-128":
        edit("int8.prior.embed", (3, 2), -128)
    elif case == "mult-2^16":
        edit("int8.decoder.net.0.mult", 1, 2**16)
    elif case in ("shift-0", "shift-41"):
        edit("int8.prior.out1.shift", 0, 0 if case == "shift-0" else 41)
    elif case in ("gate-0", "gate-128"):
        edit("int8.prior.layers.0.h_gate", 0, 0 if case == "gate-0" else 128)
    elif case == "bound":
        t.update(_bound_case(t))
    elif case == "missing-resid":
        del t["int8.prior.layers.1.res.resid"]
    elif case == "bias-dtype":
        t["int8.prior.out2.bias"] = t["int8.prior.out2.bias"].to(torch.int64)
    elif case == "extra-resid":
        t["int8.prior.layers.0.res.resid"] = torch.zeros(C, dtype=torch.int32)
    elif case == "extra-decoder":  # slot 4 is a residual block: its resid is net.4.conv1.resid
        t["int8.decoder.net.4.resid"] = torch.zeros(8, dtype=torch.int32)
    return t


def _write(path: Path, tensors: dict, profile: str = "int8", arch: str | None = None) -> Path:
    """A model file of conftest's tiny VQ-VAE and the given int8.* tensors (metadata "arch" when
    given)."""
    base = tiny_model_bytes()
    meta = json.loads(base[8:8 + int.from_bytes(base[:8], "little")])["__metadata__"]
    meta = {"name": "test-int8", "vqvae_config": meta["vqvae_config"],
            "prior_config": meta["prior_config"], "profile": profile} | ({"arch": arch} if arch else {})
    all_tensors = {k: v for k, v in st_load(base).items() if k.startswith("vqvae.")} | tensors
    path.write_bytes(serialise.canonical(st_save(all_tensors, metadata=meta)))
    return path


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_reference_rejects_int8_models_outside_the_ranges(model, tmp_path, case):
    """Every range of SPEC.md's profile int8 tensors, and the accumulator bound, is checked
    when the model loads: a model outside them is a model error."""
    network, _, _ = _reference()
    t = int8_tensors(model)
    if case == "bound":  # one below the bound is accepted
        ok = t | _bound_case(t)
        ok["int8.decoder.net.1.conv1.bias"] = ok["int8.decoder.net.1.conv1.bias"] - 1
        network.Model(_write(tmp_path / "ok.safetensors", ok))
    profile = "int4" if case == "profile" else "int8"
    path = _write(tmp_path / "bad.safetensors", bad_tensors(t, case), profile, "rvq9" if case == "arch" else None)
    with pytest.raises(network.ModelError, match=re.escape(REJECTED[case])):
        network.Model(path)


def test_reference_reads_an_explicit_vq_arch(model, tmp_path):
    """"arch": "vq" is the same as no arch key (SPEC.md "Model file")."""
    network, _, _ = _reference()
    ref = network.Model(_write(tmp_path / "vq.safetensors", int8_tensors(model), arch="vq"))
    assert ref.profile == "int8"


# ------------------------------------------------------------------ against vqcodec's int8 networks


def _vqcodec_int8(arch: dict = TINY):
    from vqcodec import prior_int8, vqvae_int8
    from vqcodec.prior import PriorConfig
    from vqcodec.vqvae import VQVAEConfig

    def prior(t):
        cfg = PriorConfig(K=arch["K"], channels=arch["C"], layers=arch["L"])
        return prior_int8.Int8Prior.from_tensors(t, cfg)

    def decoder(t):
        return vqvae_int8.Int8Decoder.from_tensors(t, VQVAEConfig(**arch["vq"]))

    return prior, decoder


def test_vqcodec_int8_prior_gives_the_reference_logits(model, model_file):
    """vqcodec's Int8Prior (parallel pass and wavefront decoder) computes the reference's
    integers on the synthetic model."""
    make_prior, _ = _vqcodec_int8()
    network, _, _ = _reference()
    ref = network.Model(model_file).prior
    prior = make_prior(int8_tensors(model))
    grids = np.random.default_rng(5).integers(0, K, size=(3, 6, 7))
    parallel = prior.logits(torch.from_numpy(grids)).numpy()
    for grid, logits in zip(grids, parallel):
        assert np.array_equal(logits, _reference_logits(ref, grid))
    pmfs = {}

    def step(rows, cols, p):  # teacher forcing: the wavefront decodes the given grids
        pmfs[(tuple(rows), tuple(cols))] = p
        return grids[:, rows, cols]

    assert np.array_equal(prior.decode(3, 6, 7, step), grids)
    ref_pmfs = pmf_from_logits(parallel.reshape(-1, K)).reshape(3, 6, 7, K)
    for (rows, cols), p in pmfs.items():
        assert np.array_equal(p, ref_pmfs[:, list(rows), list(cols)])
    assert sum(len(r) for r, _ in pmfs) == 6 * 7


def test_vqcodec_int8_decoder_gives_the_reference_pixels(model, model_file):
    _, make_decoder = _vqcodec_int8()
    network, _, _ = _reference()
    ref = network.Model(model_file).decoder
    decoder = make_decoder(int8_tensors(model))
    grids = np.random.default_rng(6).integers(0, K, size=(2, 5, 6))
    pixels = decoder(torch.from_numpy(grids)).permute(0, 2, 3, 1).numpy()
    for grid, got in zip(grids, pixels):
        assert np.array_equal(got, ref(grid))


@pytest.mark.parametrize("case", sorted(set(REJECTED) - {"profile", "arch"}))  # metadata: tests/test_profiles.py
def test_vqcodec_int8_rejects_what_the_reference_rejects(model, case):
    """The same faults make vqcodec's Int8Prior / Int8Decoder refuse the tensors (ValueError)."""
    make_prior, make_decoder = _vqcodec_int8()
    t = int8_tensors(model)
    make_prior(t), make_decoder(t)  # the valid tensors load
    bad = bad_tensors(t, case)
    with pytest.raises(ValueError):
        make_prior(bad)
        make_decoder(bad)


def test_reference_decodes_tiles_narrower_than_a_wavefront_step():
    """A clipped tile narrower than L + 1 columns has empty wavefront steps; both profiles of the
    reference decode it (v1: the tiny float model of conftest, against vqcodec's ExactPrior)."""
    from vqcodec import zoo

    network, _, _ = _reference()
    grid = np.random.default_rng(4).integers(0, K, size=(4, 2))
    ref_v1 = network.Prior(*_v1_prior_args(network))
    want = zoo.build(tiny_model_bytes(), "tiny", device="cpu").prior.logits(torch.from_numpy(grid)[None])
    assert np.array_equal(_reference_logits(ref_v1, grid), want[0].numpy().astype(np.int64))
    ref_int8 = network_int8_prior()
    assert np.array_equal(_reference_logits(ref_int8, grid), expected_logits(synthetic_int8(), grid))


def _v1_prior_args(network):
    data = tiny_model_bytes()
    meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    tensors = {k: v.numpy() for k, v in st_load(data).items()}
    return tensors, json.loads(meta["prior_config"]), network.load_exp_lut()


def network_int8_prior():
    _, network_int8, _ = _reference()
    tensors = {k: v.numpy() for k, v in int8_tensors(synthetic_int8()).items()}
    return network_int8.Prior(tensors, {"K": K, "channels": C, "layers": L}, _reference()[0].load_exp_lut())


def test_generate_and_conformance_record_the_same_int8_weights(model, model_file):
    """format/vectors/generate.py (from the file, with vqcodec) and format/reference/conformance.py
    (from the reference's parsed layers) record the same SHA-256 per int8.* tensor: what
    intermediate.json will pin for a released int8 model."""
    network, _, _ = _reference()
    path = ROOT / "format" / "vectors" / "generate.py"
    generate = load_script(path, "vectors_generate")
    conformance = importlib.import_module("conformance")
    data = model_file.read_bytes()
    assert generate.profile(data) == "int8" and generate.profile(tiny_model_bytes()) == "exact"
    want = generate.int8_integer_weights(data)
    assert set(want) == set(int8_tensors(model))
    assert conformance.integer_weights(network.Model(model_file)) == want


def test_released_sizes_agree_everywhere():
    """At the sizes of vqc-f4k512-v1 (K = 512, C = 128, L = 4, c_hi = 128; random integers):
    the reference, the formulas and vqcodec's int8 prior (both paths) and decoder agree."""
    _, network_int8, _ = _reference()
    network = importlib.import_module("network")
    m = synthetic_int8(7, F4K512)
    t = int8_tensors(m)
    arrays = {k: v.numpy() for k, v in t.items()}
    ref_prior = network_int8.Prior(arrays, {"K": 512, "channels": 128, "layers": 4}, network.load_exp_lut())
    ref_decoder = network_int8.Decoder(arrays, F4K512["vq"])
    make_prior, make_decoder = _vqcodec_int8(F4K512)
    prior, decoder = make_prior(t), make_decoder(t)
    grid = np.random.default_rng(8).integers(0, 512, size=(9, 11))
    logits = _reference_logits(ref_prior, grid)
    assert np.array_equal(logits, expected_logits(m, grid))
    assert np.array_equal(prior.logits(torch.from_numpy(grid)[None])[0].numpy(), logits)
    pmfs = pmf_from_logits(logits.reshape(-1, 512)).reshape(9, 11, 512)
    same = []

    def step(rows, cols, p):
        same.append(np.array_equal(p[0], pmfs[rows, cols]))
        return grid[None, rows, cols]

    assert np.array_equal(prior.decode(1, 9, 11, step)[0], grid) and all(same) and len(same) > 9
    assert len(np.unique(logits)) > 1000
    small = grid[:6, :7]
    pixels = ref_decoder(small)
    assert np.array_equal(pixels, expected_pixels(m, small))
    assert np.array_equal(decoder(torch.from_numpy(small)[None])[0].permute(1, 2, 0).numpy(), pixels)
    assert len(np.unique(pixels)) > 200
