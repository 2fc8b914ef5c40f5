"""Regression tests of issue 21 (security), findings 3 and 4: a model name is an identifier, not a
path; a model file is untrusted input (format/SPEC.md, "Model file").

Resource findings are measured on a real `vqc decompress` process (`tests.fuzz.hostile.run_cli`:
peak RSS via `os.wait4`, wall time): the bar is one clear error line within 1 GB and 10 s.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tests.conftest import make_pixels, tiny_model_bytes
from tests.fuzz import hostile
from vqcodec import codec, container, modelfile, registry, serialise, zoo
from vqcodec.errors import VqcModelError

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "format" / "SPEC.md"
MAX_RSS_MB, MAX_SECONDS = 1024, 10


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    monkeypatch.setattr(zoo, "_CACHE", {})
    monkeypatch.setattr(registry, "_EXTRA_DIRS", [])
    monkeypatch.delenv(registry.MODEL_PATH_ENV, raising=False)


def _reference_network():
    sys.path.insert(0, str(ROOT / "format" / "reference"))
    return importlib.import_module("network")


def with_header(data: bytes, change) -> bytes:
    """The model file `data` with its JSON header edited by change(header_dict)."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    change(header)
    body = json.dumps(header).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body + data[8 + n:]


def with_config(data: bytes, config: str, **fields) -> bytes:
    def change(h):
        cfg = json.loads(h["__metadata__"][config])
        cfg.update(fields)
        h["__metadata__"][config] = json.dumps(cfg)
    return with_header(data, change)


def vqc_naming(name: str, model_data: bytes, width: int = 1, height: int = 1, grid=(1, 1)) -> bytes:
    """A .vqc header naming (name, id of model_data); one 4-byte payload (never reached)."""
    return hostile.raw(model=(name, hashlib.sha256(model_data).digest()[:8]), width=width,
                       height=height, grid=grid, payloads=b"\x04\x11\x22\x33\x44")


# ------------------------------------------------------------ finding 3: a model name is a path


def test_absolute_path_as_model_name_is_a_model_error_and_opens_nothing(tmp_path, monkeypatch):
    """Before: a .vqc naming "/tmp/x/m" loaded /tmp/x/m.safetensors with no VQC_MODEL_PATH."""
    with tempfile.TemporaryDirectory(dir="/tmp") as d:  # short: a header name is <= 32 bytes
        model = tiny_model_bytes()
        (Path(d) / "m.safetensors").write_bytes(model)
        name = f"{d}/m"
        assert len(name) <= 32
        opened = []
        real_open = open
        monkeypatch.setattr("builtins.open", lambda p, *a, **k: (opened.append(str(p)), real_open(p, *a, **k))[1])
        with pytest.raises(VqcModelError, match="is not a model identifier"):
            codec.decompress(vqc_naming(name, model), device="cpu")
        assert not any(d in p for p in opened)


def test_dot_dot_in_a_model_name_is_a_model_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    model = tiny_model_bytes()
    (tmp_path / "b" / "m.safetensors").write_bytes(model)
    zoo.add_model_dir(tmp_path / "a")
    for name in ("../b/m", "..", "a/../../b/m"):
        with pytest.raises(VqcModelError, match="not a model identifier"):
            zoo.load(name, device="cpu")
    with pytest.raises(VqcModelError, match="not a model identifier"):
        zoo.register(model, "../b/m")


@pytest.mark.parametrize("name", ["vqc-f8k1024-v2", "test-tiny", "a", "m.2", "x" * 32])
def test_identifiers_are_names(name):
    assert registry.check_name(name) == name


@pytest.mark.parametrize("name", ["", "A", "Vqc-f8k1024-v1", "-x", ".x", "x/y", "x y", "x_y", "x" * 33, "é"])
def test_other_strings_are_not_names(name):
    with pytest.raises(VqcModelError, match="not a model identifier"):
        registry.check_name(name)


def test_reference_decoder_refuses_a_path_as_model_name(tmp_path):
    decode = _reference_decode()
    model = tiny_model_bytes()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "m.safetensors").write_bytes(model)
    with pytest.raises(decode.ModelError, match="not a model identifier"):
        decode.decode(vqc_naming("../b/m", model), tmp_path / "a")


# ------------------------------------------------------------------- finding 4: one ranges table


def spec_ranges() -> dict[tuple[str, str], tuple[int, int, bool]]:
    """The table of SPEC.md "Model file" / "Ranges": (config, field) -> (min, max, power of two)."""
    text = SPEC.read_text()
    section = text[text.index("### Ranges"):text.index("### Tensors")]
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \| (\w+) \| (\d+) \| (\d+) \| ([^|]*)\|$", section, re.M)
    assert len(rows) == 9
    return {(c, k): (int(lo), int(hi), "power of two" in also) for c, k, _, lo, hi, also in rows}


def test_ranges_agree_in_spec_vqcodec_and_reference():
    spec = spec_ranges()
    ours = {(r.config, r.key): (r.lo, r.hi, r.power_of_two) for r in modelfile.CONFIG_RANGES}
    assert ours == spec
    network = _reference_network()
    assert {k: (lo, hi, k[1] == "f") for k, (lo, hi) in network.RANGES.items()} == spec
    text = SPEC.read_text()
    assert modelfile.MAX_MODEL_FILE_BYTES == network.MAX_MODEL_FILE == 32 * 2**20
    assert "above **32 MiB**\n(33,554,432 bytes" in text
    assert modelfile.MAX_HEADER_BYTES == network.MAX_MODEL_HEADER == 2**20
    assert "above **1 MiB** (1,048,576 bytes)" in text
    assert modelfile.NAME_PATTERN.pattern == _reference_decode().MODEL_NAME.pattern
    assert f"`{modelfile.NAME_PATTERN.pattern}`" in text


def _reference_decode():
    _reference_network()
    return importlib.import_module("decode")


@pytest.mark.parametrize("name", sorted(zoo.RELEASES))
def test_released_models_pass_every_check(name):
    """Tightened checks must not reject a released model (SPEC "Versioning")."""
    path = registry.SOURCE_MODELS_DIR / f"{name}.safetensors"
    data = path.read_bytes()
    header = modelfile.read_header(data)
    vq, pr = modelfile.read_configs(header.metadata)
    profile = header.metadata.get("profile", "exact")
    if header.metadata.get(serialise.ARCH_KEY) == serialise.ARCH_RVQ:
        from vqcodec.rvq import RVQConfig

        modelfile.check_shapes(header, serialise.expected_tensors_rvq(RVQConfig(**vq)))
    else:
        cfgs = serialise.VQVAEConfig(**vq), serialise.PriorConfig(**pr)
        modelfile.check_shapes(header, serialise.expected_tensors(*cfgs, profile))
    assert registry.weights(name) == data
    _reference_network().read_model_file(path)


@pytest.mark.parametrize("config, field, value", [
    ("vqvae_config", "n_res", 10**3999), ("vqvae_config", "f", 16384), ("vqvae_config", "f", 12),
    ("vqvae_config", "K", 2**20), ("prior_config", "K", 2**20), ("vqvae_config", "c_hi", True),
    ("vqvae_config", "D", 1.0), ("prior_config", "layers", 0), ("prior_config", "channels", -1),
    ("vqvae_config", "n_res", None),
])
def test_out_of_range_fields_are_one_line_model_errors_in_both_decoders(tmp_path, config, field, value):
    bad = with_config(tiny_model_bytes(), config, **{field: value})
    with pytest.raises(VqcModelError, match=f"{config} {field} = .* is not .*in \\[") as err:
        zoo.build(bad, "x", "cpu")
    assert "\n" not in str(err.value) and len(str(err.value)) < 200
    network = _reference_network()
    (tmp_path / "x.safetensors").write_bytes(bad)
    with pytest.raises(network.ModelError, match=f"{config} {field}="):
        network.Model(tmp_path / "x.safetensors")


def test_shape_mismatch_is_one_line_without_torchs_dump():
    """Before: "Error(s) in loading state_dict ..." over many lines."""
    bad = with_config(tiny_model_bytes(), "vqvae_config", c_hi=16)
    with pytest.raises(VqcModelError) as err:
        zoo.build(bad, "x", "cpu")
    assert "\n" not in str(err.value) and "state_dict" not in str(err.value)
    assert "expected F16 [16" in str(err.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_fp16_values_are_refused_also_through_pillow(tmp_path, value):
    """Before: a NaN in the prior passed and decoding died with IndexError, through Pillow too."""
    good = tiny_model_bytes()
    t = st_load(good)
    t["prior.out2.bias"] = t["prior.out2.bias"].clone()
    t["prior.out2.bias"][3] = value
    meta = json.loads(good[8:8 + int.from_bytes(good[:8], "little")])["__metadata__"]
    bad = serialise.canonical(st_save(t, metadata=meta))
    with pytest.raises(VqcModelError, match="prior.out2.bias has values that are not finite"):
        zoo.build(bad, "test-nan", "cpu")
    zoo.register(good, "test-nan")
    data = codec.compress(make_pixels(8, 8), model="test-nan", device="cpu", effort=0)
    zoo.register(bad, "test-nan")
    path = tmp_path / "nan.vqc"
    path.write_bytes(_rehash(data, bad))
    with Image.open(path) as im, pytest.raises(OSError, match="not finite"):
        im.load()


def _rehash(data: bytes, model: bytes) -> bytes:
    import dataclasses

    f = container.read(data)
    header = dataclasses.replace(f.header, model_hash=hashlib.sha256(model).digest()[:8])
    return container.write(dataclasses.replace(f, header=header))


def test_int8_weight_minus_128_is_refused():
    """abs(-128) is -128 in int8: the old check let -128 through (breaks exactness without VNNI)."""
    from vqcodec import int8

    w = torch.zeros(2, 1, 1, 1, dtype=torch.int8)
    w[1] = -128
    tensors = {"l.weight": w}
    with pytest.raises(ValueError, match=r"outside \[-63, 63\]"):
        int8.Int8Layer.from_tensors(tensors, "l", (2, 1, 1, 1), weight_only=True)
    w[1] = -63
    assert int8.Int8Layer.from_tensors(tensors, "l", (2, 1, 1, 1), weight_only=True).weight.min() == -63


@pytest.mark.parametrize("damage, needle", [
    ("header-above-cap", "header is 2097152 bytes, above the cap"),
    ("header-above-file", "but only"),
    ("dtype", "dtype 'F64' is not one of"),
    ("offsets", "data_offsets"),
    ("dims", "at most 4 sizes"),
    ("deep-json", "not JSON"),
])
def test_malformed_headers_are_model_errors_in_both_decoders(tmp_path, damage, needle):
    good = tiny_model_bytes()
    n = int.from_bytes(good[:8], "little")
    if damage == "header-above-cap":
        bad = (2 * 2**20).to_bytes(8, "little") + good[8:] + b" " * (2 * 2**20)
    elif damage == "header-above-file":
        bad = (len(good)).to_bytes(8, "little") + good[8:]
    elif damage == "deep-json":
        body = b"[" * 200_000 + b"]" * 200_000
        bad = len(body).to_bytes(8, "little") + body
    else:
        def change(h):
            e = h["vqvae.decoder.net.0.bias"]
            if damage == "dtype":
                e["dtype"] = "F64"
            elif damage == "offsets":
                e["data_offsets"] = [0, 2**40]
            else:
                e["shape"] = [1, 1, 1, 1, 1] + e["shape"]
        bad = with_header(good, change)
    assert len(good) < 2**20 and n < 2**20
    with pytest.raises(VqcModelError, match=re.escape(needle)) as err:
        zoo.build(bad, "x", "cpu")
    assert "\n" not in str(err.value)
    network = _reference_network()
    (tmp_path / "x.safetensors").write_bytes(bad)
    with pytest.raises(network.ModelError):
        network.Model(tmp_path / "x.safetensors")


# ----------------------------------------------- finding 4: resource cost, in a real vqc process


def _decompress_cost(tmp_path: Path, vqc: bytes) -> dict:
    (tmp_path / "in.vqc").write_bytes(vqc)
    return hostile.run_cli(["decompress", "--device", "cpu", "in.vqc", "-o", "out.png"], tmp_path,
                           timeout=60)


def _assert_one_model_error(r: dict, needle: str) -> None:
    assert r["rc"] == 5, r
    assert len(r["stderr"]) == 1 and needle in r["stderr"][0], r["stderr"]
    assert r["rss_mb"] < MAX_RSS_MB and r["s"] < MAX_SECONDS, r


@pytest.mark.parametrize("case, needle", [
    ("n_res-4000-digits", "n_res = <an integer of 13285 bits> is not an integer in [0, 8]"),
    ("f-16384", "f = 16384 is not a power of two in [4, 64]"),
    ("metadata-90MB", "above the cap of 32 MiB"),
])
def test_hostile_models_cost_little_before_the_error(tmp_path, monkeypatch, case, needle):
    """Before: n_res of 4000 digits 3.5 GB, f = 16384 3.2 GB for a 1x1 image, a 90 MB metadata
    JSON 2.5 GB (each capped at 4 GB)."""
    models = tmp_path / "models"
    models.mkdir()
    if case == "n_res-4000-digits":
        model = with_config(tiny_model_bytes(), "vqvae_config", n_res=10**3999)
    elif case == "f-16384":
        model = with_config(tiny_model_bytes(), "vqvae_config", f=16384)
    else:
        model = with_header(tiny_model_bytes(), lambda h: h["__metadata__"].update(pad="x" * 90_000_000))
    (models / "evil.safetensors").write_bytes(model)
    monkeypatch.setenv(registry.MODEL_PATH_ENV, str(models))
    _assert_one_model_error(_decompress_cost(tmp_path, vqc_naming("evil", model)), needle)


def test_junk_file_named_like_a_release_is_skipped_from_its_size(tmp_path, monkeypatch):
    """Before: a 2 GiB junk file named like a released model in VQC_MODEL_PATH was read and
    hashed on every encode and decode (2.3 GB). Now its size rules it out; the release decodes."""
    models = tmp_path / "models"
    models.mkdir()
    vector = ROOT / "format" / "vectors" / "gray-33x17.f8k1024-v2.vqc"
    name = container.read_header(vector.read_bytes()).model_name
    with open(models / f"{name}.safetensors", "wb") as f:
        f.truncate(2 * 2**30)  # sparse: no disk used
    monkeypatch.setenv(registry.MODEL_PATH_ENV, str(models))
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        assert registry.weights_path(name) == registry.SOURCE_MODELS_DIR / f"{name}.safetensors"
        assert len(registry.weights(name)) < 6 * 2**20
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20 and time.perf_counter() - t0 < 2  # the junk is never read
    r = _decompress_cost(tmp_path, vector.read_bytes())  # a whole decode: time has slack for load
    assert r["rc"] == 0 and r["rss_mb"] < MAX_RSS_MB and r["s"] < 3 * MAX_SECONDS, r
    assert Image.open(tmp_path / "out.png").size == (33, 17)


def test_a_repeated_header_key_is_refused(tmp_path):
    """json keeps the last of two equal keys; a tensor loader may keep the first: the checked
    entry must be the one that is loaded, so a repeated key is an error."""
    good = tiny_model_bytes()
    n = int.from_bytes(good[:8], "little")
    text = good[8:8 + n].decode().rstrip()
    key = '"vqvae.decoder.net.0.bias":'
    entry = text[text.index(key):text.index("}", text.index(key)) + 1]
    body = text.replace(entry, entry.replace('"shape":[8]', '"shape":[2,4]') + "," + entry, 1).encode()
    body += b" " * (-len(body) % 8)
    bad = len(body).to_bytes(8, "little") + body + good[8 + n:]
    with pytest.raises(VqcModelError, match="a key appears twice"):
        zoo.build(bad, "x", "cpu")
    network = _reference_network()
    (tmp_path / "x.safetensors").write_bytes(bad)
    with pytest.raises(network.ModelError, match="a key appears twice"):
        network.Model(tmp_path / "x.safetensors")


def test_pin_check_is_cached_per_path_size_and_mtime_and_weights_always_rehash(tmp_path, monkeypatch):
    name = "vqc-f4k512-v2"
    src = registry.SOURCE_MODELS_DIR / f"{name}.safetensors"
    copy = tmp_path / src.name
    copy.write_bytes(src.read_bytes())
    monkeypatch.setattr(registry, "PACKAGE_MODELS_DIR", tmp_path / "no-package")
    monkeypatch.setattr(registry, "SOURCE_MODELS_DIR", tmp_path / "no-checkout")
    monkeypatch.setenv(registry.MODEL_PATH_ENV, str(tmp_path))
    assert registry.weights_path(name) == copy
    st = copy.stat()
    assert registry._DIGESTS[(str(copy), st.st_size, st.st_mtime_ns)] == zoo.RELEASES[name].sha256
    data = bytearray(copy.read_bytes())
    data[-1] ^= 1
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: the cache is fooled
    assert registry.weights_path(name) == copy
    with pytest.raises(VqcModelError, match="does not match its registered SHA-256"):
        registry.weights(name)  # but the bytes that are used are always hashed
