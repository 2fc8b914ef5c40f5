"""Model loading: a model name (and the 8-byte id from a `.vqc` header) -> a `CodecModel` ready
to run on a device, cached per device.

Which models exist and where their weight files are is `vqcodec.registry`; the weight file
format is `vqcodec.serialise`. The names re-exported here (`RELEASES`, `QUALITY_LEVELS`,
`DEFAULT_QUALITY`, `for_quality`, `add_model_dir`, `model_bytes`) keep `vqcodec.zoo` the one import a caller needs.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import torch

from vqcodec import profiles, registry
from vqcodec.constants import DEFAULT_QUALITY, PRIOR_TILE
from vqcodec.errors import VqcModelError
from vqcodec.interfaces import EntropyPrior, PixelDecoder
from vqcodec.prior import GatedPixelCNN
from vqcodec.registry import QUALITY_LEVELS, RELEASES, add_model_dir, for_quality
from vqcodec.modelfile import one_line
from vqcodec.serialise import ARCH_VQ, PROFILE_EXACT, model_bytes, parse_model
from vqcodec.vqvae import VQVAE

__all__ = ["CodecModel", "load", "build", "register", "resolve_device", "float_prior",
           "RELEASES", "QUALITY_LEVELS", "DEFAULT_QUALITY", "for_quality", "add_model_dir", "model_bytes"]


@dataclass
class CodecModel:
    """Everything the codec needs from one model, on one device.

    Attributes:
        name: registry name.
        model_hash: 8-byte model id written into `.vqc` headers (SHA-256 of the weight file).
        vqvae: float VQ-VAE (its encoder is used for compression).
        prior: integer-exact prior (`vqcodec.interfaces.EntropyPrior`: e.g.
            `vqcodec.prior_exact.ExactPrior`, or `vqcodec.prior_int8.Int8Prior` for profile int8).
        decoder: integer-exact pixel decoder (`vqcodec.interfaces.PixelDecoder`: e.g.
            `vqcodec.vqvae.IntDecoder`, or `vqcodec.vqvae_int8.Int8Decoder`).
        tile: prior tile size the encoder writes, in latent positions per side.
        device: where the networks run.
        profile: the arithmetic profile (`vqcodec.serialise.PROFILE_EXACT` or `PROFILE_INT8`).
        arch: the architecture (`vqcodec.profiles.ARCH_VQ` or `ARCH_RVQ`).
        stages: S_max, the most stages of indices per position a file may code (1 for arch
            "vq"; an rvq model's prior is an `Int8StagePrior`, its decoder an `Int8StageDecoder`).
    """

    name: str
    model_hash: bytes
    vqvae: VQVAE
    prior: EntropyPrior
    decoder: PixelDecoder
    tile: int = PRIOR_TILE
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    profile: str = PROFILE_EXACT
    arch: str = ARCH_VQ
    stages: int = 1

    @property
    def f(self) -> int:
        """Downsampling factor: pixels per latent position along each axis."""
        return self.vqvae.cfg.f

    @property
    def K(self) -> int:
        """Codebook size: indices are in [0, K)."""
        return self.vqvae.cfg.K


_CACHE: dict[tuple[str, str], CodecModel] = {}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device for a `--device` value.

    Args:
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda" or any torch device.

    Returns:
        The device.

    Raises:
        VqcModelError: a CUDA device was asked for but none is available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VqcModelError("--device cuda was asked for, but no CUDA GPU is available")
    return dev


def build(data: bytes, name: str, device: str | torch.device = "cpu") -> CodecModel:
    """A `CodecModel` from safetensors bytes, without any registry or hash check (see `load`).

    Args:
        data: weight file bytes (`vqcodec.serialise.model_bytes` or `model_bytes_int8`).
        name: the model name.
        device: as `resolve_device`.

    Returns:
        The model; its `model_hash` is the first 8 bytes of SHA-256(data).

    Raises:
        VqcModelError (one line, never another exception): malformed weights (see
            `vqcodec.serialise.parse_model`), integer networks outside the ranges or bounds of
            format/SPEC.md, or an unavailable device.
    """
    dev = resolve_device(device)
    mf = parse_model(data, name)
    try:
        kind = profiles.lookup(mf.arch, mf.profile)
    except KeyError as exc:  # parse_model accepts registered pairs only; a ModelFile made by hand
        raise VqcModelError(f"model {name!r}: {exc.args[0]}") from None
    try:
        vqvae = mf.vqvae.to(dev)
        int_prior, int_decoder = kind.build(mf, dev)
    except ValueError as exc:  # a layer outside the ranges or exactness bounds of format/SPEC.md
        raise VqcModelError(f"model {name!r}: {one_line(exc)}") from None
    except Exception as exc:  # anything else a checked file still trips: one model error line, so
        # callers that catch VqcError (CLI, Pillow plugin) never see a torch exception
        raise VqcModelError(f"model {name!r}: cannot build its networks "
                            f"({type(exc).__name__}: {one_line(exc)})") from None
    return CodecModel(name=name, model_hash=hashlib.sha256(data).digest()[:8], vqvae=vqvae,
                      prior=int_prior, decoder=int_decoder, device=dev, profile=mf.profile, arch=mf.arch,
                      stages=getattr(mf.prior_cfg, "stages", 1))


def register(data: bytes, name: str) -> bytes:
    """Make safetensors bytes loadable by `name` in this process (tests, experiments).

    Args:
        data: weight file bytes.
        name: the name `load` will know them by (replaces an earlier registration).

    Returns:
        The 8-byte model id.
    """
    registry.add_weights(data, name)
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]
    float_prior.cache_clear()
    return hashlib.sha256(data).digest()[:8]


def load(name: str, model_hash: bytes | None = None, device: str | torch.device = "auto") -> CodecModel:
    """Load a model by name (cached per device).

    Args:
        name: a released model, one given to `register`, or a file in `registry.model_dirs()`.
        model_hash: the 8-byte model id from a `.vqc` header, checked when given.
        device: as `resolve_device`.

    Returns:
        The model.

    Raises:
        VqcModelError: unknown name, missing or tampered weight file (SHA-256 pin), malformed
            weights, a model id that differs from `model_hash`, or an unavailable device.
    """
    dev = resolve_device(device)
    key = (name, str(dev))
    if key not in _CACHE:
        _CACHE[key] = build(registry.weights(name), name, dev)
    model = _CACHE[key]
    if model_hash is not None and model.model_hash != model_hash:
        raise VqcModelError(f"file needs model {name!r} with id {model_hash.hex()}, but the "
                            f"installed one has id {model.model_hash.hex()}")
    return model


@functools.lru_cache(maxsize=4)
def float_prior(name: str) -> GatedPixelCNN:
    """The float (training-time) gated PixelCNN prior of a model, for evaluation only (the codec
    itself codes with the integer prior, `CodecModel.prior`). Cached (4 models).

    Args:
        name: as for `load`.

    Returns:
        The prior in eval mode on the CPU; fp16 weights widened to float32. It maps an index
        grid int64 [N, h, w] to logits float32 [N, K, h, w] (nats).

    Raises:
        VqcModelError: as `load`, or the model keeps no float prior (profile int8).
    """
    prior = parse_model(registry.weights(name), name).prior
    if prior is None:
        raise VqcModelError(f"model {name!r} (profile int8) has no float prior")
    return prior
