"""Export trained checkpoints as a release: `models/<name>.safetensors` (fp16) + its SHA-256.

`python -m vqcodec.train.export --vqvae VQ.pt --prior PRIOR.pt --name NAME [--out models]`
prints the SHA-256 to pin in `vqcodec.registry.RELEASES`.  The model card JSON is written by
`python -m vqcodec.evaluate --card` once the Kodak figures are measured.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from vqcodec.registry import SOURCE_MODELS_DIR
from vqcodec.serialise import model_bytes
from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.vqvae import VQVAE, VQVAEConfig


def main(argv=None) -> None:
    """Command line: write `<out>/<name>.safetensors` and print its size and SHA-256.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).

    Raises:
        SystemExit: bad arguments, or the output file exists (released models are immutable).
    """
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--vqvae", required=True, type=Path)
    p.add_argument("--prior", required=True, type=Path)
    p.add_argument("--name", required=True)
    p.add_argument("--out", type=Path, default=SOURCE_MODELS_DIR)
    args = p.parse_args(argv)
    vq_ck = torch.load(args.vqvae, map_location="cpu", weights_only=False)
    pr_ck = torch.load(args.prior, map_location="cpu", weights_only=False)
    vqvae = VQVAE(VQVAEConfig(**vq_ck["config"]))
    vqvae.load_state_dict(vq_ck["model"])
    prior = GatedPixelCNN(PriorConfig(**pr_ck["config"]))
    prior.load_state_dict(pr_ck["model"])
    data = model_bytes(vqvae, prior, args.name)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.name}.safetensors"
    if path.exists():
        raise SystemExit(f"{path} exists: released models are immutable, pick a new name")
    path.write_bytes(data)
    print(f"{path}: {len(data)} bytes, vqvae steps {vq_ck['step']}, prior steps {pr_ck['step']}")
    print(f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
