"""The native decoder core (libvqc, native/ in the repository) from Python, through ctypes.

`vqcodec.decompress`, the Pillow plugin and `vqc decompress` decode with the core when it is
available, and never import torch or numba then; otherwise (or for a file the core cannot
decode, see below) they run the torch decoder, `vqcodec.codec.decompress`.  Both give the same
pixels, bit for bit (format/SPEC.md is integer-exact), and the same error classes.

Where the library is looked for, first found wins:

1. the file named by the environment variable ``VQC_NATIVE_LIB``;
2. ``vqcodec/_native/libvqc.so`` (``.dylib`` on macOS, ``vqc.dll`` on Windows) inside the
   installed package: the wheel does not ship it, a user or packager copies a built
   ``native/build/libvqc.so`` there (or points ``VQC_NATIVE_LIB`` at it);
3. a source checkout's ``native/build/libvqc.so`` (``make -C native``).

The environment variable ``VQC_NATIVE`` chooses the decoder:

* unset, empty or ``auto``: the core when found, else torch;
* ``0``: always torch (this module is not even loaded);
* ``1``: always the core; an error (`VqcError`, exit 1) when it is not found or cannot decode a
  file, never torch.

Models come from `vqcodec.registry.weights` (names checked, pinned SHA-256 verified, sizes
capped), are loaded with ``vqc_model_load`` and cached per process.  Before the core decodes, the
checks the torch decoder makes before it decodes run here too, in the same order, with the same
messages (container structure and CRC, pixel limit, model, model id, latent grid, tile budget,
metadata sizes, alpha header), so a broken file gives the same error by both paths.  The alpha
plane is decoded by `vqcodec.images.decode_alpha`; ICC profile and EXIF go to the image's ``info``.

A file the core cannot decode falls back to torch, with no visible difference: a model file the
core does not load (e.g. a profile or an architecture it lacks; it decodes architectures "vq"
and "rvq", the multi-stage codes of format 1.3), and any failure the core reports as not the
file's fault (its internal error class).  Format and limit errors of the core are the file's: they are
raised, as the torch decoder would.
"""

from __future__ import annotations

import ctypes
import numbers
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from vqcodec import container
from vqcodec.constants import MAX_PRIOR_TILE, MAX_PRIOR_TILE_POSITIONS
from vqcodec.errors import VqcError, VqcFormatError, VqcLimitError, VqcModelError

__all__ = ["MODE_ENV", "LIB_ENV", "NativeUnavailable", "Unsupported", "mode", "library_path",
           "available", "unavailable_reason", "version", "decompress", "decompress_auto",
           "clear_cache"]

#: Environment variable choosing the decoder: "" / "auto", "0" (torch) or "1" (core required).
MODE_ENV = "VQC_NATIVE"
#: Environment variable naming the library file, searched first.
LIB_ENV = "VQC_NATIVE_LIB"

if sys.platform == "darwin":  # pragma: no cover - not on the CI
    LIB_NAME = "libvqc.dylib"
elif sys.platform == "win32":  # pragma: no cover
    LIB_NAME = "vqc.dll"
else:
    LIB_NAME = "libvqc.so"

#: A library shipped inside the installed package (not in the wheel by default).
PACKAGE_LIB = Path(__file__).resolve().parent / "_native" / LIB_NAME
#: A source checkout's build (``make -C native``).
CHECKOUT_LIB = Path(__file__).resolve().parent.parent / "native" / "build" / LIB_NAME

# status codes of vqc.h
_OK, _ERR_INTERNAL, _ERR_FORMAT, _ERR_MODEL, _ERR_LIMIT = 0, 1, 3, 5, 6
_ERRORS: dict[int, type[VqcError]] = {_ERR_FORMAT: VqcFormatError, _ERR_MODEL: VqcModelError,
                                      _ERR_LIMIT: VqcLimitError}
_U64_MAX = 2**64 - 1


class NativeUnavailable(VqcError):
    """``VQC_NATIVE=1`` but the core library is not found or cannot be loaded."""


class Unsupported(VqcError):
    """The core cannot decode this file (not the file's fault): `decompress_auto` falls back to
    the torch decoder; `decompress` and ``VQC_NATIVE=1`` raise it.

    Attributes:
        code: the core's status code (1 internal, 5 model).
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = VqcModelError.exit_code if code == _ERR_MODEL else VqcError.exit_code


# ------------------------------------------------------------------------------ ctypes layout


class _Error(ctypes.Structure):
    _fields_ = [("code", ctypes.c_int), ("msg", ctypes.c_char * 256)]


class _Options(ctypes.Structure):
    _fields_ = [("max_pixels", ctypes.c_uint64), ("threads", ctypes.c_int), ("kernel", ctypes.c_int)]


class _Image(ctypes.Structure):
    _fields_ = [
        ("width", ctypes.c_uint32), ("height", ctypes.c_uint32), ("channels", ctypes.c_int),
        ("pixels", ctypes.c_void_p),
        ("alpha_png", ctypes.c_void_p), ("alpha_png_size", ctypes.c_size_t),
        ("icc", ctypes.c_void_p), ("icc_size", ctypes.c_size_t),
        ("exif", ctypes.c_void_p), ("exif_size", ctypes.c_size_t),
        ("model_name", ctypes.c_char * 33), ("minor_version", ctypes.c_int),
    ]


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the signatures of vqc.h on a loaded library (AttributeError when one is missing)."""
    P, S, I, E = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.POINTER(_Error)
    lib.vqc_model_load.argtypes = [ctypes.c_char_p, S, ctypes.POINTER(P), E]
    lib.vqc_model_load.restype = I
    lib.vqc_model_free.argtypes = [P]
    lib.vqc_model_free.restype = None
    lib.vqc_model_id.argtypes = [P]
    lib.vqc_model_id.restype = ctypes.POINTER(ctypes.c_uint8)
    lib.vqc_model_profile.argtypes = [P]
    lib.vqc_model_profile.restype = ctypes.c_char_p
    lib.vqc_decode.argtypes = [ctypes.c_char_p, S, ctypes.POINTER(P), S, ctypes.POINTER(_Options),
                               ctypes.POINTER(_Image), E]
    lib.vqc_decode.restype = I
    lib.vqc_image_free.argtypes = [ctypes.POINTER(_Image)]
    lib.vqc_image_free.restype = None
    lib.vqc_version.argtypes = []
    lib.vqc_version.restype = ctypes.c_char_p
    return lib


# ---------------------------------------------------------------------------- finding the core


def mode() -> str:
    """The decoder ``VQC_NATIVE`` asks for: "auto", "0" (torch) or "1" (the core, required).

    Raises:
        VqcError: any other value.
    """
    value = os.environ.get(MODE_ENV, "").strip().lower()
    if value in ("", "auto"):
        return "auto"
    if value in ("0", "1"):
        return value
    raise VqcError(f"{MODE_ENV} must be 0 (torch decoder), 1 (native decoder) or auto, got {value!r}")


def library_path() -> Path | None:
    """The library file that would be loaded: ``$VQC_NATIVE_LIB`` when set (even if it does not
    exist), else the package's, else the checkout's build, else None."""
    env = os.environ.get(LIB_ENV)
    if env:
        return Path(env)
    for path in (PACKAGE_LIB, CHECKOUT_LIB):
        if path.is_file():
            return path
    return None


_LOCK = threading.RLock()
_LIB: dict[str, object] = {}  # "path" -> str, "lib" -> CDLL or None, "reason" -> str


def _library() -> ctypes.CDLL | None:
    """The loaded core (cached per library path), or None (reason in `unavailable_reason`)."""
    path = library_path()
    key = str(path)
    with _LOCK:
        if _LIB.get("path") == key:
            return _LIB["lib"]  # type: ignore[return-value]
        lib, reason = None, ""
        if path is None:
            reason = (f"{LIB_NAME} not found ({LIB_ENV} unset, not in {PACKAGE_LIB.parent}, "
                      f"not built in {CHECKOUT_LIB.parent}: make -C native)")
        else:
            try:
                lib = _bind(ctypes.CDLL(str(path)))
                lib.vqc_version()
            except (OSError, AttributeError) as exc:
                lib, reason = None, f"cannot load {path}: {exc}"
        _LIB.update(path=key, lib=lib, reason=reason)
        return lib


def available() -> bool:
    """True when the core library is found and loads (whatever ``VQC_NATIVE`` says)."""
    return _library() is not None


def unavailable_reason() -> str:
    """Why `available()` is False ('' when it is True)."""
    _library()
    return str(_LIB.get("reason", ""))


def version() -> str | None:
    """The core's version string, or None when it is not available."""
    lib = _library()
    return None if lib is None else lib.vqc_version().decode("ascii", "replace")


def _require() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise NativeUnavailable(f"native decoder unavailable: {unavailable_reason()}")
    return lib


# ------------------------------------------------------------------------------------- models


@dataclass
class _Model:
    ptr: ctypes.c_void_p
    model_id: bytes
    f: int
    stages: int  # S_max: the configs' "stages" for architecture "rvq", 1 for "vq"
    token: object  # what the weights were read from: reloaded when it changes


_MODELS: dict[tuple[str, str], _Model] = {}  # (library path, model name) -> loaded model
_RETIRED: list[_Model] = []  # replaced models: kept (another thread may be decoding with one)


_REFUSED: dict[tuple[str, str], tuple[object, Unsupported]] = {}  # models the core did not load


def clear_cache() -> None:
    """Forget the loaded models: the next decode loads them again. (The old ones stay allocated,
    since another thread may be decoding with one.)"""
    with _LOCK:
        _RETIRED.extend(_MODELS.values())
        _MODELS.clear()
        _REFUSED.clear()


def _token(name: str) -> object:
    """What `registry.weights(name)` would read now, cheaply: the in-memory bytes object, or the
    file (path, size, mtime); a cached model is reused while this stays the same."""
    from vqcodec import registry

    mem = registry._IN_MEMORY.get(name)
    if mem is not None:
        return ("memory", id(mem), mem)
    path = registry.weights_path(name)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return ("file", str(path), st.st_size, st.st_mtime_ns)


def _error_text(err: _Error) -> str:
    return err.msg.decode("utf-8", "replace").strip() or f"native decoder error {err.code}"


def _load_model(lib: ctypes.CDLL, name: str) -> _Model:
    """The core's model `name`, loaded from `registry.weights` (cached while its source stays).

    Raises:
        VqcModelError: as `registry.weights` (unknown, missing, tampered, too big).
        Unsupported: the core does not load the model file.
    """
    from vqcodec import modelfile, registry

    registry.check_name(name)
    key = (str(_LIB.get("path")), name)
    with _LOCK:
        cached, refused = _MODELS.get(key), _REFUSED.get(key)
    if cached is not None or refused is not None:
        now = _token(name)
        if cached is not None and cached.token is not None and cached.token == now:
            return cached
        if refused is not None and refused[0] is not None and refused[0] == now:
            raise refused[1]  # the same file again: not read and refused again
    data = registry.weights(name)  # VqcModelError as the torch path
    token = _token(name)  # after weights(): its SHA-256 check is cached by then
    ptr, err = ctypes.c_void_p(), _Error()
    if lib.vqc_model_load(data, len(data), ctypes.byref(ptr), ctypes.byref(err)) != _OK:
        exc = Unsupported(f"model {name!r}: {_error_text(err)}", err.code or _ERR_MODEL)
        with _LOCK:
            _REFUSED[key] = (token, exc)
        raise exc
    try:
        meta = modelfile.read_header(data).metadata
        vq, pr = modelfile.read_configs(meta)
        f = int(vq["f"])
        stages = int(modelfile.check_rvq_configs(vq, pr)) if meta.get("arch") == "rvq" else 1
    except modelfile.ModelFileError as exc:  # the core took a file vqcodec would not
        lib.vqc_model_free(ptr)
        raise Unsupported(f"model {name!r}: {exc}", _ERR_MODEL) from None
    model = _Model(ptr, ctypes.string_at(lib.vqc_model_id(ptr), 8), f, stages, token)
    with _LOCK:
        old = _MODELS.get(key)
        if old is not None:
            _RETIRED.append(old)
        _MODELS[key] = model
        _REFUSED.pop(key, None)
    return model


# ------------------------------------------------------------------------------------- decode


def _check_max_pixels(max_pixels: object) -> int:
    """As `vqcodec.codec._check_max_pixels`: TypeError / ValueError unless an int >= 1."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral):
        raise TypeError(f"max_pixels must be an int >= 1, got {type(max_pixels).__name__} {max_pixels!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    return int(max_pixels)


def _check_tile_shape(h: int, w: int) -> None:
    """As `vqcodec.entropy.check_tile_shape` (which imports torch)."""
    if h > MAX_PRIOR_TILE or w > MAX_PRIOR_TILE or h * w > MAX_PRIOR_TILE_POSITIONS:
        raise VqcLimitError(f"prior tiles of {h}x{w} latent positions are above this decoder's limit "
                            f"({MAX_PRIOR_TILE} per side, {MAX_PRIOR_TILE_POSITIONS} positions; vqc writes 64x64)")


def decompress(data: bytes | bytearray | memoryview, *,
               max_pixels: int = container.DEFAULT_MAX_PIXELS, threads: int = 1):
    """Decode `.vqc` bytes with the core: the same image as `vqcodec.codec.decompress`.

    Args:
        data: the `.vqc` file.
        max_pixels: refuse images of more pixels (width x height) than this.
        threads: threads the core may use (> 1 only when it was built with VQC_WITH_THREADS).

    Returns:
        PIL image, mode L, LA, RGB or RGBA, with ``info["icc_profile"]`` / ``info["exif"]``
        (bytes) when stored.

    Raises:
        VqcFormatError, VqcLimitError, VqcModelError: as `vqcodec.codec.decompress`.
        Unsupported: the core cannot decode this file (`decompress_auto` then uses torch).
        NativeUnavailable: the library is not found.
        TypeError, ValueError: `max_pixels` of the wrong type or value.
    """
    lib = _require()
    max_pixels = _check_max_pixels(max_pixels)
    from PIL import Image

    from vqcodec import images

    # the torch decoder's checks before decoding, in its order (codec._decode_indices)
    f = container.read_summary(data, max_pixels=max_pixels)
    hd = f.header
    model = _load_model(lib, hd.model_name)
    if model.model_id != hd.model_hash:
        raise VqcModelError(f"file needs model {hd.model_name!r} with id {hd.model_hash.hex()}, but "
                            f"the installed one has id {model.model_id.hex()}")
    if hd.stages > model.stages:  # S_max: 1 for arch "vq"
        raise VqcFormatError(f"file codes {hd.stages} stages, model {hd.model_name} has {model.stages}")
    coded_h, coded_w = container.coded_size(hd, f.chunks)
    if (hd.grid_h, hd.grid_w) != (-(-coded_h // model.f), -(-coded_w // model.f)):
        coded = "" if (coded_h, coded_w) == (hd.height, hd.width) else " coded"
        raise VqcFormatError(f"latent grid {hd.grid_h}x{hd.grid_w} does not fit a "
                             f"{coded_w}x{coded_h}{coded} image at f={model.f}")
    _check_tile_shape(*hd.tile_shape)
    chunks = {c.type: c.data for c in f.chunks}
    images.check_metadata_sizes(chunks.get(container.CHUNK_ICC), chunks.get(container.CHUNK_EXIF),
                            VqcFormatError)
    if container.CHUNK_ALPHA in chunks:
        images.check_alpha_header(chunks[container.CHUNK_ALPHA], hd.width, hd.height)

    buf = data if isinstance(data, bytes) else bytes(data)
    opts = _Options(min(max_pixels, _U64_MAX), max(1, int(threads)), 0)
    w, h, c, pixels = _interruptible(lambda: _decode(lib, buf, model, opts))
    if (w, h) != (hd.width, hd.height) or c != (1 if hd.mode == container.Mode.L else 3):
        raise Unsupported(f"the core decoded a {w}x{h} image of {c} channels, the header says "
                          f"{hd.width}x{hd.height} {hd.mode.name}", _ERR_INTERNAL)
    image = Image.frombytes("L" if c == 1 else "RGB", (w, h), pixels)
    if container.CHUNK_ALPHA in chunks:
        alpha = images.decode_alpha(chunks[container.CHUNK_ALPHA], hd.width, hd.height)
        image.putalpha(Image.fromarray(alpha))
    for key, chunk in (("icc_profile", container.CHUNK_ICC), ("exif", container.CHUNK_EXIF)):
        if chunks.get(chunk):
            image.info[key] = bytes(chunks[chunk])
    return image


def _decode(lib: ctypes.CDLL, buf: bytes, model: _Model, opts: _Options) -> tuple[int, int, int, bytes]:
    """vqc_decode: (width, height, channels, pixel bytes); the core's image is freed here."""
    out, err = _Image(), _Error()
    models = (ctypes.c_void_p * 1)(model.ptr)
    rc = lib.vqc_decode(buf, len(buf), models, 1, ctypes.byref(opts), ctypes.byref(out),
                        ctypes.byref(err))
    if rc != _OK:
        cls = _ERRORS.get(err.code if err.code else rc)
        if cls is None or cls is VqcModelError:  # internal, or a model the core cannot use
            raise Unsupported(_error_text(err), err.code or rc)
        raise cls(_error_text(err))
    try:
        w, h, c = out.width, out.height, out.channels
        return w, h, c, ctypes.string_at(out.pixels, w * h * c)
    finally:
        lib.vqc_image_free(ctypes.byref(out))


def _interruptible(fn):
    """fn() in a worker thread while the main thread waits, so that Ctrl-C (KeyboardInterrupt)
    and SIGTERM handlers run at once instead of when a long C call returns (ctypes releases the
    GIL; Python runs signal handlers in the main thread only). An abandoned call finishes in the
    background and its result is dropped. Outside the main thread: fn() directly."""
    if threading.current_thread() is not threading.main_thread():
        return fn()
    result: dict[str, object] = {}
    done = threading.Event()

    def run() -> None:
        try:
            result["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            result["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name="vqc-native-decode", daemon=True).start()
    while not done.wait(0.25):
        pass
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["value"]


_DEVICES = ("auto", "cpu")


def _torch_device_name(device: object) -> str | None:
    """The device name when it is a str the torch decoder accepts, else None (torch checks it)."""
    if not isinstance(device, str):
        return None
    if device in _DEVICES or device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        return device
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def decompress_auto(data, *, device="auto", max_pixels: int = container.DEFAULT_MAX_PIXELS):
    """Decode `.vqc` bytes with the core where it can (``VQC_NATIVE``, module docstring), else
    with the torch decoder (`vqcodec.codec.decompress`); the same image either way.

    The core runs for ``device`` "auto" or "cpu"; "cuda" / "cuda:N" / a torch.device run the
    torch decoder (unless ``VQC_NATIVE=1``, which always runs the core).

    Raises:
        As `vqcodec.codec.decompress`; NativeUnavailable / Unsupported with ``VQC_NATIVE=1``.
    """
    choice = mode()
    if choice != "0" and isinstance(data, (bytes, bytearray, memoryview)):
        name = _torch_device_name(device)
        if choice == "1" or name in _DEVICES:
            if choice == "1":
                return decompress(data, max_pixels=max_pixels)
            if _library() is not None:
                try:
                    return decompress(data, max_pixels=max_pixels)
                except Unsupported:
                    pass  # the torch decoder below
    from vqcodec import codec

    return codec.decompress(data, device=device, max_pixels=max_pixels)
