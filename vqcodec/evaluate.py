"""Evaluate a released model on a folder of images, counting whole `.vqc` file sizes.

`python -m vqcodec.evaluate [--model NAME | --quality Q] [--images DIR] [--card]`

Prints, averaged over the images: bpp (whole file), PSNR (dB, RGB, peak 255), MS-SSIM,
codebook usage (share of the K codes used over the set) and perplexity, prior bits per index
against log2 K, the float prior's bits on the same tiles, and the cost of integer quantization.
Every file is really decoded, and the decoded pixels are what PSNR is measured on.
`--card` writes these figures into the model card `<name>.json` next to the model's weights.
Metrics are `vqcodec.metrics` (shared with `benchmarks/`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqcodec import codec, profiles, registry, zoo
from vqcodec.entropy import ideal_bits
from vqcodec.metrics import msssim, psnr

DEFAULT_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"


def _tiles(idx: np.ndarray, tile: int) -> list[np.ndarray]:
    """The codec's prior tiles of an index grid, in raster order."""
    return [np.ascontiguousarray(idx[r:r + tile, c:c + tile])
            for r in range(0, idx.shape[0], tile) for c in range(0, idx.shape[1], tile)]


def float_prior_bits(model: zoo.CodecModel, idx: np.ndarray) -> float:
    """Bits the float (training-time) prior spends on an index grid, over the codec's tiles.

    Args:
        model: the loaded model (its name selects the float prior, its tile size the tiles).
        idx: int64 [h, w] index grid, values in [0, K).

    Returns:
        Cross-entropy in bits (sum of -log2 p over every index); NaN for a model without a
        float prior (profile int8).
    """
    if not profiles.lookup(model.arch, model.profile).float_prior:
        return math.nan
    prior = zoo.float_prior(model.name)
    total = 0.0
    for t in _tiles(idx, model.tile):
        grid = torch.from_numpy(t)[None]
        with torch.no_grad():
            total += float(F.cross_entropy(prior(grid), grid, reduction="sum")) / math.log(2)
    return total


def int_prior_bits(model: zoo.CodecModel, idx: np.ndarray) -> float:
    """Ideal bits of the integer prior (what the range coder approaches) over the codec's tiles.

    Args:
        model: the loaded model.
        idx: int64 [h, w] index grid, values in [0, K).

    Returns:
        Sum of -log2(pmf / 2**20) over every index, in bits.
    """
    return sum(ideal_bits(model.prior, t) for t in _tiles(idx, model.tile))


def evaluate(name: str, images: list[Path], device: str = "cpu") -> dict:
    """Figures of model `name` on `images` (see the module docstring): every image is compressed
    and its file really decoded.

    Args:
        name: a model `vqcodec.zoo.load` knows.
        images: image files (read as RGB).
        device: "cpu", "cuda" or "auto" for encoding and decoding.

    Returns:
        Set averages: bpp (whole file), psnr_db (dB), ms_ssim (index; NaN for images under 161
        pixels a side), bytes_per_image, codebook_usage (share of K), codebook_perplexity,
        prior_bits_per_index (integer prior) and float_prior_bits_per_index, log2_K, percentages,
        median encode/decode seconds; and "per_image", one row per image.

    Raises:
        VqcModelError: the model is unknown or its weights are missing or tampered.
        OSError: an image cannot be read.
    """
    model = zoo.load(name, device=device)
    rows, used = [], np.zeros(model.K, dtype=np.int64)
    for path in images:
        x = np.asarray(Image.open(path).convert("RGB"))
        t0 = time.perf_counter()
        data = codec.compress(x, model=name, device=device, effort=0)
        t1 = time.perf_counter()
        image, idx = codec.decompress_with_grid(data, device=device)
        y = np.asarray(image.convert("RGB"))
        t2 = time.perf_counter()
        used += np.bincount(idx.ravel(), minlength=model.K)
        rows.append({
            "image": path.name, "bytes": len(data), "bpp": len(data) * 8 / (x.shape[0] * x.shape[1]),
            "psnr": psnr(x, y), "ms_ssim": msssim(x, y), "indices": int(idx.size),
            "int_prior_bits": int_prior_bits(model, idx), "float_prior_bits": float_prior_bits(model, idx),
            "encode_s": t1 - t0, "decode_s": t2 - t1})
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}),
              flush=True)
    n_idx = sum(r["indices"] for r in rows)
    probs = used / used.sum()
    int_bits = sum(r["int_prior_bits"] for r in rows)
    float_bits = sum(r["float_prior_bits"] for r in rows)
    if math.isnan(float_bits):  # profile int8: no float prior to compare with
        float_bits = None
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {
        "model": name, "images": len(rows), "bpp": mean("bpp"), "psnr_db": mean("psnr"),
        "ms_ssim": mean("ms_ssim"), "bytes_per_image": mean("bytes"),
        "codebook_usage": float((used > 0).mean()),
        "codebook_perplexity": float(np.exp(-(probs[probs > 0] * np.log(probs[probs > 0])).sum())),
        "prior_bits_per_index": int_bits / n_idx, "float_prior_bits_per_index": float_bits and float_bits / n_idx,
        "log2_K": math.log2(model.K),
        "prior_saving_vs_log2K_pct": 100 * (1 - int_bits / n_idx / math.log2(model.K)),
        "integer_quantization_cost_pct": float_bits and 100 * (int_bits / float_bits - 1),
        "file_bits_over_int_prior_pct": 100 * (sum(r["bytes"] for r in rows) * 8 / int_bits - 1),
        "median_encode_s": float(np.median([r["encode_s"] for r in rows])),
        "median_decode_s": float(np.median([r["decode_s"] for r in rows])),
        "per_image": rows,
    }


def main(argv=None) -> None:
    """Command line: evaluate a model, print per-image JSON lines and the summary."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None, help="model name (default: the released model of --quality)")
    p.add_argument("--quality", type=int, default=max(registry.QUALITY_LEVELS),
                   help="release quality level of the model (vqcodec.registry.RELEASES)")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--card", action="store_true", help="write the figures into the model card <name>.json next to the weights")
    args = p.parse_args(argv)
    name = args.model or zoo.for_quality(args.quality)
    images = sorted(q for q in args.images.iterdir() if q.suffix.lower() == ".png")[: args.limit]
    result = evaluate(name, images, args.device)
    summary = {k: v for k, v in result.items() if k != "per_image"}
    print(json.dumps(summary, indent=2))
    if args.card:
        weights = registry.weights_path(name)
        if weights is None:
            raise SystemExit(f"--card: model {name!r} has no weight file to write a card next to")
        card_path = weights.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.exists() else {"name": name}
        card["evaluation"] = {**summary, "images_dir": args.images.name,
                              "command": f"python -m vqcodec.evaluate --model {name} --card"}
        card_path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
