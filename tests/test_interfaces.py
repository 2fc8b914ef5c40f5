"""The shipped integer networks satisfy the codec's interfaces (`vqcodec.interfaces`), and a model
of either profile comes out of `zoo.build` with a prior and decoder of the right protocol."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model_bytes
from test_int8_model import int8_bytes
from vqcodec import zoo
from vqcodec.interfaces import EntropyPrior, PixelDecoder
from vqcodec.prior_exact import ExactPrior
from vqcodec.prior_int8 import Int8Prior
from vqcodec.vqvae import IntDecoder
from vqcodec.vqvae_int8 import Int8Decoder


@pytest.mark.parametrize("data, prior_cls, decoder_cls", [
    (tiny_model_bytes, ExactPrior, IntDecoder),
    (int8_bytes, Int8Prior, Int8Decoder),
], ids=["exact", "int8"])
def test_built_networks_satisfy_the_protocols(data, prior_cls, decoder_cls):
    m = zoo.build(data(), "test-interfaces", device="cpu")
    assert type(m.prior) is prior_cls and type(m.decoder) is decoder_cls
    assert isinstance(m.prior, EntropyPrior)
    assert isinstance(m.decoder, PixelDecoder)
    assert not isinstance(m.prior, PixelDecoder) and not isinstance(m.decoder, EntropyPrior)
    grid = torch.zeros(1, 3, 5, dtype=torch.int64)
    assert m.decoder(grid).dtype == torch.uint8 and m.decoder(grid).shape == (1, 3, 3 * m.f, 5 * m.f)
    assert m.prior.logits(grid).shape == (1, 3, 5, m.prior.cfg.K)


def test_an_object_missing_a_member_is_not_a_prior():
    class NoStateBytes:
        cfg, device = None, torch.device("cpu")

        def schedule(self, h, w): ...
        def logits(self, idx): ...
        def decode(self, n, h, w, step): ...

    assert not isinstance(NoStateBytes(), EntropyPrior)
