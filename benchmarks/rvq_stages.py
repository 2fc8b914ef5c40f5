"""An rvq model on Kodak, stage by stage, for S' = 1..S coded stages: either the float model (mean
PSNR of the float decoder and the float prior's ideal rate) or a released int8 model through the
whole codec (whole `.vqc` files, decoded pixels, and the reference decoder's pixels).

`python -m benchmarks.rvq_stages --model FILE.float.safetensors [--images ../shared/data/kodak]
[--out benchmarks/results/rvq_stages_float.json]`

`python -m benchmarks.rvq_stages --codec vqc-rvq-f8k1024s4-cpu [--reference 2]
[--out benchmarks/results/rvq_stages_int8.json]`: each image is compressed with
`vqcodec.codec.compress(model=..., stages=S')` and decompressed; bpp = whole file bytes * 8 /
pixels, PSNR of the decoded pixels; the first `--reference` images (per S') are also decoded by
format/reference/decode.py and must give the same pixels ("reference_identical").

FILE is a float rvq checkpoint (`vqcodec.train.rvq.float_rvq_bytes`).  Each image (cropped to a
multiple of f at the bottom/right, Kodak needs none) is encoded once with all S stages (greedy
residual VQ); for each S' the first S' stages are decoded with the float decoder, rounded to
8 bits and compared with the image (PSNR in dB, RGB, `vqcodec.metrics.psnr`), and the rate is the
teacher-forced cross-entropy of those S' index grids under the float stage prior,
sum of -log2 p over the coded indices / pixels (bpp; no range coder, no container, no int8).
Means over images.  `monotonic` in the JSON says whether both columns increase with S'.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqcodec import metrics
from vqcodec.train.common import list_images
from vqcodec.train.rvq import hard_bits, load_float_rvq


@torch.no_grad()
def stage_table(vq, prior, images: list[np.ndarray]) -> list[dict]:
    """Mean PSNR and bpp per number of coded stages.

    Args:
        vq: float RVQVAE (eval mode).
        prior: its StagePrior (eval mode).
        images: uint8 [H, W, 3] arrays, H and W multiples of f.

    Returns:
        One dict per S' = 1..S: {"stages", "psnr" (dB, mean over images), "bpp" (mean),
        "bits_per_index" (mean over images of bits / coded indices)}.
    """
    S = vq.cfg.stages
    psnr = np.zeros((len(images), S))
    bpp = np.zeros((len(images), S))
    per_index = np.zeros((len(images), S))
    for i, img in enumerate(images):
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        idx = vq.encode(x)
        for s in range(1, S + 1):
            y = vq.decode_float(idx[:, :s])
            out = (y[0].permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
            psnr[i, s - 1] = metrics.psnr(img, out)
            bits = float(hard_bits(prior(idx[:, :s]), idx[:, :s]))
            bpp[i, s - 1] = bits / (img.shape[0] * img.shape[1])
            per_index[i, s - 1] = bits / idx[:, :s].numel()
    return [{"stages": s + 1, "psnr": round(float(psnr[:, s].mean()), 3), "bpp": round(float(bpp[:, s].mean()), 4),
             "bits_per_index": round(float(per_index[:, s].mean()), 3)} for s in range(S)]


def load_images(folder: Path, f: int, limit: int | None = None) -> list[np.ndarray]:
    """RGB images of a folder, cropped to multiples of f.

    Args:
        folder: image folder (`list_images`).
        f: the model's downsampling factor.
        limit: first N files only.

    Returns:
        uint8 [H, W, 3] arrays.
    """
    out = []
    for path in list_images(folder)[:limit]:
        with Image.open(path) as im:
            a = np.array(im.convert("RGB"))
        out.append(np.ascontiguousarray(a[:a.shape[0] // f * f, :a.shape[1] // f * f]))
    return out


def codec_table(name: str, images: list[np.ndarray], reference: int = 0) -> list[dict]:
    """Mean whole-file bpp and PSNR per number of coded stages through the codec (int8 model).

    Args:
        name: an installed rvq model of profile int8.
        images: uint8 [H, W, 3] arrays.
        reference: how many of the images (the first) are also decoded by the reference decoder.

    Returns:
        One dict per S' = 1..S_max: {"stages", "psnr" (dB), "bpp", "reference_checked" (images),
        "reference_identical" (bool: every checked file gave vqc's codes and pixels)}.

    Raises:
        VqcError: the model is not installed or not rvq.
    """
    import sys

    from vqcodec import codec, registry, zoo

    ref_dir = Path(__file__).resolve().parent.parent / "format" / "reference"
    sys.path.insert(0, str(ref_dir))
    import decode as reference_decoder  # noqa: E402  (format/reference/decode.py)

    models_dir = registry.weights_path(name).parent
    S = zoo.load(name, device="cpu").stages
    rows = []
    for s in range(1, S + 1):
        psnr, bpp, same = [], [], True
        for i, img in enumerate(images):
            blob = codec.compress(img, model=name, stages=s, device="cpu")
            out, codes = codec.decompress_with_grid(blob, device="cpu")
            out = np.asarray(out.convert("RGB"))
            psnr.append(metrics.psnr(img, out))
            bpp.append(len(blob) * 8 / (img.shape[0] * img.shape[1]))
            if i < reference:
                ref_img, ref_codes = reference_decoder.decode(blob, models_dir)
                same &= np.array_equal(ref_codes, codes) and np.array_equal(np.asarray(ref_img.convert("RGB")), out)
        rows.append({"stages": s, "psnr": round(float(np.mean(psnr)), 3), "bpp": round(float(np.mean(bpp)), 4),
                     "reference_checked": min(reference, len(images)), "reference_identical": bool(same)})
        print(rows[-1], flush=True)
    return rows


def is_monotonic(rows: list[dict]) -> bool:
    """True when psnr and bpp both strictly increase with the number of stages."""
    return all(b["psnr"] > a["psnr"] and b["bpp"] > a["bpp"] for a, b in zip(rows, rows[1:]))


def main(argv=None) -> None:
    """Command line: print the table, write the JSON.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", type=Path, help="float rvq file")
    which.add_argument("--codec", help="installed rvq model of profile int8: whole files through the codec")
    p.add_argument("--reference", type=int, default=0, help="images also decoded by the reference decoder")
    p.add_argument("--images", type=Path, default=Path("../shared/data/kodak"))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None,
                   help="JSON (default benchmarks/results/rvq_stages_float.json, or _int8.json with --codec)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    args.out = args.out or Path(f"benchmarks/results/rvq_stages_{'int8' if args.codec else 'float'}.json")
    if args.codec:
        from vqcodec import zoo

        m = zoo.load(args.codec, device="cpu")
        images = load_images(args.images, m.f, args.limit)
        rows = codec_table(args.codec, images, args.reference)
        result = {"model": args.codec, "images": len(images), "folder": args.images.name, "rows": rows,
                  "monotonic": is_monotonic(rows), "seconds": round(time.time() - t0, 1),
                  "note": "whole .vqc files through vqcodec.codec (int8 profile), 1 image = 1 file"}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"monotonic: {result['monotonic']}; wrote {args.out}")
        return
    vq, prior = load_float_rvq(args.model.read_bytes())
    images = load_images(args.images, vq.cfg.f, args.limit)
    rows = stage_table(vq, prior, images)
    print(f"{'stages':>6} {'PSNR dB':>8} {'bpp':>7} {'bits/index':>10}")
    for r in rows:
        print(f"{r['stages']:>6} {r['psnr']:>8.3f} {r['bpp']:>7.4f} {r['bits_per_index']:>10.3f}")
    result = {"model": args.model.name, "images": len(images), "folder": args.images.name,
              "vqvae_config": vq.cfg.to_dict(), "prior_config": prior.cfg.to_dict(),
              "rows": rows, "monotonic": is_monotonic(rows), "seconds": round(time.time() - t0, 1),
              "note": "float decoder and float prior ideal cross-entropy (no range coder, no int8)"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"monotonic: {result['monotonic']}; wrote {args.out}")


if __name__ == "__main__":
    main()
