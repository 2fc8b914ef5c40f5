"""Compiled integer kernels of the decoder's hot loops (numba, cached on disk).

The wavefront of the int8 prior (`vqcodec.prior_int8`) spends most of its time outside its
GEMMs: requantisation, gates, clamps, casts, gathers and scatters of a few hundred bytes per
position, and the PMF of every decoded position (`vqcodec.pmf.pmf_from_logits`).  Each
function here does one such chain in one pass over int8/int32 arrays, in integer (int64)
arithmetic exactly as format/SPEC.md writes the formulas (requantisation after Jacob et al.,
CVPR 2018; gates and PMF as in the spec); the PMF's division alone goes through a float64
estimate that is then corrected to the exact integer floor.  So results cannot depend on the
CPU or on the compiler.  The GEMMs stay on torch._int_mm (oneDNN, `vqcodec.int8.mm`).

numba compiles each function the first time it is called with new argument types (about 5 s
for all of them) and caches the machine code on disk.  numba's cache files are pickles, so
loading one runs whatever code it holds: the cache is used only in a directory no other user can
have written (`cache_dir`; ~/.cache/vqc/numba, or $XDG_CACHE_HOME/vqc/numba, or $NUMBA_CACHE_DIR
when that one passes the same checks), never numba's own choices (vqcodec/__pycache__ or a shared
$NUMBA_CACHE_DIR).  The directory is created with mode 0700 and checked every time before a file
is loaded: it must be a real directory (not a symbolic link) owned by the current user with no
group or other permissions, and no directory above it may be replaceable by another user
(each is owned by root or the user, and not writable by others unless sticky, like /tmp).
Where the checks fail, the kernels compile in every process (a few seconds) and one
`CacheWarning` says why.  A cache file that cannot be read back (empty, truncated, garbage) is
deleted and the function recompiled; a cache that cannot be written (a full disk) is skipped;
each with one `CacheWarning`, never a failed decode.

A later process pays numba's start-up
(importing numba, about 0.25-0.3 s, and setting up its compiler on the first call, about
0.25 s, on a busy 2-core machine) and a few milliseconds per function, so this module is
imported only by the int8 prior's CPU decoder (`vqcodec.pmf.pmf_from_logits` uses `pmf` once
it is loaded).  No compiler is needed on the user's machine (numba's wheels bundle LLVM).

Array arguments are C-contiguous numpy arrays; "rows" are the flat [positions * n] rows of the
wavefront (`vqcodec.wavefront.wavefront_slots`).
"""

from __future__ import annotations

import os
import stat
import sys
import threading
import warnings

import numpy as np


class CacheWarning(UserWarning):
    """The compiled-kernel cache was not used or not fully used: its directory is not private,
    a cache file was unreadable, or it could not be written.  Decoding still works (the kernels
    are compiled in this process) and gives the same pixels."""


def _import_numba():
    """Import numba and its array support without SciPy: numba imports scipy.linalg (about
    0.25 s) only to offer np.linalg inside compiled functions, which these kernels do not use.
    SciPy stays importable for everything else (it is hidden only while numba loads)."""
    hide = "scipy" not in sys.modules
    if hide:
        sys.modules["scipy"] = None  # "import scipy..." raises ImportError meanwhile
    try:
        import numba
        import numba.np.arraymath  # noqa: F401  (what numba would import on the first call)
    finally:
        if hide:
            del sys.modules["scipy"]
    return numba


_numba = _import_numba()
from numba.core import caching as _caching  # noqa: E402  (after numba is imported without SciPy)

_warned = threading.Event()


def _warn(message: str) -> None:
    """One CacheWarning per process: the first problem is reported, later ones only handled."""
    if not _warned.is_set():
        _warned.set()
        # filename "vqc", line 0: shown as one line "vqc:0: CacheWarning: ...", no source line
        warnings.warn_explicit(f"{message}; compiling the decoder's kernels in this process instead",
                               CacheWarning, "vqc", 0, module="vqcodec.kernels")


def default_cache_dir() -> str:
    """The kernel cache directory vqc uses unless $NUMBA_CACHE_DIR names a private one:
    $XDG_CACHE_HOME/vqc/numba when XDG_CACHE_HOME is an absolute path, else ~/.cache/vqc/numba."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "vqc", "numba")


def _resolved(path: str) -> str:
    """`path` made absolute with the symbolic links of its parents resolved; the last
    component is kept as it is (a link there is refused by `untrusted_reason`)."""
    path = os.path.abspath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _ancestor_problem(path: str, st: os.stat_result, uid: int) -> str | None:
    """Why another user could replace what lies under the directory `path`, or None."""
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid not in (0, uid):
        return f"{path} belongs to another user (uid {st.st_uid})"
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        return f"{path} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _private_problem(path: str, st: os.stat_result, uid: int) -> str | None:
    """Why the directory `path` is not private to user `uid`, or None."""
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid != uid:
        return f"{path} belongs to another user (uid {st.st_uid}, you are {uid})"
    if st.st_mode & 0o077:
        return f"{path} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}, needs 0700)"
    return None


def untrusted_reason(path: str) -> str | None:
    """Why the directory `path` must not hold the kernel cache, or None when it may.

    It may when it is an existing directory, not a symbolic link, owned by the effective user,
    with no group or other permission bits, and every directory above it (symbolic links
    resolved) is owned by root or the user and not writable by others unless it is sticky
    (/tmp): then no other user can have written or swapped in any file numba would load.

    Args:
        path: the directory (absolute or relative).

    Returns:
        A short reason (naming the offending directory), or None.  Never raises: an unreadable
        path is a reason too.
    """
    if not hasattr(os, "geteuid"):
        return "file ownership cannot be checked on this system"
    uid = os.geteuid()
    path = _resolved(path)
    try:
        parts = path.split(os.sep)
        for i in range(1, len(parts)):
            above = os.sep.join(parts[:i]) or os.sep
            problem = _ancestor_problem(above, os.lstat(above), uid)
            if problem:
                return problem
        return _private_problem(path, os.lstat(path), uid)
    except OSError as exc:
        return f"{path} cannot be checked ({exc.strerror or exc})"


def _subdir_problem(path: str) -> str | None:
    """Why the directory numba made for this module's files inside the private root cannot be
    trusted (a link, not ours, writable by others), or None.  Never raises."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None  # nothing cached yet: nothing is loaded
    except OSError as exc:
        return f"{path} cannot be checked ({exc.strerror or exc})"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to another user (uid {st.st_uid})"
    return _ancestor_problem(path, st, st.st_uid)


def _make_private_dir(path: str) -> None:
    """Create `path` and any missing parents, each with mode 0700 (never loosening or touching
    an existing directory); errors are left to `untrusted_reason` to report."""
    path = _resolved(path)
    missing = []
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o700)
        except OSError:
            return


def cache_dir() -> str | None:
    """The private directory the kernels are cached in, created (0700) if missing, or None
    (with one CacheWarning) when no private directory is available: then nothing is cached.

    $NUMBA_CACHE_DIR is used when it passes `untrusted_reason`; otherwise (with a warning)
    `default_cache_dir()`.  numba's own defaults (the package's __pycache__, ~/.cache/numba)
    are never used.
    """
    reasons = []
    user = os.environ.get("NUMBA_CACHE_DIR")
    for path in ([user] if user else []) + [default_cache_dir()]:
        _make_private_dir(path)
        reason = untrusted_reason(path)
        if reason is None:
            if reasons:
                _warn(f"not using NUMBA_CACHE_DIR: {reasons[0]}; the kernel cache is {_resolved(path)}")
            return _resolved(path)
        reasons.append(reason)
    _warn("no private directory for the compiled-kernel cache (" + "; ".join(reasons) + ")")
    return None


class _PrivateCache(_caching.FunctionCache):
    """numba's per-function disk cache, kept in a checked private directory, that never fails a
    call: the directory is checked again before every load, an unreadable cache file is deleted
    (the function is then compiled and saved again), and a failed save is skipped."""

    def __init__(self, py_func, root: str) -> None:
        super().__init__(py_func)
        self._root = root

    def load_overload(self, sig, target_context):
        """The cached compile result for `sig`, or None (compile) with a warning when the
        directory fails its checks or a file cannot be read back."""
        reason = untrusted_reason(self._root) or _subdir_problem(self._cache_path)
        if reason is not None:
            _warn(f"the compiled-kernel cache is not private any more ({reason})")
            self.disable()
            return None
        try:
            return super().load_overload(sig, target_context)
        except Exception as exc:  # noqa: BLE001 - numba re-raises whatever unpickling raised
            _warn(f"ignoring an unreadable compiled-kernel cache file in {self._cache_path} "
                  f"({type(exc).__name__}: {exc})")
            self._forget()
            return None

    def save_overload(self, sig, data) -> None:
        """Save a compile result; a failure (full disk, read-only directory) is skipped with a
        warning, the compiled kernel is used all the same."""
        try:
            super().save_overload(sig, data)
        except Exception as exc:  # noqa: BLE001
            _warn(f"cannot write the compiled-kernel cache in {self._cache_path} "
                  f"({type(exc).__name__}: {exc})")
            self._forget()

    def _forget(self) -> None:
        """Delete this function's index file, so that the next save writes a fresh one."""
        try:
            os.unlink(self._cache_file._index_path)
        except OSError:
            pass


def _private_cache(py_func, root: str):
    """A `_PrivateCache` for `py_func` under `root`, or None when numba would put it elsewhere."""
    from numba.core import config

    saved = config.CACHE_DIR, getattr(config, "CACHE_LOCATOR_CLASSES", "")
    config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES = root, ""
    try:
        cache = _PrivateCache(py_func, root)
    except Exception as exc:  # noqa: BLE001 - e.g. RuntimeError: no locator available
        _warn(f"cannot set up the compiled-kernel cache in {root} ({exc})")
        return None
    finally:
        config.CACHE_DIR, config.CACHE_LOCATOR_CLASSES = saved
    if os.path.commonpath([root, os.path.abspath(cache.cache_path)]) != root:
        _warn(f"numba chose {cache.cache_path} for its cache, outside {root}")
        return None
    return cache


_CACHE_ROOT = cache_dir()


def njit(**options):
    """numba.njit whose machine code is cached in `cache_dir()` only (see the module's
    docstring), or compiled in each process (a few seconds) when there is no private one."""
    def decorate(fn):
        dispatcher = _numba.njit(**options)(fn)
        if _CACHE_ROOT is not None and options.get("inline") != "always":
            cache = _private_cache(fn, _CACHE_ROOT)
            if cache is not None:
                dispatcher._cache = cache  # numba's own enable_caching() sets this attribute
        return dispatcher
    return decorate

S8_MAX = 127
U8_OFFSET = 128
GATE_SHIFT = 24


@njit(inline="always")
def _requant(acc, m, shift, lo, hi):
    """clamp(floor((acc * m + 2**(shift-1)) / 2**shift), lo, hi); acc, m int64."""
    y = (acc * m + (np.int64(1) << (shift - 1))) >> shift
    return min(max(y, lo), hi)


@njit(inline="always")
def _gate(a, b, t, mg):
    """G_T(a, b) of format/SPEC.md: a, b in units 1/t, result s8 in units 1/127."""
    tc = min(max(a, -t), t)
    g = min(max(b + t, 0), 2 * t)
    y = (tc * g * mg + (np.int64(1) << (GATE_SHIFT - 1))) >> GATE_SHIFT
    return min(max(y, -S8_MAX), S8_MAX)


@njit(nogil=True)
def gather_layers(src, at, m, dst, col):
    """dst[l, r, col:col + c] = src[at[l * m + r]] for l < len(at) // m, r < m.

    Rows are copied as int64 words (int8 rows of c bytes viewed as c / 8 words: a few times
    faster than bytes).

    Args:
        src: int64 [slots, c] (a state ring's rows).
        at: int64 [layers * m]: per layer, the slot of each of the m rows.
        m: rows per layer.
        dst: int64 [>= layers, >= m, >= col + c].
        col: first word written.
    """
    c = src.shape[1]
    for i in range(at.shape[0]):
        s = at[i]
        l = i // m
        r = i - l * m
        for k in range(c):
            dst[l, r, col + k] = src[s, k]


@njit(nogil=True)
def gather_patch(src, at, dst):
    """dst[r, t * c:(t + 1) * c] = src[at[r, t]]: a convolution patch of taps at[r] (im2col).

    Args:
        src: int64 [slots, c] (int8 rows as words, as `gather_layers`).
        at: int64 [m, taps].
        dst: int64 [>= m, taps * c].
    """
    c = src.shape[1]
    for r in range(at.shape[0]):
        for t in range(at.shape[1]):
            s = at[r, t]
            for k in range(c):
                dst[r, t * c + k] = src[s, k]


@njit(nogil=True)
def vertical(acc, m, cst, shift, t, mg, p, p_at, a, a_at):
    """Vertical stack after its GEMM: vp = requant(acc) (s8) into ring p; G_T(vp) into ring a.

    Args:
        acc: int32 [>= m, 2c] (GEMM without bias); m: rows.
        cst: int64 [2, 2c]: bias, mult; shift: S.
        t, mg: the gate's T and Mg (`int8.gate_mult`).
        p: int8 [slots, 2c]; p_at int64 [m]: where vp goes.
        a: int8 [slots, c]; a_at int64 [m] (empty: no gate, the last layer).
    """
    c = a.shape[1]
    bias, mult = cst[0], cst[1]
    gated = a_at.shape[0] > 0
    for r in range(m):
        row, vp = acc[r], p[p_at[r]]
        for o in range(2 * c):
            vp[o] = _requant(np.int64(row[o]) + bias[o], mult[o], shift, -S8_MAX, S8_MAX)
        if gated:
            y = a[a_at[r]]
            for o in range(c):
                y[o] = _gate(np.int64(vp[o]), np.int64(vp[o + c]), t, mg)


@njit(nogil=True)
def horizontal_gate(acc, m, cst, shift, t, mg, out):
    """Horizontal stack after its GEMM (h and v2h): hp = requant(acc) (s8); out = G_T(hp).

    Args:
        acc: int32 [>= m, 2c]; m: rows; cst int64 [2, 2c]: bias, mult; shift S;
        t, mg: the gate's T and Mg.
        out: int8 [>= m, c].
    """
    c = out.shape[1]
    ba, bb, ma, mb = cst[0, :c], cst[0, c:], cst[1, :c], cst[1, c:]
    for r in range(m):
        ra, rb, y = acc[r, :c], acc[r, c:], out[r]
        for o in range(c):
            x = _requant(np.int64(ra[o]) + ba[o], ma[o], shift, -S8_MAX, S8_MAX)
            z = _requant(np.int64(rb[o]) + bb[o], mb[o], shift, -S8_MAX, S8_MAX)
            y[o] = _gate(x, z, t, mg)


@njit(nogil=True)
def residual(acc, m, cst, shift, x, col, lo, out, ocol, a, a_at):
    """Residual 1x1 layer after its GEMM: h' = clamp(requant(acc + R * h), lo, 127) (s8; lo = 0
    is the head's ReLU), written to out[:, ocol:ocol + c] and, where a_at is not empty, to ring a.

    Args:
        acc: int32 [>= m, c]; m: rows; cst int64 [3, c]: bias, mult, R; shift S.
        x: int8 [>= m, >= col + c]: h (the residual input) in columns col:col + c.
        lo: -127 or 0.
        out: int8 [>= m, >= ocol + c].
        a: int8 [slots, c]; a_at int64 [m] or empty.
    """
    c = acc.shape[1]
    bias, mult, res = cst[0], cst[1], cst[2]
    store = a_at.shape[0] > 0
    for r in range(m):
        row, h, y = acc[r], x[r, col:col + c], out[r, ocol:ocol + c]
        for o in range(c):
            y[o] = _requant(np.int64(row[o]) + bias[o] + res[o] * np.int64(h[o]), mult[o], shift, lo, S8_MAX)
        if store:
            a[a_at[r]] = y


@njit(nogil=True)
def requant_u8(acc, m, cst, shift, out):
    """A u8 layer after its GEMM: out = clamp(requant(acc), 0, 255) - 128 (u8 stored as int8).

    Args:
        acc: int32 [>= m, o]; m: rows; cst int64 [2, o]: bias, mult; shift S; out int8 [>= m, o].
    """
    bias, mult = cst[0], cst[1]
    for r in range(m):
        row, y = acc[r], out[r]
        for o in range(row.shape[0]):
            y[o] = _requant(np.int64(row[o]) + bias[o], mult[o], shift, 0, 255) - U8_OFFSET


@njit(inline="always", error_model="numpy")
def _pmf_row(lg, lut, out):
    """PMF of one row of integer logits lg int64 [K] into out int64 [K] (format/SPEC.md,
    "PMF from logits"): w_k = LUT[min((max(l) - l_k) >> 4, 511)];
    p_k = 1 + floor(w_k * (2**20 - K) / sum(w)); the remainder to the first largest logit.

    The quotient is computed in float64 and corrected to the exact floor: the numerator (< 2**50)
    and the sum (< 2**40) are exact in float64, the estimate is within 1 of the true quotient
    (relative error ~2**-52 of a value < 2**20), and one integer correction step makes it exact.
    """
    k = lg.shape[0]
    top = 0
    mx = lg[0]
    for i in range(1, k):
        if lg[i] > mx:
            mx = lg[i]
            top = i
    last = lut.shape[0] - 1
    total = np.int64(0)
    for i in range(k):
        w = lut[min((mx - lg[i]) >> 4, last)]
        out[i] = w
        total += w
    scale = (np.int64(1) << 20) - k
    inv = 1.0 / np.float64(total)
    s = np.int64(0)
    for i in range(k):
        num = out[i] * scale
        q = np.int64(np.float64(num) * inv)
        rem = num - q * total
        q += np.int64(rem >= total) - np.int64(rem < 0)
        out[i] = q + 1
        s += q + 1
    out[top] += (np.int64(1) << 20) - s


@njit(nogil=True, error_model="numpy")
def pmf(logits, lut, n, out):
    """Integer PMFs of rows of integer logits (`vqcodec.pmf.pmf_from_logits`'s arithmetic).

    Args:
        logits: int64 [m, K], m = n * npos, entries within +-2**40.
        lut: int64 [LUT_LEN], `pmf.EXP_LUT`.
        n: rows are ordered position-major (row k * n + b: position k of grid b).
        out: int64 [n, npos, K]: out[b, k] = PMF of row k * n + b.
    """
    for r in range(logits.shape[0]):
        _pmf_row(logits[r], lut, out[r % n, r // n])


@njit(nogil=True, error_model="numpy")
def logits_pmf(acc, m, cst, shift, lo, hi, lut, n, out):
    """The prior's last layer and the PMF: logits = clamp(requant(acc), lo, hi), then `pmf`.

    Args:
        acc: int32 [>= m, K]; m: rows; cst int64 [2, K]: bias, mult; shift S; (lo, hi) the
            logit clamp.
        lut, n, out: as `pmf` (out [n, m / n, K]).
    """
    k = acc.shape[1]
    bias, mult = cst[0], cst[1]
    lg = np.empty(k, dtype=np.int64)
    for r in range(m):
        row = acc[r]
        for o in range(k):
            lg[o] = _requant(np.int64(row[o]) + bias[o], mult[o], shift, lo, hi)
        _pmf_row(lg, lut, out[r % n, r // n])
