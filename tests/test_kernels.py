"""The compiled integer kernels (vqcodec/kernels.py): the PMF and the int8 prior's fused wavefront."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vqcodec.constants import LUT_LEN, PMF_BITS
from vqcodec import kernels
from vqcodec.prior import EXP_LUT, GatedPixelCNN, PriorConfig, pmf_from_logits, pmf_numpy
from vqcodec.prior_int8 import Int8Prior
from vqcodec.train.calibrate_prior import calibrate_prior

REPO = Path(__file__).resolve().parents[1]


def _pmf_python(row) -> list[int]:
    """format/SPEC.md "PMF from logits" on Python integers, one row."""
    row = [int(v) for v in row]
    k, top = len(row), max(range(len(row)), key=lambda i: (row[i], -i))
    w = [int(EXP_LUT[min((row[top] - v) >> 4, LUT_LEN - 1)]) for v in row]
    p = [1 + wi * ((1 << PMF_BITS) - k) // sum(w) for wi in w]
    p[top] += (1 << PMF_BITS) - sum(p)
    return p


def _logits(seed: int, n: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lg = np.round(rng.normal(0, 10 ** rng.uniform(0, 4, (n, 1)), (n, k))).astype(np.int64)
    lg[::5] = rng.integers(-2 ** 40, 2 ** 40, (len(lg[::5]), k))  # the whole range
    lg[1::7] = rng.integers(-3, 3, (len(lg[1::7]), k))  # many ties for the largest logit
    lg[2::11] = 0
    return lg


@pytest.mark.parametrize("k", [2, 24, 512, 1024])
def test_pmf_kernel_equals_the_spec_formula_and_the_numpy_implementation(k):
    lg = _logits(k, 300, k)
    got = np.empty((1, 300, k), dtype=np.int64)
    kernels.pmf(lg, EXP_LUT, 1, got)
    got = got[0]
    np.testing.assert_array_equal(got, pmf_numpy(lg))
    np.testing.assert_array_equal(pmf_from_logits(lg), got)  # numba is loaded: the kernel
    assert (got.sum(1) == 1 << PMF_BITS).all() and got.min() >= 1
    for r in range(0, 300, 37):
        assert got[r].tolist() == _pmf_python(lg[r])
    # float64 and torch inputs with integer values give the same PMFs
    np.testing.assert_array_equal(pmf_from_logits(torch.from_numpy(lg[2::5].astype(np.float64))),
                                  got[2::5])


def test_pmf_rejects_a_non_matrix():
    with pytest.raises(ValueError, match="2-D"):
        pmf_from_logits(np.zeros((2, 3, 4), dtype=np.int64))


@pytest.fixture(scope="module", params=[8, 12])
def prior_and_tensors(request):
    # channels 8: rows copied as int64 words; 12: as bytes
    cfg = PriorConfig(K=20, channels=request.param, layers=3)
    torch.manual_seed(request.param)
    rng = np.random.default_rng(request.param)
    grids = [rng.integers(0, cfg.K, (10, 10)) for _ in range(4)]
    tensors = calibrate_prior(GatedPixelCNN(cfg).double().eval(), grids)
    return Int8Prior.from_tensors(tensors, cfg), tensors


def _decode_pmfs(prior: Int8Prior, idx: np.ndarray, fused: bool) -> list[np.ndarray]:
    seen = []

    def step(rows, cols, pmfs):
        seen.append(np.array(pmfs))
        return idx[:, rows, cols]

    prior.fused = fused
    try:
        np.testing.assert_array_equal(prior.decode(*idx.shape, step), idx)
    finally:
        del prior.fused
    return seen


@pytest.mark.parametrize("shape", [(3, 9, 11), (1, 5, 3), (2, 1, 7), (4, 13, 1), (2, 6, 30)])
def test_fused_wavefront_equals_the_torch_wavefront_and_the_parallel_pass(prior_and_tensors, shape):
    prior, _ = prior_and_tensors
    idx = np.random.default_rng(sum(shape)).integers(0, prior.cfg.K, shape)
    fused, ref = _decode_pmfs(prior, idx, True), _decode_pmfs(prior, idx, False)
    steps = [(rows, cols) for rows, cols in prior.schedule(*shape[1:]) if len(rows)]
    assert len(fused) == len(ref) == len(steps)
    lg = prior.logits(torch.from_numpy(idx)).numpy()
    for (rows, cols), a, b in zip(steps, fused, ref):
        np.testing.assert_array_equal(a, b)
        want = pmf_from_logits(lg[:, rows, cols].reshape(-1, prior.cfg.K)).reshape(a.shape)
        np.testing.assert_array_equal(a, want)


def test_fused_wavefront_is_identical_with_avx2_gemms_and_two_threads(prior_and_tensors, tmp_path):
    prior, tensors = prior_and_tensors
    idx = np.random.default_rng(5).integers(0, prior.cfg.K, (3, 8, 9))
    save_file(tensors, tmp_path / "p.safetensors")
    np.save(tmp_path / "idx.npy", idx)
    code = (
        "import sys, numpy as np, torch; from safetensors.torch import load_file\n"
        "from vqcodec.prior import PriorConfig; from vqcodec.prior_int8 import Int8Prior\n"
        f"p = Int8Prior.from_tensors(load_file(sys.argv[1] + '/p.safetensors'), PriorConfig(**{prior.cfg.to_dict()}))\n"
        "idx = np.load(sys.argv[1] + '/idx.npy'); seen = []\n"
        "def step(rows, cols, pmfs):\n"
        "    seen.append(np.array(pmfs)); return idx[:, rows, cols]\n"
        "p.decode(*idx.shape, step)\n"
        "np.save(sys.argv[1] + '/pmfs.npy', np.concatenate(seen, 1))\n")
    for threads in ("1", "2"):
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS=threads, PYTHONPATH=str(REPO))
        subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True, timeout=300)
        np.testing.assert_array_equal(np.load(tmp_path / "pmfs.npy"),
                                      np.concatenate(_decode_pmfs(prior, idx, True), 1))
