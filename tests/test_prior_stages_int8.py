"""The int8 stage prior of architecture rvq (vqcodec/prior_stages_int8.py, format/SPEC.md, "Architecture rvq") and
its calibration (vqcodec/train/calibrate_stages.py), on a small randomly initialised float stage
prior calibrated on random codes made here (no data files needed)."""

import os

import numpy as np
import pytest
import torch

from vqcodec import int8, intops
from vqcodec.pmf import pmf_from_logits
from vqcodec.prior import PriorConfig
from vqcodec.prior_int8 import Int8Prior
from vqcodec.prior_stages import StagePrior, StagePriorConfig
from vqcodec.prior_stages_int8 import Int8StagePrior
from vqcodec.train.calibrate_stages import calibrate_stage_prior, stage_bits

S = 3


def _codes(seed, n, h, w, K, stages=S):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, K, (stages, h, w)).astype(np.int64) for _ in range(n)]


@pytest.fixture(scope="module", params=[8, 12])
def model(request):
    """(float prior, int8 tensors, Int8StagePrior); C = 8 copies rows as int64 words, 12 as bytes."""
    cfg = StagePriorConfig(K=20, channels=request.param, layers=3, stages=S)
    torch.manual_seed(request.param)
    fp = StagePrior(cfg).double().eval()
    tensors = calibrate_stage_prior(fp, _codes(1, 6, 10, 10, cfg.K))
    return fp, tensors, Int8StagePrior.from_tensors(tensors, cfg)


def _decode(prior, idx, fused):
    """Decode codes idx [n, S', H, W] with their true indices; every PMF, in call order."""
    n, stages, h, w = idx.shape
    seen = []

    def step(rows, cols, pmfs):
        s = len(seen) % stages
        seen.append((s, rows.copy(), np.array(pmfs)))
        return idx[:, s, rows, cols]

    prior.fused = fused
    try:
        out = prior.decode(n, h, w, step, stages)
    finally:
        del prior.fused
    np.testing.assert_array_equal(out, idx)
    return seen


def _check_order_and_pmfs(prior, idx, seen):
    """The calls follow the contract's coding order and their PMFs are the parallel pass's."""
    n, stages, h, w = idx.shape
    lg = prior.logits(torch.from_numpy(idx)).numpy()
    assert lg.shape == (n, stages, h, w, prior.cfg.K) and lg.dtype == np.int64
    order = [(s, rows, cols) for rows, cols in prior.schedule(h, w) if len(rows) for s in range(stages)]
    assert len(seen) == len(order)
    for (s, rows, cols), (s2, rows2, pmfs) in zip(order, seen):
        assert s == s2
        np.testing.assert_array_equal(rows, rows2)
        want = pmf_from_logits(lg[:, s, rows, cols].reshape(-1, prior.cfg.K)).reshape(pmfs.shape)
        np.testing.assert_array_equal(pmfs, want)


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("stages", [1, 2, 3])
def test_fused_and_torch_wavefronts_equal_the_parallel_pass(model, stages, n):
    _, _, prior = model
    idx = np.stack(_codes(stages * 10 + n, n, 6, 9, prior.cfg.K, stages))
    fused, ref = _decode(prior, idx, True), _decode(prior, idx, False)
    for (_, _, a), (_, _, b) in zip(fused, ref):
        np.testing.assert_array_equal(a, b)
    _check_order_and_pmfs(prior, idx, fused)


@pytest.mark.parametrize("shape", [(1, 7), (9, 1), (4, 3)])
def test_thin_tiles_decode_exactly(model, shape):
    _, _, prior = model
    idx = np.stack(_codes(sum(shape), 2, *shape, prior.cfg.K))
    _check_order_and_pmfs(prior, idx, _decode(prior, idx, True))
    _check_order_and_pmfs(prior, idx, _decode(prior, idx, False))


def test_one_and_two_threads_decode_identically(model, monkeypatch):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: a 2-thread decode would run the 1-thread path")
    _, _, prior = model
    idx = np.stack(_codes(5, 2, 7, 8, prior.cfg.K))
    monkeypatch.setattr(intops, "idle_cores", lambda: 2)  # LoadAwareThreads would drop to 1 when busy
    before = torch.get_num_threads()
    runs = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            used = set()
            for fused in (True, False):
                seen = []

                def step(rows, cols, pmfs, seen=seen):
                    used.add(torch.get_num_threads())
                    s = len(seen) % S
                    seen.append(np.array(pmfs))
                    return idx[:, s, rows, cols]

                prior.fused = fused
                prior.decode(2, 7, 8, step)
                runs[threads, fused] = seen
            assert used == {threads}, f"decode ran with {used} threads, not {threads}"
    finally:
        torch.set_num_threads(before)
        del prior.fused
    for key in runs:
        for a, b in zip(runs[key], runs[1, True]):
            np.testing.assert_array_equal(a, b)


def test_one_stage_is_v2(model):
    """S' = 1 of the stage prior equals a v2 Int8Prior built from embed[0], heads.0."""
    _, tensors, prior = model
    cfg = prior.cfg
    v2 = {k: v for k, v in tensors.items() if ".heads." not in k and not k.endswith(".embed")}
    v2["int8.prior.embed"] = tensors["int8.prior.embed"][0].contiguous()
    for key, v in tensors.items():
        if key.startswith("int8.prior.heads.0."):
            v2["int8.prior." + key[len("int8.prior.heads.0."):]] = v
    ref = Int8Prior.from_tensors(v2, PriorConfig(K=cfg.K, channels=cfg.channels, layers=cfg.layers))
    idx = np.stack(_codes(3, 2, 6, 7, cfg.K, 1))
    torch.testing.assert_close(prior.logits(torch.from_numpy(idx))[:, 0], ref.logits(torch.from_numpy(idx[:, 0])),
                               rtol=0, atol=0)
    seen = []
    ref.decode(2, 6, 7, lambda rows, cols, pmfs: seen.append(np.array(pmfs)) or idx[:, 0, rows, cols])
    ours = _decode(prior, idx, True)
    assert len(ours) == len(seen)
    for (_, _, a), b in zip(ours, seen):
        np.testing.assert_array_equal(a, b)


def test_logits_follow_the_float_prior(model):
    fp, _, prior = model
    idx = torch.from_numpy(np.stack(_codes(8, 2, 8, 8, prior.cfg.K)))
    lg = prior.logits(idx)
    assert int(lg.abs().max()) <= int8.LOGIT_CLAMP and float(lg.double().std()) > 0
    fl = fp(idx).permute(0, 1, 3, 4, 2).detach() * 256  # [N, S, H, W, K], units 2**-8 nats
    assert float((lg - fl).abs().mean() / fl.std()) < 0.1


def test_calibrated_bits_are_close_to_the_float_prior(model):
    fp, _, prior = model
    codes = _codes(9, 4, 8, 8, prior.cfg.K)
    idx = torch.from_numpy(np.stack(codes))
    with torch.no_grad():
        logp = torch.log_softmax(fp(idx).double(), 2).gather(2, idx[:, :, None]).sum()
    float_bits = float(-logp / np.log(2))
    assert abs(stage_bits(prior, codes) - float_bits) / float_bits < 0.02


def test_tensors_round_trip_and_names(model):
    _, tensors, prior = model
    out = prior.tensors()
    assert sorted(out) == sorted(tensors)
    for k in out:
        assert out[k].dtype == tensors[k].dtype and torch.equal(out[k], tensors[k]), k
    K, c = prior.cfg.K, prior.cfg.channels
    assert out["int8.prior.embed"].shape == (S, K, c) and out["int8.prior.embed"].dtype == torch.int8
    assert "int8.prior.heads.0.cond" not in out and "int8.prior.out1.weight" not in out
    assert "int8.prior.heads.0.cond_mult" not in out
    for s in range(1, S):
        cond = out[f"int8.prior.heads.{s}.cond"]
        mult = out[f"int8.prior.heads.{s}.cond_mult"]
        assert cond.dtype == torch.int8 and cond.shape == (s, K, c)
        assert mult.dtype == torch.int32 and mult.shape == (s, c)
        assert int(cond.min()) >= -int8.S8_MAX and int(cond.abs().max()) == int8.S8_MAX
        assert 0 < int(mult.max()) < int8.MULT_BOUND and int(mult.min()) >= 0
    assert prior.stages == S and prior.state_bytes(1, 4, 4) > 0


#: The cond_mult of heads.1's channel 0 in `_bound_break`.
_MULT = 5000


def _bound_break(t, mult=_MULT):
    """heads.1: bias[0] so that out1's bound holds without cond and reaches exactly 2**24 with
    the conditioning term 127 * cond_mult[0, 0] = 127 * _MULT (mult: that multiplier)."""
    w = t["int8.prior.heads.1.out1.weight"].to(torch.int64).abs().flatten(1).sum(1)[0]
    t["int8.prior.heads.1.out1.bias"][0] = (1 << 24) - int8.S8_MAX * int(w) - int8.S8_MAX * _MULT
    t["int8.prior.heads.1.cond_mult"][0, 0] = mult


@pytest.mark.parametrize("case, match", [
    (lambda t: t["int8.prior.heads.1.out1.weight"].view(-1).__setitem__(0, -128), "outside \\[-63, 63\\]"),
    (lambda t: t["int8.prior.embed"].view(-1).__setitem__(5, -128), "-128"),
    (lambda t: t["int8.prior.heads.2.cond"].view(-1).__setitem__(7, -128), "heads.2.cond has the value -128"),
    (lambda t: t["int8.prior.heads.2.cond_mult"].view(-1).__setitem__(3, 1 << 16),
     "heads.2.cond_mult has values outside \\[0, 2\\*\\*16\\)"),
    (lambda t: t["int8.prior.heads.1.cond_mult"].view(-1).__setitem__(0, -1),
     "heads.1.cond_mult has values outside"),
    (_bound_break, "heads.1.out1: an accumulator can reach"),
    (lambda t: t.pop("int8.prior.heads.1.cond"), "heads.1.cond is missing"),
    (lambda t: t.pop("int8.prior.heads.2.cond_mult"), "heads.2.cond_mult is missing"),
    (lambda t: t.pop("int8.prior.heads.2.out2.mult"), "heads.2.out2.mult is missing"),
    (lambda t: t.__setitem__("int8.prior.heads.0.cond", torch.zeros(0, 20, 8, dtype=torch.int8)),
     "unexpected tensors int8.prior.heads.0.cond"),
    (lambda t: t.__setitem__("int8.prior.heads.0.cond_mult", torch.zeros(0, 8, dtype=torch.int32)),
     "unexpected tensors int8.prior.heads.0.cond_mult"),
    (lambda t: t.__setitem__("int8.prior.out1.weight", torch.zeros(8, 8, 1, 1, dtype=torch.int8)),
     "unexpected tensors int8.prior.out1.weight"),
    (lambda t: t.__setitem__("int8.prior.heads.1.cond", t["int8.prior.heads.1.cond"].to(torch.int32)),
     "heads.1.cond is torch.int32 .*, expected torch.int8"),
    (lambda t: t.__setitem__("int8.prior.heads.2.cond_mult", t["int8.prior.heads.2.cond_mult"].to(torch.int64)),
     "heads.2.cond_mult is torch.int64 .*, expected torch.int32"),
    (lambda t: t.__setitem__("int8.prior.heads.2.cond_mult", t["int8.prior.heads.2.cond_mult"][:1].clone()),
     "heads.2.cond_mult is torch.int32 \\(1, "),
    (lambda t: t.__setitem__("int8.prior.embed", t["int8.prior.embed"][:2].clone()), "embed"),
])
def test_from_tensors_rejects_bad_tensors(model, case, match):
    _, tensors, prior = model
    t = {k: v.clone() for k, v in tensors.items()}
    case(t)
    with pytest.raises(ValueError, match=match) as info:
        Int8StagePrior.from_tensors(t, prior.cfg)
    assert "\n" not in str(info.value)
    _bound_break_holds_without_cond(tensors, prior)


def _bound_break_holds_without_cond(tensors, prior):
    """The bound-break case fails only because of its cond_mult term: one less is accepted."""
    t = {k: v.clone() for k, v in tensors.items()}
    _bound_break(t, _MULT - 1)
    Int8StagePrior.from_tensors(t, prior.cfg)


def test_decode_checks_stages_and_indices(model):
    _, _, prior = model
    with pytest.raises(ValueError, match="stages must be in 1..3"):
        prior.decode(1, 2, 2, lambda r, c, p: np.zeros((1, len(r)), dtype=np.int64), 4)
    with pytest.raises(ValueError, match="stages"):
        prior.logits(torch.zeros(1, 4, 2, 2, dtype=torch.int64))
    for fused in (True, False):
        prior.fused = fused
        try:
            with pytest.raises(IndexError):
                prior.decode(1, 3, 3, lambda r, c, p: np.full((1, len(r)), prior.cfg.K), 2)
            with pytest.raises(IndexError):
                prior.decode(1, 3, 3, lambda r, c, p: np.full((1, len(r)), -1), 2)
        finally:
            del prior.fused

