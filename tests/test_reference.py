"""The independent reference decoder (format/reference/) and the range coder SPEC.md specifies.

The reference decoder runs in a subprocess in which `import torch`, `import constriction` and
`import vqcodec` fail, over the whole conformance suite (format/vectors/): pixels, index grids,
intermediate values and the error class of every broken file must be the pinned ones.  The
range-coder tests show, over many random PMFs and messages, that the coder SPEC.md specifies
(format/reference/rangecoder.py) is the one constriction 0.5 runs: same 24-bit CDF, same
words out of the encoder, and the specified decoder reads constriction's payloads.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import constriction
import numpy as np
import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "format" / "reference"
VECTORS = ROOT / "format" / "vectors"
MANIFEST = json.loads((VECTORS / "vectors.json").read_text())
BROKEN = json.loads((VECTORS / "broken" / "broken.json").read_text())
INTERMEDIATE = json.loads((VECTORS / "intermediate.json").read_text())
EXIT_CODES = {"format": 3, "model": 5, "limit": 6}
# Runs a script with torch, constriction and vqcodec made unimportable (None in sys.modules).
ISOLATED = ("import runpy, sys\n"
            "sys.modules.update(torch=None, constriction=None, vqcodec=None)\n"
            "for name in ('torch', 'constriction', 'vqcodec'):\n"
            "    try:\n"
            "        __import__(name)\n"
            "        raise SystemExit(f'{name} is importable')\n"
            "    except ImportError:\n"
            "        pass\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
CONSTRICTION_MODEL = constriction.stream.model.Categorical(perfect=False)


def _isolated(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-c", ISOLATED, *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=600)


def _module(name: str):
    return load_script(REFERENCE / f"{name}.py", f"reference_{name}")


rc = _module("rangecoder")


# ------------------------------------------------------------------ the decoder, without torch


@pytest.fixture(scope="module")
def computed() -> dict:
    """Everything the reference decoder computes over the suite (one isolated process)."""
    proc = _isolated(str(REFERENCE / "conformance.py"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_reference_reproduces_every_vector(computed, name):
    got, want = computed["vectors"][name], MANIFEST[name]
    assert (got["mode"], got["size"]) == (want["mode"], want["size"])
    assert got["pixels_sha256"] == want["pixels_sha256"]
    assert got["grid"] == INTERMEDIATE["grids"][name]


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_reference_reports_the_error_class_of_broken_files(computed, name):
    assert computed["broken"][name] == BROKEN[name]["error"]


def test_reference_reproduces_the_intermediate_values(computed):
    assert computed["first_positions"] == INTERMEDIATE["first_positions"]
    assert computed["decoder_output"] == INTERMEDIATE["decoder_output"]
    assert computed["integer_weights"] == INTERMEDIATE["integer_weights"]
    assert computed.get("first_positions_int8") == INTERMEDIATE.get("first_positions_int8")
    from vqcodec import zoo

    assert set(computed["integer_weights"]) == set(zoo.RELEASES)  # every released model


def test_entry_point_writes_the_png_and_exits_with_the_error_class(tmp_path):
    from PIL import Image

    name = "rgba-40x30.q2.vqc"
    out = tmp_path / "out.png"
    proc = _isolated(str(REFERENCE / "decode.py"), str(VECTORS / name), str(out))
    assert proc.returncode == 0, proc.stderr
    image = Image.open(out)
    assert image.format == "PNG" and image.mode == MANIFEST[name]["mode"]
    assert hashlib.sha256(image.tobytes()).hexdigest() == MANIFEST[name]["pixels_sha256"]
    bad = tmp_path / "bad.png"
    proc = _isolated(str(REFERENCE / "decode.py"), str(VECTORS / "broken" / "payload-short.vqc"), str(bad))
    assert proc.returncode == EXIT_CODES["format"]
    assert proc.stderr.count("\n") == 1 and "format error" in proc.stderr and "tile 0" in proc.stderr
    assert not bad.exists()


def test_reference_sources_import_only_numpy_safetensors_pillow_and_stdlib():
    allowed = ({"numpy", "safetensors", "PIL", "decode", "network", "network_int8", "rangecoder"}
               | sys.stdlib_module_names)
    for path in REFERENCE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert {n.split(".")[0] for n in names} <= allowed, (path.name, names)


def test_exp_lut_file_is_the_pinned_table():
    from vqcodec.pmf import EXP_LUT

    network = _module("network")
    raw = (ROOT / "format" / "exp-lut.txt").read_bytes()
    assert hashlib.sha256(raw).hexdigest() == network.EXP_LUT_SHA256
    table = network.load_exp_lut()
    assert table.tolist() == EXP_LUT.tolist()
    # the defining formula, evaluated in float64: every value is > 8e-4 away from a rounding tie
    assert all(round(2**30 * math.exp(-i / 16)) == v for i, v in enumerate(table.tolist()))
    assert table[0] == 2**30 and table[-1] == 0


# ------------------------------------------------------------------ the range coder of SPEC.md


def _random_pmfs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n PMFs over k symbols, each summing to 2**20 with every entry >= 1, of assorted shapes:
    flat, peaked, one-hot (all but one entry 1), heavy-tailed."""
    out = np.empty((n, k), dtype=np.int64)
    for r in range(n):
        kind = r % 5
        if kind == 0:
            w = rng.random(k)
        elif kind == 1:
            w = rng.random(k) ** 40
        elif kind == 2:
            w = np.zeros(k)
            w[rng.integers(k)] = 1.0
        elif kind == 3:
            w = np.exp(rng.normal(0, 10, k))
        else:
            w = np.ones(k)
        p = 1 + np.floor(w * ((1 << 20) - k) / w.sum()).astype(np.int64)
        p[np.argmax(p)] += (1 << 20) - p.sum()
        out[r] = p
    assert (out >= 1).all() and (out.sum(1) == 1 << 20).all()
    return out


def _float_cdf(pmf: np.ndarray) -> list[int]:
    """The 24-bit CDF the way constriction 0.5 builds it from float64 probabilities
    (fast_quantized_cdf): left_k = trunc(C_k * ((2**24 - K) / sum p)) + k, C_k summed in float64."""
    p = pmf.astype(np.float64)
    scale = float((1 << 24) - len(p)) / float(p.sum())
    cum = np.concatenate([[0.0], np.cumsum(p)[:-1]])
    return (np.trunc(cum * scale).astype(np.int64) + np.arange(len(p))).tolist() + [1 << 24]


@pytest.mark.parametrize("k", [2, 3, 17, 512, 1024, 65536])
def test_integer_cdf_equals_constrictions_float_formula(k):
    rng = np.random.default_rng(k)
    for pmf in _random_pmfs(rng, 200 if k < 65536 else 10, k):
        cdf = rc.cdf_from_pmf(pmf)
        assert cdf == _float_cdf(pmf)
        assert cdf[0] == 0 and cdf[-1] == 1 << 24 and min(np.diff(cdf)) >= 1


def test_cdf_boundaries_are_the_ones_constriction_decodes():
    """Decoding with constriction from a point placed at quantile q gives the symbol whose
    interval holds q: probing both sides of every boundary recovers the CDF exactly."""
    rng = np.random.default_rng(7)
    scale = ((1 << 64) - 1) >> 24  # the first symbol's scale (range = 2**64 - 1)
    for k in (2, 5, 64, 512):
        for pmf in _random_pmfs(rng, 10, k):
            cdf = rc.cdf_from_pmf(pmf)
            probs = pmf[None].astype(np.float64)
            for sym in range(k):
                for q in {cdf[sym], cdf[sym + 1] - 1}:
                    point = q * scale
                    words = np.array([point >> 32, point & 0xFFFFFFFF], dtype=np.uint32)
                    dec = constriction.stream.queue.RangeDecoder(words)
                    assert dec.decode(CONSTRICTION_MODEL, probs)[0] == sym


def _encode_both(rng, n, k):
    pmfs = _random_pmfs(rng, n, k)
    syms = np.array([rng.choice(k, p=p / (1 << 20)) if rng.random() < 0.8 else int(np.argmin(p))
                     for p in pmfs], dtype=np.int32)
    enc = constriction.stream.queue.RangeEncoder()
    enc.encode(syms, CONSTRICTION_MODEL, pmfs.astype(np.float64))
    theirs = enc.get_compressed().tolist()
    ours = rc.RangeEncoder()
    cdfs = [rc.cdf_from_pmf(p) for p in pmfs]
    for s, cdf in zip(syms, cdfs):
        ours.encode(cdf[s], cdf[s + 1] - cdf[s])
    return theirs, ours.finish(), syms.tolist(), cdfs


def test_specified_encoder_writes_constrictions_words_and_decoder_reads_them():
    rng = np.random.default_rng(2026)
    lengths = set()
    for trial in range(300):
        k = int(rng.choice([2, 3, 16, 512, 1024]))
        theirs, ours, syms, cdfs = _encode_both(rng, int(rng.integers(1, 80)), k)
        assert ours == theirs
        dec = rc.RangeDecoder(theirs)
        assert [dec.decode(cdf) for cdf in cdfs] == syms
        dec.finish()
        lengths.add(len(theirs) - (dec.pos - 2))  # words written - renormalisations
    assert lengths == {1, 2}  # seal: the point word, and sometimes a zero word after it


def test_decoder_rejects_non_conforming_payloads():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(50):
        words, _, syms, cdfs = _encode_both(rng, 60, 512)
        if len(words) < 3:
            continue

        def decode(payload):
            dec = rc.RangeDecoder(payload)
            out = [dec.decode(cdf) for cdf in cdfs]
            dec.finish()
            return out

        assert decode(words) == syms
        for bad in ([], words[:-2], words + [0, 0], words + [1, 2, 3]):
            with pytest.raises(rc.PayloadError):
                decode(bad)
        checked += 1
    assert checked > 40
    with pytest.raises(rc.PayloadError, match="outside the coding interval"):
        rc.RangeDecoder([0xFFFFFFFF, 0xFFFFFFFF]).decode(rc.cdf_from_pmf([1 << 19, 1 << 19]))


def test_empty_message_is_an_empty_payload():
    assert rc.RangeEncoder().finish() == []
    enc = constriction.stream.queue.RangeEncoder()
    assert enc.get_compressed().tolist() == []


# ------------------------------------------------------------------ other architectures, metadata


def _random_model(tmp_path: Path, name: str, f: int, n_res: int, layers: int) -> Path:
    """A seeded random model (config unlike the released ones) registered with vqc and written
    to tmp_path/<name>.safetensors for the reference decoder."""
    import torch

    from vqcodec import zoo
    from vqcodec.prior import GatedPixelCNN, PriorConfig
    from vqcodec.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(f + n_res + layers)
    vqvae = VQVAE(VQVAEConfig(f=f, K=16, D=4, c_lo=8, c_hi=12, n_res=n_res))
    vqvae.quantizer.codebook.normal_(0, 0.3)
    data = zoo.model_bytes(vqvae, GatedPixelCNN(PriorConfig(K=16, channels=8, layers=layers)), name)
    zoo.register(data, name)
    (tmp_path / f"{name}.safetensors").write_bytes(data)
    return tmp_path


@pytest.mark.parametrize("f, n_res, layers, size", [(4, 1, 2, (300, 20)), (16, 0, 3, (70, 50))])
def test_reference_matches_vqc_on_other_configs_tiles_and_metadata(tmp_path, f, n_res, layers, size):
    """Layer lists other than the released ones (f = 4 and 16, n_res 0 and 1, L = 2 and 3), a
    grid of several tiles with a clipped edge tile (f = 4: 5 x 75 positions, tiles of 64), mode L
    with alpha, and an ICC profile and EXIF carried through to the PNG."""
    from PIL import Image

    from vqcodec import codec, images as vio

    name = f"test-ref-f{f}"
    models = _random_model(tmp_path, name, f, n_res, layers)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    grey = ((x * 7 + y * 3) % 256).astype(np.uint8)
    image = Image.fromarray(grey).convert("LA") if f == 4 else Image.fromarray(
        np.stack([grey, grey[::-1], 255 - grey], 2))
    if f == 4:
        image.putalpha(Image.fromarray(((x * 3) % 256).astype(np.uint8)))
    exif = Image.Exif()
    exif[0x010E] = "reference test"
    icc = bytes(16) + (b"GRAY" if f == 4 else b"RGB ") + bytes(108)
    src = tmp_path / "in.png"
    image.save(src, icc_profile=icc, exif=exif.tobytes())
    vqc_file = tmp_path / "in.vqc"
    vqc_file.write_bytes(codec.compress(str(src), model=name, device="cpu"))
    want = codec.decompress(vqc_file.read_bytes(), device="cpu")
    assert want.mode == ("LA" if f == 4 else "RGB")
    want_png = tmp_path / "want.png"
    vio.save_png(want, want_png)
    out = tmp_path / "out.png"
    proc = _isolated(str(REFERENCE / "decode.py"), str(vqc_file), str(out), "--models", str(models))
    assert proc.returncode == 0, proc.stderr
    got, want = Image.open(out), Image.open(want_png)
    assert (got.mode, got.size) == (want.mode, want.size)
    assert got.tobytes() == want.tobytes()
    assert got.info.get("icc_profile") == want.info.get("icc_profile") == icc
    assert got.getexif().get(0x010E) == want.getexif().get(0x010E) == "reference test"


def test_encoder_carry_ripples_through_all_ones_words():
    """A carry out of `low` adds 1 to the words already written, through words 2**32 - 1."""
    enc = rc.RangeEncoder()
    enc.words = [7, 0xFFFFFFFF, 0xFFFFFFFF]
    enc.low = (1 << 64) - 5
    enc._add_to_low(9)
    assert enc.words == [8, 0, 0] and enc.low == 4


def test_reference_and_vqc_agree_on_mutated_payloads():
    """Payload words flipped, replaced, dropped or appended (CRC valid): whenever both decoders
    decode, the pixels are identical; whenever vqc reports a format error, so does the reference;
    the reference rejects nothing but non-conforming payloads that vqc decodes."""
    import random

    from vqcodec import codec, container
    from vqcodec.errors import VqcFormatError

    decode = _module("decode")
    rng = random.Random(13)
    base = container.read((VECTORS / "gray-33x17.q1.vqc").read_bytes())
    outcomes = set()
    for _ in range(24):
        p = bytearray(base.payloads[0])
        kind = rng.choice(["flip", "word", "drop", "append"])
        if kind == "flip":
            bit = rng.randrange(8 * len(p))
            p[bit // 8] ^= 1 << (bit % 8)
        elif kind == "word":
            at = 4 * rng.randrange(len(p) // 4)
            p[at:at + 4] = rng.randbytes(4)
        elif kind == "drop":
            p = p[:-4]
        else:
            p += rng.randbytes(4)
        data = container.write(container.VqcFile(base.header, (bytes(p),), base.chunks))
        try:
            ours = np.array(codec.decompress(data, device="cpu"))
        except VqcFormatError:
            ours = None
        try:
            theirs = np.array(decode.decode(data, decode.MODELS_DIR)[0])
        except decode.FormatError as exc:
            assert "not a conforming range-coder stream" in str(exc)
            theirs = None
        if ours is None:
            assert theirs is None
        if ours is not None and theirs is not None:
            assert np.array_equal(ours, theirs)
        outcomes.add((ours is None, theirs is None))
    assert (False, False) in outcomes  # some mutations still decode, identically
    assert any(rejected for _, rejected in outcomes)  # and some are rejected


# ------------------------------------------------------------------ the decoder's layer list


def _layer_configs():
    """The vqvae_config of every released model, and configurations at the edges of the ranges."""
    from vqcodec import registry
    from vqcodec.vqvae import VQVAEConfig

    out = []
    for name in sorted(registry.RELEASES):
        data = registry.weights(name)
        meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
        fields = json.loads(meta["vqvae_config"])
        fields.pop("stages", None)  # an rvq model's decoder is the vq decoder's layer list
        out.append(VQVAEConfig(**fields))
    out += [VQVAEConfig(f=4, K=2, D=1, c_lo=1, c_hi=1, n_res=0),
            VQVAEConfig(f=16, K=16, D=4, c_lo=8, c_hi=16, n_res=1),
            VQVAEConfig(f=64, K=2**16, D=256, c_lo=512, c_hi=512, n_res=8)]
    return out


@pytest.mark.parametrize("cfg", _layer_configs(), ids=lambda c: f"f{c.f}-D{c.D}-lo{c.c_lo}-hi{c.c_hi}-r{c.n_res}")
def test_reference_decoder_layers_equal_vqcodecs(cfg):
    """The reference's layer rule (written from SPEC.md) and vqcodec's `decoder_layers` (which the
    float and integer decoders are built from) give the same list."""
    from dataclasses import astuple

    from vqcodec.vqvae import Decoder, decoder_layers

    network = _module("network")
    want = network.decoder_layers(cfg.D, cfg.c_lo, cfg.c_hi, cfg.n_res, cfg.f)
    assert [astuple(s) for s in decoder_layers(cfg)] == want
    if cfg.c_hi <= 16:  # the float decoder has one module per entry, of its kind
        kinds = {"Conv2d": "conv", "ResBlock": "res", "PixelShuffle": "shuffle", "ReLU": "relu"}
        assert [kinds[type(m).__name__] for m in Decoder(cfg).net] == [s[1] for s in want]
