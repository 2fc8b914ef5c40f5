"""Check the reference decoder against `vqc decompress` on whole Kodak images (not run in CI).

    OMP_NUM_THREADS=1 python format/reference/check_kodak.py [--kodak DIR] [--out DIR]
        [--images kodim23 kodim05] [--qualities 20 76 100] [--model NAME]

For each image and quality: `vqc compress` (once; the .vqc is kept in --out), `vqc decompress`,
then `format/reference/decode.py` in a fresh process in which `import torch`, `import
constriction` and `import vqcodec` fail; the two PNGs must have identical pixels.  Prints one
JSON line per file and writes them all to --out/check.json.  Exit status 1 if any differ.
`--model NAME` codes with that model instead of the one each quality picks (e.g.
`--model vqc-f4k512-v2` checks the reference's profile int8 against vqc on a released v2 model).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DECODE = ROOT / "format" / "reference" / "decode.py"
ISOLATED = ("import runpy, sys; sys.modules.update(torch=None, constriction=None, vqcodec=None); "
            "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')")


def run(cmd: list[str]) -> float:
    """Run a command (environment with OMP_NUM_THREADS=1), return its wall time in seconds."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kodak", type=Path, default=Path("/work/shared/data/kodak"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/vqc-reference-check"))
    ap.add_argument("--images", nargs="+", default=["kodim23", "kodim05"])
    ap.add_argument("--qualities", nargs="+", type=float, default=[20, 76, 100],
                    help="vqc compress --quality values (0..100; 20: the f8 model, 76 (default) and 100: f4)")
    ap.add_argument("--model", help="code with this model (vqc compress --model) instead of the quality's")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    vqc = [sys.executable, "-m", "vqcodec.cli"]
    results, ok = [], True
    for name in args.images:
        for q in args.qualities:
            stem = args.out / (f"{name}.q{q:g}" + (f".{args.model}" if args.model else ""))
            vqc_file = Path(f"{stem}.vqc")
            if not vqc_file.exists():
                chosen = ["--model", args.model] if args.model else []
                run(vqc + ["compress", str(args.kodak / f"{name}.png"), "-q", f"{q:g}", "-o",
                           str(vqc_file), "--device", "cpu"] + chosen)
            t_vqc = run(vqc + ["decompress", str(vqc_file), "-o", f"{stem}.vqc.png", "--force",
                               "--device", "cpu"])
            t_ref = run([sys.executable, "-c", ISOLATED, str(DECODE), str(vqc_file), f"{stem}.ref.png"])
            a = np.array(Image.open(f"{stem}.vqc.png"))
            b = np.array(Image.open(f"{stem}.ref.png"))
            same = a.shape == b.shape and bool((a == b).all())
            ok &= same
            row = {"image": name, "quality": q, "model": args.model, "bytes": vqc_file.stat().st_size,
                   "shape": list(a.shape), "identical": same,
                   "differing_values": None if a.shape != b.shape else int((a != b).sum()),
                   "vqc_decompress_s": round(t_vqc, 2), "reference_s": round(t_ref, 2)}
            print(json.dumps(row), flush=True)
            results.append(row)
    (args.out / "check.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
