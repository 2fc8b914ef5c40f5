"""Atheris (libFuzzer) fuzz target for model files (format/SPEC.md, "Model file"; issue 21).

A model file is untrusted input: a `.vqc` names its model, and whatever sits in a model directory
under that name is read. Every input is turned into model files two ways and each is given to
`vqcodec.zoo.build` (safetensors bytes -> checked networks):

* **raw**: the input bytes as they are (seeded with two small valid model files, so libFuzzer's
  byte mutations start from real headers and tensors);
* **edited**: the input bytes read as a list of edits (`edited`) applied to one of the two seed
  models: a configuration field set to a boundary or hostile value, tensor bytes overwritten
  (NaN, inf, int8 -128, ...), a header entry's dtype, shape or offsets changed, a metadata key
  changed or dropped, the file cut or extended. This reaches the checks behind a valid header
  that raw mutations of the JSON rarely reach.

The only exception allowed to escape is `VqcModelError`. A model that builds must also run: its
prior gives logits of the right shape whose PMFs (`vqcodec.pmf.pmf_from_logits`) are valid
(every entry >= 1, each summing to 2^20), and its decoder gives uint8 pixels of the right shape.
Each input must take under ``MAX_SECONDS`` (10 s) and the process's peak RSS stay under
``MAX_RSS_MB`` (1 GiB). Anything else is a finding: a traceback and a ``crash-<sha1>`` file.

Run (from the repository root; on a shared machine add ``-workers=1`` / ``nice``):

    python tests/fuzz/fuzz_model.py --seed-corpus -max_total_time=1800
    python tests/fuzz/fuzz_model.py crash-<sha1>                      # reproduce one

``--seed-corpus`` (removed before libFuzzer sees the arguments) writes the two seed models into a
temporary corpus directory. The pure-Python checks (``vqcodec.modelfile``, ``serialise``,
``registry``, ``errors``) are instrumented for coverage unless ``VQC_FUZZ_INSTRUMENT=0``.

The module imports without atheris and runs nothing on import, so tests call `TestOneInput`
directly (tests/test_fuzz_model.py).
"""

from __future__ import annotations

import functools
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

try:
    import atheris
except ImportError:  # tests call TestOneInput without it
    atheris = None

_INSTRUMENT = (__name__ == "__main__" and atheris is not None
               and os.environ.get("VQC_FUZZ_INSTRUMENT", "1") != "0")
if _INSTRUMENT:
    with atheris.instrument_imports(include=["vqcodec.modelfile", "vqcodec.serialise",
                                             "vqcodec.registry", "vqcodec.errors"]):
        from vqcodec import modelfile, serialise, zoo  # noqa: F401
        from vqcodec.errors import VqcModelError
else:
    from vqcodec import modelfile, serialise, zoo  # noqa: F401
    from vqcodec.errors import VqcModelError

import torch  # noqa: E402

from vqcodec.pmf import pmf_from_logits  # noqa: E402

MAX_SECONDS = 10.0
MAX_RSS_MB = 1024
PMF_TOTAL = 1 << 20

#: Values an edit may give a configuration field: the ranges' edges and hostile JSON values.
FIELD_VALUES = [0, 1, -1, 2, 3, 4, 5, 8, 16, 63, 64, 65, 128, 256, 257, 512, 513, 65536, 65537,
                2**20, 2**31, 2**63, 10**40, True, False, None, 1.5, 4.0, "4", [4], {"a": 1}]
#: Bytes an edit may write into tensor data: fp16 NaN, +inf, -inf, max, int8 -128 / 127, zero.
TENSOR_BYTES = [b"\x00\x7e", b"\x00\x7c", b"\x00\xfc", b"\xff\x7b", b"\x80", b"\x7f", b"\x00\x00",
                b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80"]
DTYPES = ["F16", "I8", "I32", "F32", "I64", "BF16", "U8", 7]
PROFILES = ["exact", "int8", "int4", "", "INT8"]


@functools.lru_cache(maxsize=1)
def seeds() -> tuple[bytes, bytes]:
    """Two small valid model files: conftest's tiny random model (profile exact, f = 4, K = 16)
    and the same VQ-VAE with the synthetic integer networks of tests/test_reference_int8.py
    (profile int8)."""
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    if str(REPO_ROOT / "tests") not in sys.path:  # test_reference_int8 imports `conftest`
        sys.path.insert(0, str(REPO_ROOT / "tests"))
    from tests.conftest import tiny_model_bytes
    from tests.test_reference_int8 import int8_tensors, synthetic_int8

    exact = tiny_model_bytes()
    meta = _header(exact)["__metadata__"]
    meta = {"name": "fuzz-int8", "vqvae_config": meta["vqvae_config"],
            "prior_config": meta["prior_config"], "profile": "int8"}
    tensors = {k: v for k, v in st_load(exact).items() if k.startswith("vqvae.")}
    tensors |= int8_tensors(synthetic_int8())
    return exact, serialise.canonical(st_save(tensors, metadata=meta))


def _header(data: bytes) -> dict:
    return json.loads(data[8:8 + int.from_bytes(data[:8], "little")])


class _Bytes:
    """Reads small integers from the fuzzer's bytes; zeros once they run out (deterministic)."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def int(self, n: int) -> int:
        """An integer in [0, n)."""
        if self.pos >= len(self.data):
            return 0
        self.pos += 2
        return int.from_bytes(self.data[self.pos - 2:self.pos], "little") % n

    def pick(self, items):
        return items[self.int(len(items))]


def edited(data: bytes) -> bytes:
    """A seed model with the edits `data` describes (see the module docstring)."""
    src = _Bytes(data)
    model = seeds()[src.int(2)]
    for _ in range(1 + src.int(3)):
        model = _edit(model, src)
    return model


def _edit(model: bytes, src: _Bytes) -> bytes:
    n = int.from_bytes(model[:8], "little")
    header, body = json.loads(model[8:8 + n]), model[8 + n:]
    names = sorted(k for k in header if k != "__metadata__")
    meta = header.get("__metadata__", {})
    kind = src.int(6)
    if kind in (1, 2, 4) and not names or kind in (0, 3) and not meta:
        return model  # an earlier edit removed what this one would change
    if kind == 0:  # a configuration field
        config = src.pick(["vqvae_config", "prior_config"])
        try:
            cfg = json.loads(meta.get(config, ""))
        except ValueError:
            return model
        if not isinstance(cfg, dict):
            return model
        key = src.pick(sorted(cfg) + ["extra"])
        cfg[key] = src.pick(FIELD_VALUES)
        meta[config] = json.dumps(cfg)
    elif kind == 1:  # tensor bytes
        e = header[src.pick(names)]
        begin, end = e["data_offsets"]
        size = {"F16": 2, "I32": 4}.get(e["dtype"], 1)
        if end > begin:
            at = begin + src.int(end - begin) // size * size  # whole values: a NaN is a NaN
            value = src.pick(TENSOR_BYTES)
            body = body[:at] + value + body[at + len(value):]
            body = body[:len(model) - 8 - n]
    elif kind == 2:  # a header entry
        e = header[src.pick(names)]
        which = src.int(3)
        if which == 0:
            e["dtype"] = src.pick(DTYPES)
        elif which == 1 and e["shape"]:
            i = src.int(len(e["shape"]))
            e["shape"][i] = src.pick([0, 1, 2, e["shape"][i] + 1, 2**31, -1])
        else:
            e["data_offsets"][src.int(2)] += src.pick([-2, -1, 1, 2, 2**40])
    elif kind == 3:  # metadata
        if src.int(2):
            meta["profile"] = src.pick(PROFILES)
        else:
            meta.pop(src.pick(sorted(meta)), None)
    elif kind == 4:  # a tensor dropped or renamed
        e = header.pop(src.pick(names))
        if src.int(2):
            header[src.pick(["int8.prior.extra", "vqvae.extra", "prior.extra", "other"])] = e
    else:  # the file cut or extended
        cut = src.int(len(body) + 1)
        body = body[:cut] if src.int(2) else body + bytes(cut % 64)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


def check(model: bytes) -> None:
    """Build `model`; a model that builds must run. Raises anything but VqcModelError."""
    t0 = time.perf_counter()
    try:
        m = zoo.build(model, "fuzz", "cpu")
    except VqcModelError as exc:
        assert "\n" not in str(exc), "a model error spans several lines"
        return
    finally:
        _check_budget(t0)
    g = torch.Generator().manual_seed(0)
    grid = torch.randint(0, m.K, (1, 3, 4), generator=g)
    logits = m.prior.logits(grid)
    assert tuple(logits.shape) == (1, 3, 4, m.K), logits.shape
    pmf = torch.as_tensor(pmf_from_logits(logits.reshape(-1, m.K)))
    assert bool((pmf >= 1).all()) and bool((pmf.sum(-1) == PMF_TOTAL).all()), "invalid PMF"
    pixels = m.decoder(grid[:, :2, :2])
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (1, 3, 2 * m.f, 2 * m.f), pixels.shape
    _check_budget(t0)


def _check_budget(t0: float) -> None:
    seconds = time.perf_counter() - t0
    assert seconds < MAX_SECONDS, f"one input took {seconds:.1f} s"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert rss < MAX_RSS_MB, f"peak RSS {rss:.0f} MB"


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris / libFuzzer expect
    """One fuzz input: `data` as a model file, and `data` as edits of a seed model."""
    check(data)
    check(edited(data))


def _seed_corpus_dir() -> str:
    d = tempfile.mkdtemp(prefix="vqc-fuzz-model-")
    for i, data in enumerate(seeds()):
        Path(d, f"seed-{i}.safetensors").write_bytes(data)
    return d


def main(argv: list[str]) -> None:
    if atheris is None:
        sys.exit("fuzz_model: atheris is not installed (pip install atheris)")
    args = [a for a in argv if a != "--seed-corpus"]
    if "--seed-corpus" in argv:
        args.append(_seed_corpus_dir())
    if not any(a.startswith("-print_final_stats") for a in args):
        args.append("-print_final_stats=1")
    if not any(a.startswith("-max_len") for a in args):
        args.append(f"-max_len={2 * max(len(s) for s in seeds())}")
    atheris.Setup(args, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
