"""Regenerate the conformance vectors: `python format/vectors/generate.py`.

Writes small `.vqc` files made with the released models and `vectors.json`, which records for
each file its SHA-256 and the SHA-256 of its decoded pixels (PIL image bytes, mode and size
given), plus `pmf-vector.json`: the integer PMFs of the default model's prior for a fixed
context grid.  The files are the reference: a conforming decoder reproduces the pixel hashes
exactly (see format/SPEC.md).  Only regenerate when a new model or format version is added.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqcodec import codec, zoo
from vqcodec.prior import pmf_from_logits

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parent.parent / "tests" / "data" / "sample.png"


def _images() -> dict[str, tuple[Image.Image, int]]:
    base = Image.open(SAMPLE).convert("RGB")
    rgba = base.crop((10, 20, 50, 50)).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    rgba.putalpha(Image.fromarray(alpha))
    return {
        "gray-33x17.q1": (base.crop((100, 60, 133, 77)).convert("L"), 1),
        "rgb-64x48.q2": (base.crop((120, 80, 184, 128)), 2),
        "rgba-40x30.q2": (rgba, 2),
        "rgb-100x75.q1": (base.crop((0, 0, 100, 75)), 1),
    }


def pmf_vector(name: str) -> dict:
    """PMFs (int64, little-endian) of the prior of model `name` for a seeded 6x7 context grid."""
    model = zoo.load(name, device="cpu")
    grid = np.random.default_rng(2026).integers(0, model.K, size=(6, 7))
    logits = model.prior.logits(torch.from_numpy(grid)[None]).numpy().astype(np.int64)[0]
    pmfs = pmf_from_logits(logits.reshape(-1, model.K))
    return {"model": name, "context": grid.tolist(),
            "pmfs_sha256": hashlib.sha256(pmfs.astype("<i8").tobytes()).hexdigest(),
            "last_position_pmf": pmfs[-1].tolist()}


def main() -> None:
    manifest = {}
    for stem, (image, quality) in _images().items():
        data = codec.compress(image, quality=quality, device="cpu")
        (HERE / f"{stem}.vqc").write_bytes(data)
        out = codec.decompress(data, device="cpu")
        manifest[f"{stem}.vqc"] = {"sha256": hashlib.sha256(data).hexdigest(), "mode": out.mode,
                                   "size": list(out.size),
                                   "pixels_sha256": hashlib.sha256(out.tobytes()).hexdigest()}
        print(stem, len(data), "bytes", out.mode, out.size)
    (HERE / "vectors.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (HERE / "pmf-vector.json").write_text(
        json.dumps(pmf_vector(zoo.for_quality(zoo.DEFAULT_QUALITY))) + "\n")


if __name__ == "__main__":
    main()
