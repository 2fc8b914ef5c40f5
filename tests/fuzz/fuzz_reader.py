"""Atheris (libFuzzer) fuzz target for the `.vqc` reader and decoder.

Every input is fed to `vqcodec.container.read`; an input that parses is also decoded with
`vqcodec.codec.decompress_grid(data, device="cpu")` with a pixel cap of ``GRID_MAX_PIXELS`` (2**24:
headers may claim large images, and the decoder's header-driven resource limits must keep such a
file cheap unless its payloads hold the data) and, when the image has at most ``MAX_PIXELS``
(65,536) pixels, `vqcodec.codec.decompress(data, device="cpu")`. The only exceptions allowed to escape are `vqcodec.errors.VqcError` subclasses;
anything else (IndexError, ValueError, a torch/numpy/constriction/Pillow error, an
AssertionError from the checks below) is a finding and stops the fuzzer with a traceback and a
``crash-<sha1>`` file holding the input.

Besides "no foreign exception", the target checks what the API promises for an accepted file:

* ``container.write(container.read(x)) == x`` unless the reader dropped unknown optional chunks
  (then the rewrite is shorter), i.e. reader and writer agree on the format;
* ``decompress_grid`` returns an int64 grid of the header's shape (codes [S, grid_h, grid_w] for
  a multi-stage model) with indices in ``0..K-1``;
* ``decompress`` returns an image of the header's size, mode L/LA for L files, RGB/RGBA for RGB;
* resource limits (format/SPEC.md, "Resource limits and conforming payloads"): one input takes
  less than ``MAX_SECONDS`` (20 s), the process's peak RSS stays below ``MAX_RSS_MB`` (1 GiB), and
  the latent positions the range decoder decodes are at most what the payload words can hold,
  ``32 * (words + 2 * tiles) / min_bits`` with ``min_bits = -log2(1 - (K - 1) / 2**20)`` (the
  cheapest symbol a PMF of this format allows). Each counts as a finding like an exception.

The CRC-32 at the end of a `.vqc` file would stop almost every mutation at the CRC check, so each
input is tried twice: as it is, and with its last 4 bytes replaced by the CRC-32 of the bytes
before them (``with_valid_crc``). The second try is what lets mutations reach the chunk rules,
the range decoder, the prior and the pixel decoder. A crash file reproduces either way (the
target is deterministic).

Run (from the repository root; the machine's other work: add ``-workers=1`` / ``nice``):

    python tests/fuzz/fuzz_reader.py --seed-corpus -max_total_time=600
    python tests/fuzz/fuzz_reader.py --seed-corpus corpus/ -max_total_time=600   # keeps new inputs
    python tests/fuzz/fuzz_reader.py crash-<sha1>                                # reproduce one

``--seed-corpus`` (this script's own flag, removed before libFuzzer sees the arguments) copies
the committed conformance files ``format/vectors/*.vqc`` and the hostile files of issue 14
(``tests/fuzz/corpus/*.vqc``, written by ``tests/fuzz/hostile.py --write``) into a temporary directory and adds it
as the last corpus directory. libFuzzer writes the new inputs it finds into the *first* corpus
directory, so do not pass ``format/vectors`` itself first (it would fill the repository with
fuzz inputs); ``corpus/ format/vectors`` is fine. Any other libFuzzer flag works as usual
(``-max_total_time=N``, ``-runs=N``, ``-timeout=S``, ``-rss_limit_mb=M``, ``-jobs``/``-workers``).
``-print_final_stats=1`` is added unless given, so the run ends with libFuzzer's
``Done N runs in S second(s)`` line and its final stats; this target prints its own counts
(inputs, parsed, decoded to pixels) at power-of-two executions and at the end.

Coverage guidance ("mutation-aware" fuzzing): the pure-Python modules ``vqcodec.container``
and ``vqcodec.errors`` are imported under ``atheris.instrument_imports()``, so libFuzzer sees
their branches and comparisons (magic, version, varints, lengths, chunk rules). The torch,
numpy, Pillow and constriction code behind `codec` is not instrumented, which keeps an
execution fast. ``VQC_FUZZ_INSTRUMENT=0`` turns the instrumentation off (plain random mutation).

The module imports without atheris (it is only needed to fuzz) and without running anything,
so tests can call ``TestOneInput`` directly (tests/test_fuzz_target.py).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
VECTORS_DIR = REPO_ROOT / "format" / "vectors"
CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
if str(REPO_ROOT) not in sys.path:  # `python tests/fuzz/fuzz_reader.py` puts tests/fuzz first
    sys.path.insert(0, str(REPO_ROOT))

try:
    import atheris
except ImportError:  # only needed to fuzz; the target itself runs without it
    atheris = None

_INSTRUMENT = (__name__ == "__main__" and atheris is not None
               and os.environ.get("VQC_FUZZ_INSTRUMENT", "1") != "0")
if _INSTRUMENT:
    # include= works on top-level packages: everything under vqcodec imported *inside* this
    # block is instrumented, i.e. only container and errors; codec & co. are imported below.
    with atheris.instrument_imports(include=["vqcodec"]):
        from vqcodec import container, errors
else:
    from vqcodec import container, errors

MAX_PIXELS = 1 << 16  # decoded image cap: the committed vectors are at most 100x75 pixels
GRID_MAX_PIXELS = 1 << 24  # index-grid decode cap: headers may claim large images
MAX_SECONDS = 20.0  # one input, all stages
MAX_RSS_MB = 1024  # peak RSS of the whole fuzzing process
DEVICE = "cpu"

#: Counts of this process: inputs tried (a CRC-fixed twin counts as one more), accepted by the
#: reader, decoded to an index grid, decoded to an image; slowest input (s); symbols decoded by
#: range decoders; peak RSS (MB).
STATS = {"inputs": 0, "parsed": 0, "grid": 0, "image": 0, "slowest_s": 0.0, "symbols": 0,
         "peak_rss_mb": 0}
_SYMBOLS = [0]  # symbols decoded during the current input (see _count_symbols)

_codec = None


def _codec_module():
    """vqcodec.codec, imported on first use (torch import is slow; never instrumented); the
    range decoder's per-step method is wrapped to count the symbols it decodes."""
    global _codec
    if _codec is None:
        from vqcodec import codec, entropy

        real = entropy._TileStream.decode
        if not getattr(real, "_vqc_fuzz_counting", False):
            def counting(self, pmfs):
                _SYMBOLS[0] += len(pmfs)
                return real(self, pmfs)

            counting._vqc_fuzz_counting = True
            entropy._TileStream.decode = counting
        _codec = codec
    return _codec


def max_symbols(payload_bytes: int, n_tiles: int, K: int) -> int:
    """Most symbols payloads of `payload_bytes` can hold over `n_tiles` conforming tiles: every
    symbol costs at least min_bits = -log2(1 - (K - 1) / 2**20) bits, and a tile's decoder sees at
    most its words plus 2 (start state, one word past the end)."""
    min_bits = -math.log2(1 - (K - 1) / 2**20)
    return math.ceil(32 * (payload_bytes // 4 + 2 * n_tiles) / min_bits)


def peak_rss_mb() -> int:
    """Peak resident set size of this process in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def with_valid_crc(data: bytes) -> bytes:
    """`data` with its last 4 bytes replaced by the CRC-32 of everything before them."""
    if len(data) < container.CRC_BYTES:
        return data
    body = data[: -container.CRC_BYTES]
    return body + zlib.crc32(body).to_bytes(container.CRC_BYTES, "little")


def check(data: bytes, max_pixels: int = MAX_PIXELS) -> None:
    """Read and, when it parses, decode `data`; VqcError is the only exception allowed out, and
    the resource limits of the module docstring must hold."""
    STATS["inputs"] += 1
    _SYMBOLS[0] = 0
    t0 = time.perf_counter()
    try:
        _check(data, max_pixels)
    finally:
        seconds = time.perf_counter() - t0
        STATS["slowest_s"] = max(STATS["slowest_s"], seconds)
        STATS["symbols"] += _SYMBOLS[0]
        STATS["peak_rss_mb"] = peak_rss_mb()
    assert seconds < MAX_SECONDS, f"one input took {seconds:.1f} s"
    assert STATS["peak_rss_mb"] < MAX_RSS_MB, f"peak RSS {STATS['peak_rss_mb']} MB"


def _check(data: bytes, max_pixels: int) -> None:
    try:
        f = container.read(data, max_pixels=GRID_MAX_PIXELS)
    except errors.VqcError:
        return
    STATS["parsed"] += 1
    h = f.header

    rewritten = container.write(f)  # ValueError here: the reader accepted what the writer refuses
    if len(rewritten) == len(data):
        assert rewritten == data, "container.write(container.read(x)) != x"
    else:
        assert len(rewritten) < len(data), "rewrite is longer than the input"

    codec = _codec_module()
    try:
        f2, idx = codec.decompress_grid(data, device=DEVICE, max_pixels=GRID_MAX_PIXELS)
    except errors.VqcError:
        return
    finally:
        if _SYMBOLS[0]:
            from vqcodec import zoo

            K = zoo.load(h.model_name, h.model_hash, device=DEVICE).K
            bound = max_symbols(sum(len(p) for p in f.payloads), h.n_tiles, K)
            assert _SYMBOLS[0] <= bound, f"{_SYMBOLS[0]} symbols decoded from payloads holding {bound}"
    STATS["grid"] += 1
    assert f2 == f, "decompress_grid parsed the file differently from container.read"
    from vqcodec import zoo

    K = zoo.load(h.model_name, h.model_hash, device=DEVICE).K
    m = zoo.load(h.model_name, h.model_hash, device=DEVICE)
    shape = (h.stages, h.grid_h, h.grid_w) if codec.is_multistage(m) else (h.grid_h, h.grid_w)
    assert idx.dtype.name == "int64" and idx.shape == shape, (idx.dtype, idx.shape)
    assert idx.size == 0 or (0 <= int(idx.min()) and int(idx.max()) < K), "index out of range"
    if h.width * h.height > max_pixels:
        return

    try:
        img = codec.decompress(data, device=DEVICE, max_pixels=max_pixels)
    except errors.VqcError:
        return
    STATS["image"] += 1
    assert img.size == (h.width, h.height), (img.size, h.width, h.height)
    modes = ("L", "LA") if h.mode == container.Mode.L else ("RGB", "RGBA")
    assert img.mode in modes, (img.mode, h.mode)


def _report(force: bool = False) -> None:
    n = STATS["inputs"]
    if force or (n >= 256 and n & (n - 1) == 0):
        print(f"vqc-fuzz: {n} inputs tried, {STATS['parsed']} parsed, {STATS['grid']} index grids, "
              f"{STATS['image']} images decoded; slowest input {STATS['slowest_s']:.2f} s, "
              f"{STATS['symbols']} symbols range-decoded, peak RSS {STATS['peak_rss_mb']} MB",
              file=sys.stderr, flush=True)


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris / libFuzzer expect
    """The fuzz target: `data` as it is, then with a valid CRC-32 (see the module docstring)."""
    data = bytes(data)
    check(data)
    _report()
    fixed = with_valid_crc(data)
    if fixed != data:
        check(fixed)
        _report()


def _seed_corpus_dir() -> str:
    """A temporary directory holding copies of format/vectors/*.vqc and tests/fuzz/corpus/*.vqc
    (removed at exit)."""
    tmp = tempfile.mkdtemp(prefix="vqc-fuzz-seeds-")
    for path in sorted(VECTORS_DIR.glob("*.vqc")) + sorted(CORPUS_DIR.glob("*.vqc")):
        shutil.copy(path, tmp)
    _AT_EXIT.append(lambda: shutil.rmtree(tmp, ignore_errors=True))
    return tmp


_AT_EXIT: list = []
_C_EXIT_HOOK = None  # keeps the ctypes callback alive


def _run_at_exit() -> None:
    for fn in _AT_EXIT:
        try:
            fn()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
    _AT_EXIT.clear()


def _register_exit_hook() -> None:
    """libFuzzer ends the process with C exit(), which skips Python's atexit handlers: register
    `_run_at_exit` with the C library's atexit too (Python's atexit stays as a fallback)."""
    global _C_EXIT_HOOK
    import atexit
    import ctypes

    atexit.register(_run_at_exit)
    try:  # glibc's atexit() is not an exported symbol; __cxa_atexit(fn, arg, dso) is
        _C_EXIT_HOOK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _arg: _run_at_exit())
        ctypes.CDLL("libc.so.6").__cxa_atexit(_C_EXIT_HOOK, None, None)
    except (OSError, AttributeError):
        pass


def _warm_up() -> None:
    """Import torch & co., load the released models and compile the numba kernels now (decoding
    the conformance vectors once), not inside the first timed input: a first compile under load
    takes longer than MAX_SECONDS and is no finding."""
    codec = _codec_module()
    for path in sorted(VECTORS_DIR.glob("*.vqc")):
        try:
            codec.decompress(path.read_bytes(), device=DEVICE)
        except errors.VqcError:
            pass


def main(argv: list[str]) -> None:
    if atheris is None:
        sys.exit("fuzz_reader: atheris is not installed (pip install atheris)")
    args = list(argv)
    if "--seed-corpus" in args:
        args = [a for a in args if a != "--seed-corpus"] + [_seed_corpus_dir()]
    if not any(a.startswith("-print_final_stats") for a in args):
        args.insert(1, "-print_final_stats=1")
    _AT_EXIT.insert(0, lambda: _report(True))
    _register_exit_hook()
    try:
        import torch

        torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    except ImportError:
        pass
    _warm_up()
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
