"""Wavefront decode time of the v1 prior and an int8 prior (torch-only and fused wavefront) on
one image's grid, interleaved.

`OMP_NUM_THREADS=1 python -m benchmarks.prior_int8_speed --model vqc-f4k512-v1
 --int8 prior.safetensors --grids /work/coord/cache/kodak_vqc-f4k512-v1.npz --image kodim23.png`

All 64x64 tiles of the grid are decoded in one batch (as `entropy.decode_grid` does for equal
tiles); the callback returns the true indices at once (no range decoding), so the time is the
prior's: its wavefront steps and `pmf_from_logits`.  Prints seconds per run (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file

from vqcodec import entropy, zoo
from vqcodec.prior_int8 import Int8Prior

from benchmarks.prior_int8_size import tiles


def decode_seconds(prior, grids: np.ndarray) -> float:
    """Seconds of prior.decode over grids int64 [n, h, w] (true indices returned by the callback)."""
    n, h, w = grids.shape
    t = time.perf_counter()
    out = prior.decode(n, h, w, lambda rows, cols, pmfs: grids[:, rows, cols])
    dt = time.perf_counter() - t
    assert (out == grids).all()
    return dt


def grid_seconds(priors: dict, g: np.ndarray, sl: list, runs: int) -> dict:
    """Median seconds of `entropy.decode_grid` per prior (interleaved), each on its own payloads
    of grid g (`entropy.encode_grid`), and the payload bytes."""
    payloads = {k: entropy.encode_grid(p, g, sl) for k, p in priors.items()}
    times = {k: [] for k in priors}
    for _ in range(runs):
        for k, p in priors.items():
            t = time.perf_counter()
            out = entropy.decode_grid(p, payloads[k], *g.shape, sl)
            times[k].append(time.perf_counter() - t)
            assert (out == g).all()
    return {k: {"median_s": float(np.median(v)), "bytes": sum(map(len, payloads[k]))} for k, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    """Time v1, torch-only int8 and fused int8 decodes alternately; print the runs and medians."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--int8", required=True)
    ap.add_argument("--grids", required=True)
    ap.add_argument("--image", default="kodim23.png")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--entropy", action="store_true",
                    help="also time entropy.decode_grid (range decoding included) on the real payloads")
    args = ap.parse_args(argv)
    v1 = zoo.load(args.model, device="cpu").prior
    q = Int8Prior.from_tensors(load_file(args.int8), v1.cfg)
    with np.load(args.grids) as npz:
        g = npz[args.image].astype(np.int64)
    sl = tiles(*g.shape)
    if len({(s.stop - s.start, c.stop - c.start) for s, c in sl}) != 1:
        print("error: the grid's tiles differ in shape", file=sys.stderr)
        return 2
    batch = np.stack([g[s] for s in sl])
    ref = Int8Prior.from_tensors(load_file(args.int8), v1.cfg)
    ref.fused = False  # the torch-only int8 wavefront
    runs = {"v1": [], "int8_torch": [], "int8": []}
    decode_seconds(q, batch[:, :8, :8])  # warm-up (and compile the kernels if not cached)
    decode_seconds(ref, batch[:, :8, :8])
    for _ in range(args.runs):
        runs["v1"].append(decode_seconds(v1, batch))
        runs["int8_torch"].append(decode_seconds(ref, batch))
        runs["int8"].append(decode_seconds(q, batch))
    out = {"model": args.model, "image": args.image, "tiles": len(sl), "threads": torch.get_num_threads(),
           "runs": runs, "median": {k: float(np.median(v)) for k, v in runs.items()}}
    if args.entropy:
        out["decode_grid"] = grid_seconds({"v1": v1, "int8_torch": ref, "int8": q}, g, sl, args.runs)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
