"""The compiled integer kernels (vqcodec/kernels.py): the PMF and the int8 prior's fused wavefront."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import needs_isa_above_avx2, needs_two_cores
from vqcodec import kernels
from vqcodec.constants import LUT_LEN, PMF_BITS
from vqcodec.pmf import EXP_LUT, pmf_from_logits, pmf_numpy
from vqcodec.prior import GatedPixelCNN, PriorConfig
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


@needs_isa_above_avx2
@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=needs_two_cores)])
def test_fused_wavefront_is_identical_with_avx2_gemms_and_two_threads(prior_and_tensors, tmp_path, threads):
    prior, tensors = prior_and_tensors
    idx = np.random.default_rng(5).integers(0, prior.cfg.K, (3, 8, 9))
    save_file(tensors, tmp_path / "p.safetensors")
    np.save(tmp_path / "idx.npy", idx)
    code = (
        "import sys, numpy as np, torch; from safetensors.torch import load_file\n"
        "from vqcodec import intops; from vqcodec.prior import PriorConfig; from vqcodec.prior_int8 import Int8Prior\n"
        "intops.idle_cores = lambda: 64  # really use OMP_NUM_THREADS threads when the machine is busy\n"
        f"p = Int8Prior.from_tensors(load_file(sys.argv[1] + '/p.safetensors'), PriorConfig(**{prior.cfg.to_dict()}))\n"
        "idx = np.load(sys.argv[1] + '/idx.npy'); seen = []; used = set()\n"
        "def step(rows, cols, pmfs):\n"
        "    used.add(torch.get_num_threads()); seen.append(np.array(pmfs)); return idx[:, rows, cols]\n"
        "p.decode(*idx.shape, step)\n"
        "np.save(sys.argv[1] + '/pmfs.npy', np.concatenate(seen, 1)); print(sorted(used))\n")
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, check=True, timeout=300,
                       capture_output=True, text=True)
    assert r.stdout.split("\n")[-2] == f"[{threads}]"  # the decode really ran on that many threads
    np.testing.assert_array_equal(np.load(tmp_path / "pmfs.npy"),
                                  np.concatenate(_decode_pmfs(prior, idx, True), 1))


# ------------------------------------------------------- the on-disk cache (issue 21, finding 5)
#
# numba's cache files are pickles: loading one runs code. Each run below is a fresh process
# (HOME in tmp_path) computing PMFs with kernels.pmf; "hits" is numba's count of cache loads.

_PMF_RUN = """
import sys, warnings, numpy as np
warnings.simplefilter("always")
from vqcodec import kernels
lut, lg = np.load(sys.argv[1]), np.load(sys.argv[2])
out = np.empty((1, len(lg), lg.shape[1]), np.int64)
kernels.pmf(lg, lut, 1, out)
np.save(sys.argv[3], out[0])
print(sum(kernels.pmf.stats.cache_hits.values()), kernels.pmf.stats.cache_path)
"""


class _Runner:
    """Runs _PMF_RUN in a fresh process with HOME = tmp/home and the given NUMBA_CACHE_DIR."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.home = tmp / "home"
        self.home.mkdir(mode=0o700)
        np.save(tmp / "lut.npy", EXP_LUT)
        np.save(tmp / "lg.npy", _logits(3, 40, 24))

    def __call__(self, numba_cache_dir: Path | None = None):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NUMBA_", "XDG_"))}
        env.update(HOME=str(self.home), PYTHONPATH=str(REPO))
        if numba_cache_dir is not None:
            env["NUMBA_CACHE_DIR"] = str(numba_cache_dir)
        out = self.tmp / "pmf.npy"
        done = subprocess.run([sys.executable, "-c", _PMF_RUN, str(self.tmp / "lut.npy"),
                               str(self.tmp / "lg.npy"), str(out)],
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        hits, path = done.stdout.split()
        warned = [ln for ln in done.stderr.splitlines() if "CacheWarning" in ln]
        return np.load(out), int(hits), path, warned


@pytest.fixture
def run_pmf(tmp_path):
    return _Runner(tmp_path)


def _poison(directory: Path, marker: Path) -> int:
    """Replace every numba index file under `directory` by a pickle that creates `marker` when
    loaded; returns how many were replaced."""
    import pickle

    class Evil:
        def __reduce__(self):
            return open, (str(marker), "w")

    files = list(directory.rglob("*.nbi"))
    for f in files:
        f.write_bytes(pickle.dumps(Evil()))
    return len(files)


def test_cache_is_private_reused_and_survives_corrupt_files(run_pmf):
    want = pmf_numpy(np.load(run_pmf.tmp / "lg.npy"))
    first, second = run_pmf(), run_pmf()
    root = run_pmf.home / ".cache" / "vqc" / "numba"
    assert (first[1], second[1]) == (0, 1)  # compiled, then loaded
    assert first[2] == second[2] and first[2].startswith(str(root))
    assert first[3] == second[3] == []
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_pmf.home / ".cache").stat().st_mode) == 0o700
    np.testing.assert_array_equal(first[0], want)
    np.testing.assert_array_equal(second[0], want)
    cache = Path(first[2])
    for damage, ext in (("zero-byte", ".nbi"), ("truncated", ".nbc"), ("garbage", ".nbi")):
        (f,) = cache.glob(f"kernels.pmf-*{ext}")
        data = f.read_bytes()
        f.write_bytes({"zero-byte": b"", "truncated": data[:len(data) // 2],
                       "garbage": b"\x80\x04garbage" * 50}[damage])
        pmfs, hits, _, warned = run_pmf()  # recompiled and saved afresh
        np.testing.assert_array_equal(pmfs, want)
        assert hits == 0, damage
        assert len(warned) == 1 and "unreadable compiled-kernel cache file" in warned[0], damage
    again = run_pmf()
    np.testing.assert_array_equal(again[0], want)
    assert again[1] == 1 and again[3] == []


def test_untrusted_numba_cache_dir_is_never_loaded(run_pmf, tmp_path):
    import shutil

    good = tmp_path / "good"
    good.mkdir(mode=0o700)
    clean, _, path, _ = run_pmf(good)  # a valid cache, trusted while it is private
    assert path.startswith(str(good))
    marker = tmp_path / "pwned"
    for problem in ("mode 0777", "other owner", "symlink"):
        shared = tmp_path / problem.replace(" ", "-")
        shutil.copytree(good, shared)
        assert _poison(shared, marker) == 1
        given = shared
        if problem == "mode 0777":
            shared.chmod(0o777)
        elif problem == "other owner":
            os.chown(shared, 65534, 65534)
        else:
            given = tmp_path / "link"
            given.symlink_to(shared)
        pmfs, hits, path, warned = run_pmf(given)
        np.testing.assert_array_equal(pmfs, clean)
        assert not marker.exists(), problem
        assert hits == (problem != "mode 0777"), problem  # loads from the private default only
        assert len(warned) == 1 and "not using NUMBA_CACHE_DIR" in warned[0], problem
        assert path.startswith(str(run_pmf.home / ".cache" / "vqc" / "numba")), problem
    # the default directory itself opened to others: nothing is cached or loaded at all
    default = run_pmf.home / ".cache" / "vqc" / "numba"
    assert _poison(default, marker) == 1
    default.chmod(0o777)
    pmfs, hits, path, warned = run_pmf()
    np.testing.assert_array_equal(pmfs, clean)
    assert hits == 0 and path == "None" and not marker.exists()
    assert len(warned) == 1 and "no private directory for the compiled-kernel cache" in warned[0]


def test_untrusted_reason_checks_the_directory_and_every_parent(tmp_path):
    ok = tmp_path / "ok"
    ok.mkdir(mode=0o700)
    assert kernels.untrusted_reason(str(ok)) is None
    ok.chmod(0o750)
    assert "open to other users (mode 0750" in kernels.untrusted_reason(str(ok))
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    (loose / "c").mkdir(mode=0o700)
    assert f"{loose} is writable by other users" in kernels.untrusted_reason(str(loose / "c"))
    loose.chmod(0o1777)  # sticky, like /tmp: others cannot rename what is ours
    assert kernels.untrusted_reason(str(loose / "c")) is None
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, 65534, 65534)
    assert "belongs to another user (uid 65534" in kernels.untrusted_reason(str(theirs))
    (tmp_path / "link").symlink_to(ok)
    assert "is a symbolic link" in kernels.untrusted_reason(str(tmp_path / "link"))
    assert "cannot be checked" in kernels.untrusted_reason(str(tmp_path / "missing"))


def test_full_disk_compiles_uncached_with_one_warning(tmp_path, monkeypatch):
    import errno
    import warnings

    from numba.core import caching

    root = tmp_path / "cache"
    root.mkdir(mode=0o700)

    def full(self, filepath):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(caching.IndexDataCacheFile, "_open_for_write", full)
    monkeypatch.setattr(kernels, "_CACHE_ROOT", str(root))
    monkeypatch.setattr(kernels, "_warned", kernels.threading.Event())

    @kernels.njit()
    def twice(x):
        return 2 * x

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert twice(21) == 42
    assert [str(w.message) for w in seen if w.category is kernels.CacheWarning] == [
        f"cannot write the compiled-kernel cache in {twice.stats.cache_path} "
        "(OSError: [Errno 28] No space left on device); compiling the decoder's kernels in "
        "this process instead"]
    assert not list(root.rglob("*.nb*"))


def _thrice(x):
    return 3 * x


def test_cache_directory_is_checked_again_before_each_load(tmp_path, monkeypatch):
    import warnings

    root = tmp_path / "cache"
    root.mkdir(mode=0o700)
    monkeypatch.setattr(kernels, "_CACHE_ROOT", str(root))
    monkeypatch.setattr(kernels, "_warned", kernels.threading.Event())
    first = kernels.njit()(_thrice)
    assert first(14) == 42 and sum(first.stats.cache_hits.values()) == 0  # compiled, saved
    second = kernels.njit()(_thrice)
    assert second(14) == 42 and sum(second.stats.cache_hits.values()) == 1  # loaded
    third = kernels.njit()(_thrice)  # set up while the directory was private ...
    root.chmod(0o770)  # ... opened to the group before its first call
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert third(14) == 42
    assert sum(third.stats.cache_hits.values()) == 0
    (w,) = [w for w in seen if w.category is kernels.CacheWarning]
    assert f"not private any more ({root} is open to other users (mode 0770" in str(w.message)
