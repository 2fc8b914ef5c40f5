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


def _cpu_kernels() -> list[str]:
    """The GEMM kernels of libvqc this CPU really runs: a kernel it lacks falls back to a lower
    one (vqc_kernel_resolve), so running it again would only repeat that one."""
    import ctypes

    lib = ctypes.CDLL(str(NATIVE / "build" / "libvqc.so"))
    names = {1: "scalar", 2: "avx2", 3: "vnni", 4: "amx"}  # VQC_KERNEL_* of vqc.h
    return [name for k, name in names.items() if lib.vqc_kernel_resolve(k) == k]


def test_native_conformance(built: Path) -> None:
    kernels = _cpu_kernels()
    assert kernels[0] == "scalar"
    env = dict(os.environ, KERNELS=" ".join(kernels))
    r = subprocess.run([str(NATIVE / "test.sh")], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 failed" in r.stdout


def test_native_library_size(built: Path) -> None:
    """The core library stays small (weights are not in it)."""
    assert (NATIVE / "build" / "libvqc.so").stat().st_size <= 1 << 20


def test_native_ctypes(built: Path) -> None:
    """libvqc.so from ctypes: load a model, decode a vector, same pixels as vectors.json; a broken
    file gives its error class."""
    import ctypes
    import hashlib
    import json

    lib = ctypes.CDLL(str(NATIVE / "build" / "libvqc.so"))

    class Error(ctypes.Structure):
        _fields_ = [("code", ctypes.c_int), ("msg", ctypes.c_char * 256)]

    class Options(ctypes.Structure):
        _fields_ = [("max_pixels", ctypes.c_uint64), ("threads", ctypes.c_int), ("kernel", ctypes.c_int)]

    class Image(ctypes.Structure):
        _fields_ = [("width", ctypes.c_uint32), ("height", ctypes.c_uint32), ("channels", ctypes.c_int),
                    ("pixels", ctypes.POINTER(ctypes.c_uint8)),
                    ("alpha_png", ctypes.c_void_p), ("alpha_png_size", ctypes.c_size_t),
                    ("icc", ctypes.c_void_p), ("icc_size", ctypes.c_size_t),
                    ("exif", ctypes.c_void_p), ("exif_size", ctypes.c_size_t),
                    ("model_name", ctypes.c_char * 33), ("minor_version", ctypes.c_int)]

    lib.vqc_model_load.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                   ctypes.POINTER(Error)]
    lib.vqc_decode.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t,
                               ctypes.POINTER(Options), ctypes.POINTER(Image), ctypes.POINTER(Error)]
    lib.vqc_image_free.argtypes = [ctypes.POINTER(Image)]
    lib.vqc_model_free.argtypes = [ctypes.c_void_p]

    err = Error()
    model = ctypes.c_void_p()
    blob = (ROOT / "models" / "vqc-f4k512-v2.safetensors").read_bytes()
    assert lib.vqc_model_load(blob, len(blob), ctypes.byref(model), ctypes.byref(err)) == 0, err.msg
    vectors = json.loads((ROOT / "format" / "vectors" / "vectors.json").read_text())
    name = "rgb-64x48.coded-48x36.f4k512-v2.vqc"
    data = (ROOT / "format" / "vectors" / name).read_bytes()
    img = Image()
    models = (ctypes.c_void_p * 1)(model)
    opts = Options(0, 2, 0)
    assert lib.vqc_decode(data, len(data), models, 1, ctypes.byref(opts), ctypes.byref(img), ctypes.byref(err)) == 0
    size = img.width * img.height * img.channels
    pixels = ctypes.string_at(img.pixels, size)
    assert (img.width, img.height, img.channels) == (64, 48, 3)
    assert hashlib.sha256(pixels).hexdigest() == vectors[name]["pixels_sha256"]
    lib.vqc_image_free(ctypes.byref(img))
    broken = (ROOT / "format" / "vectors" / "broken" / "crc-mismatch.vqc").read_bytes()
    assert lib.vqc_decode(broken, len(broken), models, 1, None, ctypes.byref(img), ctypes.byref(err)) == 3
    assert b"CRC" in err.msg
    lib.vqc_model_free(model)
    for arch, ok in (("vq", True), ("rvq9", False)):  # SPEC.md "Model file": arch absent or "vq"
        other, m = _with_metadata(blob, arch=arch), ctypes.c_void_p()
        rc = lib.vqc_model_load(other, len(other), ctypes.byref(m), ctypes.byref(err))
        assert (rc == 0) == ok, err.msg
        if ok:
            lib.vqc_model_free(m)
        else:
            assert b"architecture 'rvq9'" in err.msg


def _with_metadata(blob: bytes, **meta) -> bytes:
    """A safetensors file with metadata keys added (header rewritten, data unchanged)."""
    import json

    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    header["__metadata__"].update(meta)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def _with_header(blob: bytes, edit) -> bytes:
    """A safetensors file whose JSON header `edit(header)` changed in place (data unchanged)."""
    import json

    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    edit(header)
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + blob[8 + n:]


def _with_i32(blob: bytes, name: str, values) -> bytes:
    """The file with the first values of I32 tensor `name` replaced."""
    import json
    import struct

    n = int.from_bytes(blob[:8], "little")
    b = json.loads(blob[8:8 + n])[name]["data_offsets"][0] + 8 + n
    raw = struct.pack(f"<{len(values)}i", *values)
    return blob[:b] + raw + blob[b + len(raw):]


def test_native_rvq_model_checks(built: Path) -> None:
    """Architecture rvq (SPEC 1.3, "Model file, arch rvq"): the released model loads (native/test.sh
    decodes its vectors); a file breaking a rule of the section is a model error (class 5)."""
    import ctypes
    import json

    lib = ctypes.CDLL(str(NATIVE / "build" / "libvqc.so"))

    class Error(ctypes.Structure):
        _fields_ = [("code", ctypes.c_int), ("msg", ctypes.c_char * 256)]

    lib.vqc_model_load.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_void_p),
                                   ctypes.POINTER(Error)]
    lib.vqc_model_free.argtypes = [ctypes.c_void_p]
    blob = (ROOT / "models" / "vqc-rvq-f8k1024s4-cpu.safetensors").read_bytes()
    err, m = Error(), ctypes.c_void_p()
    assert lib.vqc_model_load(blob, len(blob), ctypes.byref(m), ctypes.byref(err)) == 0, err.msg
    lib.vqc_model_free(m)
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8:8 + n])["__metadata__"]
    vq, pr = json.loads(meta["vqvae_config"]), json.loads(meta["prior_config"])

    def cfg(key, **fields):
        c = dict(vq if key == "vqvae_config" else pr, **fields)
        c = {k: v for k, v in c.items() if v is not None}
        return lambda h: h["__metadata__"].update({key: json.dumps(c)})

    def rename(old, new):
        return lambda h: h.update({new: h.pop(old)})

    def copy(old, new):
        return lambda h: h.update({new: dict(h[old])})

    def drop(name):
        return lambda h: h.pop(name)

    cases = {
        "profile exact": (lambda h: h["__metadata__"].update(profile="exact"), b"rvq"),
        "no stages": (cfg("vqvae_config", stages=None), b"stages"),
        "stages 9": (cfg("prior_config", stages=9), b"stages"),
        "stages differ": (cfg("prior_config", stages=3), b"stages"),
        "v2 out1": (copy("int8.prior.heads.0.out1.bias", "int8.prior.out1.bias"), b"unexpected tensor int8.prior.out1.bias"),
        "cond of head 0": (copy("int8.prior.heads.1.cond", "int8.prior.heads.0.cond"), b"unexpected tensor"),
        "a fifth head": (copy("int8.prior.heads.3.out1.shift", "int8.prior.heads.4.out1.shift"), b"unexpected tensor"),
        "no cond_mult": (drop("int8.prior.heads.2.cond_mult"), b"heads.2.cond_mult"),
        "v2 embed shape": (lambda h: h["int8.prior.embed"].update(shape=[4 * vq["K"], pr["channels"]]), b"int8.prior.embed"),
        "v2 codebook name": (rename("int8.decoder.codebook", "int8.decoder.codebook2"), b"int8.decoder.codebook"),
    }
    for what, (edit, needle) in cases.items():
        other = _with_header(blob, edit)
        assert lib.vqc_model_load(other, len(other), ctypes.byref(m), ctypes.byref(err)) == 5, what
        assert needle in err.msg, (what, err.msg)
    C = pr["channels"]
    for values, needle in (([65536], b"cond_mult"), ([65535] * (3 * C), b"2**24")):
        other = _with_i32(blob, "int8.prior.heads.3.cond_mult", values)
        assert lib.vqc_model_load(other, len(other), ctypes.byref(m), ctypes.byref(err)) == 5
        assert needle in err.msg, err.msg
    b = json.loads(blob[8:8 + n])["int8.prior.heads.1.cond"]["data_offsets"][0] + 8 + n
    other = blob[:b] + b"\x80" + blob[b + 1:]
    assert lib.vqc_model_load(other, len(other), ctypes.byref(m), ctypes.byref(err)) == 5
    assert b"[-127, 127]" in err.msg
