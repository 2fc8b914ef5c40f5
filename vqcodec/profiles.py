"""The registry of model kinds: (architecture, arithmetic profile) -> how to build the codec's
integer networks from a parsed model file.

A model file names its architecture (metadata key "arch", absent = "vq") and its arithmetic
profile (metadata key "profile", absent = "exact"; format/SPEC.md, "Model file").
`vqcodec.serialise.parse_model` accepts exactly the registered pairs and `vqcodec.zoo.build`
calls the pair's builder; nothing else in the codec branches on a profile or architecture name.

Registered today:

- ("vq", "exact"): v1 models; fp16 VQ-VAE + fp16 prior, run as `vqcodec.prior_exact.ExactPrior`
  and `vqcodec.vqvae.IntDecoder`;
- ("vq", "int8"): v2 models; fp16 VQ-VAE (encoder) + `int8.*` integer networks, run as
  `vqcodec.prior_int8.Int8Prior` and `vqcodec.vqvae_int8.Int8Decoder`;
- ("rvq", "int8"): multi-stage codes (format/SPEC.md, "Architecture rvq"); fp16 residual VQ-VAE
  (`vqcodec.rvq.RVQVAE`) + `int8.*` integer networks, run as
  `vqcodec.prior_stages_int8.Int8StagePrior` and `vqcodec.vqvae_stages_int8.Int8StageDecoder`
  (its files' fp16 tensors differ, so `serialise.parse_model` reads them with `_parse_rvq`).

Adding an architecture (a residual-VQ "rvq", a hyperprior, ...):

1. write its modules: the float networks, an integer prior satisfying
   `vqcodec.interfaces.EntropyPrior`, a decoder satisfying `vqcodec.interfaces.PixelDecoder`
   (a `vqcodec.vqvae.GridDecoder` subclass, or its own), reusing `vqcodec.wavefront` and
   `vqcodec.pmf` where its coding order fits;
2. write a builder ``build(model_file, device) -> (prior, decoder)`` that reads
   `serialise.ModelFile` (its `vqvae`, `prior_cfg`, `prior` and integer tensors) and raises
   ValueError for tensors outside the profile's ranges;
3. add one `register(...)` call at the bottom of this module, as
   ``register("rvq", "int8", _build_rvq_int8, float_prior=False, integer_prefix="int8.")``
   (builders import their modules when called, so reading a model file stays cheap).

What the file must hold beyond the `vqvae.*` tensors is the entry's `float_prior` (fp16
`prior.*` tensors) and `integer_prefix` (integer tensors); an architecture whose files hold other
things extends `vqcodec.serialise.parse_model` there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

if TYPE_CHECKING:
    from vqcodec.interfaces import EntropyPrior, PixelDecoder
    from vqcodec.serialise import ModelFile

#: Metadata key naming a model's architecture; absent means ARCH_VQ (every release so far).
ARCH_KEY = "arch"
#: One VQ-VAE index per latent position, coded with a gated PixelCNN prior.
ARCH_VQ = "vq"
#: Residual VQ: S_max stages of indices per latent position, coded with a stage prior
#: (format/SPEC.md, "Architecture rvq"; profile int8 only).
ARCH_RVQ = "rvq"
#: Metadata key naming a model's arithmetic profile; absent means PROFILE_EXACT.
PROFILE_KEY = "profile"
#: v1 arithmetic: fp16 weights turned into exact integers held in float64 (`vqcodec.intops`).
PROFILE_EXACT = "exact"
#: int8 weights, 8-bit activations, exact integer accumulation (`vqcodec.int8`).
PROFILE_INT8 = "int8"

#: build(model_file, device) -> (prior, decoder); ValueError for an out-of-range network.
Builder = Callable[["ModelFile", torch.device], "tuple[EntropyPrior, PixelDecoder]"]


@dataclass(frozen=True)
class Profile:
    """One registered (architecture, arithmetic profile) pair.

    Attributes:
        arch: the architecture ("vq", ...).
        profile: the arithmetic profile ("exact", "int8", ...).
        build: the `Builder` of its integer networks.
        float_prior: the file holds the float prior's fp16 `prior.*` tensors (the codec builds
            its integer prior from them; `vqcodec.zoo.float_prior` and evaluation use them).
        integer_prefix: the prefix of the file's integer tensors (e.g. "int8."), or None when it
            holds none; a file with an integer prefix holds only `vqvae.*` and those tensors.
    """

    arch: str
    profile: str
    build: Builder
    float_prior: bool
    integer_prefix: str | None = None


_REGISTRY: dict[tuple[str, str], Profile] = {}


def register(arch: str, profile: str, build: Builder, *, float_prior: bool,
             integer_prefix: str | None = None) -> Profile:
    """Register a builder for model files of (arch, profile); replaces an earlier one.

    Args:
        arch: the value of the metadata key "arch".
        profile: the value of the metadata key "profile".
        build: builds (prior, decoder) from a parsed file on a device (`Builder`).
        float_prior: as `Profile.float_prior`.
        integer_prefix: as `Profile.integer_prefix`.

    Returns:
        The registered entry.
    """
    entry = Profile(arch, profile, build, float_prior, integer_prefix)
    _REGISTRY[(arch, profile)] = entry
    return entry


def known_arch(arch: str) -> bool:
    """Whether any profile is registered for the architecture `arch`."""
    return any(a == arch for a, _ in _REGISTRY)


def lookup(arch: str, profile: str) -> Profile:
    """The entry of (arch, profile).

    Raises:
        KeyError: the pair is not registered; its message names the unknown architecture, or
            the unknown arithmetic profile of a known one (one line, used in model errors).
    """
    entry = _REGISTRY.get((arch, profile))
    if entry is None:
        if not known_arch(arch):
            raise KeyError(f"unknown architecture {arch[:40]!r}")
        for_arch = "" if arch == ARCH_VQ else f" for architecture {arch!r}"
        raise KeyError(f"unknown arithmetic profile {profile[:40]!r}{for_arch}")
    return entry


def registered() -> list[tuple[str, str]]:
    """The registered (arch, profile) pairs, sorted."""
    return sorted(_REGISTRY)


# ------------------------------------------------------------------------------ vq builders


def _build_vq_exact(mf: "ModelFile", device: torch.device):
    from vqcodec.prior_exact import ExactPrior
    from vqcodec.vqvae import IntDecoder

    return ExactPrior(mf.prior.to(device), device), IntDecoder(mf.vqvae, device)


def _build_vq_int8(mf: "ModelFile", device: torch.device):
    from vqcodec.prior_int8 import Int8Prior
    from vqcodec.vqvae_int8 import Int8Decoder

    return (Int8Prior.from_tensors(mf.int8, mf.prior_cfg, device),
            Int8Decoder.from_tensors(mf.int8, mf.vqvae.cfg, device))


def _build_rvq_int8(mf: "ModelFile", device: torch.device):
    from vqcodec.prior_stages_int8 import Int8StagePrior
    from vqcodec.vqvae_stages_int8 import Int8StageDecoder

    return (Int8StagePrior.from_tensors(mf.int8, mf.prior_cfg, device),
            Int8StageDecoder.from_tensors(mf.int8, mf.vqvae.cfg, device))


register(ARCH_VQ, PROFILE_EXACT, _build_vq_exact, float_prior=True)
register(ARCH_VQ, PROFILE_INT8, _build_vq_int8, float_prior=False, integer_prefix="int8.")
register(ARCH_RVQ, PROFILE_INT8, _build_rvq_int8, float_prior=False, integer_prefix="int8.")
