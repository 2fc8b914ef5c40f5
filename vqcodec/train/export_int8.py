"""Make a model of the int8 profile from a released v1 model by post-training calibration.

`python -m vqcodec.train.export_int8 --source vqc-f4k512-v1 --name vqc-f4k512-v2 --data DIR`
encodes every `--every`-th training crop of DIR with the source model's encoder, calibrates the
integer prior (`calibrate_prior`) and decoder (`calibrate_decoder`) on those index grids, and
writes `models/<name>.safetensors` (format/SPEC.md, "Integer arithmetic, profile int8"), printing
its SHA-256 to pin in `vqcodec.registry.RELEASES`.  The float VQ-VAE is copied unchanged, so the
encoder (and so the index grids it chooses) is the source model's.  Never calibrate on Kodak:
it is the benchmark.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vqcodec import codec, zoo
from vqcodec.registry import SOURCE_MODELS_DIR
from vqcodec.serialise import model_bytes_int8
from vqcodec.train.calibrate_decoder import calibrate_decoder
from vqcodec.train.calibrate_prior import calibrate_prior

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def training_grids(model: zoo.CodecModel, data: Path, every: int) -> list[np.ndarray]:
    """Nearest-neighbour index grids of every `every`-th image of `data` (sorted by name).

    Args:
        model: the source model (its float encoder and codebook are used).
        data: a directory of training images.
        every: take one image in `every`.

    Returns:
        int64 index grids [h, w], one per image.
    """
    files = sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[::every]
    return [codec.encode_indices(model, np.asarray(Image.open(p).convert("RGB"))) for p in files]


def export(source: str, name: str, data: Path, every: int = 4) -> bytes:
    """Calibrate the int8 networks of `source` and serialise the new model.

    Args:
        source: a v1 model name (`vqcodec.zoo.load` knows it).
        name: the new model's name.
        data: the training crops.
        every: calibrate on one crop in `every`.

    Returns:
        The safetensors bytes of the new model.
    """
    model = zoo.load(source, device="cpu")
    grids = training_grids(model, data, every)
    tensors = {**calibrate_prior(zoo.float_prior(source), grids),
               **calibrate_decoder(model.vqvae, grids)}
    return model_bytes_int8(model.vqvae, model.prior.cfg, tensors, name)


def main(argv=None) -> None:
    """Command line: write `<out>/<name>.safetensors` and print its size and SHA-256.

    Raises:
        SystemExit: the output file exists (released models are immutable).
    """
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source", required=True, help="v1 model to calibrate from")
    p.add_argument("--name", required=True, help="name of the new model")
    p.add_argument("--data", required=True, type=Path, help="training crops (never Kodak)")
    p.add_argument("--every", type=int, default=4, help="calibrate on one crop in EVERY")
    p.add_argument("--out", type=Path, default=SOURCE_MODELS_DIR)
    args = p.parse_args(argv)
    path = args.out / f"{args.name}.safetensors"
    if path.exists():
        raise SystemExit(f"{path} exists: released models are immutable, pick a new name")
    t0 = time.perf_counter()
    data = export(args.source, args.name, args.data, args.every)
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    print(f"{path}: {len(data)} bytes, calibrated in {time.perf_counter() - t0:.0f} s")
    print(f"sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
