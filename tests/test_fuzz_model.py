"""The model-file fuzz target (tests/fuzz/fuzz_model.py) as a fast regression test: its seeds
build and run, a few hundred seeded random inputs (raw bytes and edit lists) give only
VqcModelError, and the edits do reach the checks behind a valid header."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from vqcodec import zoo
from vqcodec.errors import VqcModelError
from tests.conftest import load_script

TARGET = Path(__file__).resolve().parent / "fuzz" / "fuzz_model.py"
ITERATIONS = int(os.environ.get("VQC_FUZZ_MODEL_ITERATIONS", "300"))


def _load_target():
    return load_script(TARGET, "vqc_fuzz_model")


fuzz_model = _load_target()


def test_seeds_are_valid_models_of_both_profiles():
    exact, int8 = fuzz_model.seeds()
    assert zoo.build(exact, "s", "cpu").profile == "exact"
    assert zoo.build(int8, "s", "cpu").profile == "int8"
    for seed in (exact, int8):
        fuzz_model.check(seed)


def test_random_inputs_raise_only_model_errors():
    rng = random.Random(21)
    exact, int8 = fuzz_model.seeds()
    messages = set()
    for i in range(ITERATIONS):
        edits = rng.randbytes(rng.randrange(2, 40))
        if i % 4 == 0:  # raw: a seed with a few bytes changed (mostly in the header)
            raw = bytearray(rng.choice((exact, int8)))
            for _ in range(rng.randrange(1, 4)):
                raw[rng.randrange(min(len(raw), 2048))] = rng.randrange(256)
            fuzz_model.check(bytes(raw))
        model = fuzz_model.edited(edits)
        try:
            zoo.build(model, "fuzz", "cpu")
        except VqcModelError as exc:
            messages.add(str(exc))
        fuzz_model.check(model)
    # the edits reach the range, shape, finite-value and integer-range checks
    text = " ".join(messages)
    for needle in ("is not an integer in", "expected F16", "not finite", "outside [-63, 63]"):
        assert needle in text, needle


@pytest.mark.parametrize("data", [b"", b"\x00" * 8, b"\xff" * 16, b"{}" * 9])
def test_tiny_inputs(data):
    fuzz_model.TestOneInput(data)
