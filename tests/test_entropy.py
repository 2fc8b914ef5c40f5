"""Tests of range coding an index grid with the integer prior (vqcodec/entropy.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqcodec import entropy
from vqcodec.errors import VqcFormatError
from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.prior_exact import ExactPrior

K = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded (restored afterwards): the serial decoder's tiny float64 matmuls are very
    slow with 2 OpenMP threads on a busy 2-core machine; thread invariance is in test_prior."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def prior() -> ExactPrior:
    torch.manual_seed(123)
    return ExactPrior(GatedPixelCNN(PriorConfig(K=K, channels=8, layers=2)).eval().half().float())


def tiles_of(h: int, w: int, th: int, tw: int) -> list[tuple[slice, slice]]:
    """Raster-order tiles of th x tw (edge tiles smaller), as the container cuts them."""
    return [(slice(r, min(r + th, h)), slice(c, min(c + tw, w)))
            for r in range(0, h, th) for c in range(0, w, tw)]


def whole(h: int, w: int) -> list[tuple[slice, slice]]:
    return [(slice(0, h), slice(0, w))]


def sample_grid(prior: ExactPrior, h: int, w: int, seed: int) -> np.ndarray:
    """Draw an index grid from the prior itself (via the decoder), so it is compressible."""
    rng = np.random.default_rng(seed)

    def step(rows, cols, pmfs):
        cdf = np.cumsum(pmfs, -1)
        u = rng.integers(0, 2**20, pmfs.shape[:2])
        return (cdf <= u[..., None]).sum(-1).astype(np.int64)

    return prior.decode(1, h, w, step)[0]


def uniform_grid(h, w, seed):
    return np.random.default_rng(seed).integers(0, K, (h, w)).astype(np.int64)


def roundtrip(prior, idx, tiles):
    payloads = entropy.encode_grid(prior, idx, tiles)
    assert len(payloads) == len(tiles)
    assert all(isinstance(p, bytes) and len(p) % 4 == 0 for p in payloads)
    out = entropy.decode_grid(prior, payloads, idx.shape[0], idx.shape[1], tiles)
    assert out.dtype == np.int64 and out.shape == idx.shape
    return payloads, out


@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (13, 29)])
def test_roundtrip_single_tile(prior, shape):
    idx = uniform_grid(*shape, seed=sum(shape))
    idx.flat[0] = K - 1
    _, out = roundtrip(prior, idx, whole(*shape))
    assert np.array_equal(out, idx)


@pytest.mark.parametrize("th,tw", [(5, 7), (4, 29), (13, 10), (6, 6), (1, 1), (64, 64)])
def test_roundtrip_tiled_with_ragged_edges(prior, th, tw):
    idx = uniform_grid(13, 29, seed=th * 100 + tw)
    _, out = roundtrip(prior, idx, tiles_of(13, 29, th, tw))
    assert np.array_equal(out, idx)


def test_roundtrip_arbitrary_partition(prior):
    idx = sample_grid(prior, 9, 14, seed=1)
    tiles = [(slice(0, 3), slice(0, 10)), (slice(0, 3), slice(10, 14)),
             (slice(3, 9), slice(0, 4)), (slice(3, 9), slice(4, 14))]
    _, out = roundtrip(prior, idx, tiles)
    assert np.array_equal(out, idx)


def test_tiles_are_independent_streams(prior):
    """A tile's payload is exactly that of its sub-grid coded alone (zero context outside)."""
    idx = sample_grid(prior, 10, 12, seed=2)
    tiles = tiles_of(10, 12, 4, 5)
    payloads = entropy.encode_grid(prior, idx, tiles)
    for k, t in enumerate(tiles):
        sub = np.ascontiguousarray(idx[t])
        assert payloads[k] == entropy.encode_grid(prior, sub, whole(*sub.shape))[0]


def test_encoding_is_deterministic(prior):
    idx = uniform_grid(7, 9, seed=3)
    assert entropy.encode_grid(prior, idx, tiles_of(7, 9, 4, 4)) == \
        entropy.encode_grid(prior, idx, tiles_of(7, 9, 4, 4))


@pytest.mark.parametrize("source", ["sampled", "uniform"])
@pytest.mark.parametrize("th,tw", [(24, 24), (8, 8), (5, 7)])
def test_ideal_bits_close_to_payload_bits(prior, source, th, tw):
    h, w = 16, 24
    idx = sample_grid(prior, h, w, seed=th) if source == "sampled" else uniform_grid(h, w, seed=th)
    tiles = tiles_of(h, w, th, tw)
    payloads, out = roundtrip(prior, idx, tiles)
    assert np.array_equal(out, idx)
    ideal = sum(entropy.ideal_bits(prior, np.ascontiguousarray(idx[t])) for t in tiles)
    actual = 8 * sum(len(p) for p in payloads)
    assert actual <= ideal * 1.02 + 64 * len(tiles)
    assert actual >= ideal * 0.98 - 64
    if source == "uniform":  # a random model cannot beat log2(K) bits by much on uniform data
        assert ideal > 0.8 * np.log2(K) * idx.size


def test_sampled_grids_compress_below_uniform_cost():
    """With a confident prior, grids drawn from it cost far less than log2(K) bits per index."""
    torch.manual_seed(5)
    net = GatedPixelCNN(PriorConfig(K=K, channels=8, layers=2)).eval()
    with torch.no_grad():
        net.out2.weight.mul_(12)
        net.out2.bias.mul_(12)
    sharp = ExactPrior(net)
    idx = sample_grid(sharp, 16, 16, seed=9)
    ideal = entropy.ideal_bits(sharp, idx)
    payloads, out = roundtrip(sharp, idx, whole(16, 16))
    assert np.array_equal(out, idx)
    actual = 8 * len(payloads[0])
    assert actual < 0.8 * np.log2(K) * idx.size
    assert abs(actual - ideal) <= 0.02 * ideal + 64


def test_ideal_bits_matches_pmf_definition(prior):
    """ideal_bits is the sum of -log2(p / 2**20) with the PMFs the decoder will see."""
    idx = uniform_grid(3, 4, seed=5)
    seen = []

    def step(rows, cols, pmfs):
        for b, (r, c) in enumerate(zip(rows, cols)):
            seen.append(pmfs[0, b, idx[r, c]])
        return idx[rows, cols][None]

    prior.decode(1, 3, 4, step)
    expected = float(-np.log2(np.array(seen) / 2**20).sum())
    assert entropy.ideal_bits(prior, idx) == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------- corrupted payloads


@pytest.fixture(scope="module")
def coded(prior):
    idx = sample_grid(prior, 8, 12, seed=7)
    tiles = tiles_of(8, 12, 4, 6)
    return idx, tiles, entropy.encode_grid(prior, idx, tiles)


def decode_or_format_error(prior, payloads, h, w, tiles):
    """Decoding garbage may give some grid or VqcFormatError, nothing else."""
    try:
        out = entropy.decode_grid(prior, payloads, h, w, tiles)
    except VqcFormatError:
        return None
    assert out.shape == (h, w) and out.dtype == np.int64
    assert out.min() >= 0 and out.max() < K
    return out


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corrupted_payload_bytes(prior, coded, data):
    idx, tiles, payloads = coded
    k = data.draw(st.integers(0, len(payloads) - 1), label="tile")
    bad = bytearray(payloads[k])
    n_flips = data.draw(st.integers(1, 4), label="flips")
    for _ in range(n_flips):
        pos = data.draw(st.integers(0, len(bad) - 1), label="pos")
        bad[pos] ^= data.draw(st.integers(1, 255), label="xor")
    corrupted = list(payloads)
    corrupted[k] = bytes(bad)
    out = decode_or_format_error(prior, corrupted, 8, 12, tiles)
    if out is not None:  # other tiles are independent streams: untouched
        for j, t in enumerate(tiles):
            if j != k:
                assert np.array_equal(out[t], idx[t])


@pytest.mark.parametrize("kind", ["empty", "truncated", "zeros", "ones", "random", "extended"])
def test_malformed_payloads(prior, coded, kind):
    idx, tiles, payloads = coded
    rng = np.random.default_rng(0)
    p = payloads[1]
    bad = {
        "empty": b"",
        "truncated": p[: len(p) // 8 * 4],  # first half of the words
        "zeros": bytes(len(p)),
        "ones": b"\xff" * len(p),
        "random": rng.integers(0, 256, 64, dtype=np.uint8).tobytes(),
        "extended": p + b"\x12\x34\x56\x78" * 3,
    }[kind]
    corrupted = list(payloads)
    corrupted[1] = bad
    if kind in ("empty", "truncated", "extended"):  # never a conforming payload (SPEC.md)
        with pytest.raises(VqcFormatError, match="empty|too short|unused"):
            entropy.decode_grid(prior, corrupted, 8, 12, tiles)
    else:
        out = decode_or_format_error(prior, corrupted, 8, 12, tiles)
        if out is not None:  # the other tiles are independent streams: untouched
            assert all(np.array_equal(out[t], idx[t]) for j, t in enumerate(tiles) if j != 1)


def test_all_garbage_raises_only_format_error(prior):
    """Garbage in any tile gives some grid or VqcFormatError, while the valid tiles of the same
    file still decode exactly (so a decoder that refuses everything fails this test)."""
    rng = np.random.default_rng(1)
    tiles = tiles_of(6, 6, 3, 3)
    idx = sample_grid(prior, 6, 6, seed=4)
    valid = entropy.encode_grid(prior, idx, tiles)
    assert np.array_equal(entropy.decode_grid(prior, valid, 6, 6, tiles), idx)
    for trial in range(6):
        payloads = [rng.integers(0, 256, 4 * int(rng.integers(0, 6)), dtype=np.uint8).tobytes()
                    for _ in tiles]
        decode_or_format_error(prior, payloads, 6, 6, tiles)
        k = trial % len(tiles)
        mixed = [payloads[j] if j == k else valid[j] for j in range(len(tiles))]
        out = decode_or_format_error(prior, mixed, 6, 6, tiles)
        if out is not None:
            assert all(np.array_equal(out[t], idx[t]) for j, t in enumerate(tiles) if j != k)


# ------------------------------------------------------------------ conforming payloads (SPEC.md)


def test_constriction_encoder_output_is_always_conforming():
    """The rule of format/SPEC.md, "Resource limits and conforming payloads": with R the
    renormalisations over a tile, the encoder writes R + 1 or R + 2 words (never another count),
    on 2,000 random encodes of 1..300 symbols with PMFs from flat to very peaked."""
    import constriction

    model = constriction.stream.model.Categorical(perfect=False)
    rng = np.random.default_rng(14)
    seen = {1: 0, 2: 0}
    for _ in range(2000):
        k = int(rng.choice([2, 5, 512, 1024]))
        n = int(rng.integers(1, 300))
        pmf = np.maximum(np.floor(rng.dirichlet([rng.choice([0.01, 1.0, 100.0])] * k, n) * 2**20), 1)
        sym = np.array([rng.choice(k, p=row / row.sum()) for row in pmf], dtype=np.int32)
        enc = constriction.stream.queue.RangeEncoder()
        enc.encode(sym, model, pmf)
        renorms = enc.pos()[0]
        extra = len(enc.get_compressed()) - renorms
        assert extra in (1, 2)
        seen[extra] += 1
    assert seen[1] > 1000 and seen[2] > 0  # both seal lengths occur


def test_every_coded_tile_passes_the_conformance_check(prior):
    for seed in range(6):
        idx = sample_grid(prior, 9, 7, seed)
        tiles = tiles_of(9, 7, 4, 3)
        assert np.array_equal(roundtrip(prior, idx, tiles)[1], idx)


def test_short_payload_is_rejected_as_soon_as_it_runs_out(prior, monkeypatch):
    """A 1-word payload for a 64x64 tile fails within the first wavefront steps, not after
    decoding the whole tile."""
    steps = []
    real = entropy._TileStream.decode

    def counting(self, pmfs):
        steps.append(len(pmfs))
        return real(self, pmfs)

    monkeypatch.setattr(entropy._TileStream, "decode", counting)
    rng = np.random.default_rng(3)
    with pytest.raises(VqcFormatError, match="too short"):
        entropy.decode_grid(prior, [rng.integers(0, 2**32, 1, dtype=np.uint32).tobytes()], 64, 64,
                            whole(64, 64))
    assert sum(steps) < 64  # symbols decoded before the rejection (the tile has 4,096)


def test_batch_size_is_bounded_by_the_budget_not_the_tile():
    from types import SimpleNamespace

    for h, w in [(64, 64), (1, 1), (128, 128), (3, 200), (256, 1)]:
        for layers, k, c in [(4, 1024, 128), (4, 512, 128), (2, 32, 8)]:
            prior = ExactPrior.__new__(ExactPrior)
            prior.cfg = SimpleNamespace(layers=layers, K=k, channels=c)
            n = entropy.decode_batch_size(prior, h, w)
            assert n >= 1
            if n > 1:
                assert n * h * w <= entropy.DECODE_POSITIONS
                assert prior.state_bytes(n, h, w) <= entropy.PRIOR_STATE_BYTES + c * 8
                assert n * min(h, -(-w // (layers + 1))) * k <= entropy.PMF_ENTRIES
            # one more tile would break a bound
            more = n + 1
            assert (more * h * w > entropy.DECODE_POSITIONS
                    or prior.state_bytes(more, h, w) > entropy.PRIOR_STATE_BYTES + c * 8
                    or more * min(h, -(-w // (layers + 1))) * k > entropy.PMF_ENTRIES)


def test_state_bytes_is_what_the_wavefront_allocates(prior, monkeypatch):
    from vqcodec import prior_exact as prior_module

    seen = []
    real = prior_module._Wavefront.__init__

    def spy(self, p, n, height, width):
        real(self, p, n, height, width)
        seen.append((n, height, width, self.a.numel() * self.a.element_size()))

    monkeypatch.setattr(prior_module._Wavefront, "__init__", spy)
    idx = sample_grid(prior, 9, 7, seed=0)
    tiles = tiles_of(9, 7, 4, 3)
    entropy.decode_grid(prior, entropy.encode_grid(prior, idx, tiles), 9, 7, tiles)
    assert seen and all(prior.state_bytes(n, h, w) == b for n, h, w, b in seen)


def test_tile_above_budget_is_a_limit_error(prior):
    from vqcodec.errors import VqcLimitError

    with pytest.raises(VqcLimitError, match="above this decoder's limit"):
        entropy.decode_grid(prior, [b"\0" * 8], 200, 200, whole(200, 200))
