"""Evaluate a released model on a folder of images, counting whole `.vqc` file sizes.

`python -m vqcodec.evaluate [--model NAME | --quality Q] [--images DIR] [--card]`

Prints, averaged over the images: bpp (whole file), PSNR (dB, RGB, peak 255), MS-SSIM,
codebook usage (share of the K codes used over the set) and perplexity, prior bits per index
against log2 K, the float prior's bits on the same tiles, and the cost of integer quantization.
Every file is really decoded, and the decoded pixels are what PSNR is measured on.
`--card` writes these figures into the model card `models/<name>.json`.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqcodec import codec, zoo
from vqcodec.entropy import ideal_bits

DEFAULT_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 arrays of equal shape (peak 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """MS-SSIM (pytorch-msssim, data_range 255) of two uint8 [H, W, 3] arrays."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    t = lambda x: torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)[None]  # noqa: E731
    return float(_ms_ssim(t(a), t(b), data_range=255.0))


def _tiles(idx: np.ndarray, tile: int) -> list[np.ndarray]:
    """The codec's prior tiles of an index grid, in raster order."""
    return [np.ascontiguousarray(idx[r:r + tile, c:c + tile])
            for r in range(0, idx.shape[0], tile) for c in range(0, idx.shape[1], tile)]


@functools.lru_cache(maxsize=4)
def _float_prior(name: str):
    return zoo._parse(zoo._release_bytes(name), name)[1]


def float_prior_bits(model: zoo.CodecModel, idx: np.ndarray) -> float:
    """Bits of the float (training-time) prior over the same tiles the codec codes."""
    prior = _float_prior(model.name)
    total = 0.0
    for t in _tiles(idx, model.tile):
        grid = torch.from_numpy(t)[None]
        with torch.no_grad():
            total += float(F.cross_entropy(prior(grid), grid, reduction="sum")) / math.log(2)
    return total


def int_prior_bits(model: zoo.CodecModel, idx: np.ndarray) -> float:
    """Ideal bits of the integer prior over the codec's tiles."""
    return sum(ideal_bits(model.prior, t) for t in _tiles(idx, model.tile))


def evaluate(name: str, images: list[Path], device: str = "cpu") -> dict:
    """Figures of model `name` on `images` (see module docstring); per-image rows included."""
    model = zoo.load(name, device=device)
    rows, used = [], np.zeros(model.K, dtype=np.int64)
    for path in images:
        x = np.asarray(Image.open(path).convert("RGB"))
        t0 = time.perf_counter()
        data = codec.compress(x, model=name, device=device)
        t1 = time.perf_counter()
        image, idx = codec.decompress_with_grid(data, device=device)
        y = np.asarray(image.convert("RGB"))
        t2 = time.perf_counter()
        used += np.bincount(idx.ravel(), minlength=model.K)
        rows.append({
            "image": path.name, "bytes": len(data), "bpp": len(data) * 8 / (x.shape[0] * x.shape[1]),
            "psnr": psnr(x, y), "ms_ssim": ms_ssim(x, y), "indices": int(idx.size),
            "int_prior_bits": int_prior_bits(model, idx), "float_prior_bits": float_prior_bits(model, idx),
            "encode_s": t1 - t0, "decode_s": t2 - t1})
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}),
              flush=True)
    n_idx = sum(r["indices"] for r in rows)
    probs = used / used.sum()
    int_bits = sum(r["int_prior_bits"] for r in rows)
    float_bits = sum(r["float_prior_bits"] for r in rows)
    mean = lambda k: float(np.mean([r[k] for r in rows]))  # noqa: E731
    return {
        "model": name, "images": len(rows), "bpp": mean("bpp"), "psnr_db": mean("psnr"),
        "ms_ssim": mean("ms_ssim"), "bytes_per_image": mean("bytes"),
        "codebook_usage": float((used > 0).mean()),
        "codebook_perplexity": float(np.exp(-(probs[probs > 0] * np.log(probs[probs > 0])).sum())),
        "prior_bits_per_index": int_bits / n_idx, "float_prior_bits_per_index": float_bits / n_idx,
        "log2_K": math.log2(model.K),
        "prior_saving_vs_log2K_pct": 100 * (1 - int_bits / n_idx / math.log2(model.K)),
        "integer_quantization_cost_pct": 100 * (int_bits / float_bits - 1),
        "file_bits_over_int_prior_pct": 100 * (sum(r["bytes"] for r in rows) * 8 / int_bits - 1),
        "median_encode_s": float(np.median([r["encode_s"] for r in rows])),
        "median_decode_s": float(np.median([r["decode_s"] for r in rows])),
        "per_image": rows,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None, help="released model name (default: by --quality)")
    p.add_argument("--quality", type=int, default=zoo.DEFAULT_QUALITY)
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--card", action="store_true", help="write figures into models/<name>.json")
    args = p.parse_args(argv)
    name = args.model or zoo.for_quality(args.quality)
    images = sorted(q for q in args.images.iterdir() if q.suffix.lower() == ".png")[: args.limit]
    result = evaluate(name, images, args.device)
    summary = {k: v for k, v in result.items() if k != "per_image"}
    print(json.dumps(summary, indent=2))
    if args.card:
        card_path = zoo.MODELS_DIR / f"{name}.json"
        card = json.loads(card_path.read_text()) if card_path.exists() else {"name": name}
        card["evaluation"] = {**summary, "images_dir": args.images.name,
                              "command": f"python -m vqcodec.evaluate --model {name} --card"}
        card_path.write_text(json.dumps(card, indent=2) + "\n")


if __name__ == "__main__":
    main()
