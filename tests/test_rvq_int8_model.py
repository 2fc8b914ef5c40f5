"""An rvq model of profile int8 end to end: the stage decoder (vqcodec/vqvae_stages_int8.py), its
calibration (vqcodec/train/calibrate_stages.py), the model file (vqcodec/serialise.py arch rvq,
vqcodec/modelfile.py), zoo.build and the export script (vqcodec/train/export_rvq_int8.py), on a
small randomly initialised model calibrated on synthetic images made here."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save as st_save

from conftest import needs_cuda
from test_int8_model import int8_bytes
from vqcodec import zoo
from vqcodec.errors import VqcModelError
from vqcodec.prior_stages import StagePrior, StagePriorConfig
from vqcodec.prior_stages_int8 import Int8StagePrior
from vqcodec.rvq import RVQConfig, RVQVAE
from vqcodec.serialise import ARCH_RVQ, canonical, model_bytes_rvq_int8, parse_model
from vqcodec.train import export_rvq_int8
from vqcodec.train.calibrate_stages import calibrate_stage_decoder, calibrate_stage_prior
from vqcodec.vqvae import VQVAEConfig
from vqcodec.vqvae_int8 import Int8Decoder
from vqcodec.vqvae_stages_int8 import Int8StageDecoder

S = 3
VQ_CFG = RVQConfig(f=4, K=16, D=4, c_lo=8, c_hi=8, n_res=1, stages=S)
PRIOR_CFG = StagePriorConfig(K=16, channels=8, layers=2, stages=S)


def _images(seed, n, size=32):
    """Smooth synthetic RGB images uint8 [size, size, 3] (gradients and blobs)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(-3, 3, 3)
        img = np.stack([np.sin(a * x + b * y + k + c) for k in range(3)], -1) * 0.4 + 0.5
        out.append((np.clip(img + rng.normal(0, 0.03, img.shape), 0, 1) * 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module")
def rvq():
    torch.manual_seed(0)
    model = RVQVAE(VQ_CFG).eval()
    for s, st in enumerate(model.quantizer.stages):  # residual-like codebooks: each stage smaller
        st.codebook.copy_(torch.randn(VQ_CFG.K, VQ_CFG.D) * 0.5 ** s)
        st.initialized.fill_(True)
    return model


@pytest.fixture(scope="module")
def codes(rvq):
    with torch.no_grad():
        return [rvq.encode(torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255)[0].numpy()
                for img in _images(1, 6)]


@pytest.fixture(scope="module")
def dec_tensors(rvq, codes):
    return calibrate_stage_decoder(rvq, codes, search=())


@pytest.fixture(scope="module")
def decoder(dec_tensors):
    return Int8StageDecoder.from_tensors(dec_tensors, VQ_CFG)


@pytest.fixture(scope="module")
def float_prior():
    torch.manual_seed(1)
    return StagePrior(PRIOR_CFG).eval()


@pytest.fixture(scope="module")
def model_bytes(rvq, codes, dec_tensors, float_prior):
    tensors = {**calibrate_stage_prior(float_prior, codes), **dec_tensors}
    return model_bytes_rvq_int8(rvq, PRIOR_CFG, tensors, "test-rvq")


def _net(tensors):
    return {k: v for k, v in tensors.items() if k != "int8.decoder.codebook"}


def _v2_decoder(tensors, codebook):
    """A v2 Int8Decoder with the same network and a [K', D] codebook."""
    fields = {k: v for k, v in dataclasses.asdict(VQ_CFG).items() if k != "stages"}
    cfg = VQVAEConfig(**{**fields, "K": codebook.shape[0]})
    return Int8Decoder.from_tensors({**_net(tensors), "int8.decoder.codebook": codebook.contiguous()}, cfg)


# ---- decoder ---------------------------------------------------------------------------------
def test_decoder_input_is_the_clamped_sum_of_the_stage_codewords(dec_tensors):
    rng = np.random.default_rng(2)
    t = dict(dec_tensors)
    t["int8.decoder.codebook"] = torch.from_numpy(rng.integers(-127, 128, (S, VQ_CFG.K, VQ_CFG.D))).to(torch.int8)
    dec = Int8StageDecoder.from_tensors(t, VQ_CFG)
    cb = t["int8.decoder.codebook"].to(torch.int64)
    h, w = 5, 6
    for stages in (1, 2, 3):
        idx = torch.from_numpy(rng.integers(0, VQ_CFG.K, (1, stages, h, w)))
        total = sum(cb[s][idx[0, s]] for s in range(stages))  # [h, w, D]
        if stages > 1:
            assert int(total.abs().max()) > 127  # the clamp matters here
        x = total.clamp(-127, 127).to(torch.int8).reshape(h * w, -1)
        ref = _v2_decoder(t, x)(torch.arange(h * w).view(1, h, w))
        torch.testing.assert_close(dec(idx), ref, rtol=0, atol=0)


def test_one_stage_equals_the_v2_decoder_with_codebook_0(dec_tensors, decoder, codes):
    ref = _v2_decoder(dec_tensors, dec_tensors["int8.decoder.codebook"][0])
    idx = torch.from_numpy(np.stack([c[:1] for c in codes[:2]]))
    out = decoder(idx)
    assert out.dtype == torch.uint8 and out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, ref(idx[:, 0]), rtol=0, atol=0)


def test_tiles_with_halo_equal_a_whole_image_decode(decoder, codes):
    idx = torch.from_numpy(codes[0])[None]  # [1, S, 8, 8]
    whole = decoder(idx)
    f, halo, cut = VQ_CFG.f, decoder.halo, 4
    assert halo >= 1
    out = torch.zeros_like(whole)
    for r0, r1 in ((0, cut), (cut, 8)):
        for c0, c1 in ((0, cut), (cut, 8)):
            a, b, c, d = max(0, r0 - halo), min(8, r1 + halo), max(0, c0 - halo), min(8, c1 + halo)
            tile = decoder(idx[..., a:b, c:d])
            out[..., f * r0:f * r1, f * c0:f * c1] = tile[..., f * (r0 - a):f * (r1 - a), f * (c0 - c):f * (c1 - c)]
    torch.testing.assert_close(out, whole, rtol=0, atol=0)


def test_more_stages_decode_closer_to_the_float_model(rvq, decoder, codes):
    """The calibrated integer decoder follows the float decoder at every stage count."""
    idx = torch.from_numpy(np.stack(codes[:2]))
    for stages in (1, 2, 3):
        want = rvq.decode_float(idx[:, :stages]) * 255
        err = (decoder(idx[:, :stages]).double() - want.double()).abs().mean()
        assert float(err) < 3.0, (stages, float(err))


def test_decoder_tensors_round_trip_and_rejections(dec_tensors, decoder):
    out = decoder.tensors()
    assert sorted(out) == sorted(dec_tensors)
    assert all(torch.equal(out[k], dec_tensors[k]) for k in out)
    assert out["int8.decoder.codebook"].shape == (S, VQ_CFG.K, VQ_CFG.D)
    flat = dict(dec_tensors, **{"int8.decoder.codebook": dec_tensors["int8.decoder.codebook"][0].contiguous()})
    with pytest.raises(ValueError, match="codebook"):
        Int8StageDecoder.from_tensors(flat, VQ_CFG)
    bad = dict(dec_tensors, **{"int8.decoder.codebook": dec_tensors["int8.decoder.codebook"].clone()})
    bad["int8.decoder.codebook"].view(-1)[3] = -128
    with pytest.raises(ValueError, match="codebook has values outside"):
        Int8StageDecoder.from_tensors(bad, VQ_CFG)
    with pytest.raises(ValueError, match="stages"):
        decoder(torch.zeros(1, S + 1, 2, 2, dtype=torch.int64))


# ---- model file ------------------------------------------------------------------------------
def test_model_bytes_are_deterministic_and_build(model_bytes, rvq, codes, dec_tensors, float_prior):
    again = model_bytes_rvq_int8(rvq, PRIOR_CFG, {**calibrate_stage_prior(float_prior, codes), **dec_tensors},
                                 "test-rvq")
    assert again == model_bytes
    mf = parse_model(model_bytes, "test-rvq")
    assert mf.arch == ARCH_RVQ and mf.profile == "int8" and isinstance(mf.vqvae, RVQVAE)
    assert mf.vqvae.cfg == VQ_CFG and mf.prior_cfg == PRIOR_CFG
    m = zoo.build(model_bytes, "test-rvq")
    assert isinstance(m.prior, Int8StagePrior) and isinstance(m.decoder, Int8StageDecoder)
    assert m.stages == S and m.profile == "int8"
    for s in range(S):  # fp16 codebooks as written
        torch.testing.assert_close(m.vqvae.quantizer.stages[s].codebook,
                                   rvq.quantizer.stages[s].codebook.half().float(), rtol=0, atol=0)
    idx = torch.from_numpy(codes[0])[None]
    assert m.decoder(idx).shape == (1, 3, 32, 32)
    seen = m.prior.decode(1, 3, 4, lambda r, c, p: np.zeros((1, len(r)), dtype=np.int64), 2)
    assert seen.shape == (1, 2, 3, 4)


def test_vq_models_have_arch_vq_and_one_stage():
    from conftest import tiny_model_bytes

    data = tiny_model_bytes()
    assert parse_model(data, "test-tiny").arch == "vq"
    assert zoo.build(data, "test-tiny").stages == 1


def _edit(data, meta=None, drop=(), add=None):
    """Rewrite a model file: metadata changes, tensors dropped or added."""
    from safetensors.torch import load as st_load

    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])["__metadata__"]
    header.update(meta or {})
    header = {k: v for k, v in header.items() if v is not None}
    tensors = {k: v for k, v in st_load(data).items() if k not in drop}
    tensors.update(add or {})
    return canonical(st_save(tensors, metadata=header))


@pytest.mark.parametrize("change, match", [
    (dict(meta={"arch": "hyperprior"}), "unknown architecture 'hyperprior'"),
    (dict(meta={"profile": None}), "unknown arithmetic profile 'exact' for architecture 'rvq'"),
    (dict(meta={"vqvae_config": json.dumps({**VQ_CFG.to_dict(), "stages": 9})}), "stages = 9"),
    (dict(meta={"prior_config": json.dumps({**PRIOR_CFG.to_dict(), "stages": 2})}), "differs"),
    (dict(meta={"prior_config": json.dumps({k: v for k, v in PRIOR_CFG.to_dict().items() if k != "stages"})}),
     "stages"),
    (dict(drop=("vqvae.quantizer.stages.2.codebook",)), "stages.2.codebook is missing"),
    (dict(add={"vqvae.quantizer.stages.0.embed_sum": torch.zeros(16, 4, dtype=torch.float16)}), "unexpected tensor"),
    (dict(add={"prior.embed": torch.zeros(3, 16, 8, dtype=torch.float16)}), "only vqvae"),
    (dict(add={"vqvae.decoder.net.0.bias": torch.zeros(8, dtype=torch.float16)}), "unexpected tensor vqvae.decoder"),
    (dict(drop=("int8.prior.heads.2.cond",)), "heads.2.cond is missing"),
    (dict(drop=("int8.prior.heads.2.cond_mult",)), "heads.2.cond_mult is missing"),
    (dict(add={"int8.prior.heads.1.cond": torch.zeros(1, 16, 8, dtype=torch.int32)}),
     "heads.1.cond is torch.int32"),
    (dict(add={"int8.prior.heads.1.cond_mult": torch.full((1, 8), 1 << 16, dtype=torch.int32)}),
     "heads.1.cond_mult has values outside"),
    (dict(drop=("int8.decoder.codebook",)), "codebook is missing"),
])
def test_malformed_rvq_files_are_one_line_model_errors(model_bytes, change, match):
    with pytest.raises(VqcModelError, match=match) as info:
        zoo.build(_edit(model_bytes, **change), "test-rvq")
    assert "\n" not in str(info.value)


# ---- export ----------------------------------------------------------------------------------
def _float_checkpoint(rvq, prior):
    """A float rvq checkpoint in the layout of vqcodec.train.rvq.float_rvq_bytes."""
    tensors = {f"vqvae.{k}": v for k, v in rvq.state_dict().items()
               if not k.startswith("quantizer.") or k.endswith(".codebook")}
    tensors.update({f"prior.{k}": v for k, v in prior.state_dict().items()})
    tensors = {k: v.detach().half().contiguous() for k, v in tensors.items()}
    meta = {"name": "float", "arch": "rvq", "vqvae_config": json.dumps(rvq.cfg.to_dict()),
            "prior_config": json.dumps(prior.cfg.to_dict())}
    return canonical(st_save(tensors, metadata=meta))


def test_export_script_writes_a_loadable_model(rvq, float_prior, tmp_path, capsys):
    src = tmp_path / "float.safetensors"
    src.write_bytes(_float_checkpoint(rvq, float_prior))
    data = tmp_path / "crops"
    data.mkdir()
    for i, img in enumerate(_images(3, 4, 24)):
        Image.fromarray(img).save(data / f"{i}.png")
    out = tmp_path / "m.safetensors"
    args = ["--float", str(src), "--data", str(data), "--name", "test-rvq-x", "--out", str(out), "--every", "1",
            "--no-search"]
    export_rvq_int8.main(args)
    assert "sha256" in capsys.readouterr().out
    m = zoo.build(out.read_bytes(), "test-rvq-x")
    assert m.stages == S and isinstance(m.prior, Int8StagePrior)
    assert json.loads(json.loads(out.read_bytes()[8:8 + int.from_bytes(out.read_bytes()[:8], "little")])
                      ["__metadata__"]["vqvae_config"])["stages"] == S
    with pytest.raises(SystemExit, match="exists"):
        export_rvq_int8.main(args)
    with pytest.raises(SystemExit, match="not a float rvq"):
        export_rvq_int8.main(["--float", str(out), "--data", str(data), "--name", "y", "--out",
                              str(tmp_path / "y.safetensors")])


# ---- the whole chain: compress -> .vqc -> decompress -> reference decoder ----------------------
def test_codec_round_trip_matches_the_reference_decoder(model_bytes, tmp_path):
    """End to end on the profile users get (int8) with a real calibrated rvq model: for every
    stage count the file names the model and its stages, vqcodec decodes exactly the codes it
    wrote to the stage decoder's pixels, the independent reference decoder gives the same codes
    and pixels, and more stages give more bytes.  (The model is untrained, so its error says
    nothing; benchmarks/rvq_stages.py measures PSNR against stages with a trained one.)"""
    import hashlib
    import sys
    from pathlib import Path

    from vqcodec import codec, container

    ref_dir = Path(__file__).resolve().parent.parent / "format" / "reference"
    sys.path.insert(0, str(ref_dir))
    try:
        import decode as reference
    finally:
        sys.path.remove(str(ref_dir))
    name = "test-rvq-e2e"
    data = model_bytes_rvq_int8_renamed(model_bytes, name)
    (tmp_path / f"{name}.safetensors").write_bytes(data)
    zoo.register(data, name)
    img = _images(5, 1, size=40)[0][:36, :28]
    sizes = []
    for s in range(1, S + 1):
        blob = codec.compress(img, model=name, stages=s, device="cpu")
        head = container.read(blob).header
        assert (head.model_name, head.model_hash, head.stages) == (name, hashlib.sha256(data).digest()[:8], s)
        ours, codes = codec.decompress_with_grid(blob, device="cpu")
        assert codes.shape == (s, 9, 7)
        m = zoo.load(name, device="cpu")
        direct = m.decoder(torch.from_numpy(codes)[None])[0].permute(1, 2, 0).numpy()[:36, :28]
        assert np.array_equal(np.asarray(ours), direct)
        ref_img, ref_codes = reference.decode(blob, tmp_path)
        assert np.array_equal(ref_codes, codes)
        assert np.array_equal(np.asarray(ref_img), np.asarray(ours))
        sizes.append(len(blob))
    assert sizes == sorted(sizes) and len(set(sizes)) == S


def model_bytes_rvq_int8_renamed(data: bytes, name: str) -> bytes:
    """The model file `data` with its metadata "name" set to `name` (canonical header)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["name"] = name
    body = json.dumps(header).encode()
    return canonical(len(body).to_bytes(8, "little") + body + data[8 + n:])


def test_built_rvq_networks_satisfy_the_protocols(model_bytes):
    """zoo.build gives an rvq model through the profile registry: arch, S_max, and networks that
    satisfy the codec's interfaces (a single-stage prior is not a StageEntropyPrior)."""
    from vqcodec.interfaces import EntropyPrior, PixelDecoder, StageEntropyPrior
    from vqcodec.prior_int8 import Int8Prior

    m = zoo.build(model_bytes, "test-rvq", device="cpu")
    assert (m.arch, m.stages) == ("rvq", S)
    assert isinstance(m.prior, StageEntropyPrior) and isinstance(m.prior, EntropyPrior)
    assert isinstance(m.decoder, PixelDecoder)
    v2 = zoo.build(int8_bytes(), "test-v2", device="cpu")
    assert isinstance(v2.prior, Int8Prior) and not isinstance(v2.prior, StageEntropyPrior)


def test_rvq_files_keep_no_float_decoder(model_bytes):
    """An rvq file holds what an encoder uses (encoder, stage codebooks) and the integer networks;
    the parsed float model has no decoder to run by mistake."""
    from vqcodec import modelfile

    names = modelfile.read_header(model_bytes).tensors
    assert not any(k.startswith("vqvae.decoder.") for k in names)
    assert any(k.startswith("vqvae.encoder.") for k in names)
    assert parse_model(model_bytes, "test-rvq").vqvae.decoder is None


@needs_cuda
def test_rvq_model_on_cuda_decodes_the_cpu_pixels(model_bytes, monkeypatch):
    """An rvq model built on a GPU: the stage prior's logits and decoded codes, and the decoder's
    pixels, equal the CPU's (the files it writes decode identically on either device).  The CPU
    side uses the torch-only wavefront, so the test needs no numba on a GPU machine."""
    from vqcodec import codec

    monkeypatch.setattr(Int8StagePrior, "fused", False)

    cpu, cuda = (zoo.build(model_bytes, "test-rvq", device=d) for d in ("cpu", "cuda"))
    codes = torch.from_numpy(np.random.default_rng(3).integers(0, VQ_CFG.K, (1, S, 6, 7)))
    assert torch.equal(cuda.prior.logits(codes.cuda()).cpu(), cpu.prior.logits(codes))
    assert torch.equal(cuda.decoder(codes.cuda()).cpu(), cpu.decoder(codes))
    zoo.register(model_bytes, "test-rvq-cuda")
    blob = codec.compress(_images(9, 1)[0], model="test-rvq-cuda", stages=S, device="cpu")
    on_gpu = codec.decompress(blob, device="cuda")
    assert np.array_equal(np.asarray(on_gpu), np.asarray(codec.decompress(blob, device="cpu")))
