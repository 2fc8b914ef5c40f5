"""Rate-distortion optimised encoding (vqcodec/rdo.py), the quality scale, target sizes and the
quality chunk, on the tiny random model of conftest.py (no trained weights)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import make_pixels

from vqcodec import codec, container, entropy, images, metrics, rdo, zoo


@pytest.fixture(scope="module")
def model(tiny_model) -> zoo.CodecModel:
    return zoo.load(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_pixels(48, 64, seed=3)


def setup(model, pixels, tile=None):
    """(latents, nearest-neighbour grid, tiles) of an image (multiple of f)."""
    padded = images.pad_to_multiple(pixels, model.f)
    nn = codec.encode_indices(model, padded)
    h = container.Header(model_name=model.name, model_hash=model.model_hash,
                         width=padded.shape[1], height=padded.shape[0], mode=container.Mode.RGB,
                         grid_h=nn.shape[0], grid_w=nn.shape[1], tile_h=tile or model.tile,
                         tile_w=tile or model.tile)
    return rdo.latents(model, padded), nn, h.tile_slices()


def objective(model, z, grid, tiles, lam):
    """Exact D / D_nn + lam * R of a grid (R from the prior's parallel pass, as the coder)."""
    d2 = rdo.distances(model, z)
    d_nn = d2.min(-1).mean()
    dist = np.take_along_axis(d2, grid[..., None], -1).sum()
    bits = sum(entropy.ideal_bits(model.prior, np.ascontiguousarray(grid[t])) for t in tiles)
    return dist / d_nn + lam * bits, bits


def test_choice_is_coded_exactly_and_lambda_zero_is_nearest(model, image):
    z, nn, tiles = setup(model, image, tile=8)  # 3 x 4 tiles of 4..8 positions a side
    r0 = rdo.choose_grid(model, z, 0.0, 6, tiles)
    assert np.array_equal(r0.grid, nn)
    assert r0.payloads == entropy.encode_grid(model.prior, nn, tiles)
    for lam in (0.3, 3.0):
        r = rdo.choose_grid(model, z, lam, 6, tiles)
        # the payloads written during the choice are exactly the coder's for that grid
        assert r.payloads == entropy.encode_grid(model.prior, r.grid, tiles)
        back = entropy.decode_grid(model.prior, r.payloads, *nn.shape, tiles)
        assert np.array_equal(back, r.grid)
        _, bits = objective(model, z, r.grid, tiles, lam)
        assert r.bits == pytest.approx(bits, rel=1e-9)


@pytest.mark.parametrize("lam", [0.1, 1.0, 10.0])
def test_rdo_never_costs_more_than_nearest_neighbour(model, image, lam):
    z, nn, tiles = setup(model, image)
    j_nn, bits_nn = objective(model, z, nn, tiles, lam)
    for level in (3, 6, 9):
        r = rdo.choose_grid(model, z, lam, level, tiles, nearest=nn)
        j, bits = objective(model, z, r.grid, tiles, lam)
        assert j <= j_nn + 1e-9, (level, j, j_nn)
        assert bits < bits_nn  # on this image every lambda > 0 saves bits


def test_bits_fall_and_distortion_rises_with_lambda(model, image):
    z, nn, tiles = setup(model, image)
    results = [rdo.choose_grid(model, z, lam, 6, tiles) for lam in (0.0, 0.1, 1.0, 10.0)]
    bits = [r.bits for r in results]
    dist = [r.distortion for r in results]
    assert bits == sorted(bits, reverse=True) and bits[-1] < 0.9 * bits[0]
    assert dist == sorted(dist)
    sizes = [sum(map(len, r.payloads)) for r in results]
    assert sizes[-1] < sizes[0]


def test_effort_zero_is_the_nearest_neighbour_encoder_byte_for_byte(tiny_model, image):
    data = codec.compress(image, 63.5, model=tiny_model, device="cpu", effort=0, scale=1.0)
    m = zoo.load(tiny_model, device="cpu")
    nn = codec.encode_indices(m, images.pad_to_multiple(image, m.f))
    f = container.read(data)
    assert f.header.version_minor == 0 and f.chunks == ()  # as vqc 0.1 wrote it
    assert list(f.payloads) == entropy.encode_grid(m.prior, nn, f.header.tile_slices())
    # the quality does not matter at effort 0 once the model and the scale are fixed
    assert codec.compress(image, 1, model=tiny_model, device="cpu", effort=0, scale=1.0) == data


def test_quality_chunk_round_trip_and_old_readers_skip_it(tiny_model, image, monkeypatch):
    data = codec.compress(image, 55.25, model=tiny_model, device="cpu", effort=4, scale=1.0)
    f = container.read(data)
    assert f.header.version_minor == 1
    (chunk,) = [c for c in f.chunks if c.type == container.CHUNK_QUALITY]
    assert not chunk.critical and container.unpack_quality(chunk.data) == (55.25, 4)
    from vqcodec import cli

    assert dict(cli.describe(data))["quality"] == "55.25 (effort 4)"
    pixels = np.asarray(codec.decompress(data))
    # a 1.0 reader does not know type 4: it must skip the optional chunk and decode the same
    monkeypatch.setattr(container, "KNOWN_CHUNKS",
                        {k: v for k, v in container.KNOWN_CHUNKS.items() if k != container.CHUNK_QUALITY})
    assert container.read(data).chunks == ()
    assert np.array_equal(np.asarray(codec.decompress(data)), pixels)
    assert container.unpack_quality(b"\x11\x27\x00") is None  # 100.01: malformed, reported
    assert container.unpack_quality(b"\x10\x27\x09") == (100.0, 9)


def test_plan_is_monotone_and_ends_at_nearest_neighbour():
    qs = np.linspace(0, 100, 801)
    plans = [rdo.plan(q) for q in qs]
    segs = rdo.QUALITY_SEGMENTS
    assert segs[0].q_lo == 0 and segs[-1].q_hi == 100
    assert all(a.q_hi == b.q_lo for a, b in zip(segs, segs[1:]))  # no hole, no overlap
    models = list(dict.fromkeys(seg.model for seg in segs))  # small model first, never back
    order = [models.index(p.model) for p in plans]
    assert order == sorted(order)
    for m in models:  # per model, the coded size only grows with Q ...
        scales = [p.scale for p in plans if p.model == m]
        assert scales == sorted(scales) and all(0 < s <= 1 for s in scales)
    for seg in segs:  # ... and lambda only falls inside a stretch
        lams = [p.lam for q, p in zip(qs, plans) if seg.q_lo < q <= seg.q_hi]
        assert all(a > b for a, b in zip(lams, lams[1:]))
        assert rdo.plan(seg.q_hi) == rdo.Plan(seg.model, pytest.approx(seg.lam_hi), seg.scale)
        assert seg.lam_lo >= seg.lam_hi >= 0 and seg.slope > 0
    assert rdo.plan(100) == rdo.Plan(models[-1], 0.0, 1.0)  # the top: full size, nearest neighbour
    assert any(p.scale < 1 for p in plans)  # the rate hole is filled by coding smaller
    for bad in (-0.01, 100.5, math.nan, math.inf, "high"):
        with pytest.raises((ValueError, TypeError)):
            rdo.plan(bad)
    for bad in (-1, 10, 2.5, True, None):
        with pytest.raises(ValueError, match="effort"):
            rdo.effort(bad)


def test_quality_breaks_are_where_model_or_scale_change():
    breaks = rdo.quality_breaks()
    assert list(breaks) == sorted(breaks) and all(0 < b < 100 for b in breaks)
    for b in breaks:
        below, above = rdo.plan(b), rdo.plan(b + 0.01)
        assert (below.model, below.scale) != (above.model, above.scale)
    kinds = [(p.model, p.scale) for p in map(rdo.plan, np.linspace(0, 100, 10001))]
    assert sum(a != b for a, b in zip(kinds, kinds[1:])) == len(breaks)


def test_scale_candidates_and_pick_scale():
    q = next(q for q in range(101) if 0.5 < rdo.plan(q).scale < 1)  # a scaled point
    p = rdo.plan(q)
    assert rdo.scale_candidates(q, 6) == [p]  # default effort: the plan alone
    cands = rdo.scale_candidates(q, 9)
    assert cands[0] == p and len(cands) == 3
    assert {c.scale for c in cands[1:]} == {p.scale - 1 / 16, p.scale + 1 / 16}
    assert all(c.model == p.model and c.lam == p.lam for c in cands)
    top = rdo.scale_candidates(100, 8)
    assert [c.scale for c in top] == [1.0, 0.9375]  # nothing above full size
    assert [c.scale for c in rdo.scale_candidates(q, 7)] == [p.scale]
    # 20 dB per bpp: +0.02 bpp must buy more than 0.4 dB
    assert rdo.pick_scale([(0.15, 27.0), (0.13, 26.5), (0.17, 27.5)], 20.0) == 2
    assert rdo.pick_scale([(0.15, 27.0), (0.13, 26.7), (0.17, 27.3)], 20.0) == 1
    assert rdo.pick_scale([(0.15, 27.0), (0.13, 26.6), (0.17, 27.4)], 20.0) == 0  # ties: the plan
    assert rdo.rd_slope(q) > 0


def test_search_quality_through_many_stretches():
    breaks = (10.0, 25.0, 40.0, 55.0, 70.0, 85.0)

    def size_of(q):  # six stretches, each a little above where the last ended
        k = sum(q > b for b in breaks)
        return 1000 + 60 * k + int(12 * q)

    for target in (1100, 1500, 1745, 2000, 2500, 2300):
        q, data, probes = rdo.search_quality(lambda q: b"x" * size_of(q), target, breaks)
        assert len(data) == size_of(q) <= target
        better = [x for x in np.arange(q + rdo.SEARCH_Q_STEP + 0.01, 100, 0.01) if size_of(x) <= target]
        assert not better or len(data) >= rdo.SEARCH_CLOSE * target, (target, q, probes)
        assert len(probes) <= rdo.SEARCH_MAX_PROBES


def test_target_bytes_checks():
    assert rdo.target_bytes(None, None, 10, 10) is None
    assert rdo.target_bytes(0.2, None, 768, 512) == 9830
    assert rdo.target_bytes(None, 30720, 1, 1) == 30720
    for bpp, size in ((0.2, 100), (0.0, None), (-1.0, None), (math.nan, None), (None, 0), (None, 2.5)):
        with pytest.raises(ValueError):
            rdo.target_bytes(bpp, size, 10, 10)


def test_search_quality_finds_the_highest_fitting_quality():
    def size_of(q):  # a monotone staircase, like real files
        return 1000 + int(40 * q) // 7 * 7

    def encode(q):
        return b"x" * size_of(q)

    for target in (1000, 1500, 2234, 4999, 5000, 6000):
        q, data, probes = rdo.search_quality(encode, target)
        assert len(data) == size_of(q) <= target
        if q < 100:
            assert size_of(q + rdo.SEARCH_Q_STEP) > target or len(data) >= rdo.SEARCH_CLOSE * target
        assert len(probes) <= rdo.SEARCH_MAX_PROBES
    calls = []
    q, data, probes = rdo.search_quality(lambda q: calls.append(q) or encode(q), 999)
    assert q == 0 and len(data) == 1000  # nothing fits: quality 0, its file
    assert calls.count(0.0) == 1 and len(probes) == len(calls)  # every encode is a probe, none twice


def test_search_quality_with_a_jump_between_models():
    def size_of(q):  # two models: the second starts well above where the first ends
        return 1000 + int(10 * q) if q <= 40 else 3000 + int(30 * q)

    for target, expect in ((1300, 30), (1400, 40), (2500, 40), (4300, 43.33), (6000, 100)):
        q, data, probes = rdo.search_quality(lambda q: b"x" * size_of(q), target, breaks=(40,))
        assert len(data) == size_of(q) <= target
        assert q == pytest.approx(expect, abs=rdo.SEARCH_Q_STEP + 0.01), (target, probes)
        assert len(probes) <= 8


def test_target_size_with_real_encodes_lands_under_the_target(tiny_model, image):
    sizes = {q: len(codec.compress(image, q, model=tiny_model, device="cpu")) for q in (0, 100)}
    target = (sizes[0] + sizes[100]) // 2
    data, q, _ = codec.compress_report(image, model=tiny_model, device="cpu", size=target)
    assert len(data) <= target < sizes[100] and 0 < q < 100
    assert container.unpack_quality(container.read(data).chunks[0].data)[0] == pytest.approx(q, abs=0.01)
    bpp_target = 8 * target / (image.shape[0] * image.shape[1])
    data2, q2, _ = codec.compress_report(image, model=tiny_model, device="cpu", target_bpp=bpp_target)
    assert len(data2) <= target
    with pytest.raises(ValueError, match="not both"):
        codec.compress(image, model=tiny_model, size=100, target_bpp=0.1)


@pytest.fixture
def scaled_scale(tiny_model, monkeypatch):
    """A quality scale of the tiny model at three scales (the real one needs released weights)."""
    segs = (rdo.Segment(tiny_model, 0, 30, 0.5, 1.0, scale=0.5, lam_hi=0.0, slope=30.0),
            rdo.Segment(tiny_model, 30, 60, 0.5, 1.0, scale=0.75, lam_hi=0.0, slope=20.0),
            rdo.Segment(tiny_model, 60, 100, 0.5, 1.0, scale=1.0, lam_hi=0.0, slope=10.0))
    monkeypatch.setattr(rdo, "QUALITY_SEGMENTS", segs)
    return segs


def test_the_plans_scale_is_coded(scaled_scale):
    pixels = make_pixels(64, 96, seed=5)
    for q, scale in ((10, 0.5), (45, 0.75), (100, 1.0)):
        r = codec.compress_report(pixels, q, device="cpu")
        assert r.coded_size == rdo.coded_size(64, 96, scale) == (round(64 * scale), round(96 * scale))
        f = container.read(r.data)
        assert container.coded_size(f.header, f.chunks) == r.coded_size
        assert np.asarray(codec.decompress(r.data)).shape == (64, 96, 3)  # shown at full size
    sizes = [len(codec.compress(pixels, q, device="cpu")) for q in (30, 60, 100)]
    assert sizes == sorted(sizes)  # each stretch's top: a bigger coded image, a bigger file


def test_target_search_reaches_scaled_points(scaled_scale):
    pixels = make_pixels(64, 96, seed=5)
    size = {q: len(codec.compress(pixels, q, device="cpu")) for q in (0, 30, 30.01, 60, 60.01)}
    assert size[0] <= size[30] < size[30.01] <= size[60] < size[60.01]  # jumps where the scale grows
    for target, scale in (((size[30] + size[30.01]) // 2, 0.5), ((size[60] + size[60.01]) // 2, 0.75)):
        r = codec.compress_report(pixels, device="cpu", size=target)
        assert len(r.data) <= target
        assert r.coded_size == rdo.coded_size(64, 96, scale) and rdo.plan(r.quality).scale == scale
        assert r.quality in (30, 60)  # the top of the stretch: the next one starts too big


def test_effort_9_picks_one_of_the_candidate_scales(scaled_scale):
    pixels = make_pixels(64, 96, seed=5)
    q = 45
    cands = {rdo.coded_size(64, 96, p.scale) for p in rdo.scale_candidates(q, 9)}
    assert len(cands) == 3
    r = codec.compress_report(pixels, q, device="cpu", effort=9)
    assert r.coded_size in cands
    f = container.read(r.data)
    assert container.coded_size(f.header, f.chunks) == r.coded_size
    # the rule, recomputed: the chosen file scores best by PSNR - slope * bpp
    points = []
    for p in rdo.scale_candidates(q, 9):
        data = codec.compress(pixels, q, device="cpu", effort=9, scale=p.scale)
        shown = np.asarray(codec.decompress(data))
        points.append((8 * len(data) / (64 * 96), metrics.psnr(pixels, shown)))
    chosen = rdo.scale_candidates(q, 9)[rdo.pick_scale(points, rdo.rd_slope(q))]
    assert r.coded_size == rdo.coded_size(64, 96, chosen.scale)
    fixed = codec.compress_report(pixels, q, device="cpu", effort=9, scale=0.75)
    assert fixed.coded_size == rdo.coded_size(64, 96, 0.75)  # a given scale is kept
