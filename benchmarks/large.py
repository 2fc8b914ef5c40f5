"""One large photograph through the `vqc` command: time, peak memory, and seams at tile borders.

    python -m benchmarks.large [--width 6000 --height 4000] [--quality Q | --model NAME]
                               [--out benchmarks/results/large.json]
                               [--check-memory-limit MIB] [--workdir DIR] [--rss-method auto|time|proc]

1. Image: a mosaic of the 24 Kodak images (``../shared/data/kodak`` relative to the repository
   root, like ``benchmarks.rd``; ``--images``), in name order, repeated as needed, portrait ones
   rotated to landscape (768x512 cells), cropped to ``--width`` x ``--height``. The crop starts
   128 pixels into the mosaic, so the mosaic's own seams (at 768 / 512 pixel steps) fall half-way
   between the codec's tile borders (multiples of 256) and never into the border bands below;
   ``MOSAIC_GUARD`` pixels around them are left out of every band/rest figure as well (they are
   artificial edges, not photograph content). Saved as a PNG in a temporary directory
   (``--workdir DIR`` keeps the PNG, the .vqc and the decoded PNG there instead).
2. ``vqc compress`` and ``vqc decompress`` each run as a child process, ``python -m
   vqcodec.cli ... --device cpu``, so the figures are the command's own (imports, model loading,
   PNG reading/writing included). Seconds: wall clock around the child. Peak memory: the child's
   peak resident set size (VmHWM), from GNU ``/usr/bin/time -v`` when it is there, else from a
   small wrapper (``python -c``) that runs the CLI in-process and prints ``VmHWM`` from
   ``/proc/self/status`` at exit (``--rss-method time|proc`` forces one). MiB = 2**20 bytes.
   ``--threads N`` sets OMP_NUM_THREADS for the children (torch's intra-op threads); by default
   they use torch's default (one per core). On a machine whose cores are busy with other work,
   torch's threads oversubscribe them and the serial prior decode slows down by an order of
   magnitude or more (measured: 30x with 2 threads on 2 busy cores), so run on an idle machine
   or with ``--threads 1``; the JSON records the setting.
3. Quality: PSNR (RGB, 8-bit, peak 255, dB) of the whole image, and, for each tile grid of the
   codec, of the *band* of pixels within ``BAND`` (8) pixels of an internal tile border
   (``x`` or ``y`` in ``[k*P - 8, k*P + 8)``, ``0 < k*P < size``) against the *rest*. Seams
   would show as band PSNR below rest PSNR. A *control* band of the same shape half a period
   away (``k*P + P/2``) says how much band and rest differ by content alone. Grids:

   * encoder/decoder tiles: ``vqcodec.codec.PIXEL_TILE`` pixels (the VQ-VAE runs tile by tile
     with a halo; period ``(PIXEL_TILE // f) * f``);
   * prior tiles: the file's tile size in latent positions (``vqcodec.constants.PRIOR_TILE``) times ``f``
     (independent range-coder streams; the prior does not see across them).

   With f = 4 both grids are 256 pixels; with f = 8 the prior's is 512.

Prints a table and writes JSON (``--out``): image size, PNG / .vqc bytes, bpp, seconds and peak
RSS of each step, PSNR whole / band / control / rest per grid, the machine.
``--check-memory-limit 2048`` prints PASS or FAIL for the larger of the two peaks against that
many MiB (exit status 1 on FAIL). A failing child (non-zero exit) stops the run with its stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from benchmarks.rd import DEFAULT_IMAGES, REPO_ROOT, machine_info
from vqcodec.constants import DEFAULT_QUALITY
from vqcodec.metrics import psnr_from_sse

DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "large.json"
CELL_W, CELL_H = 768, 512  # Kodak landscape size; portrait images are rotated to it
MOSAIC_OFFSET = 128  # crop origin inside the mosaic (keeps mosaic seams off the codec grids)
MOSAIC_GUARD = 8  # pixels each side of a mosaic seam left out of band / rest statistics
BAND = 8  # pixels each side of a tile border
TIME_BIN = "/usr/bin/time"
_RSS_TAG = "LARGE-PEAK-RSS-KIB"

#: Runs the CLI in this (child) process and reports its peak RSS on stderr at exit.
_WRAPPER = f"""
import runpy, sys
def _hwm():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.argv = ["vqc"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("vqcodec.cli", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
finally:
    sys.stderr.write("\\n{_RSS_TAG} %d\\n" % _hwm())
    sys.stderr.flush()
sys.exit(code)
"""


# ------------------------------------------------------------------------------------ the image


def kodak_cells(images_dir: Path) -> list[np.ndarray]:
    """The images of `images_dir` (sorted *.png) as uint8 RGB, each 768 wide x 512 high."""
    paths = sorted(images_dir.glob("*.png"))
    if not paths:
        raise SystemExit(f"benchmarks.large: no PNG images in {images_dir}")
    cells = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if a.shape[0] > a.shape[1]:
            a = np.rot90(a)
        if a.shape[:2] != (CELL_H, CELL_W):
            a = np.asarray(Image.fromarray(a).resize((CELL_W, CELL_H), Image.LANCZOS))
        cells.append(np.ascontiguousarray(a))
    return cells


def build_mosaic(cells: Sequence[np.ndarray], width: int, height: int,
                 offset: int = MOSAIC_OFFSET) -> np.ndarray:
    """A `height` x `width` RGB crop, starting at (offset, offset), of a grid of `cells` laid out
    row by row and repeated as needed."""
    cols = math.ceil((width + offset) / CELL_W)
    rows = math.ceil((height + offset) / CELL_H)
    out = np.empty((height, width, 3), dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            cell = cells[(r * cols + c) % len(cells)]
            y0, x0 = r * CELL_H - offset, c * CELL_W - offset
            ys, xs = max(0, y0), max(0, x0)
            ye, xe = min(height, y0 + CELL_H), min(width, x0 + CELL_W)
            if ys < ye and xs < xe:
                out[ys:ye, xs:xe] = cell[ys - y0:ye - y0, xs - x0:xe - x0]
    return out


def mosaic_seams(size: int, cell: int, offset: int = MOSAIC_OFFSET) -> list[int]:
    """Coordinates (along an axis of `size` pixels) where one mosaic cell meets the next."""
    return [k * cell - offset for k in range(1, (size + offset) // cell + 1) if 0 < k * cell - offset < size]


# ------------------------------------------------------------------------------------ the child


def _gnu_time_ok() -> bool:
    if not os.path.exists(TIME_BIN):
        return False
    try:
        r = subprocess.run([TIME_BIN, "-v", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return "Maximum resident set size" in r.stderr


def run_cli(args: list[str], rss_method: str, threads: int | None = None) -> dict:
    """Run ``vqc <args>`` as a child; wall seconds, peak RSS (MiB) and the CLI's summary line.
    `threads`: OMP_NUM_THREADS / MKL_NUM_THREADS of the child (torch's intra-op threads)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if rss_method == "time":
        cmd = [TIME_BIN, "-v", sys.executable, "-m", "vqcodec.cli", *args]
    else:
        cmd = [sys.executable, "-c", _WRAPPER, *args]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    seconds = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"benchmarks.large: `vqc {' '.join(args)}` failed (exit {r.returncode}):\n"
                         f"{r.stderr.strip()}")
    if rss_method == "time":
        m = re.search(r"Maximum resident set size \(kbytes\):\s*(\d+)", r.stderr)
    else:
        m = re.search(rf"{_RSS_TAG} (\d+)", r.stderr)
    summary = next((ln.strip() for ln in r.stderr.splitlines() if " -> " in ln), "")
    cli_s = re.search(r", ([0-9.]+) s$", summary)
    return {
        "seconds": round(seconds, 3),
        "cli_reported_seconds": float(cli_s.group(1)) if cli_s else None,
        "peak_rss_mib": round(int(m.group(1)) / 1024, 1) if m else None,
        "summary": summary,
    }


# ------------------------------------------------------------------------------------ quality


def squared_error_map(a: np.ndarray, b: np.ndarray, rows: int = 256) -> np.ndarray:
    """Per-pixel sum over channels of the squared difference, uint32 [H, W] (chunked, so no
    full-size float copy of either image is made)."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    out = np.empty(a.shape[:2], dtype=np.uint32)
    for y in range(0, a.shape[0], rows):
        d = a[y:y + rows].astype(np.int32) - b[y:y + rows].astype(np.int32)
        out[y:y + rows] = (d * d).reshape(d.shape[0], d.shape[1], -1).sum(-1)
    return out


def _lines_mask(size: int, lines: Sequence[int], half: int) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    for p in lines:
        m[max(0, p - half):min(size, p + half)] = True
    return m


def band_mask(h: int, w: int, period: int, half: int = BAND, phase: int = 0) -> np.ndarray:
    """Pixels within `half` of an internal line ``k*period + phase`` (rows or columns)."""
    ys = [p for p in range(phase, h, period) if p > 0]
    xs = [p for p in range(phase, w, period) if p > 0]
    return _lines_mask(h, ys, half)[:, None] | _lines_mask(w, xs, half)[None, :]


def band_stats(se: np.ndarray, channels: int, period: int, exclude: np.ndarray) -> dict:
    """PSNR of the border band, a control band half a period away, and the rest."""
    h, w = se.shape
    band = band_mask(h, w, period) & ~exclude
    control = band_mask(h, w, period, phase=period // 2) & ~exclude & ~band
    rest = ~band_mask(h, w, period) & ~exclude

    def psnr_of(mask: np.ndarray) -> float | None:
        return psnr_from_sse(float(se[mask].sum(dtype=np.float64)), int(mask.sum()) * channels)

    out = {"period_px": period, "band_px": BAND, "band_fraction": round(float(band.mean()), 4),
           "psnr_band": psnr_of(band), "psnr_control": psnr_of(control), "psnr_rest": psnr_of(rest)}
    if out["psnr_band"] is not None and out["psnr_rest"] is not None:
        out["band_minus_rest_db"] = out["psnr_band"] - out["psnr_rest"]
    return out


# ------------------------------------------------------------------------------------ main


def _round(obj):
    if isinstance(obj, float):
        return obj if math.isinf(obj) else round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_round(v) for v in obj]
    return obj


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def run(args: argparse.Namespace) -> int:
    """Build the image, compress and decompress it with the CLI, measure, print and write the
    JSON report (see the module docstring). Returns the exit status (1: memory limit failed)."""
    rss_method = args.rss_method
    if rss_method == "auto":
        rss_method = "time" if _gnu_time_ok() else "proc"
    elif rss_method == "time" and not _gnu_time_ok():
        raise SystemExit(f"benchmarks.large: {TIME_BIN} -v is not available; use --rss-method proc")

    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="vqc-large-")
        work = Path(tmp)
    try:
        src, vqc, dec = work / "large.png", work / "large.vqc", work / "large.dec.png"
        t0 = time.perf_counter()
        pixels = build_mosaic(kodak_cells(Path(args.images)), args.width, args.height)
        Image.fromarray(pixels).save(src, compress_level=1)
        build_s = time.perf_counter() - t0
        print(f"image: {args.width}x{args.height} mosaic of {args.images} -> {src} "
              f"({src.stat().st_size:,} bytes, {build_s:.1f} s); peak RSS via {rss_method}", flush=True)

        common = ["--device", "cpu", "--force"]
        choice = ["--model", args.model] if args.model else ["--quality", str(args.quality)]
        comp = run_cli(["compress", str(src), "-o", str(vqc), *choice, *common], rss_method, args.threads)
        print(f"compress:   {comp['seconds']:.1f} s, peak RSS {_fmt(comp['peak_rss_mib'], 0)} MiB", flush=True)
        deco = run_cli(["decompress", str(vqc), "-o", str(dec), *common], rss_method, args.threads)
        print(f"decompress: {deco['seconds']:.1f} s, peak RSS {_fmt(deco['peak_rss_mib'], 0)} MiB", flush=True)

        from vqcodec import container, zoo

        data = vqc.read_bytes()
        header = container.read_header(data)
        f = zoo.load(header.model_name, header.model_hash, device="cpu").f
        from vqcodec import codec

        with Image.open(dec) as im:
            decoded = np.asarray(im.convert("RGB"), dtype=np.uint8)
        if decoded.shape != pixels.shape:
            raise SystemExit(f"benchmarks.large: decoded image is {decoded.shape}, expected {pixels.shape}")
        se = squared_error_map(pixels, decoded)
        h, w = se.shape
        guard = (_lines_mask(h, mosaic_seams(h, CELL_H), MOSAIC_GUARD)[:, None]
                 | _lines_mask(w, mosaic_seams(w, CELL_W), MOSAIC_GUARD)[None, :])
        grids = {
            "encoder_decoder_tiles": band_stats(se, 3, (codec.PIXEL_TILE // f) * f, guard),
            "prior_tiles": band_stats(se, 3, (header.tile_h or max(header.grid_h, header.grid_w)) * f,
                                      guard),
        }
        psnr_whole = psnr_from_sse(float(se.sum(dtype=np.float64)), se.size * 3)
        n_px = args.width * args.height
        peak = max(x for x in (comp["peak_rss_mib"], deco["peak_rss_mib"], 0.0) if x is not None)
        machine = machine_info()
        try:
            import torch

            machine["torch"] = torch.__version__
            machine["torch_threads"] = torch.get_num_threads()
        except ImportError:
            pass

        report = {
            "width": args.width, "height": args.height, "pixels": n_px,
            "quality": None if args.model else args.quality,
            "model": header.model_name, "f": f, "prior_tile_latent": header.tile_h,
            "source": {"images": str(args.images), "png_bytes": src.stat().st_size,
                       "mosaic_offset_px": MOSAIC_OFFSET, "mosaic_guard_px": MOSAIC_GUARD},
            "vqc_bytes": len(data), "bpp": 8 * len(data) / n_px,
            "compress": comp, "decompress": deco,
            "psnr_whole": psnr_whole, "grids": grids,
            "peak_rss_mib": peak, "rss_method": rss_method, "device": "cpu",
            "child_threads": args.threads or os.environ.get("OMP_NUM_THREADS") or "torch default",
            "machine": machine,
            "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        status = 0
        if args.check_memory_limit is not None:
            ok = comp["peak_rss_mib"] is not None and deco["peak_rss_mib"] is not None \
                and peak <= args.check_memory_limit
            report["memory_limit"] = {"limit_mib": args.check_memory_limit, "peak_mib": peak, "pass": ok}
            status = 0 if ok else 1

        print()
        print(f"vqc {args.width}x{args.height} ({n_px / 1e6:.1f} MP), quality {args.quality} "
              f"({header.model_name}, f={f}), CPU: {machine['cpu']} ({machine['cores']} cores)")
        print(f"{'step':<12}{'seconds':>9}{'cli s':>9}{'peak RSS MiB':>14}")
        for name, r in (("compress", comp), ("decompress", deco)):
            print(f"{name:<12}{r['seconds']:>9.1f}{_fmt(r['cli_reported_seconds'], 1):>9}"
                  f"{_fmt(r['peak_rss_mib'], 0):>14}")
        print(f"size: {len(data):,} bytes, {report['bpp']:.4f} bpp (source PNG {src.stat().st_size:,} bytes)")
        print(f"PSNR whole image: {_fmt(psnr_whole)} dB")
        print(f"{'tile grid':<24}{'period':>7}{'band %':>8}{'band':>8}{'control':>9}{'rest':>8}{'band-rest':>11}")
        for name, g in grids.items():
            print(f"{name:<24}{g['period_px']:>7}{100 * g['band_fraction']:>8.1f}{_fmt(g['psnr_band']):>8}"
                  f"{_fmt(g['psnr_control']):>9}{_fmt(g['psnr_rest']):>8}"
                  f"{_fmt(g.get('band_minus_rest_db')):>11}")
        print(f"(band: within {BAND} px of a tile border; control: same band half a period away; "
              f"PSNR in dB)")
        if args.check_memory_limit is not None:
            verdict = "PASS" if report["memory_limit"]["pass"] else "FAIL"
            print(f"memory limit {args.check_memory_limit} MiB: {verdict} (peak {_fmt(peak, 0)} MiB)")

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(_round(report), indent=1) + "\n")
        print(f"wrote {out}")
        return status
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.large", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--width", type=int, default=6000)
    p.add_argument("--height", type=int, default=4000)
    p.add_argument("--quality", type=float, default=DEFAULT_QUALITY,
                   help="quality 0..100 (default: vqc's default)")
    p.add_argument("--model", default=None,
                   help="model name instead of --quality (e.g. one in $VQC_MODEL_PATH)")
    p.add_argument("--images", default=str(DEFAULT_IMAGES), help="folder of Kodak PNGs")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSON report path")
    p.add_argument("--check-memory-limit", type=int, default=None, metavar="MIB",
                   help="PASS/FAIL (exit 1) for the larger peak RSS against this many MiB")
    p.add_argument("--workdir", default=None, help="keep the PNG, .vqc and decoded PNG here")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS for the vqc children (default: torch's default, all cores)")
    p.add_argument("--rss-method", choices=("auto", "time", "proc"), default="auto",
                   help="peak RSS from /usr/bin/time -v or from /proc/self/status in a wrapper")
    args = p.parse_args(argv)
    if args.width < 1 or args.height < 1:
        p.error("--width and --height must be positive")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
