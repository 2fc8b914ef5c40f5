"""Model registry: released models by name, their weight hashes, and loading (safetensors only).

A released model is one file `models/<name>.safetensors` (fp16 tensors `vqvae.*` and
`prior.*`, architecture in the metadata) plus a model card `models/<name>.json`.  Released
models are immutable: the registry pins the SHA-256 of each file, a `.vqc` file names its model
by (name, first 8 bytes of that hash), and a retrained model gets a new name.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vqcodec.errors import VqcModelError
from vqcodec.prior import GatedPixelCNN, IntPrior, PriorConfig
from vqcodec.vqvae import VQVAE, IntDecoder, VQVAEConfig

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
TILE = 64  # prior tile size in latent positions (independent range-coder streams)


@dataclass(frozen=True)
class Release:
    """A released model: registry name, quality level, SHA-256 (hex) of its safetensors file."""

    name: str
    quality: int
    sha256: str


RELEASES: dict[str, Release] = {r.name: r for r in [
    Release("vqc-f8k1024-v1", 1, "cfbb43da95d18adc6ef8535e92fd06aaa79ea13664f776e86a90463fd57ff7a1"),
    Release("vqc-f4k512-v1", 2, "2313ca46b002bd67ca28e50cc678554494ccef6fe037b1bbf63560deb56c7208"),
]}
QUALITY_LEVELS = sorted(r.quality for r in RELEASES.values())
DEFAULT_QUALITY = 2


@dataclass
class CodecModel:
    """Everything the codec needs from one model, on one device.

    vqvae: float VQ-VAE (its encoder is used for compression); prior: integer prior;
    decoder: integer VQ-VAE decoder; f: downsampling factor; K: codebook size;
    model_hash: 8-byte id written into `.vqc` headers.
    """

    name: str
    model_hash: bytes
    vqvae: VQVAE
    prior: IntPrior
    decoder: IntDecoder
    tile: int = TILE
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def f(self) -> int:
        return self.vqvae.cfg.f

    @property
    def K(self) -> int:
        return self.vqvae.cfg.K


_CACHE: dict[tuple[str, str], CodecModel] = {}
_EXTRA: dict[str, bytes] = {}  # name -> safetensors bytes of models registered at run time


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' -> cuda when available, else cpu; raises VqcModelError for cuda without a GPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VqcModelError("--device cuda was asked for, but no CUDA GPU is available")
    return dev


def model_bytes(vqvae: VQVAE, prior: GatedPixelCNN, name: str) -> bytes:
    """Serialise a model to safetensors bytes (fp16 tensors, configs in the metadata)."""
    tensors = {f"vqvae.{k}": v for k, v in vqvae.state_dict().items()
               if not k.startswith("quantizer.") or k == "quantizer.codebook"}
    tensors.update({f"prior.{k}": v for k, v in prior.state_dict().items()})
    tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in tensors.items()}
    meta = {"name": name, "vqvae_config": json.dumps(vqvae.cfg.to_dict(), sort_keys=True),
            "prior_config": json.dumps(prior.cfg.to_dict(), sort_keys=True)}
    return _canonical(st_save(tensors, metadata=meta))


def _canonical(data: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys, so equal weights give equal bytes (and
    so an equal model id); the tensor data and offsets are unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def _parse(data: bytes, name: str) -> tuple[VQVAE, GatedPixelCNN]:
    try:
        tensors = st_load(data)
        meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
        vqvae = VQVAE(VQVAEConfig(**json.loads(meta["vqvae_config"])))
        prior = GatedPixelCNN(PriorConfig(**json.loads(meta["prior_config"])))
        vq_state = {k[6:]: v.float() for k, v in tensors.items() if k.startswith("vqvae.")}
        missing = vqvae.load_state_dict(vq_state, strict=False)
        if missing.unexpected_keys or any(not k.startswith("quantizer.") for k in missing.missing_keys):
            raise ValueError(f"tensors do not match the architecture: {missing}")
        vqvae.quantizer.initialized.fill_(True)
        if prior.cfg.K != vqvae.cfg.K:
            raise ValueError(f"prior K={prior.cfg.K} differs from codebook K={vqvae.cfg.K}")
        prior.load_state_dict({k[6:]: v.float() for k, v in tensors.items() if k.startswith("prior.")})
    except Exception as exc:  # any malformed weight file is one clear error
        raise VqcModelError(f"model {name!r}: weight file is malformed ({exc})") from None
    return vqvae.eval(), prior.eval()


def build(data: bytes, name: str, device: str | torch.device = "cpu") -> CodecModel:
    """A `CodecModel` from safetensors bytes (no hash check: see `load`)."""
    dev = resolve_device(device)
    vqvae, prior = _parse(data, name)
    vqvae = vqvae.to(dev)
    return CodecModel(name=name, model_hash=hashlib.sha256(data).digest()[:8], vqvae=vqvae,
                      prior=IntPrior(prior.to(dev), dev), decoder=IntDecoder(vqvae, dev), device=dev)


def register(data: bytes, name: str) -> bytes:
    """Make safetensors bytes loadable by `name` in this process (tests, experiments).
    Returns the 8-byte model hash."""
    _EXTRA[name] = data
    for key in [k for k in _CACHE if k[0] == name]:
        del _CACHE[key]
    return hashlib.sha256(data).digest()[:8]


def _release_bytes(name: str) -> bytes:
    if name in _EXTRA:
        return _EXTRA[name]
    release = RELEASES.get(name)
    if release is None:
        raise VqcModelError(f"unknown model {name!r}; known: {', '.join(sorted(RELEASES))}")
    path = MODELS_DIR / f"{name}.safetensors"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VqcModelError(f"model {name!r}: cannot read {path} ({exc.strerror})") from None
    if hashlib.sha256(data).hexdigest() != release.sha256:
        raise VqcModelError(f"model {name!r}: {path} does not match its registered SHA-256 "
                            "(tampered or corrupted weights)")
    return data


def load(name: str, model_hash: bytes | None = None, device: str | torch.device = "auto") -> CodecModel:
    """Load a model by name (cached per device), checking its weights against the registry and,
    when given, against the 8-byte `model_hash` from a `.vqc` header.

    Raises VqcModelError for an unknown name, a missing or tampered file, or a hash mismatch.
    """
    dev = resolve_device(device)
    key = (name, str(dev))
    if key not in _CACHE:
        data = _release_bytes(name)
        _CACHE[key] = build(data, name, dev)
    model = _CACHE[key]
    if model_hash is not None and model.model_hash != model_hash:
        raise VqcModelError(f"file needs model {name!r} with id {model_hash.hex()}, but the "
                            f"installed one has id {model.model_hash.hex()}")
    return model


def for_quality(quality: int) -> str:
    """Name of the released model for a quality level; raises VqcModelError for other levels."""
    for r in RELEASES.values():
        if r.quality == quality:
            return r.name
    raise VqcModelError(f"quality must be one of {QUALITY_LEVELS}, got {quality}")


def random_model_bytes(vq_cfg: VQVAEConfig, prior_cfg: PriorConfig, seed: int = 0,
                       name: str = "test-random") -> bytes:
    """Safetensors bytes of a seeded, randomly initialised model (tests need no trained weights)."""
    torch.manual_seed(seed)
    vqvae = VQVAE(vq_cfg)
    vqvae.quantizer.codebook.normal_(0, 0.3)
    return model_bytes(vqvae, GatedPixelCNN(prior_cfg), name)
