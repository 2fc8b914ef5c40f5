"""Conformance vectors (format/vectors/): committed files decode bit-exactly to pinned pixels,
and the default model's prior gives the pinned integer PMFs for a fixed context."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vqcodec import codec, container, zoo
from vqcodec.errors import VqcFormatError, VqcLimitError, VqcModelError
from vqcodec.intops import IntConv
from vqcodec.vqvae import ResBlock
from vqcodec.pmf import pmf_from_logits

VECTORS = Path(__file__).resolve().parent.parent / "format" / "vectors"
MANIFEST = json.loads((VECTORS / "vectors.json").read_text())


def test_at_least_three_vectors_over_both_modes():
    assert len(MANIFEST) >= 3
    assert {v["mode"] for v in MANIFEST.values()} >= {"L", "RGB", "RGBA"}


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_vector_decodes_bit_exactly(name):
    data = (VECTORS / name).read_bytes()
    want = MANIFEST[name]
    assert hashlib.sha256(data).hexdigest() == want["sha256"]
    image = codec.decompress(data, device="cpu")
    assert image.mode == want["mode"]
    assert list(image.size) == want["size"]
    assert hashlib.sha256(image.tobytes()).hexdigest() == want["pixels_sha256"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_vector_names_a_released_model(name):
    header = container.read_header((VECTORS / name).read_bytes())
    assert header.model_name in zoo.RELEASES
    assert zoo.load(header.model_name, header.model_hash, device="cpu").name == header.model_name


def test_prior_pmfs_of_fixed_context_are_pinned():
    vec = json.loads((VECTORS / "pmf-vector.json").read_text())
    model = zoo.load(vec["model"], device="cpu")
    grid = torch.tensor(vec["context"], dtype=torch.int64)[None]
    logits = model.prior.logits(grid).numpy().astype(np.int64)[0]
    pmfs = pmf_from_logits(logits.reshape(-1, model.K))
    assert pmfs[-1].tolist() == vec["last_position_pmf"]
    assert hashlib.sha256(pmfs.astype("<i8").tobytes()).hexdigest() == vec["pmfs_sha256"]


# ---------------------------------------------------------------- intermediate values, broken files

INTERMEDIATE = json.loads((VECTORS / "intermediate.json").read_text())
BROKEN = json.loads((VECTORS / "broken" / "broken.json").read_text())
ERROR_CLASSES = {"format": VqcFormatError, "model": VqcModelError, "limit": VqcLimitError}


def _sha(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<i8").tobytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_vector_index_grid_is_pinned(name):
    _, grid = codec.decompress_with_grid((VECTORS / name).read_bytes(), device="cpu")
    assert grid.tolist() == INTERMEDIATE["grids"][name]


def test_first_positions_of_a_vector_are_pinned():
    want = INTERMEDIATE["first_positions"]
    data = (VECTORS / want["file"]).read_bytes()
    header = container.read_header(data)
    model = zoo.load(header.model_name, header.model_hash, device="cpu")
    grid = torch.tensor(INTERMEDIATE["grids"][want["file"]])[None]
    logits = model.prior.logits(grid).numpy().astype(np.int64)[0]
    order = [(int(i), int(j)) for r, c in model.prior.schedule(*grid.shape[1:]) for i, j in zip(r, c)]
    assert [(p["row"], p["col"]) for p in want["positions"]] == order[:len(want["positions"])]
    for p in want["positions"]:
        lg = logits[p["row"], p["col"]]
        assert _sha(lg) == p["logits_sha256"] and lg[:8].tolist() == p["logits_first8"]
        assert pmf_from_logits(lg[None])[0].tolist() == p["pmf"]
        assert grid[0, p["row"], p["col"]] == p["index"]


@pytest.mark.parametrize("name", sorted(INTERMEDIATE["decoder_output"]))
def test_decoder_output_of_a_small_grid_is_pinned(name):
    want = INTERMEDIATE["decoder_output"][name]
    model = zoo.load(name, device="cpu")
    pix = model.decoder(torch.tensor(want["grid"])[None])[0].permute(1, 2, 0).numpy()
    assert list(pix.shape) == want["pixels_shape"] and _sha(pix) == want["pixels_sha256"]
    assert pix.reshape(-1).tolist() == want["pixels"]


@pytest.mark.parametrize("name", sorted(INTERMEDIATE["integer_weights"]))
def test_integer_weights_of_released_models_are_pinned(name):
    want = INTERMEDIATE["integer_weights"][name]
    model = zoo.load(name, device="cpu")
    if model.profile == "int8":  # the integer networks as loaded, tensor by tensor
        tensors = {**model.prior.tensors(), **model.decoder.tensors()}
        assert {k: {"sha256": _sha(v.numpy())} for k, v in tensors.items()} == want
        return
    assert _sha(model.prior.embed.numpy()) == want["prior.embed.weight"]["table_sha256"]
    assert _sha(model.decoder.codebook.numpy()) == want["vqvae.quantizer.codebook"]["table_sha256"]
    convs = {f"prior.layers.{l}.{part}": conv for l, layer in enumerate(model.prior.layers)
             for part, conv in zip(("v", "v2h", "h", "res"), layer)}
    convs.update({"prior.out1": model.prior.out1, "prior.out2": model.prior.out2})
    for slot, module in enumerate(model.vqvae.decoder.net):  # vqvae.decoder.net.{slot}
        if isinstance(module, torch.nn.Conv2d):
            convs[f"vqvae.decoder.net.{slot}"] = IntConv.from_float(module)
        elif isinstance(module, ResBlock):
            convs[f"vqvae.decoder.net.{slot}.conv3"] = IntConv.from_float(module.conv3)
            convs[f"vqvae.decoder.net.{slot}.conv1"] = IntConv.from_float(module.conv1)
    assert set(convs) | {"prior.embed.weight", "vqvae.quantizer.codebook"} == set(want)
    for tensor_name, conv in convs.items():
        assert want[tensor_name] == {"shift": conv.shift, "weight_sha256": _sha(conv.weight.numpy()),
                                     "bias_sha256": _sha(conv.bias.numpy())}, tensor_name


def test_broken_files_cover_every_error_class():
    assert {v["error"] for v in BROKEN.values()} == set(ERROR_CLASSES)
    assert len(BROKEN) >= 15


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_vqc_reports_the_error_class_of_broken_files(name):
    with pytest.raises(ERROR_CLASSES[BROKEN[name]["error"]]):
        codec.decompress((VECTORS / "broken" / name).read_bytes(), device="cpu")
