"""Tests of the integer-exact gated PixelCNN prior (vqcodec/prior.py, format/SPEC.md
"Entropy model"): bit-exact PMFs whatever the batch, thread count or evaluation order,
causality, closeness to the float model, the integer PMF and the pinned exp table."""

from __future__ import annotations

import decimal
import hashlib
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import needs_cuda, needs_two_cores, threads_seen
from vqcodec import prior as P
from vqcodec import prior_exact
from vqcodec.constants import LUT_LEN
from vqcodec.pmf import EXP_LUT, exp_table, pmf_from_logits
from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.prior_exact import ExactPrior

DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]
HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Run this module single-threaded (restored afterwards): tiny float64 matmuls with 2 OpenMP
    threads are very slow on a busy 2-core machine.  Thread-count invariance is tested below."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_prior(K=32, channels=12, layers=3, seed=0, fp16=True) -> GatedPixelCNN:
    """A seeded random float prior; with fp16, weights rounded to fp16 like a released file."""
    torch.manual_seed(seed)
    model = GatedPixelCNN(PriorConfig(K=K, channels=channels, layers=layers)).eval()
    if fp16:
        model = model.half().float()
    return model


@pytest.fixture(scope="module")
def model() -> GatedPixelCNN:
    return random_prior()


@pytest.fixture(scope="module")
def iprior(model) -> ExactPrior:
    return ExactPrior(model)


def grids(n, h, w, K, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, K, (n, h, w), generator=g)


def pmfs_of(iprior: ExactPrior, logits: torch.Tensor) -> np.ndarray:
    """[N, H, W, K] integer logits -> int64 PMFs of the same shape."""
    lg = logits.cpu().numpy().astype(np.int64)
    return pmf_from_logits(lg.reshape(-1, lg.shape[-1])).reshape(lg.shape)


def decode_with_pmfs(iprior: ExactPrior, batch: torch.Tensor):
    """Run the wavefront decoder on known grids (teacher forcing); returns (grids, per-position
    PMFs int64 [N, H, W, K] as the decoder saw them, number of times each position was visited)."""
    n, h, w = batch.shape
    seen = np.zeros((n, h, w, iprior.cfg.K), dtype=np.int64)
    visits = np.zeros((h, w), dtype=np.int64)
    truth = batch.numpy()

    def step(rows, cols, pmfs):
        assert pmfs.shape == (n, len(rows), iprior.cfg.K)
        seen[:, rows, cols] = pmfs
        np.add.at(visits, (rows, cols), 1)
        return truth[:, rows, cols]

    out = iprior.decode(n, h, w, step)
    return out, seen, visits


# ------------------------------------------------------------------------- (a) batch invariance


def test_logits_shape_and_integrality(iprior):
    g = grids(2, 5, 7, 32, seed=1)
    lg = iprior.logits(g)
    assert lg.shape == (2, 5, 7, 32) and lg.dtype == torch.float64
    assert torch.equal(lg, torch.round(lg))
    assert float(lg.abs().max()) <= 2**20


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_same_grid_same_logits_in_any_batch(iprior, batch):
    target = grids(1, 9, 11, 32, seed=7)
    alone = iprior.logits(target)[0]
    others = grids(batch, 9, 11, 32, seed=100 + batch)
    for pos in {0, batch // 2, batch - 1}:
        mixed = others.clone()
        mixed[pos] = target[0]
        got = iprior.logits(mixed)[pos]
        assert torch.equal(got, alone), f"batch {batch}, slot {pos}"


def test_decode_batch_invariance(iprior):
    target = grids(1, 4, 6, 32, seed=3)
    _, alone, _ = decode_with_pmfs(iprior, target)
    mixed = grids(3, 4, 6, 32, seed=4)
    mixed[1] = target[0]
    _, together, _ = decode_with_pmfs(iprior, mixed)
    assert np.array_equal(together[1], alone[0])


# ------------------------------------------------------------------------- (b) thread count


@needs_two_cores
def test_same_pmfs_with_one_and_two_threads(iprior, monkeypatch):
    monkeypatch.setattr(P.intops, "idle_cores", lambda: 64)  # really use 2 threads when busy
    g = grids(4, 16, 16, 32, seed=5)
    small = grids(2, 4, 5, 32, seed=6)
    before = torch.get_num_threads()
    results = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with threads_seen(monkeypatch, prior_exact._Wavefront, "pmfs") as seen:
                results[n] = (iprior.logits(g), decode_with_pmfs(iprior, small)[1])
            assert set(seen) == {n}  # the wavefront really ran on n threads
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    assert torch.equal(results[1][0], results[2][0])
    assert np.array_equal(results[1][1], results[2][1])


# ------------------------------------------------------------------------- (c) parallel == wavefront


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (8, 1), (6, 10)])
def test_wavefront_decode_matches_parallel_pass(iprior, shape):
    g = grids(2, *shape, 32, seed=11)
    expected = pmfs_of(iprior, iprior.logits(g))
    out, seen, visits = decode_with_pmfs(iprior, g)
    assert np.array_equal(out, g.numpy())
    assert (visits == 1).all()
    assert np.array_equal(seen, expected)


def test_wavefront_decode_matches_parallel_pass_deep_model():
    deep = ExactPrior(random_prior(K=16, channels=8, layers=5, seed=2))
    g = grids(1, 7, 9, 16, seed=12)
    _, seen, _ = decode_with_pmfs(deep, g)
    assert np.array_equal(seen, pmfs_of(deep, deep.logits(g)))


@needs_two_cores
@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_wavefront_ring_state_matches_parallel_pass(layers, monkeypatch):
    """Grids wider than the decoder's ring of L + 4 columns, so every state slot is reused;
    several batch sizes and 1 and 2 threads give the parallel pass's PMFs exactly."""
    monkeypatch.setattr(P.intops, "idle_cores", lambda: 64)
    ip = ExactPrior(random_prior(K=16, channels=8, layers=layers, seed=20 + layers))
    before = torch.get_num_threads()
    try:
        for threads, n in ((1, 1), (1, 3), (2, 2), (2, 5)):
            torch.set_num_threads(threads)
            g = grids(n, 5, layers + 13, 16, seed=30 + n)
            with threads_seen(monkeypatch, prior_exact._Wavefront, "pmfs") as used:
                out, seen, visits = decode_with_pmfs(ip, g)
            assert set(used) == {threads}
            assert np.array_equal(out, g.numpy())
            assert (visits == 1).all()
            assert np.array_equal(seen, pmfs_of(ip, ip.logits(g))), (threads, n)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("scale", [1e-3, 1.0, 40.0])
def test_folded_conv_equals_rescaled_conv_at_the_bounds(scale):
    """`IntConv.folded` (rescaling folded into weights and bias) gives the integers of the
    rescaled product, also with activations at +-ACT_CLAMP, whatever the weight scale (shift)."""
    from vqcodec import intops

    torch.manual_seed(int(scale * 1000))
    conv = torch.nn.Conv2d(128, 64, (2, 3))
    with torch.no_grad():
        conv.weight.mul_(scale)
        conv.bias.mul_(scale * 50)
    ic = intops.IntConv.from_float(conv)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-(2**20), 2**20 + 1, (300, 768), generator=g).double()
    w = ic.weight.permute(2, 3, 1, 0).reshape(-1, 64)  # [kh*kw*I, O], like the folded taps
    x[:10] = intops.ACT_CLAMP * torch.sign(w.sum(1))  # extreme sums
    taps, bias = ic.folded()
    got = intops.floor_clamp_(torch.addmm(bias, x, taps.reshape(-1, 64)))
    assert torch.equal(got, intops.rescale(torch.addmm(ic.bias, x, w), ic.shift))
    assert (got.abs() == intops.ACT_CLAMP).any() or scale < 1


def test_int_gate_in_place_equals_int_gate():
    from vqcodec import intops

    g = torch.Generator().manual_seed(2)
    x = torch.randint(-2000, 2000, (500, 64), generator=g).double()
    want = intops.int_gate(x[:, :32], x[:, 32:])
    assert torch.equal(intops.int_gate_(x.clone()), want)


def test_idle_cores_sees_a_competing_process():
    import os
    import subprocess
    import sys
    import time

    from vqcodec import intops

    cores = len(os.sched_getaffinity(0))
    assert 1 <= intops.idle_cores() <= cores
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert intops.idle_cores() <= max(1, cores - 1)
    finally:
        proc.kill()
        proc.wait()


def test_load_aware_threads(monkeypatch):
    from vqcodec import intops

    before = torch.get_num_threads()
    idle = [1]
    monkeypatch.setattr(intops, "idle_cores", lambda: idle[0])
    try:
        torch.set_num_threads(2)
        with intops.LoadAwareThreads(torch.device("cpu")) as threads:
            assert torch.get_num_threads() == 1
            idle[0] = 8
            threads.update()
            assert torch.get_num_threads() == 2  # never more than asked for
        assert torch.get_num_threads() == 2
        with intops.LoadAwareThreads(torch.device("cuda")):  # a GPU run leaves CPU threads alone
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_decode_follows_the_load(iprior, monkeypatch):
    """The wavefront decoder looks at the load again during a long decode."""
    from vqcodec import intops

    seen = []
    monkeypatch.setattr(intops, "idle_cores", lambda: seen.append(1) or 1)
    decode_with_pmfs(iprior, grids(1, 40, 8, 32, seed=9))  # 40 * 4 + 8 steps
    assert len(seen) >= 3


def test_decode_step_receives_schedule_order(iprior):
    order = []

    def step(rows, cols, pmfs):
        order.append((rows.copy(), cols.copy()))
        return np.zeros((1, len(rows)), dtype=np.int64)

    iprior.decode(1, 5, 6, step)
    sched = [s for s in iprior.schedule(5, 6) if len(s[0])]
    assert len(order) == len(sched)
    for (r, c), (rs, cs) in zip(order, sched):
        assert np.array_equal(r, rs) and np.array_equal(c, cs)


# ------------------------------------------------------------------------- (d) causality


@HYPO
@given(i=st.integers(0, 6), j=st.integers(0, 8), seed=st.integers(0, 2**31 - 1))
def test_future_indices_never_change_logits(iprior, i, j, seed):
    h, w, K = 7, 9, 32
    g = grids(1, h, w, K, seed=seed % 1000)
    changed = g.clone()
    rng = np.random.default_rng(seed)
    raster = np.arange(h * w).reshape(h, w)
    future = torch.from_numpy(raster >= i * w + j)
    noise = torch.from_numpy(rng.integers(0, K, (h, w)))
    changed[0][future] = noise[future]
    a, b = iprior.logits(g), iprior.logits(changed)
    assert torch.equal(a[0, i, j], b[0, i, j])
    # every earlier position is untouched as well
    past = ~future
    assert torch.equal(a[0][past], b[0][past])


def documented_context(i, j, L):
    """Positions (r, c) that (i, j) may depend on (SPEC: rows i-L..i-1, columns j-L..j+L, and
    row i, columns j-L..j-1), unclipped."""
    ctx = {(r, c) for r in range(i - L, i) for c in range(j - L, j + L + 1)}
    ctx |= {(i, c) for c in range(j - L, j)}
    return ctx


def test_empirical_dependencies_within_documented_context_and_schedule():
    """Perturb each position q alone: every position whose logits change must have q in its
    documented context, and q must come strictly earlier in the wavefront schedule."""
    L = 2
    ip = ExactPrior(random_prior(K=16, channels=8, layers=L, seed=4))
    h, w = 6, 9
    g = grids(1, h, w, 16, seed=8)
    base = ip.logits(g)[0]
    step_of = {}
    for t, (rows, cols) in enumerate(ip.schedule(h, w)):
        for r, c in zip(rows, cols):
            step_of[(int(r), int(c))] = t
    influenced = 0
    for qi in range(h):
        for qj in range(w):
            alt = g.clone()
            alt[0, qi, qj] = (alt[0, qi, qj] + 5) % 16
            diff = (ip.logits(alt)[0] != base).any(-1)
            for pi, pj in zip(*np.nonzero(diff.numpy())):
                assert (qi, qj) in documented_context(pi, pj, L), ((qi, qj), (pi, pj))
                assert step_of[(qi, qj)] < step_of[(int(pi), int(pj))]
                influenced += 1
            # the immediate right and lower neighbours do depend on q (no blind spot)
            if qj + 1 < w:
                assert diff[qi, qj + 1]
            if qi + 1 < h:
                assert diff[qi + 1, qj]
    assert influenced > h * w * 4


# ------------------------------------------------------------------------- (e) float vs integer


@pytest.fixture(scope="module")
def trained_prior() -> GatedPixelCNN:
    """A tiny prior trained briefly on structured grids, so its logits are far from uniform."""
    torch.manual_seed(0)
    K = 32
    net = GatedPixelCNN(PriorConfig(K=K, channels=16, layers=3))
    base = torch.randint(0, 4, (16, 1, 1)) * 8
    data = (base + torch.arange(12)[None, None, :] // 3 + torch.arange(12)[None, :, None] // 4) % K
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(50):
        loss = F.cross_entropy(net(data), data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * math.log(K)  # it did learn something
    return net.eval().half().float(), data


def test_integer_logits_close_to_float_logits(trained_prior):
    net, data = trained_prior
    ip = ExactPrior(net)
    with torch.no_grad():
        flt = net(data[:6]).permute(0, 2, 3, 1).double()
    got = ip.logits(data[:6]) / 2**P.intops.ACT_FRAC_BITS
    assert float(flt.abs().max()) > 3.0  # logits are not all tiny: the bound is meaningful
    assert float((got - flt).abs().max()) < 0.05


def test_integer_prior_rate_close_to_float_on_released_model():
    """On a released (trained) model and the index grid of a smooth image, the integer prior
    costs within 1% of the float model's cross-entropy and no logit is off by more than 1 nat."""
    from vqcodec import codec, zoo

    name = "vqc-f8k1024-v1"
    model = zoo.load(name, device="cpu")
    net = zoo.float_prior(name)
    y, x = np.mgrid[0:128, 0:128].astype(np.float64)
    img = np.stack([128 + 100 * np.sin(x / 17), 128 + 100 * np.cos(y / 23), (x + y) % 256], -1)
    g = torch.from_numpy(codec.encode_indices(model, img.astype(np.uint8)))[None]
    with torch.no_grad():
        flt = net(g).double()
    float_bits = float(F.cross_entropy(flt, g, reduction="sum")) / math.log(2)
    lg = model.prior.logits(g)
    pm = pmfs_of(model.prior, lg)[0]
    idx = g[0].numpy()
    int_bits = float(-np.log2(np.take_along_axis(pm, idx[..., None], -1) / 2**20).sum())
    assert abs(int_bits / float_bits - 1) < 0.01
    assert float((lg / 256 - flt.permute(0, 2, 3, 1)).abs().max()) < 1.0


# ------------------------------------------------------------------------- (f) pmf_from_logits


def pmf_reference(row: list[int]) -> list[int]:
    """SPEC.md "PMF from logits" with Python integers, independent of numpy."""
    K = len(row)
    top = row.index(max(row))
    w = [int(EXP_LUT[min((row[top] - v) >> 4, 511)]) for v in row]
    total = sum(w)
    p = [1 + wk * ((1 << 20) - K) // total for wk in w]
    p[top] += (1 << 20) - sum(p)
    return p


logit_rows = st.integers(2, 64).flatmap(lambda k: st.lists(
    st.one_of(st.integers(-(2**20), 2**20), st.sampled_from([-(2**20), 2**20, 0, 15, 16, -16])),
    min_size=k, max_size=k))


@HYPO
@given(rows=st.lists(logit_rows, min_size=1, max_size=4).filter(lambda rs: len({len(r) for r in rs}) == 1))
def test_pmf_properties(rows):
    lg = np.array(rows, dtype=np.int64)
    p = pmf_from_logits(lg)
    assert p.dtype == np.int64 and p.shape == lg.shape
    assert (p.sum(1) == 2**20).all()
    assert (p >= 1).all()
    for r in range(lg.shape[0]):
        higher = lg[r][:, None] > lg[r][None, :]  # higher[a, b]: logit a > logit b
        pa = np.broadcast_to(p[r][:, None], higher.shape)
        pb = np.broadcast_to(p[r][None, :], higher.shape)
        assert (pa[higher] >= pb[higher]).all()
        assert p[r].tolist() == pmf_reference(lg[r].tolist())


def test_pmf_monotone_pairwise_exhaustive():
    rng = np.random.default_rng(0)
    lg = rng.integers(-3000, 3000, (200, 24))
    lg[:, 5] = lg[:, 6]  # ties
    p = pmf_from_logits(lg)
    for r in range(len(lg)):
        higher = lg[r][:, None] > lg[r][None, :]
        assert (np.broadcast_to(p[r][:, None], higher.shape)[higher]
                >= np.broadcast_to(p[r][None, :], higher.shape)[higher]).all()
        assert p[r].tolist() == pmf_reference(lg[r].tolist())


def test_pmf_special_rows():
    # equal logits, K a power of two: exactly uniform
    assert (pmf_from_logits(np.full((1, 1024), 77)) == 1024).all()
    # one logit 2**21 above the rest: everything else at the floor probability 1
    row = np.full((1, 16), -(2**20))
    row[0, 3] = 2**20
    p = pmf_from_logits(row)[0]
    assert p[3] == 2**20 - 15 and (np.delete(p, 3) == 1).all()
    # a tie for the maximum: the remainder goes to the first index of the largest logit
    p = pmf_from_logits(np.array([[0, 100, 100, 0]]))[0]
    assert p[1] >= p[2] and p[0] == p[3] and p.sum() == 2**20
    # distances to the top logit are bucketed in steps of 16 (1/16 nat): d = 0, 15 | 16, 31 | 32
    p = pmf_from_logits(np.array([[32, 17, 16, 1, 0]]))[0]
    assert p[2] == p[3] and p[4] < p[2] < p[1] <= p[0]
    assert p[1] == 1 + int(EXP_LUT[0]) * (2**20 - 5) // int(2 * EXP_LUT[0] + 2 * EXP_LUT[1] + EXP_LUT[2])


def test_float_probabilities_match_exp():
    """The integer PMF approximates softmax(logits / 256) to within the LUT's 1/16-nat steps
    (at most 15/256 nats off per weight) wherever the probability is not tiny."""
    rng = np.random.default_rng(1)
    lg = rng.integers(-2000, 2000, (50, 32))
    p = pmf_from_logits(lg) / 2**20
    soft = torch.softmax(torch.from_numpy(lg / 256.0), -1).numpy()
    big = soft > 1e-3
    assert big.sum() > 200
    assert np.abs(np.log(p[big]) - np.log(soft[big])).max() < 15 / 256 + 0.005


# ------------------------------------------------------------------------- (g) pinned exp table


def _exp_lut_entry(i: int) -> int:
    """round(2**30 * exp(-i/16)) from exact rationals: Taylor series of exp(i/16) with a
    rigorous bound on its tail; the rounding must agree at both ends of the bound."""
    x = Fraction(i, 16)
    n_terms = int(3 * x) + 40
    term, s = Fraction(1), Fraction(0)
    for n in range(n_terms + 1):
        s += term
        term = term * x / (n + 1)
    tail = term / (1 - x / (n_terms + 2))
    one = Fraction(1 << 30)
    lo = math.floor(one / (s + tail) + Fraction(1, 2))
    hi = math.floor(one / s + Fraction(1, 2))
    assert lo == hi
    return lo


def test_exp_table_matches_exact_rationals():
    ref = [_exp_lut_entry(i) for i in range(LUT_LEN)]
    assert EXP_LUT.dtype == np.int64 and EXP_LUT.shape == (512,)
    assert EXP_LUT[:4].tolist() == [1073741824, 1008687096, 947573834, 890163238]
    assert EXP_LUT.tolist() == ref
    assert np.array_equal(exp_table(), EXP_LUT)


def test_exp_table_sha256_pinned():
    # Conformance pin: EXP_LUT is part of the bitstream definition (format/SPEC.md, "PMF from
    # logits").  Changing it makes every existing .vqc file undecodable; never update this hash,
    # define a new format/model instead.
    digest = hashlib.sha256(EXP_LUT.astype("<i8").tobytes()).hexdigest()
    assert digest == "89fe562e861b1fb9c90e0cbacc27e8171506203e9df760bf06045dcacf42e62a"


def test_exp_table_independent_of_callers_decimal_rounding():
    """The table must not depend on the calling thread's `decimal` context: an application
    that set another rounding mode would get a different table at import (different PMFs,
    files that do not decode elsewhere)."""
    with decimal.localcontext() as ctx:
        ctx.rounding = decimal.ROUND_FLOOR
        table = exp_table()
    assert np.array_equal(table, EXP_LUT)


def test_exp_table_leaves_callers_decimal_context_alone():
    with decimal.localcontext() as ctx:
        ctx.prec = 7
        exp_table()
        assert decimal.getcontext().prec == 7


# ------------------------------------------------------------------------- integer network pin


def _deterministic_prior() -> GatedPixelCNN:
    """A prior whose weights come from numpy's legacy (stable) generator, fp16-rounded."""
    model = GatedPixelCNN(PriorConfig(K=16, channels=8, layers=2))
    rs = np.random.RandomState(20240601)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            scale = 0.5 if name.startswith("embed") else 1.0 / math.sqrt(p[0].numel())
            p.copy_(torch.from_numpy(rs.normal(0, scale, p.shape)).half().float())
    return model.eval()


@pytest.mark.parametrize("device", DEVICES)
def test_integer_network_conformance_pin(device):
    # Conformance pin of the integer network (format/SPEC.md, "Integer network"): integer
    # logits of a fixed-weight prior on a fixed grid, on every available device, through both
    # the parallel pass and the wavefront decoder.  A change means encoders and decoders of
    # different versions would disagree; it must come with a new format/model id, not an edit.
    ip = ExactPrior(_deterministic_prior(), device)
    y, x = np.mgrid[0:6, 0:7]
    g = torch.from_numpy((y * 5 + x * 3 + (x * y) % 4) % 16)[None]
    lg = ip.logits(g).cpu().numpy().astype("<i8")
    assert hashlib.sha256(lg.tobytes()).hexdigest() == PINNED_LOGITS_SHA256
    pm = pmf_from_logits(lg.reshape(-1, 16)).astype("<i8")
    assert hashlib.sha256(pm.tobytes()).hexdigest() == PINNED_PMFS_SHA256
    _, seen, _ = decode_with_pmfs(ip, g)
    assert np.array_equal(seen.reshape(-1, 16), pm)


@needs_cuda
def test_same_pmfs_on_cuda(model):
    """Bigger random grids in a batch: the GPU's parallel pass equals the CPU's exactly."""
    g = grids(5, 20, 24, 32, seed=21)
    assert torch.equal(ExactPrior(model, "cuda").logits(g).cpu(), ExactPrior(model).logits(g))


PINNED_LOGITS_SHA256 = "4f1c4e7fb94b3930f9493e225e208e5437c48c185437c9204c04dd549557f87b"
PINNED_PMFS_SHA256 = "e474219206e0c000ef8eb26ca00b4b3c2cd8bf79d00b1a8035b50ee15e37ff0e"


# ------------------------------------------------------------------------- (h) schedule


@pytest.mark.parametrize("layers", [1, 2, 3, 6])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 8), (13, 29)])
def test_schedule_covers_each_position_once_and_respects_context(layers, shape):
    ip = ExactPrior(random_prior(K=4, channels=2, layers=layers, seed=0))
    h, w = shape
    sched = ip.schedule(h, w)
    step_of = -np.ones((h, w), dtype=np.int64)
    for t, (rows, cols) in enumerate(sched):
        assert np.all(np.diff(rows) > 0)  # within a step: increasing row
        assert (step_of[rows, cols] == -1).all()
        step_of[rows, cols] = t
    assert (step_of >= 0).all()
    assert len(sched) == w + (layers + 1) * (h - 1)
    for i in range(h):
        for j in range(w):
            assert step_of[i, j] == j + (layers + 1) * i
            for r, c in documented_context(i, j, layers):
                if 0 <= r < h and 0 <= c < w:
                    assert step_of[r, c] < step_of[i, j]
