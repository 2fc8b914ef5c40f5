"""Architecture rvq (format 1.3, multi-stage codes) in the reference decoder
(format/reference/network_int8.py `StagePrior`, `Decoder(stages=)`, decode.py), on a synthetic
model.

The reference is compared with an independent whole-map computation written from SPEC.md
"Architecture rvq" (float64 torch convolutions, exact: every sum is an integer below 2**24), as
tests/test_reference_int8.py does for arch vq, and at the end with vqcodec's `Int8StagePrior` /
`Int8StageDecoder` on the same tensors.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conftest import tiny_model_bytes
from test_reference_int8 import (ISOLATED, K, L, REFERENCE, ROOT, TINY, _conv, _random_layer, _reference,
                                 _requant, decoder_maps, int8_tensors, synthetic_int8, trunk_maps)
from vqcodec import container, serialise
from vqcodec.int8 import check_bound
from vqcodec.pmf import pmf_from_logits

S_MAX = 3
C = TINY["C"]


def synthetic_rvq(seed: int = 0, stages: int = S_MAX) -> dict:
    """A synthetic int8 model of arch rvq: the trunk and decoder layers of `synthetic_int8`,
    embed [S, K, C] and codebook [S, K, D] (s8), and per stage s a head (out1, out2, cond int8
    [s, K, C] in [-127, 127], cond_mult int32 [s, C] in [1, 40]: conditioning terms up to ~5000,
    within the bound; both None for s = 0)."""
    m = synthetic_int8(seed)
    g = torch.Generator().manual_seed(seed + 100)
    m["stages"] = stages
    m["embed"] = torch.randint(-90, 91, (stages, K, C), generator=g, dtype=torch.int8)
    m["codebook"] = torch.randint(-100, 101, (stages, K, TINY["vq"]["D"]), generator=g, dtype=torch.int8)
    m["heads"] = []
    for s in range(stages):
        out1 = _random_layer(g, (C, C, 1, 1), 127, 80)
        out2 = _random_layer(g, (K, C, 1, 1), 255, 1500, shift=6)
        check_bound(f"heads.{s}.out1", 127, out1)
        check_bound(f"heads.{s}.out2", 255, out2)
        cond = torch.randint(-127, 128, (s, K, C), generator=g, dtype=torch.int8) if s else None
        mult = torch.randint(1, 41, (s, C), generator=g, dtype=torch.int32) if s else None
        m["heads"].append((out1, out2, cond, mult))
    return m


def rvq_tensors(m: dict) -> dict[str, torch.Tensor]:
    """The int8.* tensors of a synthetic rvq model (SPEC.md "Model file, arch rvq")."""
    t = {k: v for k, v in int8_tensors(m).items() if not k.startswith(("int8.prior.out1", "int8.prior.out2"))}
    t["int8.prior.embed"] = m["embed"]
    t["int8.decoder.codebook"] = m["codebook"]
    for s, (out1, out2, cond, mult) in enumerate(m["heads"]):
        t.update(out1.tensors(f"int8.prior.heads.{s}.out1"))
        t.update(out2.tensors(f"int8.prior.heads.{s}.out2"))
        if s:
            t[f"int8.prior.heads.{s}.cond"] = cond
            t[f"int8.prior.heads.{s}.cond_mult"] = mult
    return t


def write_rvq(path: Path, tensors: dict, stages: int = S_MAX, profile: str = "int8",
              arch: str = "rvq", prior_stages: int | None = None) -> Path:
    """A model file of arch `arch` with conftest's tiny VQ-VAE configs plus `stages`."""
    base = tiny_model_bytes()
    meta = json.loads(base[8:8 + int.from_bytes(base[:8], "little")])["__metadata__"]
    vq = json.loads(meta["vqvae_config"]) | {"stages": stages}
    pr = json.loads(meta["prior_config"]) | {"stages": stages if prior_stages is None else prior_stages}
    meta = {"name": path.stem, "vqvae_config": json.dumps(vq), "prior_config": json.dumps(pr),
            "profile": profile, "arch": arch}
    fp16 = {k: v for k, v in st_load(base).items() if k.startswith("vqvae.") and "quantizer" not in k}
    for s in range(stages):
        fp16[f"vqvae.quantizer.stages.{s}.codebook"] = torch.zeros(K, TINY["vq"]["D"], dtype=torch.float16)
    path.write_bytes(serialise.canonical(st_save(fp16 | tensors, metadata=meta)))
    return path


@pytest.fixture(scope="module")
def model() -> dict:
    return synthetic_rvq()


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:
    return write_rvq(tmp_path_factory.mktemp("rvq") / "test-rvq.safetensors", rvq_tensors(model))


# ------------------------------------------------------------------ independent computation


def _table(table: torch.Tensor, codes: np.ndarray) -> torch.Tensor:
    """clamp(sum_s table[s][codes[s]], -127, 127) -> int64 [1, X, H, W]."""
    total = sum(table[s].long()[torch.from_numpy(codes[s])] for s in range(codes.shape[0]))
    return total.clamp(-127, 127).permute(2, 0, 1)[None]


def expected_logits(m: dict, codes: np.ndarray) -> np.ndarray:
    """Integer logits int64 [S, H, W, K] of codes [S, H, W], whole maps at once (SPEC.md "Prior
    network, arch rvq, int8": the v2 trunk on the clamped embedding sum, heads with cond)."""
    h = trunk_maps(m, _table(m["embed"], codes))
    out = []
    for s in range(codes.shape[0]):
        out1, out2, cond, mult = m["heads"][s]
        acc1 = _conv(h.clamp(min=0), out1)
        for t in range(s):  # + cond_mult[t, o] * cond[t, i_t, o]
            row = cond[t].long()[torch.from_numpy(codes[t])].permute(2, 0, 1)[None]
            acc1 = acc1 + mult[t].long().view(1, -1, 1, 1) * row
        u = _requant(acc1, out1, 0, 255)
        out.append(_requant(_conv(u, out2), out2, -(2**20), 2**20)[0].permute(1, 2, 0).numpy())
    return np.stack(out)


def expected_pixels(m: dict, codes: np.ndarray) -> np.ndarray:
    """Pixels of codes [S, H, W]: v2's int8 decoder on clamp(sum of the stage codewords)."""
    return decoder_maps(m, _table(m["codebook"], codes))


def coding_order(h: int, w: int, stages: int) -> list[tuple[int, int, int]]:
    """(stage, row, column) of every index in the coding order with stages (SPEC.md)."""
    return [(s, i, j) for _, s, i, j in sorted((j + (L + 1) * i, s, i, j)
                                               for s in range(stages) for i in range(h) for j in range(w))]


# ------------------------------------------------------------------ the tests


def _reference_logits(prior, codes: np.ndarray) -> np.ndarray:
    """Logits the reference's wavefront decoder computes for each (stage, position), fed the
    indices of `codes` [S, h, w] (teacher forcing) -> int64 [S, h, w, K]."""
    S, h, w = codes.shape
    out = np.zeros((S, h, w, prior.K), dtype=np.int64)
    head, calls = prior._head, []

    def traced(s, r, before):
        logits = head(s, r, before)
        calls.append(logits)
        return logits

    order = coding_order(h, w, S)
    fed = iter([])

    def feed(pmfs):
        nonlocal fed
        picked = [next(order_it) for _ in range(len(pmfs))]
        for (s, i, j), lg in zip(picked, calls[-1]):
            out[s, i, j] = lg
        assert len({p[0] for p in picked}) == 1  # one stage per call
        return [codes[s, i, j] for s, i, j in picked]

    order_it = iter(order)
    prior._head = traced
    try:
        decoded = prior.decode_tile(h, w, feed, S)
    finally:
        del prior._head
    assert np.array_equal(decoded, codes)
    assert next(order_it, None) is None
    return out


@pytest.mark.parametrize("S", [1, 2, 3])
def test_reference_stage_prior_matches_the_formulas(model, model_file, S):
    network, network_int8, _ = _reference()
    ref = network.Model(model_file)
    assert ref.arch == "rvq" and ref.stages == S_MAX and isinstance(ref.prior, network_int8.StagePrior)
    codes = np.random.default_rng(S).integers(0, K, size=(S, 6, 7))
    got = _reference_logits(ref.prior, codes)
    want = expected_logits(model, codes)
    assert np.array_equal(got, want)
    assert len(np.unique(want[..., 1:])) > 100
    if S > 1:  # the conditioning matters, and the heads differ from stage to stage
        other = codes.copy()
        other[0, 2, 3] = (other[0, 2, 3] + 1) % K
        changed = np.any(expected_logits(model, other) != want, axis=-1)
        assert changed[1:, 2, 3].all()  # later stages at the same position see stage 0
        step = np.arange(7)[None, :] + (L + 1) * np.arange(6)[:, None]
        assert not changed[:, step < step[2, 3]].any() and not changed[0, 2, 3]


def test_reference_stage_prior_with_one_stage_is_v2(model, tmp_path):
    """S_max = 1 with embed[0] and heads.0 = out1 / out2 of a v2 model gives v2's logits."""
    network, _, _ = _reference()
    from test_reference_int8 import expected_logits as v2_logits

    v2 = synthetic_int8(5)
    m = dict(v2, embed=v2["embed"][None], codebook=v2["codebook"][None], stages=1,
             heads=[(v2["out1"], v2["out2"], None, None)])
    path = write_rvq(tmp_path / "one.safetensors", rvq_tensors(m), stages=1)
    codes = np.random.default_rng(0).integers(0, K, size=(1, 5, 6))
    got = _reference_logits(network.Model(path).prior, codes)
    assert np.array_equal(got[0], v2_logits(v2, codes[0]))


@pytest.mark.parametrize("S", [1, 3])
def test_reference_stage_decoder_matches_the_formulas(model, model_file, S):
    network, _, _ = _reference()
    ref = network.Model(model_file)
    codes = np.random.default_rng(10 + S).integers(0, K, size=(S, 5, 6))
    got = ref.decoder(codes)
    want = expected_pixels(model, codes)
    assert got.dtype == np.uint8 and got.shape == (20, 24, 3) and np.array_equal(got, want)
    assert 0 < want.mean() < 255 and len(np.unique(want)) > 50


def _encode_tile(m: dict, tile: np.ndarray, rc) -> bytes:
    """Range-code one tile's codes [S, h, w] in the coding order with stages."""
    logits = expected_logits(m, tile)
    enc = rc.RangeEncoder()
    for s, i, j in coding_order(*tile.shape[1:], tile.shape[0]):
        cdf = rc.cdf_from_pmf(pmf_from_logits(logits[s, i, j][None])[0])
        k = int(tile[s, i, j])
        enc.encode(cdf[k], cdf[k + 1] - cdf[k])
    return np.array(enc.finish(), dtype="<u4").tobytes()


def rvq_file(m: dict, model_bytes: bytes, codes: np.ndarray, name: str = "test-rvq") -> bytes:
    """A .vqc file of codes [S, 5, 6] in 2 x 2 tiles of 3 x 4 (clipped), 22 x 17 RGB."""
    import importlib

    _reference()
    rc = importlib.import_module("rangecoder")
    S = codes.shape[0]
    payloads = tuple(_encode_tile(m, codes[:, r0:r0 + 3, c0:c0 + 4], rc) for r0 in (0, 3) for c0 in (0, 4))
    chunks = (container.stages_chunk(S),) if S > 1 else ()
    header = container.Header(name, hashlib.sha256(model_bytes).digest()[:8], 22, 17, container.Mode.RGB,
                              5, 6, 3, 4, version_minor=container.minor_version(chunks), stages=S)
    return container.write(container.VqcFile(header, payloads, chunks))


@pytest.mark.parametrize("S", [1, 2, 3])
def test_reference_decodes_a_vqc_file_of_an_rvq_model(model, model_file, tmp_path, S):
    """End to end, where torch, constriction and vqcodec cannot be imported: decode.py reads
    arch rvq from the model file and S from the stages chunk."""
    codes = np.random.default_rng(20 + S).integers(0, K, size=(S, 5, 6))
    vqc = tmp_path / "x.vqc"
    vqc.write_bytes(rvq_file(model, model_file.read_bytes(), codes))
    out = tmp_path / "x.png"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", ISOLATED, str(REFERENCE / "decode.py"), str(vqc),
                           str(out), "--models", str(model_file.parent), "--grid", str(tmp_path / "g.npy")],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(tmp_path / "g.npy"), codes)
    from PIL import Image

    with Image.open(out) as im:
        assert np.array_equal(np.asarray(im), expected_pixels(model, codes)[:17, :22])


def test_reference_file_stages_above_the_model(model, tmp_path):
    """A file of S > S_max stages is a format error once the model is known; so is a stages
    chunk with S > 1 in a file of a vq model."""
    _, _, decode = _reference()
    small = write_rvq(tmp_path / "test-rvq.safetensors", rvq_tensors(synthetic_rvq(0, 2)), stages=2)
    codes = np.random.default_rng(0).integers(0, K, size=(3, 5, 6))
    with pytest.raises(decode.FormatError, match="file codes 3 stages, model test-rvq has 2"):
        decode.decode(rvq_file(model, small.read_bytes(), codes), tmp_path)
    vq = tmp_path / "test-vq.safetensors"
    vq.write_bytes(tiny_model_bytes())
    with pytest.raises(decode.FormatError, match="file codes 2 stages, model test-vq has 1"):
        decode.decode(rvq_file(model, vq.read_bytes(), codes[:2], "test-vq"), tmp_path)


def _bad(t: dict, case: str) -> dict:
    t = dict(t)
    if case == "cond-0":
        t["int8.prior.heads.0.cond"] = torch.zeros(0, K, C, dtype=torch.int8)
    elif case == "cond-mult-0":
        t["int8.prior.heads.0.cond_mult"] = torch.zeros(0, C, dtype=torch.int32)
    elif case == "v2-head":
        t["int8.prior.out1.weight"] = t["int8.prior.heads.0.out1.weight"].clone()
    elif case == "cond-range":  # -128 is not s8
        c = t["int8.prior.heads.1.cond"].clone()
        c[0, 0, 0] = -128
        t["int8.prior.heads.1.cond"] = c
    elif case == "cond-i32":  # the old dtype, values in range
        t["int8.prior.heads.1.cond"] = t["int8.prior.heads.1.cond"].to(torch.int32)
    elif case == "cond-mult-range":
        c = t["int8.prior.heads.2.cond_mult"].clone()
        c[1, 3] = 2**16
        t["int8.prior.heads.2.cond_mult"] = c
    elif case == "cond-mult-negative":
        c = t["int8.prior.heads.1.cond_mult"].clone()
        c[0, 0] = -1
        t["int8.prior.heads.1.cond_mult"] = c
    elif case == "cond-mult-missing":
        t = {k: v for k, v in t.items() if k != "int8.prior.heads.2.cond_mult"}
    elif case == "cond-mult-shape":
        t["int8.prior.heads.2.cond_mult"] = t["int8.prior.heads.2.cond_mult"][:1].clone()
    elif case == "cond-bound":  # every cond_mult < 2**16, but out1's accumulator reaches 2**24
        c = t["int8.prior.heads.2.cond_mult"].clone()
        c[:, 0] = 2**16 - 1
        t["int8.prior.heads.2.cond_mult"] = c
        t["int8.prior.heads.2.out1.bias"] = t["int8.prior.heads.2.out1.bias"].clone()
        t["int8.prior.heads.2.out1.bias"][0] = 2**24 - 2 * 127 * (2**16 - 1) - 10
    elif case == "embed-2d":
        t["int8.prior.embed"] = t["int8.prior.embed"][0]
    elif case == "codebook-2d":
        t["int8.decoder.codebook"] = t["int8.decoder.codebook"][0]
    elif case == "missing-head":
        t = {k: v for k, v in t.items() if not k.startswith("int8.prior.heads.2.")}
    return t


@pytest.mark.parametrize("case", ["cond-0", "cond-mult-0", "v2-head", "cond-range", "cond-i32",
                                  "cond-mult-range", "cond-mult-negative", "cond-mult-missing",
                                  "cond-mult-shape", "cond-bound", "embed-2d",
                                  "codebook-2d", "missing-head", "profile-exact", "arch-unknown",
                                  "stages-differ", "stages-9"])
def test_reference_rejects_bad_rvq_models(model, tmp_path, case):
    network, _, _ = _reference()
    t = rvq_tensors(model)
    kw = {"profile-exact": dict(profile="exact"), "arch-unknown": dict(arch="hyper"),
          "stages-differ": dict(prior_stages=2), "stages-9": dict(stages=9)}.get(case, {})
    path = write_rvq(tmp_path / "bad.safetensors", _bad(t, case), **kw)
    with pytest.raises(network.ModelError):
        network.Model(path)


def test_reference_accepts_the_cond_bound_minus_one(model, tmp_path):
    network, _, _ = _reference()
    t = _bad(rvq_tensors(model), "cond-bound")
    w = t["int8.prior.heads.2.out1.weight"].long().abs().reshape(C, -1).sum(1)
    cond = 127 * t["int8.prior.heads.2.cond_mult"].long().sum(0)
    b = t["int8.prior.heads.2.out1.bias"].clone()
    b[0] = 2**24 - 1 - 127 * int(w[0]) - int(cond[0])
    t["int8.prior.heads.2.out1.bias"] = b
    network.Model(write_rvq(tmp_path / "ok.safetensors", t))
    b[0] += 1
    with pytest.raises(network.ModelError, match="2\\*\\*24"):
        network.Model(write_rvq(tmp_path / "bad.safetensors", t | {"int8.prior.heads.2.out1.bias": b}))


# ------------------------------------------------------------------ vqcodec's integer networks (int8s)


def test_vqcodec_stage_networks_match_the_reference(model, model_file):
    """vqcodec's Int8StagePrior (logits [N, S, H, W, K]) and Int8StageDecoder (codes
    [N, S, h, w] -> uint8 [N, 3, f h, f w]) give the formulas' integers on the same tensors."""
    from vqcodec.prior_stages import StagePriorConfig
    from vqcodec.prior_stages_int8 import Int8StagePrior
    from vqcodec.rvq import RVQConfig
    from vqcodec.vqvae_stages_int8 import Int8StageDecoder

    t = rvq_tensors(model)
    cfg = StagePriorConfig(K=K, channels=C, layers=L, stages=S_MAX)
    prior = Int8StagePrior.from_tensors(t, cfg, "cpu")
    codes = np.random.default_rng(7).integers(0, K, size=(2, 6, 7))
    got = prior.logits(torch.from_numpy(codes)[None]).numpy()[0]
    assert np.array_equal(got, expected_logits(model, codes))
    dec = Int8StageDecoder.from_tensors(t, RVQConfig(**TINY["vq"], stages=S_MAX), "cpu")
    pixels = dec(torch.from_numpy(codes)[None])[0].permute(1, 2, 0).numpy()
    assert np.array_equal(pixels, expected_pixels(model, codes))
