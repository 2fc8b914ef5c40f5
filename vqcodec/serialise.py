"""Model serialisation: a VQ-VAE + prior pair <-> one safetensors file (never pickle).

Profile "exact" (v1 models): fp16 tensors `vqvae.*` (the codebook, not the EMA statistics) and
`prior.*`, and the metadata keys "name", "vqvae_config" and "prior_config" (JSON).  Profile
"int8" (format/SPEC.md, "Integer arithmetic, profile int8"): the same fp16 `vqvae.*` tensors
(the encoder and codebook compress; the float decoder is kept for evaluation), the integer
networks `int8.prior.*` and `int8.decoder.*`, no float prior, and the metadata key
"profile": "int8".  The header is written with sorted keys, so equal weights give equal bytes
and so an equal model id (SHA-256).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vqcodec.errors import VqcModelError
from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.vqvae import VQVAE, VQVAEConfig

#: Metadata key naming a model's arithmetic profile; absent means PROFILE_EXACT.
PROFILE_KEY = "profile"
#: v1 arithmetic: fp16 weights turned into exact integers held in float64 (`vqcodec.intops`).
PROFILE_EXACT = "exact"
#: int8 weights, 8-bit activations, exact integer accumulation (`vqcodec.int8`).
PROFILE_INT8 = "int8"
#: Prefix of the integer tensors of profile int8.
INT8_PREFIX = "int8."


@dataclass
class ModelFile:
    """A parsed weight file.

    Attributes:
        profile: PROFILE_EXACT or PROFILE_INT8.
        vqvae: the float VQ-VAE (eval mode, CPU).
        prior_cfg: the prior's architecture.
        prior: the float prior (eval mode, CPU), or None (profile int8 keeps none).
        int8: the `int8.*` integer tensors (profile int8), keyed by their full names.
    """

    profile: str
    vqvae: VQVAE
    prior_cfg: PriorConfig
    prior: GatedPixelCNN | None = None
    int8: dict[str, torch.Tensor] = field(default_factory=dict)


def model_bytes(vqvae: VQVAE, prior: GatedPixelCNN, name: str) -> bytes:
    """Serialise a model to safetensors bytes.

    Args:
        vqvae: the trained VQ-VAE (float32 parameters; stored as fp16).
        prior: the trained float gated PixelCNN prior (stored as fp16).
        name: the model name to record in the metadata.

    Returns:
        Deterministic safetensors bytes: equal weights and name give equal bytes.
    """
    tensors = {f"vqvae.{k}": v for k, v in vqvae.state_dict().items()
               if not k.startswith("quantizer.") or k == "quantizer.codebook"}
    tensors.update({f"prior.{k}": v for k, v in prior.state_dict().items()})
    tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in tensors.items()}
    return canonical(st_save(tensors, metadata=_metadata(vqvae, prior.cfg, name)))


def model_bytes_int8(vqvae: VQVAE, prior_cfg: PriorConfig, int8_tensors: dict[str, torch.Tensor],
                     name: str) -> bytes:
    """Serialise a model of profile int8 to safetensors bytes.

    Args:
        vqvae: the float VQ-VAE (stored as fp16, as `model_bytes` does).
        prior_cfg: the prior's architecture.
        int8_tensors: the integer networks, keys starting with "int8." (`Int8Prior.tensors()`
            and `Int8Decoder.tensors()`), stored with their own integer dtypes.
        name: the model name to record in the metadata.

    Returns:
        Deterministic safetensors bytes.

    Raises:
        ValueError: a key of int8_tensors does not start with "int8.".
    """
    if any(not k.startswith(INT8_PREFIX) for k in int8_tensors):
        raise ValueError(f"integer tensor names must start with {INT8_PREFIX!r}")
    tensors = {f"vqvae.{k}": v.detach().to(torch.float16).contiguous().cpu()
               for k, v in vqvae.state_dict().items()
               if not k.startswith("quantizer.") or k == "quantizer.codebook"}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in int8_tensors.items()})
    meta = {**_metadata(vqvae, prior_cfg, name), PROFILE_KEY: PROFILE_INT8}
    return canonical(st_save(tensors, metadata=meta))


def _metadata(vqvae: VQVAE, prior_cfg: PriorConfig, name: str) -> dict[str, str]:
    return {"name": name, "vqvae_config": json.dumps(vqvae.cfg.to_dict(), sort_keys=True),
            "prior_config": json.dumps(prior_cfg.to_dict(), sort_keys=True)}


def canonical(data: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys (safetensors itself writes the metadata in
    hash-map order); the tensor data and offsets are unchanged.

    Args:
        data: safetensors bytes.

    Returns:
        The same file with a canonical header, padded to a multiple of 8 bytes.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return len(header).to_bytes(8, "little") + header + data[8 + n:]


def parse_model(data: bytes, name: str) -> ModelFile:
    """Rebuild a model from safetensors bytes (fp16 values widened to float32).

    Args:
        data: the bytes of a weight file written by `model_bytes` or `model_bytes_int8`.
        name: the model name, for error messages.

    Returns:
        The parsed file: the VQ-VAE and, for profile exact, the float prior, both in eval mode
        on the CPU; for profile int8, the integer tensors (checked when the integer networks
        are built from them).

    Raises:
        VqcModelError: the bytes are not safetensors, lack the metadata, name an unknown
            profile, or the tensors do not match the recorded architecture (including a prior
            K different from the codebook's).
    """
    try:
        tensors = st_load(data)
        meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])["__metadata__"]
        profile = meta.get(PROFILE_KEY, PROFILE_EXACT)
        if profile not in (PROFILE_EXACT, PROFILE_INT8):
            raise ValueError(f"unknown arithmetic profile {profile!r}")
        vqvae = VQVAE(VQVAEConfig(**json.loads(meta["vqvae_config"])))
        prior_cfg = PriorConfig(**json.loads(meta["prior_config"]))
        vq_state = {k[6:]: v.float() for k, v in tensors.items() if k.startswith("vqvae.")}
        missing = vqvae.load_state_dict(vq_state, strict=False)
        if missing.unexpected_keys or any(not k.startswith("quantizer.") for k in missing.missing_keys):
            raise ValueError(f"tensors do not match the architecture: {missing}")
        vqvae.quantizer.initialized.fill_(True)
        if prior_cfg.K != vqvae.cfg.K:
            raise ValueError(f"prior K={prior_cfg.K} differs from codebook K={vqvae.cfg.K}")
        other = {k: v for k, v in tensors.items() if not k.startswith("vqvae.")}
        if profile == PROFILE_INT8:
            if any(not k.startswith(INT8_PREFIX) for k in other):
                raise ValueError("a profile int8 file holds only vqvae.* and int8.* tensors")
            return ModelFile(profile, vqvae.eval(), prior_cfg, int8=other)
        prior = GatedPixelCNN(prior_cfg)
        prior.load_state_dict({k[6:]: v.float() for k, v in other.items() if k.startswith("prior.")})
    except Exception as exc:  # any malformed weight file is one clear error
        raise VqcModelError(f"model {name!r}: weight file is malformed ({exc})") from None
    return ModelFile(profile, vqvae.eval(), prior_cfg, prior.eval())
