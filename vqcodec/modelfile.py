"""A model file as untrusted input: its size caps, its safetensors header and the ranges of its
configuration (format/SPEC.md, "Model file"), checked before anything is built from it.

A `.vqc` file names its model, and the model file is read from a directory the user (or
`VQC_MODEL_PATH`) chose, so a hostile file can sit there under any name.  This module bounds
what reading one costs: the file is at most `MAX_MODEL_FILE_BYTES`, its JSON header at most
`MAX_HEADER_BYTES`, every integer of `vqvae_config` / `prior_config` is inside `CONFIG_RANGES`,
and every tensor entry of the header is well formed.  Only then do `vqcodec.serialise` and
`vqcodec.zoo` compare shapes and build networks.  No torch here: cheap to import.

`CONFIG_RANGES` is the one table vqcodec applies; SPEC.md states it as a table, and the reference
decoder (`format/reference/network.py`) keeps its own transcription (a test checks that the
three agree).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

#: A model file is at most this many bytes (released models: 3.7 to 4.9 MB). Building a model
#: costs about 11x its file size in memory: a 31.8 MiB model at the corners of CONFIG_RANGES
#: builds within a peak RSS of 584 MB, torch's ~225 MB included (64 MiB: 865 MB).
MAX_MODEL_FILE_BYTES = 32 * 2**20
#: Its JSON header (the u64le N of safetensors) is at most this many bytes (released: <= 17 KB).
MAX_HEADER_BYTES = 2**20
#: Tensor dtypes a model file may hold, with their sizes in bytes.
DTYPE_BYTES = {"F16": 2, "I8": 1, "I32": 4}
#: A model name: an identifier, never a path (format/SPEC.md, "Model file").
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{0,31}")
#: The longest model name (the container's cap).
MAX_NAME_BYTES = 32


@dataclass(frozen=True)
class FieldRange:
    """The valid values of one integer field of a model file's configuration.

    Attributes:
        config: the metadata key holding the field ("vqvae_config" or "prior_config").
        key: the field's JSON key.
        symbol: its name in format/SPEC.md (e.g. "C" for prior_config's "channels").
        lo: the smallest valid value.
        hi: the largest valid value.
        power_of_two: the value must also be a power of two.
    """

    config: str
    key: str
    symbol: str
    lo: int
    hi: int
    power_of_two: bool = False


#: Every integer field a decoder reads, with its range (format/SPEC.md, "Model file").
CONFIG_RANGES: tuple[FieldRange, ...] = (
    FieldRange("vqvae_config", "f", "f", 4, 64, power_of_two=True),
    FieldRange("vqvae_config", "K", "K", 2, 2**16),
    FieldRange("vqvae_config", "D", "D", 1, 256),
    FieldRange("vqvae_config", "c_lo", "c_lo", 1, 512),
    FieldRange("vqvae_config", "c_hi", "c_hi", 1, 512),
    FieldRange("vqvae_config", "n_res", "n_res", 0, 8),
    FieldRange("prior_config", "K", "K", 2, 2**16),
    FieldRange("prior_config", "channels", "C", 1, 512),
    FieldRange("prior_config", "layers", "L", 1, 8),
)


#: The fields an architecture "rvq" file adds (format/SPEC.md, "Architecture rvq"): S_max in both configs.
RVQ_RANGES: tuple[FieldRange, ...] = (
    FieldRange("vqvae_config", "stages", "S_max", 1, 8),
    FieldRange("prior_config", "stages", "S_max", 1, 8),
)


def check_rvq_configs(vq: dict, pr: dict) -> int:
    """Check the "stages" fields of an rvq model file's configs (after `read_configs`).

    Args:
        vq: the vqvae_config dict.
        pr: the prior_config dict.

    Returns:
        S_max.

    Raises:
        ModelFileError: a "stages" field is missing or outside 1..8, or the two differ.
    """
    configs = {"vqvae_config": vq, "prior_config": pr}
    for r in RVQ_RANGES:
        check_field(r, configs[r.config].get(r.key))
    if vq["stages"] != pr["stages"]:
        raise ModelFileError(f"prior stages={pr['stages']} differs from the VQ-VAE's stages={vq['stages']}")
    return vq["stages"]


class ModelFileError(ValueError):
    """A model file breaks a rule of format/SPEC.md, "Model file" (one line, no traceback)."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors header.

    Attributes:
        dtype: "F16", "I8" or "I32".
        shape: its dimensions.
        begin: first byte of its data, relative to the end of the header.
        end: one past its last byte.
    """

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Header:
    """The checked header of a model file.

    Attributes:
        metadata: the `__metadata__` object (strings).
        tensors: tensor name -> entry.
        data_bytes: the bytes after the header (the tensors' data).
    """

    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]
    data_bytes: int


def check_name(name: str) -> str:
    """Check that a model name is an identifier, never a path.

    Args:
        name: a model name, e.g. from a `.vqc` header.

    Returns:
        The name.

    Raises:
        ModelFileError: it is not `[a-z0-9][a-z0-9.-]*` of at most 32 characters.
    """
    if not isinstance(name, str) or NAME_PATTERN.fullmatch(name) is None:
        raise ModelFileError(f"model name {_short(name)} is not a model identifier "
                             f"([a-z0-9][a-z0-9.-]*, at most {MAX_NAME_BYTES} characters)")
    return name


def check_file_size(size: int) -> None:
    """Check a model file's size before reading it.

    Args:
        size: the file's size in bytes.

    Raises:
        ModelFileError: it is above MAX_MODEL_FILE_BYTES.
    """
    if size > MAX_MODEL_FILE_BYTES:
        raise ModelFileError(f"model file is {size} bytes, above the cap of "
                             f"{MAX_MODEL_FILE_BYTES // 2**20} MiB")


def read_header(data: bytes) -> Header:
    """Parse and check the header of a safetensors model file, without reading any tensor.

    Args:
        data: the whole file.

    Returns:
        The header: metadata strings and tensor entries, each with a known dtype, a shape of
        non-negative integers and data_offsets that cover exactly its bytes inside the file.

    Raises:
        ModelFileError: the file or its header is above its cap, the header is not a JSON
            object of the safetensors layout, or a tensor entry is malformed.
    """
    check_file_size(len(data))
    if len(data) < 8:
        raise ModelFileError(f"model file is {len(data)} bytes, too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n > MAX_HEADER_BYTES:
        raise ModelFileError(f"model file header is {n} bytes, above the cap of {MAX_HEADER_BYTES}")
    if n > len(data) - 8:
        raise ModelFileError(f"model file header is {n} bytes, but only {len(data) - 8} follow")
    try:
        obj = json.loads(data[8:8 + n], object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(f"model file header is not JSON ({one_line(exc)})") from None
    if not isinstance(obj, dict):
        raise ModelFileError("model file header is not a JSON object")
    meta = obj.pop("__metadata__", None)
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError("model file has no __metadata__ object of strings")
    data_bytes = len(data) - 8 - n
    tensors = {name: _entry(name, e, data_bytes) for name, e in obj.items()}
    return Header(meta, tensors, data_bytes)


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object's pairs as a dict; a repeated key is an error (readers differ on which one
    wins, so a checked entry could differ from the one the tensor loader uses)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice in one JSON object")
    return out


def _entry(name: str, e: object, data_bytes: int) -> TensorEntry:
    if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
        raise ModelFileError(f"tensor {_short(name)}: not a safetensors entry")
    dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ModelFileError(f"tensor {_short(name)}: dtype {_short(dtype)} is not one of "
                             f"{', '.join(DTYPE_BYTES)}")
    if not isinstance(shape, list) or len(shape) > 4 or not all(_is_int(d) and d >= 0 for d in shape):
        raise ModelFileError(f"tensor {_short(name)}: shape is not a list of at most 4 sizes")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes):
        raise ModelFileError(f"tensor {_short(name)}: data_offsets are not inside the file")
    if offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ModelFileError(f"tensor {_short(name)}: data_offsets do not hold its {dtype} {shape}")
    return TensorEntry(dtype, tuple(shape), offsets[0], offsets[1])


def read_configs(meta: dict[str, str]) -> tuple[dict, dict]:
    """The `vqvae_config` and `prior_config` of a model file, checked against CONFIG_RANGES.

    Args:
        meta: the header's metadata (`Header.metadata`).

    Returns:
        (vqvae_config, prior_config) as dicts; every field of CONFIG_RANGES is an int in its
        range, and the prior's K equals the codebook's.  Other fields are left as they are.

    Raises:
        ModelFileError: a config is missing or not a JSON object, a field is missing, not an
            integer or outside its range, or the two K differ.
    """
    configs = {}
    for key in ("vqvae_config", "prior_config"):
        text = meta.get(key)
        try:
            cfg = json.loads(text) if isinstance(text, str) else None
        except (ValueError, RecursionError):
            cfg = None
        if not isinstance(cfg, dict):
            raise ModelFileError(f"metadata {key} is missing or not a JSON object")
        configs[key] = cfg
    for r in CONFIG_RANGES:
        check_field(r, configs[r.config].get(r.key))
    vq, pr = configs["vqvae_config"], configs["prior_config"]
    if vq["K"] != pr["K"]:
        raise ModelFileError(f"prior K={pr['K']} differs from codebook K={vq['K']}")
    return vq, pr


def check_field(r: FieldRange, value: object) -> int:
    """Check one configuration field against its range.

    Args:
        r: the field's entry of CONFIG_RANGES.
        value: the value the file holds (any JSON value, or None when absent).

    Returns:
        The value.

    Raises:
        ModelFileError: it is not an integer in [r.lo, r.hi] (a power of two if required).
    """
    ok = _is_int(value) and r.lo <= value <= r.hi
    if ok and r.power_of_two:
        ok = value & (value - 1) == 0
    if not ok:
        kind = "a power of two" if r.power_of_two else "an integer"
        raise ModelFileError(f"{r.config} {r.key} = {_short(value)} is not {kind} in "
                             f"[{r.lo}, {r.hi}]")
    return value


def check_shapes(header: Header, expected: dict[str, tuple[str, tuple[int, ...]]]) -> None:
    """Check that the header holds each expected tensor with the expected dtype and shape.

    Args:
        header: from `read_header`.
        expected: tensor name -> (dtype, shape).

    Raises:
        ModelFileError: a tensor is missing or differs (the first one, by name).
    """
    for name in sorted(expected):
        dtype, shape = expected[name]
        e = header.tensors.get(name)
        if e is None:
            raise ModelFileError(f"tensor {name} is missing")
        if (e.dtype, e.shape) != (dtype, tuple(shape)):
            raise ModelFileError(f"tensor {name} is {e.dtype} {list(e.shape)}, expected {dtype} "
                                 f"{list(shape)}")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: object, limit: int = 40) -> str:
    """repr(v) cut to `limit` characters (a 4000-digit number stays one short line)."""
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 128:
        return f"<an integer of {v.bit_length()} bits>"
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def one_line(exc: BaseException) -> str:
    """An exception's message as one short line (torch's state-dict dumps span many lines).

    Args:
        exc: any exception.

    Returns:
        Its first non-empty message line, cut to 300 characters (its class name if empty).
    """
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
