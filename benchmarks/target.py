"""Target-size encoding and encode time of the RD-optimised encoder on a folder of images.

    python -m benchmarks.target [--images DIR] [--target-bpp 0.2] [--out benchmarks/results]
                                [--limit N] [--time-images N]

For every image: ``vqcodec.codec.compress_report(target_bpp=B)`` (a search over the quality
scale where every probe is a real encode); records the achieved bytes and bpp of the whole file,
the quality found, and the probes. For the first ``--time-images`` images it also times, in the
same process and back to back, the nearest-neighbour encoder (effort 0) and the default effort at
the default quality, each twice (the faster run counts), so the ratio is measured under the same
load. Writes ``target_<set>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.rd import DEFAULT_IMAGES, DEFAULT_OUT, list_images, load_rgb, machine_info


def main(argv=None) -> dict:
    """Run the measurements; returns the report also written to ``target_<set>.json``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.target", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--target-bpp", type=float, default=0.2)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--time-images", type=int, default=4)
    args = ap.parse_args(argv)

    from vqcodec import codec, container, rdo
    from vqcodec.constants import DEFAULT_EFFORT, DEFAULT_QUALITY

    images = list_images(args.images, args.limit)
    rows, times = [], []
    for i, path in enumerate(images):
        px = load_rgb(path)
        h, w = px.shape[:2]
        probes: list = []
        search = rdo.search_quality

        def recording(encode_at, target, breaks=()):
            q, data, pr = search(encode_at, target, breaks)
            probes.extend(pr)
            return q, data, pr

        rdo.search_quality = recording
        try:
            t0 = time.perf_counter()
            data, q, _ = codec.compress_report(px, target_bpp=args.target_bpp, device="cpu")
            secs = time.perf_counter() - t0
        finally:
            rdo.search_quality = search
        target = rdo.target_bytes(args.target_bpp, None, w, h)
        rows.append({"image": path.stem, "target_bytes": target, "bytes": len(data),
                     "bpp": 8 * len(data) / (w * h), "quality": q,
                     "model": container.read_header(data).model_name, "probes": probes,
                     "seconds": secs})
        print(f"{path.stem}: target {target} B -> {len(data)} B, {rows[-1]['bpp']:.4f} bpp, "
              f"Q {q:g}, {len(probes)} probes, {secs:.1f} s", flush=True)
        if i < args.time_images:
            t = {"image": path.stem}
            for label, effort in (("nn", 0), ("default", DEFAULT_EFFORT)):
                runs = []
                for _ in range(2):
                    t0 = time.perf_counter()
                    codec.compress(px, DEFAULT_QUALITY, effort=effort, device="cpu")
                    runs.append(time.perf_counter() - t0)
                t[f"{label}_s"] = min(runs)
            t["ratio"] = t["default_s"] / t["nn_s"]
            times.append(t)
            print(f"  encode at Q {DEFAULT_QUALITY:g}: effort 0 {t['nn_s']:.2f} s, effort "
                  f"{DEFAULT_EFFORT} {t['default_s']:.2f} s, ratio {t['ratio']:.2f}", flush=True)
    bpps = [r["bpp"] for r in rows]
    report = {
        "meta": {"images_dir": str(args.images), "n_images": len(rows), "target_bpp": args.target_bpp,
                 "machine": machine_info(), "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                 "default_quality": DEFAULT_QUALITY, "default_effort": DEFAULT_EFFORT},
        "summary": {"min_bpp": min(bpps), "max_bpp": max(bpps), "mean_bpp": float(np.mean(bpps)),
                    "in_window": sum(0.95 * args.target_bpp <= b <= args.target_bpp for b in bpps),
                    "over_target": sum(b > args.target_bpp for b in bpps),
                    "at_quality_100": sum(r["quality"] == 100 for r in rows),
                    "mean_probes": float(np.mean([len(r["probes"]) for r in rows])),
                    "encode_time_ratio_max": max((t["ratio"] for t in times), default=None)},
        "images": rows, "encode_times": times,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.images.resolve().name.lower()
    (args.out / f"target_{name}.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["summary"], indent=1))
    return report


if __name__ == "__main__":
    main()
