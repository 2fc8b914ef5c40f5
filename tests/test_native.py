"""The native decoder (native/): build it with `make -C native` and run native/test.sh, which
decodes every conformance vector with every kernel and thread count and checks every broken
file's error class. Skipped only when there is no C compiler or no libpng to build with."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NATIVE = ROOT / "native"


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


@pytest.fixture(scope="module")
def built() -> Path:
    cc = _compiler()
    if cc is None:
        pytest.skip("no C compiler (cc, gcc or clang) to build native/")
    if shutil.which("make") is None:
        pytest.skip("no make to build native/")
    if not Path("/usr/include/png.h").exists() and subprocess.run(
            ["sh", "-c", "echo '#include <png.h>' | " + cc + " -E - >/dev/null 2>&1"]).returncode != 0:
        pytest.skip("no libpng headers (libpng-dev) to build native/build/vqcdec")
    r = subprocess.run(["make", "-C", str(NATIVE), f"CC={cc}"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    return NATIVE / "build" / "vqcdec"


def test_native_conformance(built: Path) -> None:
    r = subprocess.run([str(NATIVE / "test.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout


def test_native_library_size(built: Path) -> None:
    """The core library stays small (weights are not in it)."""
    assert (NATIVE / "build" / "libvqc.so").stat().st_size <= 1 << 20
