"""The int8 VQ-VAE decoder next to the v1 integer decoder: mean Kodak PSNR and decode time.

`python -m benchmarks.int8_decoder --model vqc-f4k512-v1 --tensors F4.safetensors [--timing 7]`

Both decoders decode the same v1 index grids (--grids: NPZ keyed by image file name, default
/work/coord/cache/kodak_<model>.npz) through `codec.decode_pixels` (tiles with the halo); the
output is cropped to the image.  PSNR in dB (RGB, `vqcodec.metrics.psnr`), averaged over the
images.  Timing: decode of kodim23's grid, the two decoders interleaved in one process, seconds
(median and minimum of --timing runs each); run with OMP_NUM_THREADS=1 for one thread.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image
from safetensors.torch import load_file

from vqcodec import codec, metrics, zoo
from vqcodec.vqvae_int8 import Int8Decoder


def main(argv=None) -> None:
    """Command line: print the PSNR table (and the timing).

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
    """
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--tensors", required=True, type=Path, help="int8.decoder.* tensors (calibrate_decoder)")
    p.add_argument("--grids", type=Path)
    p.add_argument("--images", type=Path, default=Path("/work/shared/data/kodak"))
    p.add_argument("--timing", type=int, default=0, help="timed decodes of kodim23 per decoder")
    args = p.parse_args(argv)
    m = zoo.load(args.model, device="cpu")
    m8 = SimpleNamespace(f=m.f, decoder=Int8Decoder.from_tensors(load_file(str(args.tensors)), m.vqvae.cfg))
    with np.load(args.grids or f"/work/coord/cache/kodak_{args.model}.npz") as z:
        grids = {k: z[k] for k in sorted(z.files)}
    p1, p8 = [], []
    for name, g in grids.items():
        img = np.asarray(Image.open(args.images / name).convert("RGB"))
        h, w = img.shape[:2]
        p1.append(metrics.psnr(img, codec.decode_pixels(m, g)[:h, :w]))
        p8.append(metrics.psnr(img, codec.decode_pixels(m8, g)[:h, :w]))
    d = np.array(p8) - np.array(p1)
    print(f"{args.model}: {len(p1)} images, PSNR v1 {np.mean(p1):.4f} dB, int8 {np.mean(p8):.4f} dB, "
          f"difference {np.mean(d):+.4f} dB (worst image {d.min():+.4f})")
    if args.timing:
        g = grids["kodim23.png"]
        t1, t8 = [], []
        for _ in range(args.timing):
            for model, times in ((m, t1), (m8, t8)):
                s = time.perf_counter()
                codec.decode_pixels(model, g)
                times.append(time.perf_counter() - s)
        print(f"kodim23 grid {g.shape}: v1 median {np.median(t1):.3f} s (min {min(t1):.3f}), "
              f"int8 median {np.median(t8):.3f} s (min {min(t8):.3f})")


if __name__ == "__main__":
    main()
