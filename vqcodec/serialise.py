"""Model serialisation: a VQ-VAE + prior pair <-> one safetensors file (never pickle).

The file holds fp16 tensors `vqvae.*` (the codebook, not the EMA statistics) and `prior.*`, and
the metadata keys "name", "vqvae_config" and "prior_config" (JSON). The header is written with
sorted keys, so equal weights give equal bytes and so an equal model id (SHA-256).
"""

from __future__ import annotations

import json

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vqcodec.errors import VqcModelError
from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.vqvae import VQVAE, VQVAEConfig


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
    meta = {"name": name, "vqvae_config": json.dumps(vqvae.cfg.to_dict(), sort_keys=True),
            "prior_config": json.dumps(prior.cfg.to_dict(), sort_keys=True)}
    return canonical(st_save(tensors, metadata=meta))


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


def parse_model(data: bytes, name: str) -> tuple[VQVAE, GatedPixelCNN]:
    """Rebuild the float models from safetensors bytes (fp16 values widened to float32).

    Args:
        data: the bytes of a weight file written by `model_bytes`.
        name: the model name, for error messages.

    Returns:
        (VQ-VAE, float prior), both in eval mode on the CPU.

    Raises:
        VqcModelError: the bytes are not safetensors, lack the metadata, or the tensors do not
            match the recorded architecture (including a prior K different from the codebook's).
    """
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
