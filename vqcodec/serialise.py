"""Model serialisation: a VQ-VAE + prior pair <-> one safetensors file (never pickle).

Profile "exact" (v1 models): fp16 tensors `vqvae.*` (the codebook, not the EMA statistics) and
`prior.*`, and the metadata keys "name", "vqvae_config" and "prior_config" (JSON).  Profile
"int8" (format/SPEC.md, "Integer arithmetic, profile int8"): the same fp16 `vqvae.*` tensors
(the encoder and codebook compress; the float decoder is kept for evaluation), the integer
networks `int8.prior.*` and `int8.decoder.*`, no float prior, and the metadata key
"profile": "int8".  The header is written with sorted keys, so equal weights give equal bytes
and so an equal model id (SHA-256).

Reading (`parse_model`) treats the bytes as untrusted input: `vqcodec.modelfile` checks the size
and header caps, the configuration ranges and every tensor's dtype and shape from the header
before any network is built, and every failure is one `VqcModelError` line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vqcodec import modelfile, profiles
from vqcodec.errors import VqcModelError
from vqcodec.profiles import ARCH_KEY, ARCH_RVQ, ARCH_VQ, PROFILE_EXACT, PROFILE_INT8, PROFILE_KEY  # noqa: F401
from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.vqvae import VQVAE, VectorQuantizer, VQVAEConfig

#: Prefix of the integer tensors of profile int8.
INT8_PREFIX = "int8."


@dataclass
class ModelFile:
    """A parsed weight file.

    Attributes:
        profile: the arithmetic profile, PROFILE_EXACT or PROFILE_INT8 (`vqcodec.profiles`).
        vqvae: the float VQ-VAE (eval mode, CPU).
        prior_cfg: the prior's architecture.
        prior: the float prior (eval mode, CPU), or None (profile int8 keeps none).
        int8: the integer tensors (profile int8: `int8.*`), keyed by their full names.
        arch: the architecture (metadata "arch"; ARCH_VQ when absent): for ARCH_RVQ, vqvae is
            an `rvq.RVQVAE` without its float decoder (None: the file keeps none) and prior_cfg
            a `prior_stages.StagePriorConfig`.
    """

    profile: str
    vqvae: VQVAE
    prior_cfg: PriorConfig
    prior: GatedPixelCNN | None = None
    int8: dict[str, torch.Tensor] = field(default_factory=dict)
    arch: str = ARCH_VQ


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
    return canonical(st_save(tensors, metadata=metadata(vqvae, prior.cfg, name)))


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
    meta = {**metadata(vqvae, prior_cfg, name), PROFILE_KEY: PROFILE_INT8}
    return canonical(st_save(tensors, metadata=meta))


def metadata(vqvae: VQVAE, prior_cfg: PriorConfig, name: str) -> dict[str, str]:
    """A model file's metadata "name", "vqvae_config" and "prior_config" (JSON, sorted keys);
    writers add "profile" and "arch" where they are not the defaults."""
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
    """Rebuild a model from safetensors bytes (fp16 values widened to float32), checking the
    file as untrusted input first (`vqcodec.modelfile`): its size and header caps, the ranges of
    its configuration, and every tensor's dtype and shape from the header, before any network
    is built or any tensor is read.

    Args:
        data: the bytes of a weight file written by `model_bytes` or `model_bytes_int8`.
        name: the model name, for error messages.

    Returns:
        The parsed file: the VQ-VAE and, for profile exact, the float prior, both in eval mode
        on the CPU; for profile int8, the integer tensors (their ranges are checked when the
        integer networks are built from them, `vqcodec.zoo.build`).

    Raises:
        VqcModelError (one line): the bytes are not a safetensors model file within the caps,
            name an unknown architecture or profile (not in `vqcodec.profiles`), a configuration field is outside its range, a tensor is
            missing or has another dtype or shape than the configuration gives, an fp16 value
            is not finite, or a profile int8 file holds tensors other than vqvae.* and int8.*;
            metadata "arch" (absent: "vq") is other than "vq" or "rvq" (an rvq file: profile
            int8 only, "stages" 1..8 in both configs and equal; `_parse_rvq`).
    """
    try:
        header = modelfile.read_header(data)
        arch = header.metadata.get(ARCH_KEY, ARCH_VQ)
        profile = header.metadata.get(PROFILE_KEY, PROFILE_EXACT)
        try:
            kind = profiles.lookup(arch, profile)
        except KeyError as exc:
            raise modelfile.ModelFileError(exc.args[0]) from None
        if arch == ARCH_RVQ:
            return _parse_rvq(data, header, profile)
        vq_dict, pr_dict = modelfile.read_configs(header.metadata)
        vq_cfg = VQVAEConfig(**{k: vq_dict[k] for k in _VQ_KEYS if k in vq_dict})
        prior_cfg = PriorConfig(K=pr_dict["K"], channels=pr_dict["channels"], layers=pr_dict["layers"])
        prefix = kind.integer_prefix
        tensors = _checked_tensors(data, header, expected_tensors(vq_cfg, prior_cfg, profile, arch),
                                   profile, prefix)
        vqvae = _float_vqvae(VQVAE(vq_cfg), tensors)
        if not kind.float_prior:
            other = {k: v for k, v in tensors.items() if prefix and k.startswith(prefix)}
            return ModelFile(profile, vqvae.eval(), prior_cfg, int8=other, arch=arch)
        prior = GatedPixelCNN(prior_cfg)
        prior.load_state_dict({k[6:]: v.float() for k, v in tensors.items() if k.startswith("prior.")})
    except Exception as exc:  # the file is untrusted: any fault in it is one clear model error
        raise VqcModelError(f"model {name!r}: weight file is malformed ({modelfile.one_line(exc)})") from None
    return ModelFile(profile, vqvae.eval(), prior_cfg, prior.eval(), arch=arch)


#: The fields of VQVAEConfig a file may set (others, if any, are ignored).
_VQ_KEYS = ("f", "K", "D", "c_lo", "c_hi", "n_res", "beta", "ema_decay")


def expected_tensors(vq_cfg: VQVAEConfig, prior_cfg: PriorConfig, profile: str,
                     arch: str = ARCH_VQ) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The float tensors a model file of this architecture must hold, from the configuration
    alone (the networks are built on torch's "meta" device: no memory is allocated).

    Args:
        vq_cfg: the VQ-VAE's architecture (inside `vqcodec.modelfile.CONFIG_RANGES`).
        prior_cfg: the prior's architecture.
        profile: the arithmetic profile: its `vqcodec.profiles` entry says whether the file
            holds the float prior (PROFILE_EXACT: fp16 vqvae.* and prior.*; PROFILE_INT8: fp16
            vqvae.* only, the int8.* tensors are checked by the integer networks).
        arch: the architecture (a registered one).

    Returns:
        Tensor name -> ("F16", shape).

    Raises:
        KeyError: (arch, profile) is not registered.
    """
    float_prior = profiles.lookup(arch, profile).float_prior
    with torch.device("meta"):
        vq_state = VQVAE(vq_cfg).state_dict()
        prior_state = GatedPixelCNN(prior_cfg).state_dict() if float_prior else {}
    out = {f"vqvae.{k}": ("F16", tuple(v.shape)) for k, v in vq_state.items()
           if not k.startswith("quantizer.") or k == "quantizer.codebook"}
    out.update({f"prior.{k}": ("F16", tuple(v.shape)) for k, v in prior_state.items()})
    return out


def _checked_tensors(data: bytes, header: modelfile.Header, expected: dict, profile: str,
                     prefix: str | None) -> dict[str, torch.Tensor]:
    """The file's tensors once the header has the `expected` fp16 tensors (shapes), nothing but
    vqvae.* and `prefix`* when there is an integer prefix, no unexpected vqvae.* / prior.*
    tensor, and finite fp16 values (ModelFileError otherwise)."""
    modelfile.check_shapes(header, expected)
    if prefix and any(not k.startswith(("vqvae.", prefix)) for k in header.tensors):
        raise modelfile.ModelFileError(f"a profile {profile} file holds only vqvae.* and {prefix}* tensors")
    extra = sorted(k for k in header.tensors if k.startswith(("vqvae.", "prior.")) and k not in expected)
    if extra:
        raise modelfile.ModelFileError(f"unexpected tensor {extra[0]} ({len(extra)} in all)")
    tensors = st_load(data)
    _check_finite(tensors)
    return tensors


def _float_vqvae(vqvae, tensors: dict[str, torch.Tensor]):
    """vqvae (a `VQVAE` or `rvq.RVQVAE`) with the file's fp16 vqvae.* weights (widened to
    float32) and every codebook marked initialised."""
    vqvae.load_state_dict({k[6:]: v.float() for k, v in tensors.items() if k.startswith("vqvae.")},
                          strict=False)
    for m in vqvae.modules():
        if isinstance(m, VectorQuantizer):
            m.initialized.fill_(True)
    return vqvae


def _check_finite(tensors: dict[str, torch.Tensor]) -> None:
    for key in sorted(tensors):
        t = tensors[key]
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise modelfile.ModelFileError(f"tensor {key} has values that are not finite")


# ---- architecture "rvq" (format/SPEC.md, "Architecture rvq") ---------------------------------------------------
def _rvq_float_tensors(vqvae) -> dict[str, torch.Tensor]:
    """An RVQVAE's file tensors as they are (the caller converts them to fp16): what an encoder
    uses, encoder.* and quantizer.stages.{s}.codebook (no EMA statistics, no float decoder: no
    decoder reads it, format/SPEC.md "Model file, arch rvq"), prefixed "vqvae."."""
    keep = lambda k: k.startswith("encoder.") or (k.startswith("quantizer.stages.")  # noqa: E731
                                                  and k.endswith(".codebook"))
    return {f"vqvae.{k}": v for k, v in vqvae.state_dict().items() if keep(k)}


def model_bytes_rvq_int8(vqvae, prior_cfg, int8_tensors: dict[str, torch.Tensor], name: str) -> bytes:
    """Serialise an rvq model of profile int8 to safetensors bytes (format/SPEC.md, "Architecture rvq").

    Args:
        vqvae: the float `rvq.RVQVAE` (fp16 `vqvae.*`: encoder, decoder, stage codebooks).
        prior_cfg: the `prior_stages.StagePriorConfig` (K, channels, layers, stages).
        int8_tensors: `Int8StagePrior.tensors()` and `Int8StageDecoder.tensors()`.
        name: the model name recorded in the metadata.

    Returns:
        Deterministic safetensors bytes (canonical sorted header); metadata "name", "arch": "rvq",
        "profile": "int8", "vqvae_config" and "prior_config" (both with "stages").

    Raises:
        ValueError: a key of int8_tensors does not start with "int8.".
    """
    if any(not k.startswith(INT8_PREFIX) for k in int8_tensors):
        raise ValueError(f"integer tensor names must start with {INT8_PREFIX!r}")
    tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in _rvq_float_tensors(vqvae).items()}
    tensors.update({k: v.detach().contiguous().cpu() for k, v in int8_tensors.items()})
    meta = {**metadata(vqvae, prior_cfg, name), PROFILE_KEY: PROFILE_INT8, ARCH_KEY: ARCH_RVQ}
    return canonical(st_save(tensors, metadata=meta))


def expected_tensors_rvq(vq_cfg) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The fp16 tensors an rvq model file must hold (`rvq.RVQVAE` built on the meta device).

    Args:
        vq_cfg: an `rvq.RVQConfig`.

    Returns:
        Tensor name -> ("F16", shape).
    """
    from vqcodec.rvq import RVQVAE

    with torch.device("meta"):
        model = RVQVAE(vq_cfg)
    return {k: ("F16", tuple(v.shape)) for k, v in _rvq_float_tensors(model).items()}


def _parse_rvq(data: bytes, header: modelfile.Header, profile: str) -> ModelFile:
    """`parse_model`'s arch "rvq" branch (its caller turns every exception into one
    `VqcModelError` line; the registry admits profile int8 only): configs in range (`modelfile.read_configs`,
    `modelfile.check_rvq_configs`), fp16 tensors exactly `expected_tensors_rvq`, integer tensors
    under int8.* (checked by `Int8StagePrior` / `Int8StageDecoder`), finite values."""
    from vqcodec.prior_stages import StagePriorConfig
    from vqcodec.rvq import RVQConfig, RVQVAE

    vq_dict, pr_dict = modelfile.read_configs(header.metadata)
    stages = modelfile.check_rvq_configs(vq_dict, pr_dict)
    vq_cfg = RVQConfig(**{k: vq_dict[k] for k in _VQ_KEYS if k in vq_dict}, stages=stages)
    prior_cfg = StagePriorConfig(K=pr_dict["K"], channels=pr_dict["channels"], layers=pr_dict["layers"],
                                 stages=stages)
    tensors = _checked_tensors(data, header, expected_tensors_rvq(vq_cfg), profile, INT8_PREFIX)
    vqvae = _float_vqvae(RVQVAE(vq_cfg), tensors)
    vqvae.decoder = None  # the file keeps no float decoder: nothing may run an untrained one
    other = {k: v for k, v in tensors.items() if k.startswith(INT8_PREFIX)}
    return ModelFile(profile, vqvae.eval(), prior_cfg, int8=other, arch=ARCH_RVQ)
