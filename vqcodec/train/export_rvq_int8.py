"""Make a released rvq model of profile int8 from a float rvq checkpoint by post-training
calibration (format/SPEC.md, "Architecture rvq"; format/SPEC.md, "Profile int8").

`python -m vqcodec.train.export_rvq_int8 --float X.safetensors --data DIR --name NAME --out Y.safetensors`

reads the float checkpoint (fp16 safetensors, metadata "arch": "rvq", tensors `vqvae.encoder.*`,
`vqvae.decoder.*`, `vqvae.quantizer.stages.{s}.codebook`, `prior.*` = the `StagePrior` state
dict: the layout `vqcodec.train.rvq.float_rvq_bytes` writes), encodes every `--every`-th
training crop of DIR with all S_max stages, calibrates the integer stage prior and decoder
(`calibrate_stages`) on those codes and writes the model file (`serialise.model_bytes_rvq_int8`:
fp16 `vqvae.*`, the `int8.*` tensors, metadata name / arch / profile / configs, canonical
header), printing its SHA-256 to pin in `vqcodec.registry.RELEASES`.  The float encoder and
stage codebooks are copied unchanged.  Never calibrate on Kodak: it is the benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as st_load

from vqcodec import modelfile
from vqcodec.prior_stages import StagePrior, StagePriorConfig
from vqcodec.rvq import RVQConfig, RVQVAE
from vqcodec.serialise import model_bytes_rvq_int8
from vqcodec.train.calibrate_stages import calibrate_stage_decoder, calibrate_stage_prior

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def read_float_rvq(data: bytes) -> tuple[RVQVAE, StagePrior]:
    """Read a float rvq checkpoint (a training-side reader of our own files, not the hardened
    `serialise.parse_model`; the layout `vqcodec.train.rvq.float_rvq_bytes` writes).

    Args:
        data: the file's bytes.

    Returns:
        (RVQVAE, StagePrior) in eval mode on the CPU, float32 weights.

    Raises:
        ValueError: not a model file within the caps, arch is not "rvq", it is a released
            model file (metadata "profile"), or a tensor is missing, unexpected or misshapen.
    """
    meta = modelfile.read_header(data).metadata
    if meta.get("arch") != "rvq":
        raise ValueError("not a float rvq checkpoint (metadata arch is not 'rvq')")
    if "profile" in meta:
        raise ValueError(f"not a float rvq checkpoint (a profile {meta['profile'][:20]!r} model file)")
    vqvae = RVQVAE(RVQConfig(**json.loads(meta["vqvae_config"])))
    prior = StagePrior(StagePriorConfig(**json.loads(meta["prior_config"])))
    tensors = {k: v.float() for k, v in st_load(data).items()}
    try:
        missing, unexpected = vqvae.load_state_dict(
            {k[6:]: v for k, v in tensors.items() if k.startswith("vqvae.")}, strict=False)
        prior.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("prior.")})
    except RuntimeError as exc:
        raise ValueError(modelfile.one_line(exc)) from None
    if unexpected or any(not k.startswith("quantizer.") or k.endswith(".codebook") for k in missing):
        raise ValueError(f"float rvq checkpoint: missing {missing[:3]}, unexpected {unexpected[:3]}")
    for stage in vqvae.quantizer.stages:
        stage.initialized.fill_(True)
    return vqvae.eval(), prior.eval()


@torch.no_grad()
def training_codes(vqvae: RVQVAE, data: Path, every: int) -> list[np.ndarray]:
    """Codes of every `every`-th image of `data` (sorted by name), all S_max stages.

    Each image is cropped to a multiple of f on each side (top-left corner kept) and encoded
    with the float encoder and greedy residual quantisation (`RVQVAE.encode`).

    Args:
        vqvae: the float residual VQ-VAE.
        data: a directory of training images (.png, .jpg, .jpeg).
        every: take one image in `every`.

    Returns:
        int64 code arrays [S_max, h, w].

    Raises:
        ValueError: no image of at least f x f pixels was found.
    """
    f = vqvae.cfg.f
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::every]
    out = []
    for p in files:
        img = np.array(Image.open(p).convert("RGB"))
        h, w = img.shape[0] // f * f, img.shape[1] // f * f
        if h and w:
            x = torch.from_numpy(np.ascontiguousarray(img[:h, :w])).permute(2, 0, 1)[None].float() / 255
            out.append(vqvae.encode(x)[0].numpy().astype(np.int64))
    if not out:
        raise ValueError(f"{data}: no training image of at least {f} x {f} pixels")
    return out


def export(float_data: bytes, name: str, data: Path, every: int = 4, log=None, **decoder_kw) -> bytes:
    """Calibrate the int8 networks of a float rvq checkpoint and serialise the model file.

    Args:
        float_data: the float checkpoint's bytes (`read_float_rvq`).
        name: the new model's name.
        data: the training crops.
        every: calibrate on one crop in `every`.
        log: optional callable(str) for progress lines.
        **decoder_kw: passed to `calibrate_stages.calibrate_stage_decoder` (e.g. search=()).

    Returns:
        The safetensors bytes of the model file.

    Raises:
        ValueError: as `read_float_rvq`, `training_codes`, or a layer cannot meet its bound.
    """
    modelfile.check_name(name)
    vqvae, prior = read_float_rvq(float_data)
    codes = training_codes(vqvae, data, every)
    if log:
        log(f"{len(codes)} training code arrays, {vqvae.cfg.stages} stages")
    tensors = {**calibrate_stage_prior(prior, codes, log=log),
               **calibrate_stage_decoder(vqvae, codes, log=log, **decoder_kw)}
    return model_bytes_rvq_int8(vqvae, prior.cfg, tensors, name)


def main(argv=None) -> None:
    """Command line: write the model file and print its size and SHA-256.

    Raises:
        SystemExit: the output file exists (released models are immutable), or bad input.
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float", dest="float_path", required=True, type=Path, help="float rvq checkpoint")
    p.add_argument("--data", required=True, type=Path, help="training crops (never Kodak)")
    p.add_argument("--name", required=True, help="name of the new model")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors")
    p.add_argument("--every", type=int, default=4, help="calibrate on one crop in EVERY")
    p.add_argument("--no-search", action="store_true", help="decoder: percentile scales, no line search")
    args = p.parse_args(argv)
    if args.out.exists():
        raise SystemExit(f"{args.out} exists: released models are immutable, pick a new name")
    t0 = time.perf_counter()
    kw = {"search": ()} if args.no_search else {}
    try:
        out = export(args.float_path.read_bytes(), args.name, args.data, args.every,
                     log=lambda s: print(s, flush=True), **kw)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {modelfile.one_line(exc)}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".part")
    tmp.write_bytes(out)
    tmp.replace(args.out)  # never a partial file
    print(f"{args.out}: {len(out)} bytes, calibrated in {time.perf_counter() - t0:.0f} s")
    print(f"sha256 {hashlib.sha256(out).hexdigest()}")


if __name__ == "__main__":
    main()
