"""Shared pytest fixtures: a tiny random model (no trained weights needed) and small test images."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_MODEL = "test-tiny"


def load_script(path: Path, name: str):
    """Import a script that is not in a package (fuzz targets, native/web/test.py, the reference
    decoder's modules) as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_model_bytes(vq_cfg, prior_cfg, seed: int = 0, name: str = "test-random") -> bytes:
    """Safetensors bytes of a seeded, randomly initialised model (tests need no trained weights).

    Args:
        vq_cfg: `vqcodec.vqvae.VQVAEConfig` of the VQ-VAE.
        prior_cfg: `vqcodec.prior.PriorConfig` of the prior (same K).
        seed: torch seed; equal arguments give equal bytes (`vqcodec.serialise` is deterministic).
        name: model name stored in the metadata.
    """
    from vqcodec.prior import GatedPixelCNN
    from vqcodec.serialise import model_bytes
    from vqcodec.vqvae import VQVAE

    torch.manual_seed(seed)
    vqvae = VQVAE(vq_cfg)
    vqvae.quantizer.codebook.normal_(0, 0.3)
    return model_bytes(vqvae, GatedPixelCNN(prior_cfg), name)


@functools.lru_cache(maxsize=1)
def tiny_model_bytes() -> bytes:
    """Safetensors bytes of the tiny seeded random model (f=4, K=16): fast on any CPU.
    Cached only to save the model construction; the bytes are the same on every call."""
    from vqcodec.prior import PriorConfig
    from vqcodec.vqvae import VQVAEConfig

    return random_model_bytes(
        VQVAEConfig(f=4, K=16, D=4, c_lo=8, c_hi=8, n_res=1),
        PriorConfig(K=16, channels=8, layers=2),
        seed=0,
        name=TINY_MODEL,
    )


@pytest.fixture(scope="session")
def tiny_model() -> str:
    """Register the tiny random model in this process under the name "test-tiny"; returns it."""
    from vqcodec import zoo

    zoo.register(tiny_model_bytes(), TINY_MODEL)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_model_file(tiny_model, tmp_path_factory) -> Path:
    """The registered tiny model's exact bytes in a file (for subprocesses to register too)."""
    path = tmp_path_factory.mktemp("models") / f"{tiny_model}.safetensors"
    path.write_bytes(tiny_model_bytes())
    return path


def make_pixels(height: int = 24, width: int = 40, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth gradients plus a little noise, uint8 [H, W, C] (C = 1, 3 or 4)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    planes = [
        255 * x / max(1, width - 1),
        255 * y / max(1, height - 1),
        127.5 + 127.5 * np.sin((x + y) / 5.0),
        255 * (x + 2 * y) / (width + 2 * height),
    ][:channels]
    arr = np.stack(planes, axis=-1) + rng.normal(0, 8, (height, width, channels))
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """Small PNGs in tmp_path/img: "rgb" and "rgb2" (40x24 RGB), "gray" (40x24 L),
    "rgba" (40x24 RGBA with a non-trivial alpha plane)."""
    d = tmp_path / "img"
    d.mkdir()
    out = {}
    specs = {"rgb": (3, 0), "rgb2": (3, 1), "gray": (1, 2), "rgba": (4, 3)}
    for name, (channels, seed) in specs.items():
        arr = make_pixels(channels=channels, seed=seed)
        img = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)  # L, RGB or RGBA
        path = d / f"{name}.png"
        img.save(path)
        out[name] = path
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch in each test module (restored afterwards): small integer matmuls
    are fastest so, and a busy 2-core CI machine is not oversubscribed."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


#: Marks a test that compares a CUDA GPU's result with the CPU's: skipped, with this reason, on a
#: machine without one (comparing the CPU with itself would prove nothing).
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (compares the GPU's result with the CPU's)")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def isa_above_avx2() -> bool:
    """Whether oneDNN has an x86 ISA above AVX2 to run int8 GEMMs with on this CPU (AVX-512,
    AVX-VNNI or AMX), so that ONEDNN_MAX_CPU_ISA=AVX2 selects other kernels than the default."""
    better = {"avx512f", "avx512_vnni", "avx512vnni", "avx_vnni", "amx_int8"}
    flags = cpu_flags()
    if flags:
        return "avx2" in flags and bool(flags & better)
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


#: Marks a test that compares oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA) with its default ISA:
#: skipped where the CPU has nothing above AVX2 (both runs would take the same kernels).
needs_isa_above_avx2 = pytest.mark.skipif(
    not isa_above_avx2(), reason="the CPU has no ISA above AVX2 (AVX-512, AVX-VNNI, AMX): the AVX2-limited "
                                 "run would use the same oneDNN kernels as the default one")

#: Marks a test that compares 1 with 2 CPU threads: skipped where this process may use one core
#: only (two threads would take turns on it, not run in parallel).
needs_two_cores = pytest.mark.skipif(usable_cores() < 2,
                                     reason="one usable CPU core: a 2-thread run would not run in parallel")


@contextlib.contextmanager
def threads_seen(monkeypatch, cls, method: str):
    """Record torch's thread count each time `cls.method` runs (inside the code path's own
    `intops.LoadAwareThreads` block), into the yielded list."""
    seen: list[int] = []
    real = getattr(cls, method)

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(cls, method, spy)
    yield seen
    monkeypatch.setattr(cls, method, real)
