"""Conformance vectors (format/vectors/): committed files decode bit-exactly to pinned pixels,
and the default model's prior gives the pinned integer PMFs for a fixed context."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vqcodec import codec, container, zoo
from vqcodec.prior import pmf_from_logits

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
