"""Tests of the native decoder from Python (vqcodec/native.py): the core (libvqc, native/) and
the torch decoder give the same pixels and the same error classes; `vqcodec.decompress`, the
Pillow plugin and `vqc decompress` / `vqc info` use the core without importing torch or numba;
VQC_NATIVE chooses the decoder.

The library is built with ``make -C native`` when it is not found; the tests are skipped only
when there is no C compiler (CI has gcc).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vqcodec
from vqcodec import codec, container, native, zoo
from vqcodec.errors import VqcError, VqcFormatError, VqcLimitError, VqcModelError

from conftest import make_pixels, random_model_bytes, tiny_model_bytes

REPO = Path(__file__).resolve().parent.parent
VECTORS = REPO / "format" / "vectors"
MANIFEST = json.loads((VECTORS / "vectors.json").read_text())
BROKEN = json.loads((VECTORS / "broken" / "broken.json").read_text())
ERROR_CLASSES = {"format": VqcFormatError, "model": VqcModelError, "limit": VqcLimitError}


def _compiler() -> str | None:
    return next((c for c in (os.environ.get("CC"), "cc", "gcc", "clang") if c and shutil.which(c)), None)


@pytest.fixture(scope="session")
def native_lib() -> Path:
    """The core library: the one vqcodec finds, else built with make in native/build/ (and
    named by VQC_NATIVE_LIB for this session when vqcodec would not find it there)."""
    if native.available():
        return native.library_path()
    if not (REPO / "native" / "Makefile").is_file():
        pytest.fail("native/Makefile is missing")
    if _compiler() is None or shutil.which("make") is None:
        pytest.skip("no C compiler (cc, gcc or clang) and make: the native core cannot be built")
    r = subprocess.run(["make", "-C", str(REPO / "native"), "build/libvqc.so"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    built = REPO / "native" / "build" / native.LIB_NAME
    if native.library_path() != built:
        os.environ[native.LIB_ENV] = str(built)
    assert native.available(), native.unavailable_reason()
    return native.library_path()


@pytest.fixture
def lib(native_lib, monkeypatch) -> Path:
    monkeypatch.delenv(native.MODE_ENV, raising=False)
    return native_lib


def _same_image(a: Image.Image, b: Image.Image) -> None:
    assert (a.mode, a.size) == (b.mode, b.size)
    assert a.tobytes() == b.tobytes()
    assert {k: a.info.get(k) for k in ("icc_profile", "exif")} == {k: b.info.get(k) for k in ("icc_profile", "exif")}


# ------------------------------------------------------------------ the same pixels as torch


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_vectors_decode_to_the_pinned_pixels_and_the_torch_decoders(lib, name):
    data = (VECTORS / name).read_bytes()
    want = MANIFEST[name]
    image = native.decompress(data)
    assert image.mode == want["mode"] and list(image.size) == want["size"]
    assert hashlib.sha256(image.tobytes()).hexdigest() == want["pixels_sha256"]
    _same_image(image, codec.decompress(data, device="cpu"))


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_give_the_torch_decoders_error_class(lib, name):
    data = (VECTORS / "broken" / name).read_bytes()
    want = ERROR_CLASSES[BROKEN[name]["error"]]
    with pytest.raises(VqcError) as torch_exc:
        codec.decompress(data, device="cpu")
    with pytest.raises(VqcError) as native_exc:
        native.decompress(data)
    assert type(native_exc.value) is type(torch_exc.value) is want
    assert not isinstance(native_exc.value, native.Unsupported)


def _image(height: int, width: int, channels: int, seed: int) -> Image.Image:
    arr = make_pixels(height, width, channels, seed)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr)


@pytest.mark.parametrize(("channels", "kwargs"), [
    (3, dict(quality=10)),
    (3, dict(quality=50, effort=0)),
    (3, dict(quality=76)),
    (3, dict(quality=95, effort=1)),
    (3, dict(quality=76, scale=0.75)),
    (1, dict(quality=40, scale=0.75)),
    (1, dict(quality=76, model="vqc-f8k1024-v1", effort=0)),  # profile exact
    (4, dict(quality=60)),
])
def test_compressed_images_decode_like_the_torch_decoder(lib, channels, kwargs):
    image = _image(37, 53, channels, seed=channels)
    data = codec.compress(image, device="cpu", **kwargs)
    _same_image(native.decompress(data), codec.decompress(data, device="cpu"))


def test_metadata_goes_to_info_as_the_torch_decoder_puts_it(lib):
    exif = Image.Exif()
    exif[0x010F] = "vqc test"  # Make
    image = Image.fromarray(make_pixels(20, 30, 3, seed=5))
    buf = container.read(codec.compress(image, quality=30, effort=0, device="cpu"))
    with_meta = container.write(container.VqcFile(buf.header, buf.payloads, buf.chunks + (
        container.Chunk(container.CHUNK_ICC, False, b"icc bytes"),
        container.Chunk(container.CHUNK_EXIF, False, exif.tobytes()))))
    got = native.decompress(with_meta)
    assert got.info["icc_profile"] == b"icc bytes" and got.info["exif"] == exif.tobytes()
    _same_image(got, codec.decompress(with_meta, device="cpu"))


def test_models_registered_in_memory_and_replaced(lib, tiny_model):
    """A model given to zoo.register decodes natively; registering other weights under the same
    name replaces the cached copy, as it does for the torch decoder."""
    from vqcodec.prior import PriorConfig
    from vqcodec.vqvae import VQVAEConfig

    pixels = make_pixels(24, 40, 3, seed=9)
    data = codec.compress(pixels, model=tiny_model, device="cpu")
    _same_image(native.decompress(data), codec.decompress(data, device="cpu"))
    name = "test-native-swap"
    for seed in (1, 2):
        zoo.register(random_model_bytes(VQVAEConfig(f=4, K=16, D=4, c_lo=8, c_hi=8, n_res=1),
                                        PriorConfig(K=16, channels=8, layers=2), seed=seed,
                                        name=name), name)
        data = codec.compress(pixels, model=name, device="cpu")
        _same_image(native.decompress(data), codec.decompress(data, device="cpu"))


def test_limits_and_model_id_as_the_torch_decoder(lib):
    data = (VECTORS / "rgb-64x48.f4k512-v2.vqc").read_bytes()
    for call in (lambda: native.decompress(data, max_pixels=64 * 48 - 1),
                 lambda: codec.decompress(data, device="cpu", max_pixels=64 * 48 - 1)):
        with pytest.raises(VqcLimitError, match="above the limit"):
            call()
    for bad, exc in ((0, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(exc):
            native.decompress(data, max_pixels=bad)
    assert native.decompress(data, max_pixels=np.int64(64 * 48)).size == (64, 48)


# ------------------------------------------------------------------------ choosing a decoder


def test_vqc_native_chooses_the_decoder(lib, monkeypatch):
    data = (VECTORS / "rgb-64x48.f4k512-v2.vqc").read_bytes()
    calls = []
    real_torch, real_native = codec.decompress, native.decompress
    monkeypatch.setattr(codec, "decompress", lambda *a, **k: calls.append("torch") or real_torch(*a, **k))
    monkeypatch.setattr(native, "decompress", lambda *a, **k: calls.append("native") or real_native(*a, **k))
    for env, device, want in (("", "auto", "native"), ("auto", "cpu", "native"), ("0", "auto", "torch"),
                              ("1", "auto", "native"), ("", "cuda", "torch")):
        monkeypatch.setenv(native.MODE_ENV, env)
        calls.clear()
        try:
            image = vqcodec.decompress(data, device=device)
        except VqcModelError:  # cuda on a machine without a GPU: torch said so
            assert device == "cuda"
        else:
            assert image.size == (64, 48)
        assert calls == [want], (env, device)
    monkeypatch.setenv(native.MODE_ENV, "yes")
    with pytest.raises(VqcError, match="VQC_NATIVE must be 0"):
        vqcodec.decompress(data)
    monkeypatch.setenv(native.MODE_ENV, "")
    with pytest.raises(ValueError, match="device must be"):
        vqcodec.decompress(data, device="tpu")


def test_missing_library_falls_back_unless_required(lib, monkeypatch, tmp_path):
    data = (VECTORS / "gray-33x17.f8k1024-v2.vqc").read_bytes()
    monkeypatch.setenv(native.LIB_ENV, str(tmp_path / "nothing.so"))
    assert not native.available() and "cannot load" in native.unavailable_reason()
    assert hashlib.sha256(vqcodec.decompress(data).tobytes()).hexdigest() == \
        MANIFEST["gray-33x17.f8k1024-v2.vqc"]["pixels_sha256"]
    monkeypatch.setenv(native.MODE_ENV, "1")
    with pytest.raises(native.NativeUnavailable, match="native decoder unavailable"):
        vqcodec.decompress(data)
    monkeypatch.delenv(native.LIB_ENV)
    assert native.available()


def test_what_the_core_cannot_decode_falls_back_to_torch(lib, monkeypatch):
    data = (VECTORS / "rgba-40x30.q2.vqc").read_bytes()

    def unsupported(lib_, name):
        raise native.Unsupported(f"model {name!r}: profile not supported", 5)

    monkeypatch.setattr(native, "_load_model", unsupported)
    with pytest.raises(native.Unsupported):
        native.decompress(data)
    _same_image(vqcodec.decompress(data), codec.decompress(data, device="cpu"))
    monkeypatch.setenv(native.MODE_ENV, "1")
    with pytest.raises(native.Unsupported) as exc:
        vqcodec.decompress(data)
    assert exc.value.exit_code == VqcModelError.exit_code


def test_pillow_plugin_decodes_natively(lib, monkeypatch, tmp_path):
    monkeypatch.setattr(codec, "decompress", lambda *a, **k: pytest.fail("torch decoder used"))
    for name, want in MANIFEST.items():
        with Image.open(VECTORS / name) as im:
            im.load()
            assert im.mode == want["mode"]
            assert hashlib.sha256(im.tobytes()).hexdigest() == want["pixels_sha256"]


# ---------------------------------------------------------- no torch, no numba: real processes


def _run(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full = dict(os.environ)
    full.pop(native.MODE_ENV, None)
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    full.update(env or {})
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=full, timeout=300)


# runs the CLI as the `vqc` program, then reports which heavy modules were imported
_CLI = """
import runpy, sys
sys.argv = ["vqc", *sys.argv[1:]]
try:
    runpy.run_module("vqcodec.cli", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "numba", "constriction"})
print("HEAVY", ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("name", ["rgb-64x48.coded-48x36.f4k512-v2.vqc", "rgba-40x30.q2.vqc"])
def test_cli_decompress_and_info_import_no_torch(lib, tmp_path, name):
    src = tmp_path / name
    src.write_bytes((VECTORS / name).read_bytes())
    env = {native.LIB_ENV: str(lib)}
    r = _run(_CLI, "decompress", str(src), "-o", str(tmp_path / "n.png"), env=env)
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines()[-1] == "HEAVY ", r.stderr
    r = _run(_CLI, "info", str(src), env=env)
    assert r.returncode == 0 and "latent grid" in r.stdout, r.stderr
    assert r.stderr.splitlines()[-1] == "HEAVY ", r.stderr
    with Image.open(tmp_path / "n.png") as im:
        assert hashlib.sha256(im.tobytes()).hexdigest() == MANIFEST[name]["pixels_sha256"]
    # a broken file: the same exit code as the torch decoder's
    bad = tmp_path / "bad.vqc"
    bad.write_bytes((VECTORS / "broken" / "payload-short.vqc").read_bytes())
    r = _run(_CLI, "decompress", str(bad), "-o", str(tmp_path / "b.png"), env=env)
    assert r.returncode == 3 and r.stderr.splitlines()[-1] == "HEAVY ", r.stderr


def test_cli_with_vqc_native_0_uses_torch_and_writes_the_same_png(lib, tmp_path):
    name = "rgb-64x48.f4k512-v2.vqc"
    src = tmp_path / name
    src.write_bytes((VECTORS / name).read_bytes())
    outs = {}
    for mode in ("0", "1"):
        out = tmp_path / f"{mode}.png"
        r = _run(_CLI, "decompress", str(src), "-o", str(out),
                 env={native.MODE_ENV: mode, native.LIB_ENV: str(lib)})
        assert r.returncode == 0, r.stderr
        assert ("torch" in r.stderr.splitlines()[-1]) == (mode == "0"), r.stderr
        outs[mode] = out.read_bytes()
    assert outs["0"] == outs["1"]


def test_library_decompress_and_pillow_import_no_torch(lib):
    code = f"""
import sys
import vqcodec
from PIL import Image
data = open({str(VECTORS / 'rgb-64x48.q2.vqc')!r}, "rb").read()
assert vqcodec.decompress(data).size == (64, 48)
with Image.open({str(VECTORS / 'gray-33x17.q1.vqc')!r}) as im:
    im.load()
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"torch", "numba", "numpy"}}))
"""
    r = _run(code, env={native.LIB_ENV: str(lib)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]", r.stdout


def test_ctrl_c_during_a_long_core_call_acts_at_once():
    """The core's decode runs in a worker thread (ctypes releases the GIL) while the main thread
    waits, so a KeyboardInterrupt arrives at once, not when the C call returns."""
    import signal
    import threading
    import time

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals are delivered to the main thread")
    timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
    t0 = time.perf_counter()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        native._interruptible(lambda: time.sleep(3))  # stands for a long C call
    assert time.perf_counter() - t0 < 2


def test_speed_benchmark_times_the_core_next_to_avif(lib):
    from benchmarks import speed

    data = (VECTORS / "rgb-64x48.f4k512-v2.vqc").read_bytes()
    reference = codec.decompress(data, device="cpu")
    row = speed.measure_native(data, np.asarray(reference), 2, reference)
    assert row["same_pixels_as_torch"] is True and row["bytes"] == len(data)
    assert row["dec_s"] > 0 and row["avif"]["dec_s"] > 0 and row["avif"]["bytes"] > 0
    assert row["ratio"] == pytest.approx(row["dec_s"] / row["avif"]["dec_s"])
    assert row["psnr"] > 10


def test_a_model_the_core_refuses_is_decoded_by_torch_and_not_reloaded(lib, monkeypatch):
    """The core's vqc_model_load failing (a profile it lacked, say) sends the file to torch with
    the same pixels; the refused file is not read and offered to the core again."""
    import ctypes

    from vqcodec.prior import PriorConfig
    from vqcodec.vqvae import VQVAEConfig

    name = "test-native-refused"
    zoo.register(random_model_bytes(VQVAEConfig(f=4, K=16, D=4, c_lo=8, c_hi=8, n_res=1),
                                    PriorConfig(K=16, channels=8, layers=2), seed=3, name=name), name)
    data = codec.compress(make_pixels(16, 20, 3, seed=4), model=name, device="cpu")
    core = native._require()
    calls = []

    def refuse(buf, n, out, err):
        calls.append(n)
        e = ctypes.cast(err, ctypes.POINTER(native._Error)).contents
        e.code, e.msg = 5, b"profile not supported by this core"
        return 5

    monkeypatch.setattr(core, "vqc_model_load", refuse)
    want = codec.decompress(data, device="cpu")
    for _ in range(2):
        _same_image(vqcodec.decompress(data), want)
    assert len(calls) == 1
    monkeypatch.setenv(native.MODE_ENV, "1")
    with pytest.raises(native.Unsupported, match="profile not supported by this core"):
        vqcodec.decompress(data)


# ------------------------------------------------------------------ format 1.3 (multi-stage codes)


def _with_arch(data: bytes, arch: str) -> bytes:
    """Safetensors bytes with metadata "arch" set (the tensors unchanged)."""
    import json
    import struct

    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    header["__metadata__"]["arch"] = arch
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data[8 + n:]


def test_the_core_refuses_an_unknown_arch_and_a_vq_model_relabelled_rvq(lib):
    """The core decodes arch "vq" and "rvq" only: another arch is refused with a model error
    naming it (so `decompress_auto` uses torch), and a vq model relabelled "rvq" is refused as a
    model error too (profile exact: rvq is int8 only; int8: no "stages" in its configs)."""
    import ctypes

    ptr, err = ctypes.c_void_p(), native._Error()
    core = native._require()
    data = _with_arch(tiny_model_bytes(), "rvq9")
    assert core.vqc_model_load(data, len(data), ctypes.byref(ptr), ctypes.byref(err)) == 5
    assert b"architecture 'rvq9'" in err.msg
    data = _with_arch(tiny_model_bytes(), "rvq")
    assert core.vqc_model_load(data, len(data), ctypes.byref(ptr), ctypes.byref(err)) == 5
    assert b"int8 only" in err.msg
    data = _with_arch((REPO / "native" / "fuzz" / "seed-models" / "tiny-int8.safetensors").read_bytes(), "rvq")
    assert core.vqc_model_load(data, len(data), ctypes.byref(ptr), ctypes.byref(err)) == 5
    assert b"stages" in err.msg
    vq = _with_arch(tiny_model_bytes(), "vq")
    assert core.vqc_model_load(vq, len(vq), ctypes.byref(ptr), ctypes.byref(err)) == 0
    core.vqc_model_free(ptr)
    name = "test-native-rvq9-arch"
    zoo.register(_with_arch(tiny_model_bytes(), "rvq9"), name)
    with pytest.raises(native.Unsupported, match="architecture 'rvq9'"):
        native._load_model(core, name)


RVQ_VECTORS = sorted(k for k in MANIFEST if ".rvq-" in k)


def test_rvq_files_decode_natively_and_more_stages_than_the_model_is_the_torch_decoders_error(lib, monkeypatch):
    """Architecture rvq (format 1.3) is decoded by the core, never torch: the vectors' pinned
    pixels (every stage count), and S = 5 with a model of S_max = 4 is a format error with the
    torch decoder's message."""
    assert len(RVQ_VECTORS) >= 3
    data = (VECTORS / "broken" / "stages-above-model.vqc").read_bytes()
    with pytest.raises(VqcFormatError) as torch_exc:
        codec.decompress(data, device="cpu")
    monkeypatch.setattr(codec, "decompress", lambda *a, **k: pytest.fail("torch decoder used"))
    monkeypatch.setenv(native.MODE_ENV, "1")
    for name in RVQ_VECTORS:
        image = vqcodec.decompress((VECTORS / name).read_bytes())
        assert hashlib.sha256(image.tobytes()).hexdigest() == MANIFEST[name]["pixels_sha256"], name
    with pytest.raises(VqcFormatError) as native_exc:
        native.decompress(data)
    assert str(native_exc.value) == str(torch_exc.value)
    assert "file codes 5 stages" in str(native_exc.value) and "has 4" in str(native_exc.value)


def _tiny_rvq_bytes() -> bytes:
    """native/fuzz/seed-models/tiny-rvq.safetensors (arch rvq, S_max = 3, K = 4, C = 4) with the
    fp16 encoder and stage codebooks vqcodec reads (from a seeded untrained RVQVAE; the decoder
    reads only the integer tensors)."""
    import struct

    import torch

    from vqcodec.rvq import RVQConfig, RVQVAE

    data = (REPO / "native" / "fuzz" / "seed-models" / "tiny-rvq.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header, body, extra = json.loads(data[8:8 + n]), data[8 + n:], b""
    torch.manual_seed(0)
    for key, t in RVQVAE(RVQConfig(f=4, K=4, D=4, c_lo=4, c_hi=4, n_res=1, stages=3)).state_dict().items():
        key = "vqvae." + key
        if t.is_floating_point() and (key.startswith("vqvae.encoder.") or key.endswith(".codebook")):
            raw = t.half().numpy().tobytes()
            at = len(body) + len(extra)
            header[key] = {"dtype": "F16", "shape": list(t.shape), "data_offsets": [at, at + len(raw)]}
            extra += raw
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body + extra


@pytest.mark.parametrize(("stages", "grid", "tile", "grey"), [
    (1, (3, 5), 64, False), (2, (9, 7), 4, False), (3, (11, 13), 5, True), (3, (1, 1), 64, False),
    (3, (2, 17), 3, False), (3, (30, 40), 7, False)])
def test_rvq_random_codes_decode_as_torch(lib, stages, grid, tile, grey):
    """Random multi-stage codes of a tiny rvq model, coded by vqcodec's encoder (several tiles,
    narrow ones, grey, 1 and 2 threads): the core decodes torch's pixels."""
    import dataclasses

    from vqcodec import images

    name = "test-native-tiny-rvq"
    zoo.register(_tiny_rvq_bytes(), name)
    m = dataclasses.replace(zoo.load(name, device="cpu"), tile=tile)
    rng = np.random.default_rng(stages * 100 + tile)
    gh, gw = grid
    codes = rng.integers(0, 4, (stages, gh, gw))
    h, w = 4 * gh - 1, max(4 * gw - 2, 3)
    pixels = rng.integers(0, 256, (h, w, 1 if grey else 3), dtype=np.uint8)
    data = codec._stages_file(images.LoadedImage(pixels, None, None, None), m, codes, (h, w))
    want = codec.decompress(data, device="cpu")
    for threads in (1, 2):
        _same_image(native.decompress(data, threads=threads), want)


@pytest.mark.parametrize("chunk, message", [
    (b"\x02", "file codes 2 stages, model test-tiny has 1"),
    (b"", "bad stages chunk"), (b"\x00", "bad stages chunk"), (b"\x11", "bad stages chunk"),
    (b"\x02\x02", "bad stages chunk")])
def test_stages_chunks_give_the_torch_decoders_errors(lib, tiny_model, chunk, message):
    """A stages chunk in a file of a single-stage model: the core's error is the torch decoder's
    (format); S = 1 written out decodes as without the chunk."""
    import zlib

    base = codec.compress(make_pixels(16, 20, 3, seed=4), model=tiny_model, effort=0, device="cpu")
    f = container.read(base)
    plain = container.write(container.VqcFile(f.header, f.payloads, ()))
    at = len(plain) - 4 - sum(1 + len(p) for p in f.payloads)
    assert plain[at - 1] == 0
    body = plain[:at - 1] + bytes([1, container.CHUNK_STAGES * 2 + 1, len(chunk)]) + chunk + plain[at:-4]
    data = body + zlib.crc32(body).to_bytes(4, "little")
    for decode in (native.decompress, lambda d: codec.decompress(d, device="cpu")):
        with pytest.raises(VqcFormatError, match=message):
            decode(data)
    one = container.write(container.VqcFile(f.header, f.payloads, (container.Chunk(container.CHUNK_STAGES, True, b"\x01"),)))
    _same_image(native.decompress(one), codec.decompress(base, device="cpu"))
