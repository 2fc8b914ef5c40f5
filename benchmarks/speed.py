"""Speed and memory of vqc: encode / decode seconds and peak memory for one image.

    python -m benchmarks.speed [--image PATH (default kodim23)] [--runs 3]
                               [--device cpu|cuda|all] [--quality Q[,Q...]|all]

For every device (the CPU, and the GPU when ``torch.cuda.is_available()``; ``--device all`` is
the default) and quality level (default: the middle entry of ``QUALITY_LEVELS``):

* time: wall-clock seconds of ``compress(pixels, quality=q, device=d)`` and of
  ``decompress(data, device=d)``, the median of ``--runs`` runs after one untimed warm-up run (so
  model loading is not in the time), all in this process;
* memory: each operation once more in a fresh Python subprocess, so its peak is a true peak:
  ``peak_rss_delta_mib`` = peak resident set size after the operation minus the resident size
  just before it (after imports, loading the input and, for CUDA, creating the CUDA context); it
  includes loading the model on first use. The peak is the process's VmHWM (/proc/self/status),
  reset to the current RSS just before the call via /proc/self/clear_refs; where /proc is not
  there, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (on Linux that one also carries the
  parent's peak across fork + exec, so the subprocess alone does not make it a clean peak). On a
  GPU, ``gpu_peak_alloc_mib`` = ``torch.cuda.max_memory_allocated()`` in that subprocess (model
  weights included). MiB = 2**20 bytes.

The machine (CPU model from /proc/cpuinfo, usable cores, GPU name, torch version and threads) is
named in the output. Writes ``benchmarks/results/speed.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks import metrics
from benchmarks.rd import DEFAULT_IMAGES, REPO_ROOT, load_rgb, machine_info

DEFAULT_VQC_MODULE = "vqcodec.codec"  # --vqc-module (hidden): the tests run a stand-in codec

DEFAULT_IMAGE = DEFAULT_IMAGES / "kodim23.png"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "speed.json"
_CHILD_TAG = "SPEED-CHILD-RESULT "


def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def machine_with_gpu() -> dict:
    """``rd.machine_info()`` plus torch version, torch CPU threads and the GPU name (or None)."""
    info = machine_info()
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_mib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**20)
            info["cuda"] = torch.version.cuda
        else:
            info["gpu"] = None
    except Exception:  # noqa: BLE001
        info["gpu"] = None
    return info


def _proc_status_kib(field: str) -> int | None:
    """A KiB field of /proc/self/status (VmRSS: resident now, VmHWM: peak resident), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _current_rss_kib() -> int:
    """Resident set size of this process now, KiB (from /proc/self/status; 0 if unavailable)."""
    return _proc_status_kib("VmRSS") or 0


def _reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (VmHWM) to its current RSS; False if not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_median(fn: Callable[[], Any], runs: int, device: str = "cpu") -> tuple[float, list[float], Any]:
    """Median wall-clock seconds of ``fn()`` over ``runs`` runs after one untimed warm-up.

    Returns (median seconds, every run's seconds, the last result).
    """
    result = fn()
    _sync(device)
    times = []
    for _ in range(max(1, runs)):
        t0 = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, result


def _child(args: argparse.Namespace) -> None:
    """Run one operation once in this (fresh) process and print its peak memory as JSON."""
    import resource

    mod = importlib.import_module(args.vqc_module)
    device = args.device
    if device.startswith("cuda"):
        import torch

        torch.zeros(1, device=device)  # create the CUDA context before the baseline
        torch.cuda.reset_peak_memory_stats()
    if args.child == "encode":
        payload: Any = load_rgb(Path(args.image))
    else:
        payload = Path(args.child_data).read_bytes()
    reset = _reset_peak_rss()
    rss_before = _current_rss_kib()
    t0 = time.perf_counter()
    if args.child == "encode":
        mod.compress(payload, quality=args.child_quality, device=device)
    else:
        mod.decompress(payload, device=device)
    _sync(device)
    cold_s = time.perf_counter() - t0
    # ru_maxrss (KiB on Linux) is the process's peak, but Linux carries the parent's peak across
    # fork + exec, so a child of a big parent starts with the parent's figure. VmHWM belongs to
    # the process's own address space (new at exec) and was reset just before the call.
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    hwm = _proc_status_kib("VmHWM")
    peak, source = (hwm, "VmHWM") if hwm is not None else (maxrss, "ru_maxrss")
    out = {"rss_before_mib": rss_before / 1024, "peak_rss_mib": peak / 1024,
           "peak_rss_delta_mib": max(peak - rss_before, 0) / 1024, "peak_source": source,
           "peak_reset": reset, "ru_maxrss_mib": maxrss / 1024, "cold_s": cold_s}
    if device.startswith("cuda"):
        import torch

        out["gpu_peak_alloc_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(_CHILD_TAG + json.dumps(out), flush=True)


def measure_memory(op: str, device: str, image: Path, quality: int, vqc_module: str,
                   data: bytes | None = None) -> dict:
    """Peak memory of one ``op`` ('encode' or 'decode') measured in a fresh subprocess.

    Returns peak_rss_delta_mib, peak_rss_mib, rss_before_mib, cold_s (seconds of that single
    cold run, model loading included) and, on CUDA, gpu_peak_alloc_mib; or {'error': ...}.
    """
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks.speed", "--child", op, "--device", device,
               "--image", str(image), "--child-quality", str(quality), "--vqc-module", vqc_module]
        if data is not None:
            path = Path(tmp) / "input.vqc"
            path.write_bytes(data)
            cmd += ["--child-data", str(path)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_CHILD_TAG):
            return json.loads(line[len(_CHILD_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"subprocess exit {proc.returncode}: {' | '.join(tail)}"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of ``python -m benchmarks.speed``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported)")
    ap.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                    help="cpu, cuda, or all (cpu plus cuda when a GPU is present; default)")
    ap.add_argument("--quality", default=None,
                    help="quality level(s), comma-separated, or 'all' (default: middle of QUALITY_LEVELS)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON output path")
    ap.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    ap.add_argument("--vqc-module", default=DEFAULT_VQC_MODULE, help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("encode", "decode"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-quality", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-data", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _qualities(spec: str | None, levels: Sequence[int]) -> list[int]:
    if spec is None:
        return [levels[len(levels) // 2]]
    if spec.strip().lower() == "all":
        return list(levels)
    return [int(q) for q in spec.split(",") if q.strip()]


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Measure and report; returns the dict written to ``--out`` (None when vqc is unavailable)."""
    args = parse_args(argv)
    if args.child:
        _child(args)
        return None
    try:
        mod = importlib.import_module(args.vqc_module)
        compress, decompress, levels = mod.compress, mod.decompress, [int(q) for q in mod.QUALITY_LEVELS]
    except Exception as exc:  # noqa: BLE001
        print(f"vqc speed benchmark skipped: `import {args.vqc_module}` failed "
              f"({type(exc).__name__}: {exc})")
        return None

    has_cuda = _cuda_available()
    if args.device == "cuda" and not has_cuda:
        raise SystemExit("--device cuda: no CUDA GPU is available")
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else (
        ["cpu", "cuda"] if has_cuda else ["cpu"])
    image = args.image.resolve()
    pixels = load_rgb(image)
    h, w = pixels.shape[:2]
    machine = machine_with_gpu()
    results = []
    for device in devices:
        for q in _qualities(args.quality, levels):
            print(f"{device} quality {q}: timing ...", flush=True)
            enc_s, enc_runs, data = time_median(lambda: compress(pixels, quality=q, device=device), args.runs, device)
            data = bytes(data)
            dec_s, dec_runs, out = time_median(lambda: decompress(data, device=device), args.runs, device)
            out_px = np.asarray(out.convert("RGB")) if hasattr(out, "convert") else np.asarray(out)
            row: dict[str, Any] = {
                "device": device, "quality": q, "bytes": len(data), "bpp": metrics.bpp(len(data), w, h),
                "psnr": metrics.psnr(pixels, out_px) if out_px.shape == pixels.shape else None,
                "enc_s": enc_s, "dec_s": dec_s, "enc_s_runs": enc_runs, "dec_s_runs": dec_runs,
            }
            if not args.no_memory:
                print(f"{device} quality {q}: memory (fresh subprocesses) ...", flush=True)
                row["enc_mem"] = measure_memory("encode", device, image, q, args.vqc_module)
                row["dec_mem"] = measure_memory("decode", device, image, q, args.vqc_module, data)
            results.append(row)

    report = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine,
        "image": str(image), "width": w, "height": h, "runs": args.runs,
        "method": "median of --runs after one warm-up (seconds, wall clock); memory from one cold run "
                  "in a fresh subprocess: peak RSS delta (MiB) and torch.cuda.max_memory_allocated (MiB)",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"wrote {args.out}")
    return report


def print_table(report: dict) -> None:
    """Print the speed report as a rich table (seconds, MiB)."""
    from rich.console import Console
    from rich.table import Table

    m = report["machine"]
    title = (f"vqc speed on {Path(report['image']).name} ({report['width']}x{report['height']}), "
             f"median of {report['runs']} runs\nCPU: {m['cpu']} ({m['cores']} cores, torch threads "
             f"{m.get('torch_threads')}); GPU: {m.get('gpu') or 'none'}")
    t = Table(title=title)
    for col in ("device", "quality", "bytes", "bpp", "PSNR dB", "enc s", "dec s",
                "enc RSS+ MiB", "dec RSS+ MiB", "enc GPU MiB", "dec GPU MiB"):
        t.add_column(col, justify="right", no_wrap=True)

    def mem(r: dict, op: str, key: str) -> str:
        d = r.get(f"{op}_mem") or {}
        if "error" in d:
            return "error"
        v = d.get(key)
        return "-" if v is None else f"{v:.0f}"

    for r in report["results"]:
        t.add_row(r["device"], str(r["quality"]), str(r["bytes"]), f"{r['bpp']:.4f}",
                  "-" if r["psnr"] is None else f"{r['psnr']:.2f}", f"{r['enc_s']:.3f}", f"{r['dec_s']:.3f}",
                  mem(r, "enc", "peak_rss_delta_mib"), mem(r, "dec", "peak_rss_delta_mib"),
                  mem(r, "enc", "gpu_peak_alloc_mib"), mem(r, "dec", "gpu_peak_alloc_mib"))
    Console(width=max(Console().width, 140)).print(t)
    print("RSS+ = peak RSS minus RSS before the call, GPU = torch.cuda.max_memory_allocated; "
          "both from one cold call in a fresh process (model loading included).")
    for r in report["results"]:
        for op in ("enc", "dec"):
            d = r.get(f"{op}_mem") or {}
            if "error" in d:
                print(f"{r['device']} q={r['quality']} {op} memory: {d['error']}")


if __name__ == "__main__":
    main()
