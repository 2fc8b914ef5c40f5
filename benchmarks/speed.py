"""Speed of vqc next to Pillow AVIF, WebP and JPEG, in-process and through the CLI, idle and busy.

    python -m benchmarks.speed [--image PATH (default kodim23)] [--runs 3]
                               [--device cpu|cuda|all] [--quality Q[,Q...]|all]
                               [--no-memory] [--no-cli] [--no-busy] [--no-classic] [--no-native]
    python -m benchmarks.speed --native-only [--vqc FILE] [--image PATH] [--runs N]

For every device (the CPU, and the GPU when ``torch.cuda.is_available()``; ``--device all`` is
the default) and quality (default: the codec's ``DEFAULT_QUALITY``, at its default effort):

* time: wall-clock seconds of ``compress(pixels, quality=q, device=d)`` and of
  ``decompress(data, device=d)``, the median of ``--runs`` runs after one untimed warm-up run (so
  model loading is not in the time), all in this process;
* classic codecs (CPU, first quality only): Pillow AVIF, WebP and JPEG 4:2:0 (the encoders of
  ``benchmarks.rd``) at the setting of their sweep whose file size is closest to vqc's file, the
  same image, encode and decode timed the same way; ``dec_ratio`` / ``enc_ratio`` = vqc's
  seconds / that codec's seconds;
* native core (CPU, first quality only, when `vqcodec.native` finds libvqc): the in-process
  decode of the same file by the C core (``vqcodec.native.decompress``, one thread and all
  usable cores), next to Pillow's AVIF decode of the AVIF file closest in size, in the same run;
  ``ratio`` = native seconds / AVIF seconds, and whether its pixels equal the torch decoder's.
  ``--native-only`` runs just that (compressing the image once with torch, or taking ``--vqc``);
* CLI (CPU): wall-clock seconds of ``python -m vqcodec.cli compress`` / ``decompress`` as fresh
  processes (interpreter and torch start-up, model loading and file I/O included), median of
  ``--runs``;
* busy machine (CPU): the same in-process decode (and one CLI decode) while one competing
  CPU-bound process (a Python busy loop) runs; ``busy_ratio`` = busy / idle decode seconds;
* memory: each operation once more in a fresh Python subprocess, so its peak is a true peak:
  ``peak_rss_delta_mib`` = peak resident set size after the operation minus the resident size
  just before it (after imports, loading the input and, for CUDA, creating the CUDA context); it
  includes loading the model on first use. The peak is the process's VmHWM (/proc/self/status),
  reset to the current RSS just before the call via /proc/self/clear_refs; where /proc is not
  there, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (on Linux that one also carries the
  parent's peak across fork + exec, so the subprocess alone does not make it a clean peak). On a
  GPU, ``gpu_peak_alloc_mib`` = ``torch.cuda.max_memory_allocated()`` in that subprocess (model
  weights included). MiB = 2**20 bytes.

The machine (CPU model from /proc/cpuinfo, usable cores, GPU name, torch version and threads) and
its load when the run starts (``/proc/loadavg``: idle timings need an otherwise idle machine) are
named in the output. Writes ``benchmarks/results/speed.json`` (``speed_native.json`` with
``--native-only``; ``--out`` to choose) and prints tables.
A full run on kodim23 takes about 2-3 minutes on a 2-core CPU."""

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
from benchmarks.rd import (
    DEFAULT_IMAGES, REPO_ROOT, classic_codecs, load_rgb, machine_info)

DEFAULT_VQC_MODULE = "vqcodec.codec"  # --vqc-module (hidden): the tests run a stand-in codec

DEFAULT_IMAGE = DEFAULT_IMAGES / "kodim23.png"
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "speed.json"
NATIVE_OUT = REPO_ROOT / "benchmarks" / "results" / "speed_native.json"
_CHILD_TAG = "SPEED-CHILD-RESULT "
CLASSIC = ("avif", "webp", "jpeg420")  # benchmarks.rd codec names compared against
DEFAULT_CLI_MODULE = "vqcodec.cli"


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


def _subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def measure_memory(op: str, device: str, image: Path, quality: float, vqc_module: str,
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
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=_subprocess_env(), capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(_CHILD_TAG):
            return json.loads(line[len(_CHILD_TAG):])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": f"subprocess exit {proc.returncode}: {' | '.join(tail)}"}


def machine_load() -> dict:
    """Load averages (1, 5, 15 min) and runnable / total threads from /proc/loadavg, or {}."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        running, total = (int(v) for v in fields[3].split("/"))
        return {"loadavg": [float(v) for v in fields[:3]], "runnable_threads": running, "threads": total}
    except (OSError, ValueError, IndexError):
        return {}


class Competitor:
    """One competing CPU-bound process (a Python busy loop) for the duration of a with-block."""

    def __enter__(self) -> "Competitor":
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # let it get scheduled and show up as runnable
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def closest_setting(codec, pixels: np.ndarray, target_bytes: int) -> tuple[int, bytes]:
    """The setting of ``codec.settings`` (file size increasing with it) whose file is closest in
    size to ``target_bytes``, found by bisection; returns (setting, file bytes)."""
    settings = list(codec.settings)
    lo, hi = 0, len(settings) - 1
    files: dict[int, bytes] = {}

    def size(i: int) -> int:
        if i not in files:
            files[i] = codec.encode(pixels, settings[i])
        return len(files[i])

    while lo < hi:
        mid = (lo + hi) // 2
        if size(mid) < target_bytes:
            lo = mid + 1
        else:
            hi = mid
    best = min((i for i in (lo - 1, lo) if 0 <= i < len(settings)),
               key=lambda i: abs(size(i) - target_bytes))
    return settings[best], files[best]


def measure_classic(pixels: np.ndarray, target_bytes: int, vqc_row: dict, runs: int) -> list[dict]:
    """AVIF, WebP and JPEG at the file size closest to vqc's: bytes, bpp, PSNR, enc/dec seconds
    and vqc's seconds divided by theirs."""
    h, w = pixels.shape[:2]
    codecs = classic_codecs()
    rows = []
    for name in CLASSIC:
        codec = codecs[name]
        setting, data = closest_setting(codec, pixels, target_bytes)
        enc_s, enc_runs, _ = time_median(lambda: codec.encode(pixels, setting), runs)
        dec_s, dec_runs, out = time_median(lambda: codec.decode(data), runs)
        rows.append({"codec": name, "label": codec.label, "setting": setting, "bytes": len(data),
                     "bpp": metrics.bpp(len(data), w, h), "psnr": metrics.psnr(pixels, out),
                     "enc_s": enc_s, "dec_s": dec_s, "enc_s_runs": enc_runs, "dec_s_runs": dec_runs,
                     "enc_ratio": vqc_row["enc_s"] / enc_s, "dec_ratio": vqc_row["dec_s"] / dec_s,
                     "fingerprint": codec.fingerprint})
    return rows


def measure_native(data: bytes, pixels: np.ndarray, runs: int, reference=None) -> dict:
    """The native core's in-process decode of `data` (`vqcodec.native.decompress`, one thread
    and all usable cores) next to Pillow AVIF's decode of the AVIF file closest in size to it,
    timed in the same run; ``ratio`` = native / AVIF seconds (one thread). `reference`: the torch
    decoder's image of `data`, compared pixel for pixel when given. ``{"error": why}`` when the
    core is unavailable."""
    from vqcodec import native

    if not native.available():
        return {"error": native.unavailable_reason()}
    h, w = pixels.shape[:2]
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    dec_s, dec_runs, out = time_median(lambda: native.decompress(data), runs)
    mt_s, mt_runs, _ = time_median(lambda: native.decompress(data, threads=threads), runs)
    avif = classic_codecs()["avif"]
    setting, avif_data = closest_setting(avif, pixels, len(data))
    avif_s, avif_runs, avif_out = time_median(lambda: avif.decode(avif_data), runs)
    out_px = np.asarray(out.convert("RGB"))
    row = {"library": str(native.library_path()), "version": native.version(),
           "bytes": len(data), "bpp": metrics.bpp(len(data), w, h),
           "psnr": metrics.psnr(pixels, out_px) if out_px.shape == pixels.shape else None,
           "dec_s": dec_s, "dec_s_runs": dec_runs, "threads": threads, "dec_s_threads": mt_s,
           "dec_s_threads_runs": mt_runs,
           "avif": {"label": avif.label, "setting": setting, "bytes": len(avif_data),
                    "bpp": metrics.bpp(len(avif_data), w, h), "psnr": metrics.psnr(pixels, avif_out),
                    "dec_s": avif_s, "dec_s_runs": avif_runs, "fingerprint": avif.fingerprint},
           "ratio": dec_s / avif_s, "ratio_threads": mt_s / avif_s}
    if reference is not None:
        row["same_pixels_as_torch"] = (out.mode == reference.mode and out.tobytes() == reference.tobytes())
    return row


def print_native(row: dict | None) -> None:
    if not row:
        return
    if "error" in row:
        print(f"native core: unavailable ({row['error']})")
        return
    a = row["avif"]
    same = row.get("same_pixels_as_torch")
    print(f"native core ({row['version']}), in-process decode of {row['bytes']} bytes: "
          f"{row['dec_s'] * 1000:.1f} ms (1 thread), {row['dec_s_threads'] * 1000:.1f} ms "
          f"({row['threads']} threads); Pillow AVIF {a['setting']} ({a['bytes']} bytes): "
          f"{a['dec_s'] * 1000:.2f} ms; native / AVIF = {row['ratio']:.0f}x "
          f"({row['ratio_threads']:.0f}x with {row['threads']} threads)"
          + ("" if same is None else f"; pixels {'equal' if same else 'DIFFER from'} the torch decoder's"))


def _cli_run(cli_module: str, args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", cli_module, *args], cwd=REPO_ROOT, env=_subprocess_env(),
                          capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{cli_module} {args[0]} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return seconds


def measure_cli(cli_module: str, image: Path, quality: float, runs: int) -> dict:
    """Median wall-clock seconds of the CLI's compress and decompress as fresh processes
    (start-up included), and one decompress while a competing CPU-bound process runs."""
    with tempfile.TemporaryDirectory() as tmp:
        vqc, png = str(Path(tmp) / "a.vqc"), str(Path(tmp) / "a.png")
        enc = [_cli_run(cli_module, ["compress", str(image), "-o", vqc, "--quality", str(quality),
                                     "--device", "cpu", "--force"]) for _ in range(max(1, runs))]
        dec = [_cli_run(cli_module, ["decompress", vqc, "-o", png, "--device", "cpu", "--force"])
               for _ in range(max(1, runs))]
        with Competitor():
            busy = _cli_run(cli_module, ["decompress", vqc, "-o", png, "--device", "cpu", "--force"])
    dec_s = statistics.median(dec)
    return {"enc_s": statistics.median(enc), "dec_s": dec_s, "enc_s_runs": enc, "dec_s_runs": dec,
            "busy_dec_s": busy, "busy_ratio": busy / dec_s}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of ``python -m benchmarks.speed``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per measurement (median reported)")
    ap.add_argument("--device", choices=("cpu", "cuda", "all"), default="all",
                    help="cpu, cuda, or all (cpu plus cuda when a GPU is present; default)")
    ap.add_argument("--quality", default=None,
                    help="quality (0..100), comma-separated, or 'all' (QUALITY_LEVELS; default: DEFAULT_QUALITY)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON output path (default results/speed.json, or speed_native.json with --native-only)")
    ap.add_argument("--no-memory", action="store_true", help="skip the subprocess memory measurements")
    ap.add_argument("--no-classic", action="store_true", help="skip Pillow AVIF / WebP / JPEG")
    ap.add_argument("--no-cli", action="store_true", help="skip the CLI wall-clock timings")
    ap.add_argument("--no-busy", action="store_true", help="skip the busy-machine timings")
    ap.add_argument("--no-native", action="store_true", help="skip the native core next to AVIF")
    ap.add_argument("--native-only", action="store_true",
                    help="only the native core's decode next to Pillow AVIF (CPU, first quality)")
    ap.add_argument("--vqc", type=Path, default=None,
                    help="with --native-only: decode this .vqc file of --image instead of compressing it")
    ap.add_argument("--vqc-module", default=DEFAULT_VQC_MODULE, help=argparse.SUPPRESS)
    ap.add_argument("--cli-module", default=DEFAULT_CLI_MODULE, help=argparse.SUPPRESS)
    ap.add_argument("--child", choices=("encode", "decode"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-quality", type=_number, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-data", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _number(text: str) -> float | int:
    """A quality from the command line: an int when it is whole (76), else a float (62.5)."""
    q = float(text)
    return int(q) if q.is_integer() else q


def _qualities(spec: str | None, levels: Sequence[int], default: float | None) -> list[float | int]:
    if spec is None:
        return [default if default is not None else levels[len(levels) // 2]]
    if spec.strip().lower() == "all":
        return list(levels)
    return [_number(q) for q in spec.split(",") if q.strip()]


def main(argv: Sequence[str] | None = None) -> dict | None:
    """Measure and report; returns the dict written to ``--out`` (None when vqc is unavailable)."""
    args = parse_args(argv)
    if args.out is None:
        args.out = NATIVE_OUT if args.native_only else DEFAULT_OUT
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

    if args.native_only:
        return _native_only(args, mod)
    has_cuda = _cuda_available()
    if args.device == "cuda" and not has_cuda:
        raise SystemExit("--device cuda: no CUDA GPU is available")
    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else (
        ["cpu", "cuda"] if has_cuda else ["cpu"])
    image = args.image.resolve()
    pixels = load_rgb(image)
    h, w = pixels.shape[:2]
    load = machine_load()
    machine = machine_with_gpu()
    results = []
    classic: list[dict] = []
    cli: dict | None = None
    native_row: dict | None = None
    for device in devices:
        for q in _qualities(args.quality, levels, getattr(mod, "DEFAULT_QUALITY", None)):
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
            if device == "cpu" and not args.no_busy:
                print(f"cpu quality {q}: decode next to a competing CPU-bound process ...", flush=True)
                with Competitor():
                    busy_s, busy_runs, _ = time_median(lambda: decompress(data, device=device), args.runs)
                row.update(busy_dec_s=busy_s, busy_dec_s_runs=busy_runs, busy_ratio=busy_s / dec_s)
            if not args.no_memory:
                print(f"{device} quality {q}: memory (fresh subprocesses) ...", flush=True)
                row["enc_mem"] = measure_memory("encode", device, image, q, args.vqc_module)
                row["dec_mem"] = measure_memory("decode", device, image, q, args.vqc_module, data)
            if device == "cpu" and not classic and not args.no_classic:
                print(f"Pillow {', '.join(CLASSIC)} at vqc's file size ({len(data)} bytes) ...", flush=True)
                classic = measure_classic(pixels, len(data), row, args.runs)
            if (device == "cpu" and native_row is None and not args.no_native
                    and args.vqc_module == DEFAULT_VQC_MODULE):
                print(f"cpu quality {q}: native core next to Pillow AVIF ...", flush=True)
                native_row = {"quality": q, **measure_native(data, pixels, args.runs, out)}
            if device == "cpu" and cli is None and not args.no_cli:
                print(f"cpu quality {q}: CLI wall time ...", flush=True)
                cli = {"quality": q, **measure_cli(args.cli_module, image, q, args.runs)}
            results.append(row)

    report = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": machine,
        "load_at_start": load,
        "image": str(image), "width": w, "height": h, "runs": args.runs,
        "method": "median of --runs after one warm-up (seconds, wall clock); memory from one cold run "
                  "in a fresh subprocess: peak RSS delta (MiB) and torch.cuda.max_memory_allocated (MiB); "
                  "classic codecs at the sweep setting closest to vqc's file size, ratios = vqc seconds / "
                  "codec seconds; CLI = fresh processes, start-up included; busy = while one Python "
                  "busy loop runs",
        "results": results,
        "classic": classic,
        "cli": cli,
        "native": native_row,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_table(report)
    print(f"wrote {args.out}")
    return report


def _native_only(args: argparse.Namespace, mod) -> dict:
    """--native-only: the native core next to Pillow AVIF, nothing else; written to --out."""
    image = args.image.resolve()
    pixels = load_rgb(image)
    q = getattr(mod, "DEFAULT_QUALITY", None)
    load = machine_load()
    if args.vqc is not None:
        data = args.vqc.read_bytes()
        quality = f"file {args.vqc}"
    else:
        print(f"compressing {image.name} at quality {q} (torch) ...", flush=True)
        data = bytes(mod.compress(pixels, quality=q, device="cpu"))
        quality = q
    print("native core next to Pillow AVIF ...", flush=True)
    reference = None if args.vqc is not None else mod.decompress(data, device="cpu")
    row = {"quality": quality, **measure_native(data, pixels, args.runs, reference)}
    report = {"generated": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": machine_info(),
              "load_at_start": load, "load_at_end": machine_load(), "image": str(image),
              "runs": args.runs, "native": row}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print_native(row)
    print(f"machine load at start {load.get('loadavg')}, at end {report['load_at_end'].get('loadavg')}")
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
        if "busy_ratio" in r:
            print(f"{r['device']} q={r['quality']}: decode with one competing CPU-bound process "
                  f"{r['busy_dec_s']:.3f} s = {r['busy_ratio']:.2f}x idle")
    load = report.get("load_at_start") or {}
    if load:
        print(f"machine load at start: {load['loadavg']} (1/5/15 min), {load['runnable_threads']} runnable "
              "threads (idle timings need an otherwise idle machine)")
    if report.get("classic"):
        vqc = next(r for r in report["results"] if r["device"] == "cpu")
        t = Table(title=f"vqc (cpu, quality {vqc['quality']}) next to Pillow codecs at a similar file size")
        for col in ("codec", "setting", "bytes", "bpp", "PSNR dB", "enc s", "dec s",
                    "vqc/codec enc", "vqc/codec dec"):
            t.add_column(col, justify="right", no_wrap=True)
        t.add_row("vqc", str(vqc["quality"]), str(vqc["bytes"]), f"{vqc['bpp']:.4f}",
                  "-" if vqc["psnr"] is None else f"{vqc['psnr']:.2f}", f"{vqc['enc_s']:.4f}",
                  f"{vqc['dec_s']:.4f}", "1", "1")
        for c in report["classic"]:
            t.add_row(c["label"], str(c["setting"]), str(c["bytes"]), f"{c['bpp']:.4f}", f"{c['psnr']:.2f}",
                      f"{c['enc_s']:.4f}", f"{c['dec_s']:.4f}", f"{c['enc_ratio']:.0f}x", f"{c['dec_ratio']:.0f}x")
        Console(width=max(Console().width, 140)).print(t)
    print_native(report.get("native"))
    cli = report.get("cli")
    if cli:
        print(f"CLI (fresh processes, start-up included), quality {cli['quality']}: compress {cli['enc_s']:.2f} s, "
              f"decompress {cli['dec_s']:.2f} s; decompress next to a competing process {cli['busy_dec_s']:.2f} s "
              f"= {cli['busy_ratio']:.2f}x")


if __name__ == "__main__":
    main()
