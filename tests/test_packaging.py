"""The wheel users install carries the released weights and model cards (package data built from
models/), and the installed layout finds them: the quick in-suite half of .ci/check-wheel, which
also installs the wheel into a fresh virtual environment and runs it from outside the checkout."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from vqcodec import registry

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout's sources (no stale build/ directory)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis")
    for name in ("pyproject.toml", "README.md", "vqcodec", "models"):
        path = REPO / name
        (shutil.copytree(path, src / name, ignore=ignore) if path.is_dir()
         else shutil.copyfile(path, src / name))
    # offline with the installed setuptools when there is one, else pip fetches it as usual
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation,
                           str(src), "-w", str(root / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (whl,) = (root / "dist").glob("vqcodec-*.whl")
    return whl


def test_wheel_carries_every_release_and_its_card(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for name, release in registry.RELEASES.items():
            data = z.read(f"vqcodec/models/{name}.safetensors")
            assert hashlib.sha256(data).hexdigest() == release.sha256
            assert f"vqcodec/models/{name}.json" in names
        assert "vqcodec/py.typed" in names
        assert not any(n.startswith(("tests/", "benchmarks/", "models/")) for n in names)


def test_installed_layout_finds_the_packaged_weights(wheel, tmp_path):
    """Unpacked like site-packages (no checkout next to it), run from another directory."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import vqcodec, vqcodec.registry as r; "
            "print(r.model_dirs()); print(r.weights_path('vqc-f4k512-v1')); print(vqcodec.__file__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    dirs, path, init = proc.stdout.splitlines()
    assert dirs == f"[PosixPath('{site / 'vqcodec' / 'models'}')]"
    assert path == str(site / "vqcodec" / "models" / "vqc-f4k512-v1.safetensors")
    assert init == str(site / "vqcodec" / "__init__.py")
