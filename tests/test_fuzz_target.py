"""The atheris fuzz target (tests/fuzz/fuzz_reader.py) as a fast regression test.

Calls `TestOneInput` directly (no atheris needed) on the committed conformance vectors, on
empty bytes, and on a few hundred hypothesis-generated mutations of the vectors: single-byte
changes, truncations, inserted / deleted bytes and random bytes. `TestOneInput` also tries each
input with a repaired CRC-32, so the mutations reach the chunk rules, the range decoder and the
pixel decoder; every exception but `VqcError` (and every broken check of the target) fails.
Decoding is capped at `fuzz_reader.MAX_PIXELS` pixels; the vectors are at most 100x75.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import load_script

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET = REPO_ROOT / "tests" / "fuzz" / "fuzz_reader.py"
VECTOR_PATHS = sorted((REPO_ROOT / "format" / "vectors").glob("*.vqc"))
VECTORS = {p.name: p.read_bytes() for p in VECTOR_PATHS}
# Mutations of the larger vectors cost a prior + decoder pass each; the two small ones keep the
# test fast and still cover both models, L and RGB files and the alpha chunk.
SMALL = [name for name in ("gray-33x17.q1.vqc", "rgba-40x30.q2.vqc") if name in VECTORS]


def _load_target():
    return load_script(TARGET, "vqc_fuzz_reader")


fuzz_reader = _load_target()


def test_vectors_exist():
    assert len(VECTORS) >= 4 and SMALL


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_decodes(name):
    before = dict(fuzz_reader.STATS)
    fuzz_reader.TestOneInput(VECTORS[name])
    # a valid vector parses and decodes all the way to an image (CRC already valid: one try)
    assert fuzz_reader.STATS["image"] == before["image"] + 1
    assert fuzz_reader.STATS["inputs"] == before["inputs"] + 1


@pytest.mark.parametrize("data", [b"", b"\x89", b"\x89VQC", b"\x00" * 4, b"\x89VQC\x01\x00"])
def test_tiny_inputs(data):
    fuzz_reader.TestOneInput(data)


def test_with_valid_crc():
    data = VECTORS[SMALL[0]]
    assert fuzz_reader.with_valid_crc(data) == data
    broken = data[:-1] + bytes([data[-1] ^ 1])
    assert fuzz_reader.with_valid_crc(broken) == data
    assert zlib.crc32(b"") == 0 and fuzz_reader.with_valid_crc(b"ab") == b"ab"


@st.composite
def mutations(draw) -> bytes:
    kind = draw(st.sampled_from(["byte", "byte", "byte", "truncate", "insert", "delete", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    names = SMALL if kind == "byte" else sorted(VECTORS)
    data = bytearray(VECTORS[draw(st.sampled_from(names))])
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    pos = draw(st.integers(0, len(data) - 1))
    if kind == "insert":
        return bytes(data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:])
    if kind == "delete":
        return bytes(data[:pos] + data[pos + draw(st.integers(1, 8)):])
    data[pos] = draw(st.integers(0, 255).filter(lambda b: b != data[pos]))
    return bytes(data)


@settings(max_examples=int(os.environ.get("VQC_FUZZ_EXAMPLES", "200")), deadline=None,
          derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(mutations())
def test_mutations_raise_only_vqc_errors(data):
    fuzz_reader.TestOneInput(data)


# ------------------------------------------------------ issue 14: header-driven resource limits

CORPUS = sorted((REPO_ROOT / "tests" / "fuzz" / "corpus").glob("*.vqc"))


def _hostile():
    import sys

    sys.path.insert(0, str(REPO_ROOT))
    from tests.fuzz import hostile

    return hostile


def test_hostile_corpus_is_committed_and_current():
    hostile = _hostile()
    expected = {n: d for n, d in hostile.hostile_files().items() if len(d) <= 16384}
    assert {p.name: p.read_bytes() for p in CORPUS} == expected


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.name)
def test_hostile_corpus_files_are_cheap(path):
    before = dict(fuzz_reader.STATS)
    fuzz_reader.TestOneInput(path.read_bytes())  # asserts time, peak RSS and work bounds
    assert fuzz_reader.STATS["image"] == before["image"]  # none of them is a decodable image


@st.composite
def hostile_headers(draw) -> bytes:
    """A CRC-valid file whose header claims a large image (up to 2^24 pixels) with payloads of a
    few bytes: the decoder must reject it cheaply (or decode it, if the payloads hold it)."""
    hostile = _hostile()
    model, f = draw(st.sampled_from([(hostile.F4, 4), (hostile.F8, 8)]))
    width = draw(st.integers(1, 4096))
    height = draw(st.integers(1, 4096))
    grid = (-(-height // f), -(-width // f))
    tile = draw(st.sampled_from([(64, 64), (64, 64), (0, 0), (128, 128), (256, 256), (1, 300), (3, 5)]))
    th = grid[0] if tile[0] == 0 else min(tile[0], grid[0])
    tw = grid[1] if tile[1] == 0 else min(tile[1], grid[1])
    n_tiles = -(-grid[0] // th) * -(-grid[1] // tw)
    if n_tiles > 2048:
        tile, n_tiles = (0, 0), 1
    words = draw(st.integers(0, 3))
    first = draw(st.binary(min_size=4 * words, max_size=4 * words))
    payload = bytes([4 * words]) + first
    return hostile.raw(model=model, width=width, height=height, grid=grid, tile=tile,
                       payloads=payload * n_tiles)


@settings(max_examples=int(os.environ.get("VQC_HOSTILE_EXAMPLES", "25")), deadline=None,
          derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_headers())
def test_header_claims_cost_nothing(data):
    symbols = fuzz_reader.STATS["symbols"]
    fuzz_reader.check(data)  # asserts < 20 s, peak RSS < 1 GiB, symbols <= what the words hold
    assert fuzz_reader.STATS["symbols"] - symbols <= 4 * 64 * 8  # a few wavefronts at most


def test_symbol_bound_is_the_format_minimum():
    # K = 512: every PMF entry >= 1 of 2^20, so a symbol costs >= 0.000703 bits
    assert fuzz_reader.max_symbols(4, 1, 512) == math.ceil(32 * 3 / -math.log2(1 - 511 / 2**20))
