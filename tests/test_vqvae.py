"""Tests of the VQ-VAE (vqcodec/vqvae.py): shapes, the EMA vector quantizer (k-means init, EMA
update, dead-code restart, usage statistics), the integer decoder and tiled decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import needs_cuda, needs_two_cores, random_model_bytes, threads_seen
from vqcodec import codec, intops, zoo
from vqcodec.prior import PriorConfig
from vqcodec.vqvae import VQVAE, IntDecoder, ResBlock, VectorQuantizer, VQVAEConfig, decoder_layers, receptive_halo




def tiny_cfg(f: int) -> VQVAEConfig:
    return VQVAEConfig(f=f, K=16, D=4, c_lo=8, c_hi=8, n_res=1)



# ------------------------------------------------------------------------------------ shapes


@pytest.mark.parametrize("f", [4, 8])
def test_shapes(f):
    torch.manual_seed(0)
    cfg = tiny_cfg(f)
    assert cfg.n_extra_down == (0 if f == 4 else 1)
    model = VQVAE(cfg)
    x = torch.rand(2, 3, 32, 48)
    z = model.encoder(x)
    assert z.shape == (2, 4, 32 // f, 48 // f)
    x_hat, idx, commit, stats = model(x)
    assert x_hat.shape == x.shape
    assert idx.shape == (2, 32 // f, 48 // f) and idx.dtype == torch.int64
    assert 0 <= int(idx.min()) and int(idx.max()) < cfg.K
    assert commit.shape == () and float(commit.detach()) >= 0
    assert set(stats) >= {"perplexity", "usage"}
    model.eval()
    enc = model.encode(x)
    assert enc.shape == (2, 32 // f, 48 // f)
    dec = model.decode_float(enc)
    assert dec.shape == (2, 3, 32, 48) and float(dec.min()) >= 0 and float(dec.max()) <= 1
    pix = IntDecoder(model)(enc)
    assert pix.shape == (2, 3, 32, 48) and pix.dtype == torch.uint8


def test_eval_forward_indices_equal_encode():
    torch.manual_seed(1)
    model = VQVAE(tiny_cfg(4))
    model(torch.rand(2, 3, 16, 16))  # k-means init
    model.eval()
    x = torch.rand(3, 3, 16, 24)
    with torch.no_grad():
        _, idx, _, _ = model(x)
    assert torch.equal(idx, model.encode(x))


@pytest.mark.parametrize("f", [0, 2, 6, 12])
def test_config_rejects_bad_f(f):
    with pytest.raises(ValueError):
        VQVAEConfig(f=f)


# ----------------------------------------------------------------------------- quantizer


def clustered(n_clusters=4, per=64, D=4, spread=0.01, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_clusters, D, generator=g) * 3
    pts = centers.repeat_interleave(per, 0) + spread * torch.randn(n_clusters * per, D, generator=g)
    return pts, centers


def as_map(flat: torch.Tensor) -> torch.Tensor:
    """[M, D] -> [1, D, 1, M] (the quantizer takes latent maps)."""
    return flat.T[None, :, None, :].contiguous()


def test_nearest_is_argmin_distance():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4)
    flat = torch.randn(300, 4)
    expected = torch.cdist(flat.double(), vq.codebook.double()).argmin(1)
    assert torch.equal(vq.nearest(flat), expected)


def test_kmeans_init_on_first_training_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4).train()
    pts, centers = clustered()
    assert not bool(vq.initialized)
    before = float(((pts - vq.codebook[vq.nearest(pts)]) ** 2).mean())
    _, idx, commit, _ = vq(as_map(pts))
    assert bool(vq.initialized)
    # every cluster got a code close to its centre, so quantization error is tiny
    assert torch.cdist(centers, vq.codebook).min(1).values.max() < 0.05
    assert float(commit) < 1e-3 < before
    # a second batch does not re-initialise
    cb = vq.codebook.clone()
    vq.eval()
    vq(as_map(pts + 100))
    assert torch.equal(vq.codebook, cb)


def test_kmeans_init_with_fewer_vectors_than_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 4).train()
    pts = torch.randn(5, 4)
    vq._kmeans_init(pts)
    # every code is one of the 5 vectors
    d = torch.cdist(vq.codebook, pts).min(1).values
    assert float(d.max()) < 1e-5
    assert torch.equal(vq.embed_sum, vq.codebook) and (vq.cluster_size == 1).all()


def fresh_quantizer(K=8, D=3, decay=0.9, seed=0):
    torch.manual_seed(seed)
    vq = VectorQuantizer(K, D, decay=decay).train()
    vq.initialized.fill_(True)
    vq.codebook.copy_(torch.randn(K, D))
    vq.cluster_size.copy_(torch.rand(K) * 4 + 1)  # all well above the dead threshold
    vq.embed_sum.copy_(vq.codebook * vq.cluster_size[:, None])
    return vq


def test_ema_update_matches_formula():
    vq = fresh_quantizer()
    K, D, decay, eps = vq.K, vq.D, vq.decay, vq.eps
    cs0 = vq.cluster_size.double().clone()
    es0 = vq.embed_sum.double().clone()
    cb0 = vq.codebook.double().clone()
    flat = torch.randn(40, D)
    _, idx, _, _ = vq(as_map(flat))
    idx = idx.flatten()
    # the assignment used the codebook from before the update
    assert torch.equal(idx, torch.cdist(flat.double(), cb0).argmin(1))
    counts = torch.bincount(idx, minlength=K).double()
    sums = torch.zeros(K, D, dtype=torch.float64).index_add_(0, idx, flat.double())
    cs = decay * cs0 + (1 - decay) * counts
    es = decay * es0 + (1 - decay) * sums
    n = cs.sum()
    cb = es / ((cs + eps) / (n + K * eps) * n)[:, None]
    assert torch.allclose(vq.cluster_size.double(), cs, atol=1e-5)
    assert torch.allclose(vq.embed_sum.double(), es, atol=1e-5)
    assert torch.allclose(vq.codebook.double(), cb, atol=1e-4)


def test_ema_moves_codes_towards_their_data():
    vq = fresh_quantizer(K=4, D=2, decay=0.5)
    target = torch.tensor([[5.0, 5.0]]).repeat(32, 1)
    code = int(vq.nearest(target[:1]))
    d0 = float((vq.codebook[code] - target[0]).norm())
    for _ in range(8):
        vq(as_map(target))
    assert float((vq.codebook[code] - target[0]).norm()) < 0.1 * d0


def test_dead_codes_are_restarted_at_batch_vectors():
    vq = fresh_quantizer(K=16, D=4, decay=0.99)
    dead = torch.tensor([3, 7, 12, 15])
    with torch.no_grad():
        vq.codebook[dead] = 1000.0  # never the nearest code
        vq.embed_sum[dead] = 1000.0 * 0.01
        vq.cluster_size[dead] = 0.01  # below dead_threshold (0.03) after decay
    flat = torch.randn(200, 4)
    vq(as_map(flat))
    for k in dead.tolist():
        match = (vq.codebook[k][None] == flat).all(1)
        assert bool(match.any()), f"code {k} was not restarted at a batch vector"
        assert float(vq.cluster_size[k]) == 1.0
        assert torch.equal(vq.embed_sum[k], vq.codebook[k])
    live = torch.ones(16, dtype=torch.bool)
    live[dead] = False
    assert float(vq.codebook[live].abs().max()) < 100
    # restarted codes are used on the next pass over the same data
    vq.eval()
    _, idx, _, stats = vq(as_map(flat))
    used = set(idx.flatten().tolist())
    assert set(dead.tolist()) <= used


def test_live_codes_are_not_restarted():
    vq = fresh_quantizer(K=8, D=3, decay=0.99)
    flat = torch.randn(64, 3)
    cb_before = vq.codebook.clone()
    vq(as_map(flat))
    # a restart sets cluster_size to exactly 1.0; live codes decay from their old value instead
    assert not bool((vq.cluster_size == 1.0).any())
    assert float((vq.codebook - cb_before).abs().max()) < 1.0


def test_usage_and_perplexity():
    torch.manual_seed(0)
    K, D = 16, 4
    vq = VectorQuantizer(K, D).eval()
    # every code exactly once: perplexity K, usage 1
    _, idx, commit, st = vq(as_map(vq.codebook.clone()))
    assert torch.equal(idx.flatten(), torch.arange(K))
    assert float(st["perplexity"]) == pytest.approx(K, rel=1e-4)
    assert float(st["usage"]) == 1.0
    assert float(commit) == 0.0
    # a single code: perplexity 1, usage 1/K
    _, _, _, st = vq(as_map(vq.codebook[5:6].repeat(50, 1)))
    assert float(st["perplexity"]) == pytest.approx(1.0, abs=1e-4)
    assert float(st["usage"]) == pytest.approx(1 / K)
    # random data: 1 <= perplexity <= number of codes used <= K
    _, idx, _, st = vq(as_map(torch.randn(100, D) * 0.1))
    n_used = len(set(idx.flatten().tolist()))
    assert 1.0 <= float(st["perplexity"]) <= n_used + 1e-4
    assert float(st["usage"]) == pytest.approx(n_used / K)


def test_straight_through_and_commitment():
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 3).eval()
    z = torch.randn(2, 3, 4, 5, requires_grad=True)
    z_q, idx, commit, _ = vq(z)
    assert torch.allclose(z_q, vq.lookup(idx), atol=1e-6)
    assert float(commit.detach()) == pytest.approx(float(F.mse_loss(z, vq.lookup(idx)).detach()), rel=1e-5)
    (z_q * torch.arange(z_q.numel()).view_as(z_q)).sum().backward()
    assert torch.equal(z.grad, torch.arange(z.numel(), dtype=torch.float32).view_as(z))


# --------------------------------------------------------------------------- integer decoder


@pytest.mark.parametrize("f", [4, 8])
def test_int_decoder_close_to_float_decoder(f):
    torch.manual_seed(f)
    model = VQVAE(tiny_cfg(f)).eval()
    model.quantizer.codebook.normal_(0, 0.3)
    idx = torch.randint(0, 16, (3, 5, 7))
    got = IntDecoder(model)(idx).double()
    with torch.no_grad():
        want = (model.decoder(model.quantizer.lookup(idx)).double() * 255).clamp(0, 255)
    assert float(want.std()) > 5  # a non-trivial image
    assert float((got - want).abs().max()) <= 3


def test_int_decoder_batch_invariant():
    torch.manual_seed(0)
    dec = IntDecoder(VQVAE(tiny_cfg(4)).eval())
    idx = torch.randint(0, 16, (3, 6, 5))
    together = dec(idx)
    for b in range(3):
        assert torch.equal(dec(idx[b:b + 1])[0], together[b])


def reference_int_decode(model: VQVAE, idx: torch.Tensor) -> torch.Tensor:
    """The integer decoder written with `F.conv2d` (im2col) layer by layer: the definition the
    shifted-GEMM `IntDecoder` must match bit for bit."""
    x = intops.quantize_activation(model.quantizer.codebook)[idx].permute(0, 3, 1, 2)
    conv = intops.IntConv.from_float
    for m in model.decoder.net:
        if isinstance(m, torch.nn.Conv2d):
            x = conv(m)(F.pad(x, (m.kernel_size[0] // 2,) * 4))
        elif isinstance(m, ResBlock):
            y = conv(m.conv3)(F.pad(intops.int_relu(x), (1, 1, 1, 1)))
            x = (x + conv(m.conv1)(intops.int_relu(y))).clamp_(-intops.ACT_CLAMP, intops.ACT_CLAMP)
        elif isinstance(m, torch.nn.PixelShuffle):
            x = F.pixel_shuffle(x, m.upscale_factor)
        else:
            x = intops.int_relu(x)
    pix = torch.floor((x * 255 + 255 * intops.ACT_ONE // 2) * (1.0 / intops.ACT_ONE) + 0.5)
    return pix.clamp_(0, 255).to(torch.uint8)


@pytest.mark.parametrize("f", [4, 8])
@pytest.mark.parametrize("codebook_std", [0.3, 3000.0])  # 3000: activations hit the clamps
def test_int_decoder_equals_conv2d_reference(f, codebook_std):
    torch.manual_seed(f)
    model = VQVAE(VQVAEConfig(f=f, K=16, D=4, c_lo=8, c_hi=16, n_res=2)).eval()
    model.quantizer.codebook.normal_(0, codebook_std)
    for shape in [(1, 1), (1, 7), (5, 1), (6, 9)]:
        idx = torch.randint(0, 16, (2, *shape))
        assert torch.equal(IntDecoder(model)(idx), reference_int_decode(model, idx)), shape


@needs_two_cores
def test_int_decoder_same_with_one_and_two_threads(monkeypatch):
    monkeypatch.setattr(intops, "idle_cores", lambda: 64)  # really use 2 threads when busy
    torch.manual_seed(3)
    model = VQVAE(VQVAEConfig(f=4, K=16, D=4, c_lo=8, c_hi=16, n_res=2)).eval()
    model.quantizer.codebook.normal_(0, 0.3)
    idx = torch.randint(0, 16, (2, 24, 20))
    before = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with threads_seen(monkeypatch, IntDecoder, "_decode_one") as seen:
                out.append(IntDecoder(model)(idx))
            assert set(seen) == {n}  # the decoder really ran on n threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("f", [4, 8])
def test_receptive_halo_of_released_architectures(f):
    """Three 3x3 convolutions at the latent resolution (1 each) plus the finer ones (< 1)."""
    assert receptive_halo(decoder_layers(VQVAEConfig(f=f))) == 4
    assert receptive_halo(decoder_layers(tiny_cfg(f))) == 3  # n_res=1: two at latent resolution


@pytest.fixture(scope="module", params=[4, 8])
def codec_model(request):
    f = request.param
    data = random_model_bytes(tiny_cfg(f), PriorConfig(K=16, channels=8, layers=2), seed=f)
    return zoo.build(data, f"test-vqvae-f{f}", "cpu")


def test_receptive_field_within_halo(codec_model):
    """Changing one index changes pixels only within `halo` latent positions of it."""
    m = codec_model
    f, halo = m.f, m.decoder.halo
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 16, (1, 15, 15), generator=g)
    base = m.decoder(idx)[0]
    alt = idx.clone()
    alt[0, 7, 7] = (alt[0, 7, 7] + 3) % 16
    diff = (m.decoder(alt)[0] != base).any(0)
    ys, xs = torch.nonzero(diff, as_tuple=True)
    assert len(ys) > 0
    assert int(ys.min()) >= (7 - halo) * f and int(ys.max()) < (8 + halo) * f
    assert int(xs.min()) >= (7 - halo) * f and int(xs.max()) < (8 + halo) * f


@pytest.mark.parametrize("shape", [(11, 13), (1, 9), (9, 1), (4, 4)])
def test_tiled_decode_equals_whole_image(codec_model, monkeypatch, shape):
    m = codec_model
    monkeypatch.setattr(codec, "PIXEL_TILE", 4 * m.f)  # tiles of 4x4 latent positions
    idx = np.random.default_rng(shape[0] * 31 + shape[1]).integers(0, 16, shape).astype(np.int64)
    tiled = codec.decode_pixels(m, idx)
    whole = m.decoder(torch.from_numpy(idx)[None])[0].permute(1, 2, 0).numpy()
    assert tiled.shape == (shape[0] * m.f, shape[1] * m.f, 3) and tiled.dtype == np.uint8
    assert np.array_equal(tiled, whole)


def test_tiling_without_halo_would_show_seams(codec_model):
    """Sanity check of the test above: with no halo the tiles do differ from the whole image."""
    m = codec_model
    idx = np.random.default_rng(3).integers(0, 16, (11, 13)).astype(np.int64)
    grid = torch.from_numpy(idx)[None, None].to(torch.float64)

    def dec(t):
        return m.decoder(t[:, 0].to(torch.int64)).to(torch.float64)

    no_halo = codec.tiled(dec, grid, 1, m.f, 4, 0)[0].permute(1, 2, 0).to(torch.uint8).numpy()
    whole = m.decoder(torch.from_numpy(idx)[None])[0].permute(1, 2, 0).numpy()
    assert not np.array_equal(no_halo, whole)
    with_halo = codec.tiled(dec, grid, 1, m.f, 4, m.decoder.halo)[0].permute(1, 2, 0).to(torch.uint8)
    assert np.array_equal(with_halo.numpy(), whole)


def test_halo_is_tight(codec_model):
    """The receptive field reaches exactly `halo` latent positions: some index that far away
    changes a pixel, and tiles with one position less of halo show seams on random grids."""
    m = codec_model
    f, halo = m.f, m.decoder.halo
    rng = np.random.default_rng(5)
    idx = torch.from_numpy(rng.integers(0, 16, (1, 2 * halo + 3, 2 * halo + 3)))
    c = halo + 1
    base = m.decoder(idx)[0, :, c * f:(c + 1) * f, c * f:(c + 1) * f]
    reached = False
    for di, dj in ((halo, 0), (-halo, 0), (0, halo), (0, -halo)):
        for k in range(16):
            alt = idx.clone()
            alt[0, c + di, c + dj] = k
            reached |= not torch.equal(m.decoder(alt)[0, :, c * f:(c + 1) * f, c * f:(c + 1) * f], base)
    assert reached

    seams = 0
    for seed in range(4):
        grid = torch.from_numpy(np.random.default_rng(seed).integers(0, 16, (1, 1, 9, 10)))
        whole = m.decoder(grid[:, 0])

        def tiled(h):
            return codec.tiled(lambda t: m.decoder(t[:, 0]), grid, 1, f, 3, h)

        assert torch.equal(tiled(halo), whole)
        seams += not torch.equal(tiled(halo - 1), whole)
    assert seams > 0


@needs_cuda
def test_int_decoder_same_on_cuda():
    torch.manual_seed(11)
    model = VQVAE(tiny_cfg(8)).eval()
    model.quantizer.codebook.normal_(0, 0.3)
    idx = torch.randint(0, 16, (2, 9, 10))
    got = IntDecoder(model.to("cuda"), "cuda")(idx.to("cuda")).cpu()
    assert torch.equal(got, IntDecoder(model.cpu())(idx))
