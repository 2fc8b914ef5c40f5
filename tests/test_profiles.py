"""The profile registry (`vqcodec.profiles`) and the model file's "arch" key: released files have
none and mean "vq"; "vq" written out is the same model; an unknown arch or profile is one model
error line; a newly registered (arch, profile) is built through its own builder."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from conftest import tiny_model_bytes
from vqcodec import profiles, registry, serialise, zoo
from vqcodec.errors import VqcModelError


def _with_meta(data: bytes, **changes) -> bytes:
    meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    return serialise.canonical(st_save(st_load(data), metadata=meta | changes))


def test_the_released_kinds_are_registered():
    assert profiles.registered() == [("rvq", "int8"), ("vq", "exact"), ("vq", "int8")]
    assert not profiles.lookup("rvq", "int8").float_prior and profiles.lookup("rvq", "int8").integer_prefix == "int8."
    with pytest.raises(KeyError, match="unknown arithmetic profile 'exact' for architecture 'rvq'"):
        profiles.lookup("rvq", "exact")
    assert profiles.lookup("vq", "exact").float_prior and profiles.lookup("vq", "exact").integer_prefix is None
    assert not profiles.lookup("vq", "int8").float_prior and profiles.lookup("vq", "int8").integer_prefix == "int8."
    with pytest.raises(KeyError, match="unknown arithmetic profile 'int4'"):
        profiles.lookup("vq", "int4")
    with pytest.raises(KeyError, match="unknown architecture 'rvq9'"):
        profiles.lookup("rvq9", "exact")


@pytest.mark.parametrize("name", sorted(registry.RELEASES))
def test_released_vq_files_have_no_arch_key(name):
    """The vq releases predate the key (absent = "vq"); an rvq release names its arch."""
    data = registry.weights(name)
    meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
    arch = meta.get(serialise.ARCH_KEY)
    assert arch in (None, serialise.ARCH_RVQ)
    assert serialise.parse_model(data, name).arch == (arch or serialise.ARCH_VQ)


def test_writing_the_arch_vq_gives_the_same_networks():
    data = tiny_model_bytes()
    explicit = _with_meta(data, arch="vq")
    assert explicit != data and serialise.model_bytes(*_float(data), "test-tiny") == data  # writer adds none
    a, b = zoo.build(data, "t", "cpu"), zoo.build(explicit, "t", "cpu")
    assert a.arch == b.arch == "vq" and a.profile == b.profile == "exact"
    g = torch.arange(12).remainder(16).view(1, 3, 4)
    assert torch.equal(a.prior.logits(g), b.prior.logits(g)) and torch.equal(a.decoder(g), b.decoder(g))


def _float(data: bytes):
    mf = serialise.parse_model(data, "test-tiny")
    return mf.vqvae, mf.prior


@pytest.mark.parametrize("meta, message", [
    ({"arch": "rvq9"}, "weight file is malformed (unknown architecture 'rvq9')"),
    ({"arch": "x" * 100}, "unknown architecture 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'"),
    ({"profile": "int4"}, "weight file is malformed (unknown arithmetic profile 'int4')"),
])
def test_unknown_arch_or_profile_is_one_model_error_line(meta, message):
    data = _with_meta(tiny_model_bytes(), **meta)
    for call in (lambda: serialise.parse_model(data, "t"), lambda: zoo.build(data, "t", "cpu")):
        with pytest.raises(VqcModelError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value)


def test_a_registered_arch_is_built_by_its_builder(monkeypatch):
    """What a new architecture does: one registration, and zoo.build calls its builder."""
    monkeypatch.setattr(profiles, "_REGISTRY", dict(profiles._REGISTRY))
    calls = []

    def build(mf, device):
        calls.append((mf.arch, mf.profile, device))
        return profiles.lookup("vq", "exact").build(mf, device)

    profiles.register("test-arch", "exact", build, float_prior=True)
    m = zoo.build(_with_meta(tiny_model_bytes(), arch="test-arch"), "t", "cpu")
    assert calls == [("test-arch", "exact", torch.device("cpu"))]
    assert m.arch == "test-arch" and m.profile == "exact"


def test_build_refuses_an_unregistered_pair(monkeypatch):
    """zoo.build looks the pair up itself (a ModelFile may come from elsewhere than parse_model)."""
    mf = serialise.parse_model(tiny_model_bytes(), "t")
    mf.arch = "gone"
    monkeypatch.setattr(zoo, "parse_model", lambda data, name: mf)
    with pytest.raises(VqcModelError, match="model 't': unknown architecture 'gone'"):
        zoo.build(b"", "t", "cpu")
