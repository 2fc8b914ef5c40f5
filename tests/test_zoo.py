"""Tests of the model registry, serialisation and loading (vqcodec/registry.py, serialise.py,
zoo.py): hashes, model directories, strict loading."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load as np_load

from vqcodec import registry, zoo
from vqcodec.errors import VqcModelError
from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.prior_exact import ExactPrior
from vqcodec.vqvae import VQVAE, IntDecoder, VQVAEConfig

VQ_CFG = VQVAEConfig(f=4, K=16, D=4, c_lo=8, c_hi=8, n_res=1)
PR_CFG = PriorConfig(K=16, channels=8, layers=2)
RELEASED = "vqc-f8k1024-v1"


@pytest.fixture(scope="module")
def float_models():
    torch.manual_seed(42)
    vq = VQVAE(VQ_CFG).eval()
    vq.quantizer.codebook.normal_(0, 0.3)
    return vq, GatedPixelCNN(PR_CFG).eval()



@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch):
    """Each test sees an empty model cache and no extra model directory; the real state is
    restored afterwards."""
    monkeypatch.setattr(zoo, "_CACHE", {})
    monkeypatch.setattr(registry, "_EXTRA_DIRS", [])
    monkeypatch.delenv(registry.MODEL_PATH_ENV, raising=False)


def released_file(name: str = RELEASED):
    """The repository's copy of a released weight file (the source of truth)."""
    return registry.SOURCE_MODELS_DIR / f"{name}.safetensors"


def header_of(data: bytes) -> dict:
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])


# ------------------------------------------------------------------------- serialisation


def test_model_bytes_build_roundtrip(float_models):
    vq, pr = float_models
    data = zoo.model_bytes(vq, pr, "test-zoo-rt")
    m = zoo.build(data, "test-zoo-rt", "cpu")
    assert m.name == "test-zoo-rt" and m.f == 4 and m.K == 16
    assert m.model_hash == hashlib.sha256(data).digest()[:8]
    assert m.vqvae.cfg == VQ_CFG and m.prior.cfg == PR_CFG
    # the file holds fp16: the rebuilt model equals the float model rounded to fp16
    pr16 = GatedPixelCNN(PR_CFG)
    pr16.load_state_dict({k: v.half().float() for k, v in pr.state_dict().items()})
    g = torch.from_numpy(np.random.default_rng(0).integers(0, 16, (2, 6, 7)))
    assert torch.equal(m.prior.logits(g), ExactPrior(pr16.eval()).logits(g))
    vq16 = VQVAE(VQ_CFG)
    vq16.load_state_dict({k: (v.half().float() if v.is_floating_point() else v)
                          for k, v in vq.state_dict().items()})
    idx = g[:, :4, :5]
    assert torch.equal(m.decoder(idx), IntDecoder(vq16.eval())(idx))
    x = torch.rand(1, 3, 16, 20)
    assert torch.equal(m.vqvae.encode(x), vq16.eval().encode(x))


def test_model_outside_the_exactness_bounds_is_a_model_error(float_models):
    """A (non-released) weight file whose layer cannot be made exact gives VqcModelError, not a
    traceback (format/SPEC.md, "Integer arithmetic": a decoder refuses such files)."""
    vq, pr = float_models
    bad = GatedPixelCNN(PR_CFG).eval()
    bad.load_state_dict(pr.state_dict())
    with torch.no_grad():
        bad.out2.weight.clamp_(-2.0**-12, 2.0**-12)  # max|w| = 2**-12: shift 22 (exact in fp16)
        bad.out2.bias[0] = 2.0**15  # integer bias 2**15 * 2**(22 + 8) = 2**45
    with pytest.raises(VqcModelError, match="test-zoo-bad.*2\\*\\*45"):
        zoo.build(zoo.model_bytes(vq, bad, "test-zoo-bad"), "test-zoo-bad", "cpu")


def test_model_file_layout(float_models):
    vq, pr = float_models
    data = zoo.model_bytes(vq, pr, "test-zoo-layout")
    tensors = np_load(data)
    assert all(t.dtype == np.float16 for t in tensors.values())
    assert all(k.startswith(("vqvae.", "prior.")) for k in tensors)
    # only the codebook of the quantizer's state is released (no EMA statistics)
    assert [k for k in tensors if k.startswith("vqvae.quantizer.")] == ["vqvae.quantizer.codebook"]
    meta = header_of(data)["__metadata__"]
    assert meta["name"] == "test-zoo-layout"
    assert VQVAEConfig(**json.loads(meta["vqvae_config"])) == VQ_CFG
    assert PriorConfig(**json.loads(meta["prior_config"])) == PR_CFG


def test_model_bytes_is_deterministic(float_models):
    """The model id is a hash of these bytes: serialising the same weights twice must give the
    same bytes, or a re-export (or a re-generated test model in another process) gets a
    different id and existing files stop decoding."""
    vq, pr = float_models
    first = zoo.model_bytes(vq, pr, "test-zoo-det")
    assert all(zoo.model_bytes(vq, pr, "test-zoo-det") == first for _ in range(8))


def test_register_and_load_by_name(float_models):
    vq, pr = float_models
    data = zoo.model_bytes(vq, pr, "test-zoo-reg")
    h = zoo.register(data, "test-zoo-reg")
    assert h == hashlib.sha256(data).digest()[:8]
    m = zoo.load("test-zoo-reg", h, device="cpu")
    assert m.model_hash == h
    assert zoo.load("test-zoo-reg", device="cpu") is m  # cached


# ------------------------------------------------------------------------- registry


def test_released_files_match_pinned_hashes():
    for name, release in zoo.RELEASES.items():
        data = released_file(name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == release.sha256, name
        assert header_of(data)["__metadata__"]["name"] == name


def test_quality_levels():
    assert zoo.QUALITY_LEVELS == sorted(r.quality for r in zoo.RELEASES.values() if r.quality is not None)
    for r in (r for r in zoo.RELEASES.values() if r.quality is not None):
        assert zoo.for_quality(r.quality) == r.name
    for bad in (0, 99, -1):
        with pytest.raises(VqcModelError, match="quality"):
            zoo.for_quality(bad)


def test_load_released_model():
    m = zoo.load(RELEASED, device="cpu")
    assert m.f == 8 and m.K == 1024
    assert m.model_hash == bytes.fromhex(zoo.RELEASES[RELEASED].sha256)[:8]
    assert zoo.load(RELEASED, m.model_hash, device="cpu") is m


def test_unknown_model_name():
    with pytest.raises(VqcModelError, match="unknown model"):
        zoo.load("vqc-does-not-exist", device="cpu")


def test_hash_mismatch_with_file_header():
    with pytest.raises(VqcModelError, match="id"):
        zoo.load(RELEASED, b"\x00" * 8, device="cpu")


def only_dir(monkeypatch, path):
    """Make `path` (via VQC_MODEL_PATH) the only model directory searched."""
    monkeypatch.setattr(registry, "PACKAGE_MODELS_DIR", path / "no-package")
    monkeypatch.setattr(registry, "SOURCE_MODELS_DIR", path / "no-checkout")
    monkeypatch.setenv(registry.MODEL_PATH_ENV, str(path))


def test_tampered_released_file_is_refused(monkeypatch, tmp_path):
    src = released_file()
    data = bytearray(src.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the weights
    (tmp_path / src.name).write_bytes(bytes(data))
    only_dir(monkeypatch, tmp_path)
    with pytest.raises(VqcModelError, match="SHA-256"):
        zoo.load(RELEASED, device="cpu")
    # an intact copy in the same place loads
    shutil.copyfile(src, tmp_path / src.name)
    assert zoo.load(RELEASED, device="cpu").f == 8


def test_tampered_copy_earlier_in_the_path_does_not_shadow_the_release(monkeypatch, tmp_path):
    """A released model is taken from the first copy that matches its pin."""
    data = bytearray(released_file().read_bytes())
    data[-1] ^= 0x01
    (tmp_path / f"{RELEASED}.safetensors").write_bytes(bytes(data))
    monkeypatch.setenv(registry.MODEL_PATH_ENV, str(tmp_path))
    assert registry.model_dirs()[0] == tmp_path
    m = zoo.load(RELEASED, device="cpu")
    assert m.model_hash == bytes.fromhex(zoo.RELEASES[RELEASED].sha256)[:8]


def test_missing_released_file(monkeypatch, tmp_path):
    only_dir(monkeypatch, tmp_path)
    with pytest.raises(VqcModelError, match="cannot read") as err:
        zoo.load(RELEASED, device="cpu")
    assert str(tmp_path) in str(err.value)


def test_builtin_model_dirs_hold_every_release():
    """From a checkout the repository's models/ is searched; from a wheel the package's copy."""
    dirs = registry.model_dirs()
    assert dirs and all(d in (registry.PACKAGE_MODELS_DIR, registry.SOURCE_MODELS_DIR) for d in dirs)
    for name in zoo.RELEASES:
        path = registry.weights_path(name)
        assert path is not None and path.parent in dirs
        assert path.with_suffix(".json").is_file()  # the model card travels with the weights


def test_extra_model_dir_from_environment(monkeypatch, tmp_path, float_models):
    """An unreleased model in a VQC_MODEL_PATH directory loads by name, with its own id."""
    vq, pr = float_models
    data = zoo.model_bytes(vq, pr, "test-zoo-envdir")
    (tmp_path / "test-zoo-envdir.safetensors").write_bytes(data)
    with pytest.raises(VqcModelError, match="unknown model"):
        zoo.load("test-zoo-envdir", device="cpu")
    monkeypatch.setenv(registry.MODEL_PATH_ENV, f"{tmp_path / 'missing'}:{tmp_path}")
    m = zoo.load("test-zoo-envdir", hashlib.sha256(data).digest()[:8], device="cpu")
    assert (m.f, m.K) == (4, 16)
    assert registry.weights_path("test-zoo-envdir") == tmp_path / "test-zoo-envdir.safetensors"


def test_extra_model_dir_from_api(tmp_path, float_models):
    vq, pr = float_models
    data = zoo.model_bytes(vq, pr, "test-zoo-apidir")
    (tmp_path / "test-zoo-apidir.safetensors").write_bytes(data)
    zoo.add_model_dir(tmp_path)
    assert registry.model_dirs()[0] == tmp_path
    assert zoo.load("test-zoo-apidir", device="cpu").model_hash == hashlib.sha256(data).digest()[:8]


def test_cuda_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert zoo.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(VqcModelError, match="CUDA"):
        zoo.resolve_device("cuda")


# ------------------------------------------------------------------------- never pickle


class _Trap:
    """Unpickling this touches a marker file: proof that a loader ran pickle."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_weights_are_refused_and_never_unpickled(tmp_path, float_models):
    marker = tmp_path / "unpickled"
    vq, pr = float_models
    buf = io.BytesIO()
    torch.save({"trap": _Trap(marker), "vqvae": vq.state_dict(), "prior": pr.state_dict()}, buf)
    blob = buf.getvalue()
    with pytest.raises(VqcModelError, match="malformed"):
        zoo.build(blob, "test-zoo-pickle", "cpu")
    zoo.register(blob, "test-zoo-pickle")
    with pytest.raises(VqcModelError):
        zoo.load("test-zoo-pickle", device="cpu")
    raw = pickle.dumps(_Trap(marker))
    with pytest.raises(VqcModelError):
        zoo.build(raw, "test-zoo-pickle2", "cpu")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "wrong-arch", "missing-tensor"])
def test_malformed_weight_files(float_models, damage):
    vq, pr = float_models
    data = zoo.model_bytes(vq, pr, "test-zoo-bad")
    if damage == "truncated":
        bad = data[: len(data) - 100]
    elif damage == "empty":
        bad = b""
    elif damage == "garbage":
        bad = bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))
    elif damage == "wrong-arch":  # metadata says 16 channels, tensors have 8
        bigger = PriorConfig(K=16, channels=16, layers=2)
        bad = zoo.model_bytes(vq, pr, "test-zoo-bad")
        hdr = header_of(bad)
        hdr["__metadata__"]["prior_config"] = json.dumps(bigger.to_dict())
        body = json.dumps(hdr).encode()
        body += b" " * (-len(body) % 8)
        bad = len(body).to_bytes(8, "little") + body + bad[8 + int.from_bytes(bad[:8], "little"):]
    else:
        from safetensors.torch import load, save
        t = load(data)
        t.pop("vqvae.decoder.net.0.weight")
        bad = save(t, metadata=header_of(data)["__metadata__"])
    with pytest.raises(VqcModelError):
        zoo.build(bad, "test-zoo-bad", "cpu")


def test_prior_and_vqvae_codebook_sizes_must_agree():
    """A file whose prior models K=8 symbols for a K=16 codebook is malformed: it must be
    refused at load time with VqcModelError (otherwise compress dies with an IndexError)."""
    torch.manual_seed(0)
    data = zoo.model_bytes(VQVAE(VQ_CFG), GatedPixelCNN(PriorConfig(K=8, channels=8, layers=2)),
                           "test-zoo-kmismatch")
    with pytest.raises(VqcModelError):
        zoo.build(data, "test-zoo-kmismatch", "cpu")


def test_register_again_replaces_the_cached_model(float_models):
    """`register` makes the given bytes loadable by name: registering new bytes under a name
    that was already loaded must not keep serving the old (cached) model."""
    vq, pr = float_models
    first = zoo.model_bytes(vq, pr, "test-zoo-rereg")
    zoo.register(first, "test-zoo-rereg")
    assert zoo.load("test-zoo-rereg", device="cpu").model_hash == hashlib.sha256(first).digest()[:8]
    torch.manual_seed(7)
    second = zoo.model_bytes(VQVAE(VQ_CFG), GatedPixelCNN(PR_CFG), "test-zoo-rereg")
    h2 = zoo.register(second, "test-zoo-rereg")
    assert zoo.load("test-zoo-rereg", device="cpu").model_hash == h2
