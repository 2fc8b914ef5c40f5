"""Pinned end-to-end tests of every released model: the committed image tests/data/sample.png
(256x192 RGB) must encode to exactly the same `.vqc` bytes and decode to exactly the same pixels
as when the model was released (CompressAI pins its bitstreams the same way). A change in the
weights, the encoder, the prior's integer arithmetic, the range coder, the container or the
integer decoder shows up here as a changed hash.

If only the `.vqc` hash changes, an encoder-side change picked other indices: allowed only as a
deliberate encoder change (old files must still decode: format/vectors). If the pixel hash of a
file changes, every file ever written with that model would decode differently: never allowed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqcodec import codec, container, metrics, registry

SAMPLE = Path(__file__).parent / "data" / "sample.png"

#: model -> (file bytes, SHA-256 of the .vqc file, SHA-256 of the decoded RGB pixels, PSNR floor dB)
PINS = {
    "vqc-f8k1024-v1": (521, "b2c4c67a9d07c75aa6efda23d3481d0bac00345c50d647f7a4a43415a052379e",
                       "8d6e691a6a1a5ab558c90978d6b67998222fb0286ac32fc2a82893cafd24ee14", 26.5),
    "vqc-f4k512-v1": (1264, "30605d3485c208504596e5303aa0c290409d10eb285b0e9b3af3af030fa1b651",
                      "e8dcc85039e519c738b5658b050044d922c6ef0fed812bab7949d2802d7cf95c", 31.5),
    "vqc-f8k1024-v2": (521, "6e192ad229d2d7f222f6c65b43bb357c95b4eb8132f5c665aa60051dea4da707",
                       "3cd9d8275a3f6f49ad8b08044c7c49cadb6e383a4798fba66d8e5060832de035", 26.5),
    "vqc-f4k512-v2": (1264, "9d7c67b153247731505b71b8ab1239b25481e463921b7317cc6f503d09e744e6",
                      "99eb3707ecb260fb6027ac558ebe25039cc254c5cf230a25f0d0e4cfc817ee33", 31.5),
    # arch rvq, all 4 stages (compress's default for an rvq model)
    "vqc-rvq-f8k1024s4-cpu": (2651, "c905eb9f2c34d5360df11f51e7ce7eb227d0f342240e0d77c153b77d5fe8b039",
                              "567791b8331ed2afbcca1f07b762d2356127fdeac5636b53c1f206965a548e87", 30.5),
}


def test_every_release_is_pinned():
    assert set(PINS) == set(registry.RELEASES)


@pytest.mark.parametrize("name", sorted(PINS))
def test_release_encodes_and_decodes_sample_exactly(name):
    size, vqc_sha, pixels_sha, psnr_floor = PINS[name]
    data = codec.compress(SAMPLE, model=name, device="cpu", effort=0)  # vqc 0.1 bytes
    header = container.read_header(data)
    assert (header.model_name, header.width, header.height) == (name, 256, 192)
    assert header.model_hash == bytes.fromhex(registry.RELEASES[name].sha256)[:8]
    assert len(data) == size and hashlib.sha256(data).hexdigest() == vqc_sha, \
        f"{name}: the encoder now writes other bytes for tests/data/sample.png"
    image = codec.decompress(data, device="cpu")
    assert (image.mode, image.size) == ("RGB", (256, 192))
    assert hashlib.sha256(image.tobytes()).hexdigest() == pixels_sha, \
        f"{name}: a pinned file decodes to other pixels (breaks every file written with it)"
    original = np.asarray(Image.open(SAMPLE).convert("RGB"))
    assert metrics.psnr(original, np.asarray(image)) > psnr_floor


@pytest.mark.parametrize("quality", [20, 70])
def test_rd_optimised_encoding_of_a_release_saves_bits(quality):
    """On the real models: the default effort at a quality below the top of its model's stretch
    writes a smaller file than the nearest-neighbour encoder, and it decodes with little loss."""
    from vqcodec import rdo

    nn = codec.compress(SAMPLE, quality, device="cpu", effort=0)
    rd = codec.compress(SAMPLE, quality, device="cpu")
    assert container.read_header(rd).model_name == rdo.plan(quality).model
    assert len(rd) < 0.97 * len(nn)
    original = np.asarray(Image.open(SAMPLE).convert("RGB"))
    p_nn = metrics.psnr(original, np.asarray(codec.decompress(nn, device="cpu")))
    p_rd = metrics.psnr(original, np.asarray(codec.decompress(rd, device="cpu")))
    assert p_nn - 1.0 < p_rd < p_nn
