"""The WebAssembly decoder in headless Chromium (native/web): every conformance vector decodes to
the expected pixels, every broken file gives its error class, and kodim23 at the default quality
gives `vqc decompress`'s pixels.  The work is native/web/test.py's (run once for the module).

Skips, saying what is missing, only where Chromium or the wasm toolchain is not installed:
    apt-get install chromium clang-14 lld-14 wasi-libc libclang-rt-14-dev-wasm32
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
web = load_script(ROOT / "native" / "web" / "test.py", "vqc_web_test")

VECTORS = list(json.loads((ROOT / "format/vectors/vectors.json").read_text()))
BROKEN = [f"broken/{k}" for k in json.loads((ROOT / "format/vectors/broken/broken.json").read_text())]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    miss = web.missing_tools()
    if miss:
        pytest.skip("browser test needs " + ", ".join(miss))
    web.build()
    results, timing = web.run(tmp_path_factory.mktemp("web"))
    return {name: (ok, detail) for name, ok, detail in results}, timing


@pytest.mark.parametrize("name", VECTORS + BROKEN)
def test_vector(browser, name):
    ok, detail = browser[0][name]
    assert ok, f"{name}: {detail}"


def test_kodak(browser):
    if not web.KODAK.exists():
        pytest.skip(f"{web.KODAK} is not there")
    ok, detail = browser[0]["kodim23.vqc"]
    assert ok, detail
    assert browser[1]["vqc_warm_ms"], "no timing"


def test_alpha_png_ancillary_chunks_ignored(browser):
    ok, detail = browser[0]["rgba-40x30.alpha-gama.vqc"]
    assert ok, detail
