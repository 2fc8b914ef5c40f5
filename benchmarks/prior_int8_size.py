"""Coded size of Kodak's v1 index grids under the v1 integer prior and an int8 prior.

`python -m benchmarks.prior_int8_size --model vqc-f4k512-v1 --int8 prior.safetensors
 --grids /work/coord/cache/kodak_vqc-f4k512-v1.npz`

Each grid is cut into 64x64 prior tiles in raster order (as `vqc compress` does) and range-coded
with `vqcodec.entropy.encode_grid`; the table gives the payload bytes per image and in total, as
bits per pixel of the 768x512 Kodak images (payloads only: the container adds the same header
bytes to both).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
from safetensors.torch import load_file

from vqcodec import entropy, zoo
from vqcodec.constants import PRIOR_TILE
from vqcodec.prior_int8 import Int8Prior


def tiles(h: int, w: int, t: int = PRIOR_TILE) -> list[tuple[slice, slice]]:
    """t x t tiles of an h x w grid in raster order (the last row/column may be smaller)."""
    return [(slice(i, min(i + t, h)), slice(j, min(j + t, w))) for i in range(0, h, t) for j in range(0, w, t)]


def payload_bytes(prior, grid: np.ndarray) -> int:
    """Total payload bytes of one grid's tiles (`entropy.encode_grid`)."""
    return sum(len(p) for p in entropy.encode_grid(prior, grid, tiles(*grid.shape)))


def main(argv: list[str] | None = None) -> int:
    """Print per-image bytes and the total bpp for both priors (JSON on stdout)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--int8", required=True, help="safetensors with the int8.prior.* tensors")
    ap.add_argument("--grids", required=True, help="npz of index grids (key: image name)")
    ap.add_argument("--pixels", type=int, default=768 * 512, help="pixels per image")
    args = ap.parse_args(argv)
    v1 = zoo.load(args.model, device="cpu").prior
    q = Int8Prior.from_tensors(load_file(args.int8), v1.cfg)
    rows = {}
    with np.load(args.grids) as npz:
        for name in sorted(npz.files):
            g = npz[name].astype(np.int64)
            with torch.no_grad():
                rows[name] = (payload_bytes(v1, g), payload_bytes(q, g))
            print(name, *rows[name], file=sys.stderr)
    n = len(rows) * args.pixels
    b1, b8 = sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())
    print(json.dumps({"model": args.model, "images": len(rows), "v1_bytes": b1, "int8_bytes": b8,
                      "v1_bpp": 8 * b1 / n, "int8_bpp": 8 * b8 / n, "ratio": b8 / b1,
                      "per_image": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
