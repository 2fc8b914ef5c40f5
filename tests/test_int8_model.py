"""Model files of profile int8 end to end: calibrate a tiny model, serialise it, load it through
the zoo, compress and decompress with it (format/SPEC.md, "Profile int8")."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tests.conftest import make_pixels, tiny_model_bytes
from vqcodec import codec, container, serialise, zoo
from vqcodec.errors import VqcModelError
from vqcodec.prior_int8 import Int8Prior
from vqcodec.train import export_int8
from vqcodec.train.calibrate_decoder import calibrate_decoder
from vqcodec.train.calibrate_prior import calibrate_prior
from vqcodec.vqvae_int8 import Int8Decoder

NAME = "test-tiny-int8"


@functools.lru_cache(maxsize=1)
def int8_bytes() -> bytes:
    """The tiny random model (conftest) calibrated into profile int8 on random grids."""
    mf = serialise.parse_model(tiny_model_bytes(), "test-tiny")
    g = np.random.default_rng(0)
    grids = [g.integers(0, mf.prior_cfg.K, size=(6, 7)) for _ in range(6)]
    tensors = {**calibrate_prior(mf.prior, grids), **calibrate_decoder(mf.vqvae, grids)}
    return serialise.model_bytes_int8(mf.vqvae, mf.prior_cfg, tensors, NAME)


@pytest.fixture(scope="module")
def int8_model() -> str:
    zoo.register(int8_bytes(), NAME)
    return NAME


def _header(data: bytes) -> dict:
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])


def test_int8_file_layout_and_determinism():
    data = int8_bytes()
    header = _header(data)
    assert header["__metadata__"]["profile"] == serialise.PROFILE_INT8
    keys = set(header) - {"__metadata__"}
    assert all(k.startswith(("vqvae.", "int8.prior.", "int8.decoder.")) for k in keys)
    assert not any(k.startswith("prior.") for k in keys)  # no float prior
    assert {header[k]["dtype"] for k in keys if k.endswith(".weight") and k.startswith("int8.")} == {"I8"}
    mf = serialise.parse_model(data, NAME)
    assert mf.profile == serialise.PROFILE_INT8 and mf.prior is None
    assert serialise.model_bytes_int8(mf.vqvae, mf.prior_cfg, mf.int8, NAME) == data


def test_zoo_builds_int8_networks(int8_model):
    m = zoo.load(int8_model, device="cpu")
    assert isinstance(m.prior, Int8Prior) and isinstance(m.decoder, Int8Decoder)
    assert m.profile == serialise.PROFILE_INT8
    with pytest.raises(VqcModelError, match="no float prior"):
        zoo.float_prior(int8_model)


def test_int8_model_round_trip(int8_model):
    pixels = make_pixels(32, 44)  # a multiple of f: the encoder sees the image unpadded
    data = codec.compress(pixels, model=int8_model, device="cpu", effort=0)
    assert container.read(data).header.model_name == int8_model
    image, grid = codec.decompress_with_grid(data, device="cpu")
    m = zoo.load(int8_model, device="cpu")
    assert np.array_equal(grid, codec.encode_indices(m, pixels))  # lossless index coding
    expected = codec.decode_pixels(m, grid)
    assert np.array_equal(np.asarray(image), expected)


def test_rdo_encoder_with_an_int8_model(int8_model):
    pixels = make_pixels(30, 44, seed=3)
    data = codec.compress(pixels, model=int8_model, device="cpu", quality=50.0, effort=6)
    assert codec.decompress(data, device="cpu").size == (44, 30)


def _with(data: bytes, change) -> bytes:
    tensors = st_load(data)
    meta = _header(data)["__metadata__"]
    change(tensors, meta)
    return serialise.canonical(st_save(tensors, metadata=meta))


@pytest.mark.parametrize("change, message", [
    (lambda t, m: t.__setitem__("int8.prior.out1.weight", torch.full_like(t["int8.prior.out1.weight"], 64)),
     "outside"),
    (lambda t, m: t.pop("int8.decoder.codebook"), "missing"),
    (lambda t, m: m.__setitem__("profile", "int4"), "unknown arithmetic profile"),
    (lambda t, m: m.__setitem__("arch", "rvq9"), "unknown architecture 'rvq9'"),
    (lambda t, m: t.__setitem__("prior.extra", torch.zeros(2, dtype=torch.float16)), "only vqvae"),
])
def test_broken_int8_files_are_model_errors(change, message):
    with pytest.raises(VqcModelError, match=message):
        zoo.build(_with(int8_bytes(), change), "test-broken-int8", "cpu")


def test_export_refuses_to_overwrite(tmp_path, monkeypatch):
    (tmp_path / "x.safetensors").write_bytes(b"old")
    with pytest.raises(SystemExit, match="immutable"):
        export_int8.main(["--source", "test-tiny", "--name", "x", "--data", str(tmp_path),
                          "--out", str(tmp_path)])
    assert (tmp_path / "x.safetensors").read_bytes() == b"old"
