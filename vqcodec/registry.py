"""Model registry: which models exist, their quality levels and SHA-256 pins, and where their
weight files are found.

A released model is one file `<name>.safetensors` (fp16 tensors, architecture in the metadata,
see `vqcodec.serialise`) plus a model card `<name>.json`. The repository keeps them in `models/`;
a built wheel carries the same files as the package data `vqcodec/models/`. Released models are
immutable: the registry pins the SHA-256 of each file, a `.vqc` file names its model by (name,
first 8 bytes of that hash), and a retrained model gets a new name.

Weight files are looked up, in this order, in the directories added with `add_model_dir`, those
in the environment variable `VQC_MODEL_PATH` (`os.pathsep`-separated), the installed package's
`vqcodec/models/` and, in a source checkout, the repository's `models/`. A released model is
taken from the first copy whose SHA-256 matches its pin; a model that is not released (e.g. a
new one being evaluated) is taken from the first directory that has it, and a `.vqc` file still
checks it by the 8-byte id in its header (`vqcodec.zoo.load`).

A model name is an identifier (`vqcodec.modelfile.NAME_PATTERN`), never a path: a `.vqc` file
can only name a `<name>.safetensors` inside these directories. A weight file is untrusted input:
its size is checked (`os.fstat`) before it is read, and it is read only up to
`vqcodec.modelfile.MAX_MODEL_FILE_BYTES`; the SHA-256 check of a released model's copy is cached
per (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from vqcodec import modelfile
from vqcodec.errors import VqcModelError

#: Environment variable naming extra model directories (`os.pathsep`-separated).
MODEL_PATH_ENV = "VQC_MODEL_PATH"

#: Weights inside an installed wheel (package data built from the repository's `models/`).
PACKAGE_MODELS_DIR = Path(__file__).resolve().parent / "models"
#: The repository's `models/`, the source of truth for released weights (source checkouts).
SOURCE_MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@dataclass(frozen=True)
class Release:
    """A released model.

    Attributes:
        name: registry name, also written in `.vqc` headers (an identifier, `check_name`).
        quality: the legacy quality level (vqc 0.1's `--quality 1` / `2`) of a v1 model; None
            for later models, which the 0..100 quality scale (`vqcodec.rdo.QUALITY_SEGMENTS`)
            selects.
        sha256: SHA-256 (64 hex digits) of the model's safetensors file.
    """

    name: str
    quality: int | None
    sha256: str


RELEASES: dict[str, Release] = {r.name: r for r in [
    Release("vqc-f8k1024-v1", 1, "cfbb43da95d18adc6ef8535e92fd06aaa79ea13664f776e86a90463fd57ff7a1"),
    Release("vqc-f4k512-v1", 2, "2313ca46b002bd67ca28e50cc678554494ccef6fe037b1bbf63560deb56c7208"),
    # profile int8 (format/SPEC.md, "Profile int8"): the v1 models calibrated by vqcodec.train.export_int8
    Release("vqc-f8k1024-v2", None, "6333396de1174b59d5e92c7764c0de97a9f2b8b7ca3be40b60952b07ef4a95b3"),
    Release("vqc-f4k512-v2", None, "21e58d27f53f6e4a560c8ff8a0c129ff447bbad93b6323807905646022120b5b"),
    # arch rvq (format/SPEC.md, "Architecture rvq"): 4 stages of codes; the CPU proof model of
    # issue 18 (28 min on 2 CPU cores, warm-started from vqc-f8k1024-v1), not on the quality scale
    Release("vqc-rvq-f8k1024s4-cpu", None, "951d3b582fe5df5c4693fb8931fdba0801a864b16921b2f6fd77874257d28ff1"),
]}
QUALITY_LEVELS = sorted(r.quality for r in RELEASES.values() if r.quality is not None)

_EXTRA_DIRS: list[Path] = []  # added with add_model_dir, searched first
_IN_MEMORY: dict[str, bytes] = {}  # name -> safetensors bytes registered with add_weights
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256 hex digest
_READ_CHUNK = 2**20


def for_quality(quality: int) -> str:
    """The released model of a quality level.

    Args:
        quality: a level from `QUALITY_LEVELS`.

    Returns:
        The model name, e.g. "vqc-f4k512-v1" for quality 2.

    Raises:
        VqcModelError: no released model has this quality level.
    """
    for r in RELEASES.values():
        if r.quality == quality:
            return r.name
    raise VqcModelError(f"quality must be one of {QUALITY_LEVELS}, got {quality}")


def add_model_dir(path: str | os.PathLike) -> None:
    """Search `path` for `<name>.safetensors` weight files before every other directory.

    Args:
        path: a directory (need not exist yet; a missing one is skipped when searching).
    """
    p = Path(path)
    if p not in _EXTRA_DIRS:
        _EXTRA_DIRS.insert(0, p)


def model_dirs() -> list[Path]:
    """The directories searched for weight files, in search order (see the module docstring).

    Returns:
        Existing and missing directories alike; the built-in ones only when they exist.
    """
    env = [Path(p) for p in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep) if p]
    builtin = [d for d in (PACKAGE_MODELS_DIR, SOURCE_MODELS_DIR) if d.is_dir()]
    out: list[Path] = []
    for d in [*_EXTRA_DIRS, *env, *builtin]:
        if d not in out:
            out.append(d)
    return out


def add_weights(data: bytes, name: str) -> None:
    """Make safetensors bytes loadable by `name` in this process (tests, experiments).

    They take precedence over any file of that name, and no SHA-256 pin applies to them (use
    `vqcodec.zoo.register`, which also drops loaded copies of an earlier registration).

    Args:
        data: weight file bytes (`vqcodec.serialise.model_bytes`).
        name: the model name, an identifier (`check_name`).

    Raises:
        VqcModelError: the name is not an identifier.
    """
    _IN_MEMORY[check_name(name)] = data


def check_name(name: str) -> str:
    """`vqcodec.modelfile.check_name` (an identifier, never a path), raising VqcModelError:
    the error class a decoder reports for a file naming such a model (format/SPEC.md)."""
    try:
        return modelfile.check_name(name)
    except modelfile.ModelFileError as exc:
        raise VqcModelError(str(exc)) from None


def weights_path(name: str) -> Path | None:
    """Where the weights of model `name` are found on disk.

    Args:
        name: a model name (an identifier).

    Returns:
        The file `weights(name)` reads (for a released model: the first copy that matches its
        pin), or None when the model was given to `add_weights` or is found nowhere.

    Raises:
        VqcModelError: the name is not an identifier.
    """
    if check_name(name) in _IN_MEMORY:
        return None
    for path in _candidates(name):
        try:
            _read(path, name, keep=False)
        except (OSError, VqcModelError):
            continue
        return path
    return None


def _candidates(name: str) -> list[Path]:
    """The regular files `<name>.safetensors` in model_dirs(), in search order."""
    return [d / f"{name}.safetensors" for d in model_dirs() if (d / f"{name}.safetensors").is_file()]


def _read(path: Path, name: str, keep: bool = True) -> bytes:
    """A weight file's bytes (b"" when not `keep`), read in chunks up to the size cap and,
    for a released `name`, checked against its pin.

    Raises:
        OSError: the file cannot be read.
        VqcModelError: it is above the cap, or does not match the pin (one line each).
    """
    release = RELEASES.get(name)
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        try:
            modelfile.check_file_size(st.st_size)
        except modelfile.ModelFileError as exc:
            raise VqcModelError(f"{path}: {exc}") from None
        key = (str(path), st.st_size, st.st_mtime_ns)
        if not keep and (release is None or _DIGESTS.get(key) == release.sha256):
            return b""
        digest, chunks, total = hashlib.sha256(), [], 0
        while chunk := fh.read(_READ_CHUNK):
            total += len(chunk)
            if total > modelfile.MAX_MODEL_FILE_BYTES:  # it grew, or its size lies (/proc)
                raise VqcModelError(f"{path}: model file is above the cap of "
                                    f"{modelfile.MAX_MODEL_FILE_BYTES // 2**20} MiB")
            digest.update(chunk)
            if keep:
                chunks.append(chunk)
    _DIGESTS[key] = digest.hexdigest()
    if release is not None and _DIGESTS[key] != release.sha256:
        raise VqcModelError(f"{path} does not match its registered SHA-256 (tampered or corrupted weights)")
    return b"".join(chunks)


def weights(name: str) -> bytes:
    """The safetensors bytes of model `name`, checked against its SHA-256 pin when released.

    Args:
        name: a released model name, a name given to `add_weights`, or the stem of a
            `.safetensors` file in one of `model_dirs()`; always an identifier, never a path.

    Returns:
        The whole weight file (about 5 MB for a released model; at most
        `vqcodec.modelfile.MAX_MODEL_FILE_BYTES`).

    Raises:
        VqcModelError: the name is not an identifier, it is found nowhere, a file is above the
            size cap, no copy of a released model matches its pinned SHA-256 (tampered or
            corrupted weights), or the file cannot be read.
    """
    if check_name(name) in _IN_MEMORY:
        return _IN_MEMORY[name]
    found = _candidates(name)
    if not found:
        if name not in RELEASES:
            raise VqcModelError(f"unknown model {name!r}; known: {', '.join(sorted(RELEASES))} "
                                f"(extra model directories: ${MODEL_PATH_ENV})")
        where = ", ".join(str(d) for d in model_dirs()) or "no model directory exists"
        raise VqcModelError(f"model {name!r}: cannot read {name}.safetensors (searched: {where})")
    problems = []
    for path in found:
        try:
            return _read(path, name)
        except OSError as exc:
            problems.append(f"cannot read {path} ({exc.strerror})")
        except VqcModelError as exc:
            problems.append(str(exc))
    raise VqcModelError(f"model {name!r}: " + "; ".join(problems))
