"""The int8 prior (vqcodec/prior_int8.py) and its calibration (vqcodec/train/calibrate_prior.py)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import needs_cuda, needs_isa_above_avx2, needs_two_cores, threads_seen
from vqcodec import int8, intops, prior_int8
from vqcodec.pmf import pmf_from_logits
from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.prior_int8 import Int8Prior
from vqcodec.train.calibrate_prior import bits, calibrate_prior

REPO = Path(__file__).resolve().parents[1]
CFG = PriorConfig(K=24, channels=8, layers=3)


def _grids(seed, n, h, w, k=CFG.K):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, k, (h, w)).astype(np.int64) for _ in range(n)]


@pytest.fixture(scope="module")
def float_prior():
    torch.manual_seed(3)
    return GatedPixelCNN(CFG).double().eval()


@pytest.fixture(scope="module")
def tensors(float_prior):
    return calibrate_prior(float_prior, _grids(1, 6, 12, 12))


@pytest.fixture(scope="module")
def prior(tensors):
    return Int8Prior.from_tensors(tensors, CFG)


def _decode_checked(prior, idx):
    """Decode idx [n, H, W] with its true indices; compare every step's PMFs with the parallel pass."""
    n, h, w = idx.shape
    lg = prior.logits(torch.from_numpy(idx)).numpy()
    steps = []

    def step(rows, cols, pmfs):
        ref = pmf_from_logits(lg[:, rows, cols].reshape(-1, CFG.K)).reshape(n, len(rows), -1)
        np.testing.assert_array_equal(pmfs, ref)
        steps.append(len(rows))
        return idx[:, rows, cols]

    out = prior.decode(n, h, w, step)
    np.testing.assert_array_equal(out, idx)
    assert sum(steps) == h * w
    return lg


@pytest.mark.parametrize("shape", [(9, 11), (5, 3), (1, 7), (13, 1)])
def test_wavefront_decode_gives_the_parallel_pass_pmfs_at_every_step(prior, shape):
    _decode_checked(prior, np.stack(_grids(7, 3, *shape)))


def test_logits_are_integers_in_range_and_carry_information(prior, float_prior):
    idx = np.stack(_grids(8, 2, 10, 10))
    lg = prior.logits(torch.from_numpy(idx))
    assert lg.dtype == torch.int64 and lg.shape == (2, 10, 10, CFG.K)
    assert int(lg.abs().max()) <= int8.LOGIT_CLAMP and float(lg.double().std()) > 0
    # the integer prior's logits follow the float prior's (units 2**-8 nats)
    fl = float_prior(torch.from_numpy(idx)).permute(0, 2, 3, 1).detach() * 256
    err = (lg - fl).abs().mean() / fl.std()
    assert err < 0.1


def test_batch_size_and_tile_position_do_not_change_logits(prior):
    idx = np.stack(_grids(9, 4, 8, 6))
    whole = prior.logits(torch.from_numpy(idx))
    for b in range(4):
        torch.testing.assert_close(prior.logits(torch.from_numpy(idx[b:b + 1]))[0], whole[b], rtol=0, atol=0)
    a = _decode_checked(prior, idx[:1])
    torch.testing.assert_close(torch.from_numpy(a[0]), whole[0], rtol=0, atol=0)


@needs_two_cores
def test_one_and_two_threads_decode_identically(prior, monkeypatch):
    monkeypatch.setattr(intops, "idle_cores", lambda: 64)  # really use 2 threads when busy
    idx = np.stack(_grids(10, 2, 7, 9))
    before = torch.get_num_threads()
    out = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with threads_seen(monkeypatch, prior_int8._FusedWavefront, "pmfs") as seen:
                out[n] = _decode_checked(prior, idx)
            assert set(seen) == {n}  # the fused wavefront really ran on n threads
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(out[1], out[2])


@needs_isa_above_avx2
def test_avx2_kernels_give_identical_logits(prior, tensors, tmp_path):
    idx = np.stack(_grids(11, 2, 9, 9))
    save_file(tensors, tmp_path / "p.safetensors")
    np.save(tmp_path / "idx.npy", idx)
    code = (
        "import sys, numpy as np, torch; from safetensors.torch import load_file\n"
        "from vqcodec.prior import PriorConfig; from vqcodec.prior_int8 import Int8Prior\n"
        f"p = Int8Prior.from_tensors(load_file(sys.argv[1] + '/p.safetensors'), PriorConfig(**{CFG.to_dict()}))\n"
        "idx = torch.from_numpy(np.load(sys.argv[1] + '/idx.npy'))\n"
        "np.save(sys.argv[1] + '/lg.npy', p.logits(idx).numpy())\n")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "lg.npy"), prior.logits(torch.from_numpy(idx)).numpy())


def test_tensors_round_trip(prior, tensors, tmp_path):
    save_file(prior.tensors(), tmp_path / "p.safetensors")
    back = load_file(tmp_path / "p.safetensors")
    assert sorted(back) == sorted(tensors)
    for k in back:
        assert back[k].dtype == tensors[k].dtype and torch.equal(back[k], tensors[k]), k
    again = Int8Prior.from_tensors(back, CFG)
    idx = torch.from_numpy(np.stack(_grids(12, 1, 6, 6)))
    assert torch.equal(again.logits(idx), prior.logits(idx))


def test_file_tensors_have_the_contract_names_and_dtypes(tensors):
    c, k = CFG.channels, CFG.K
    assert tensors["int8.prior.embed"].dtype == torch.int8 and tensors["int8.prior.embed"].shape == (k, c)
    assert tensors["int8.prior.layers.0.v.weight"].shape == (2 * c, c, 1, 3)
    assert tensors["int8.prior.layers.1.v.weight"].shape == (2 * c, c, 2, 3)
    assert tensors["int8.prior.layers.0.h.weight"].shape == (2 * c, c, 1, 1)
    assert tensors["int8.prior.layers.1.h.weight"].shape == (2 * c, c, 1, 2)
    assert set(k for k in tensors if "v2h" in k) == {f"int8.prior.layers.{l}.v2h.weight" for l in range(3)}
    assert "int8.prior.layers.0.res.resid" not in tensors and "int8.prior.layers.1.res.resid" in tensors
    assert tensors["int8.prior.layers.2.v_gate"].dtype == torch.int32
    assert tensors["int8.prior.out2.weight"].shape == (k, c, 1, 1)
    for name, t in tensors.items():
        if name.endswith(".weight"):
            assert t.dtype == torch.int8 and int(t.abs().max()) <= int8.W_MAX, name


def _broken(tensors, key, value):
    t = dict(tensors)
    if value is None:
        del t[key]
    else:
        t[key] = value
    return t


@pytest.mark.parametrize("case, match", [
    ("weight64", r"layers\.1\.v\.weight has values outside"),
    ("dtype", r"int8\.prior\.out1\.bias is torch\.int64"),
    ("missing", r"int8\.prior\.layers\.2\.res\.resid is missing"),
    ("bound", r"int8\.prior\.layers\.0\.h: an accumulator can reach"),
    ("gate", r"v_gate = 0 is outside"),
    ("extra", r"unexpected tensors int8\.prior\.layers\.0\.v2h\.bias"),
    ("embed", r"embed has the value -128"),
])
def test_from_tensors_rejects_bad_tensors(tensors, case, match):
    w = tensors["int8.prior.layers.1.v.weight"].clone()
    w[0, 0, 0, 0] = 64
    bias = tensors["int8.prior.layers.0.h.bias"].clone()
    bias[0] = (1 << 24) - 1000
    emb = tensors["int8.prior.embed"].clone()
    emb[0, 0] = -128
    bad = {"weight64": ("int8.prior.layers.1.v.weight", w),
           "dtype": ("int8.prior.out1.bias", tensors["int8.prior.out1.bias"].to(torch.int64)),
           "missing": ("int8.prior.layers.2.res.resid", None),
           "bound": ("int8.prior.layers.0.h.bias", bias),
           "gate": ("int8.prior.layers.1.v_gate", torch.tensor([0], dtype=torch.int32)),
           "extra": ("int8.prior.layers.0.v2h.bias", torch.zeros(16, dtype=torch.int32)),
           "embed": ("int8.prior.embed", emb)}[case]
    with pytest.raises(ValueError, match=match):
        Int8Prior.from_tensors(_broken(tensors, *bad), CFG)


def test_calibration_is_close_to_the_float_prior_in_bits(float_prior, prior):
    grids = _grids(13, 4, 10, 10)
    idx = torch.from_numpy(np.stack(grids))
    logp = torch.log_softmax(float_prior(idx).detach(), 1)
    float_bits = float(-logp.gather(1, idx[:, None]).sum()) / np.log(2)
    assert abs(bits(prior, grids) - float_bits) < 0.02 * float_bits


def test_fused_gate_arithmetic_equals_the_formula():
    # the wavefront computes G_T as floor(a * (b + T) * Mg / 2**24 + 1/2) in float64 without the
    # final clamp: check against int8.gate on every input pair for several T
    for t in (1, 2, 5, 64, 126, 127):
        a = torch.arange(-127, 128, dtype=torch.int64)
        aa, bb = torch.meshgrid(a, a, indexing="ij")
        ref = int8.gate(aa, bb, t)
        ta, tb = aa.double().clamp(-t, t), bb.double().clamp(-t, t) + t
        fast = torch.addcmul(torch.tensor(0.5, dtype=torch.float64), ta, tb,
                             value=int8.gate_mult(t) * 2.0 ** -int8.GATE_SHIFT).floor_()
        assert torch.equal(fast.to(torch.int64), ref), t


def test_calibration_cli_writes_a_loadable_int8_prior(tmp_path):
    from vqcodec import zoo
    from vqcodec.train import calibrate_prior as cli

    name = "vqc-f8k1024-v1"
    cfg = zoo.float_prior(name).cfg
    np.savez(tmp_path / "g.npz", **{f"c{i}": g for i, g in enumerate(_grids(14, 4, 8, 8, cfg.K))})
    out = tmp_path / "p.safetensors"
    assert cli.main(["--model", name, "--grids", str(tmp_path / "g.npz"), "--out", str(out)]) == 0
    p = Int8Prior.from_tensors(load_file(out), cfg)
    assert p.logits(torch.zeros(1, 3, 3, dtype=torch.int64)).shape == (1, 3, 3, cfg.K)


def test_calibration_cli_reports_bad_input_without_writing(tmp_path, capsys):
    from vqcodec.train import calibrate_prior as cli

    out = tmp_path / "p.safetensors"
    assert cli.main(["--model", "no-such-model", "--grids", str(tmp_path / "x.npz"), "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err and not out.exists()


def test_calibration_cli_does_not_overwrite(tmp_path, capsys):
    from vqcodec.train import calibrate_prior as cli

    out = tmp_path / "p.safetensors"
    out.write_bytes(b"keep")
    assert cli.main(["--model", "vqc-f8k1024-v1", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == b"keep"


def test_entropy_coder_round_trips_with_the_int8_prior(prior):
    from vqcodec import entropy

    grid = _grids(15, 1, 11, 13)[0]
    tiles = [(slice(0, 6), slice(0, 7)), (slice(0, 6), slice(7, 13)), (slice(6, 11), slice(0, 7)),
             (slice(6, 11), slice(7, 13))]
    payloads = entropy.encode_grid(prior, grid, tiles)
    np.testing.assert_array_equal(entropy.decode_grid(prior, payloads, 11, 13, tiles), grid)


@pytest.mark.parametrize("bad", [CFG.K, -1])
def test_decode_rejects_an_index_outside_the_codebook(prior, bad):
    with pytest.raises(IndexError):
        prior.decode(1, 4, 4, lambda rows, cols, pmfs: np.full((1, len(rows)), bad))


@needs_cuda
def test_int8_prior_on_cuda_gives_the_cpu_integers(prior, tensors):
    """The int8 profile on a GPU (binary32 products, TF32 off): the parallel pass and the
    torch wavefront give the CPU's logits and PMFs."""
    idx = np.stack(_grids(11, 2, 9, 11))
    cuda = Int8Prior.from_tensors(tensors, CFG, "cuda")
    got = cuda.logits(torch.from_numpy(idx)).cpu().numpy()
    np.testing.assert_array_equal(got, prior.logits(torch.from_numpy(idx)).numpy())
    _decode_checked(cuda, idx)
