"""The one-lease GPU recipe (issue 18, item 5): train the rvq configurations side by side on one GPU
within a time budget, write fp16 float rvq files and logs to an output folder, resume when rerun.

Configurations (`configs`), each one `vqcodec.train.rvq` process, all running concurrently on the
one GPU with the same --time-limit (so "equal minutes"):

- `rvq-joint`: f = 8, K = 1024, D = 32, S = 6 stages (at most 60 bits per 64 pixels, 0.94 bpp
  before coding), a wide decoder (c_lo 96, c_hi 192, n_res 3) aimed at 35 dB, stage prior
  C = 96, L = 4; joint rate-aware objective with quantiser dropout, from scratch.  Its float
  file is 15.3 MiB (encoder 2.54 M, decoder 1.86 M, prior 3.42 M parameters, fp16), under the
  16 MiB a lease returns per file; S = 8 with C = 128 would be 22.6 MiB (the prior's
  conditioning tables [s, K, C] grow with s^2).
- `rvq-twostage`: the same architecture and minutes, today's two-stage recipe (VQ-VAE alone
  with lambda = 0 for 60 % of the run, then the prior on its frozen indices).
- `rvq-warm`: the released vqc-f8k1024-v1's architecture (c_lo 64, c_hi 128, n_res 2) with
  S = 4, warm-started from it (encoder, decoder, stage 0 and the prior's stage-0 part), joint
  objective: the fallback if 8 minutes from scratch are too few for the wide model.

MACs per pixel (`decoder_macs_per_pixel`, `vqcodec.prior_stages.macs_per_pixel`; recorded in
recipe.json): the wide decoder 73,728 (the released f8 decoder: 30,976; f4: 36,800); the stage
prior C 96, L 4 at f = 8: 12,624 with one coded stage, + 1,680 per further stage, 21,024 with
all 6 (issue 18 asks <= 83 k, aiming at 40 k).

Batch sizes and flags are not measured on a GPU yet (no GPU on the development machine): bf16
autocast and channels-last are on (the released models' settings), torch.compile off.  steps/s
and GPU utilisation are logged every 50 steps, so the first lease measures them.

The exact lease command (device `run` tool; the crops travel in the git-ignored .carry/crops,
made first with `python -m vqcodec.train.pack_crops`, which fills what the 64 MiB leaves beside
the tracked files: 886 of the 1,039 training crops, 36.7 MB, beside 28.3 MB tracked with the rvq model):

    run(command="PYTHONUNBUFFERED=1 python3 -m vqcodec.train.recipe --data .carry/crops
        --out $OUT --minutes 9", carry=[".carry/crops"], timeout_s=600)

No wheel is needed (training imports torch, numpy, Pillow and safetensors only, all on the
device image).  A rerun on the same machine resumes from the checkpoints in --ckpt-dir (default
.carry/ckpt, git-ignored, so a warm lease machine keeps it between calls while $OUT starts empty;
the .pt/.opt files are too large to come back from a lease).  Each process's stderr goes there
too, and its last 2,000 characters into recipe.json.  To continue on a
later lease, copy the returned *.float.safetensors into a carried folder and pass it as
--init-dir: each configuration without a checkpoint then warm-starts from its float file
(weights only; Adam state and EMA statistics restart).

Outputs in --out (<= 8 files): NAME.float.safetensors (fp16, float rvq layout of
`vqcodec.train.export_rvq_int8`, for the int8 calibration on the CPU), NAME.log.jsonl, recipe.json
(options, MACs per pixel, last logged metrics, exit codes, stderr tails).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch.nn as nn

from vqcodec.prior_stages import StagePriorConfig, macs_per_pixel
from vqcodec.rvq import RVQConfig
from vqcodec.vqvae import Decoder, ResBlock

#: Options shared by every full-size configuration (`vqcodec.train.rvq` flags).
COMMON = ["--f", "8", "--K", "1024", "--D", "32", "--batch", "32", "--crop", "256", "--lr", "1e-3",
          "--warmup", "300", "--steps", "20000", "--log-every", "50", "--save-every", "500"]
WIDE = ["--c-lo", "96", "--c-hi", "192", "--n-res", "3", "--stages", "6", "--channels", "96",
        "--layers", "4"]
#: Tiny settings for a CPU test of the recipe itself (seconds, not a model).
TINY = ["--f", "4", "--K", "16", "--D", "4", "--c-lo", "8", "--c-hi", "8", "--n-res", "1",
        "--stages", "2", "--channels", "8", "--layers", "1", "--batch", "2", "--crop", "16",
        "--load-size", "32", "--init-batch", "4", "--steps", "100000", "--log-every", "5",
        "--save-every", "1000000", "--device", "cpu", "--threads", "1"]


def configs(tiny: bool = False) -> dict[str, list[str]]:
    """The configurations trained side by side (module docstring).

    Args:
        tiny: tiny CPU settings for tests (and no warm start from a released model).

    Returns:
        {name: `vqcodec.train.rvq` options without --data/--ckpt/--log/--export/--time-limit}.
    """
    if tiny:
        return {"rvq-joint": TINY + ["--objective", "joint"],
                "rvq-twostage": TINY + ["--objective", "two-stage"]}
    return {
        "rvq-joint": COMMON + WIDE + ["--objective", "joint", "--lam", "2e-3"],
        "rvq-twostage": COMMON + WIDE + ["--objective", "two-stage"],
        "rvq-warm": COMMON + ["--c-lo", "64", "--c-hi", "128", "--n-res", "2", "--stages", "4",
                              "--channels", "96", "--layers", "4", "--objective", "joint",
                              "--lam", "2e-3", "--lr", "5e-4", "--init-from", "vqc-f8k1024-v1"],
    }


def decoder_macs_per_pixel(cfg: RVQConfig) -> float:
    """Multiply-accumulates per output pixel of the float decoder (`vqcodec.vqvae.Decoder`;
    the codeword sum and the activations are not counted).

    Args:
        cfg: the VQ-VAE architecture (f, D, c_lo, c_hi, n_res).

    Returns:
        MACs per pixel: sum over convolutions of C_in * C_out * k * k at that layer's resolution,
        divided by the pixels per position of that resolution.
    """
    positions = 1.0 / (cfg.f * cfg.f)  # positions per pixel at the current layer's resolution
    total = 0.0
    for m in Decoder(cfg).net:
        convs = [m] if isinstance(m, nn.Conv2d) else [m.conv3, m.conv1] if isinstance(m, ResBlock) else []
        for c in convs:
            total += positions * c.in_channels * c.out_channels * c.kernel_size[0] * c.kernel_size[1]
        if isinstance(m, nn.PixelShuffle):
            positions *= m.upscale_factor ** 2
    return total


def options(argv: list[str]) -> dict[str, str]:
    """The --flag value pairs of a `vqcodec.train.rvq` option list (last one wins).

    Args:
        argv: the options.

    Returns:
        {flag without dashes, underscores for dashes: value}.
    """
    out = {}
    for i, a in enumerate(argv):
        if a.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            out[a[2:].replace("-", "_")] = argv[i + 1]
    return out


def costs(argv: list[str]) -> dict:
    """Decoder and prior MACs per pixel of one configuration.

    Args:
        argv: its `vqcodec.train.rvq` options.

    Returns:
        {"decoder_macs_per_pixel", "prior_macs_per_pixel_1_stage", "prior_macs_per_pixel_all"}.
    """
    o = options(argv)
    vq = RVQConfig(**{k: int(o[k]) for k in ("f", "K", "D", "c_lo", "c_hi", "n_res", "stages") if k in o})
    pr = StagePriorConfig(K=vq.K, channels=int(o.get("channels", 128)), layers=int(o.get("layers", 6)),
                          stages=vq.stages)
    return {"decoder_macs_per_pixel": round(decoder_macs_per_pixel(vq)),
            "prior_macs_per_pixel_1_stage": round(macs_per_pixel(pr, vq.f, 1)),
            "prior_macs_per_pixel_all": round(macs_per_pixel(pr, vq.f, vq.stages))}


def command(name: str, argv: list[str], args, seconds: float) -> list[str]:
    """The `vqcodec.train.rvq` command line of one configuration.

    Args:
        name: configuration name.
        argv: its options.
        args: the recipe's options (data, out, ckpt_dir, init_dir).
        seconds: its --time-limit.

    Returns:
        argv for subprocess.
    """
    ckpt = args.ckpt_dir / f"{name}.pt"
    cmd = [sys.executable, "-m", "vqcodec.train.rvq", *argv, "--data", str(args.data),
           "--ckpt", str(ckpt), "--log", str(args.out / f"{name}.log.jsonl"),
           "--export", str(args.out / f"{name}.float.safetensors"), "--name", name,
           "--time-limit", f"{seconds:.1f}"]
    prev = args.init_dir / f"{name}.float.safetensors" if args.init_dir else None
    if prev is not None and prev.is_file() and not ckpt.exists():
        cmd += ["--init-from", str(prev)]
    return cmd


def last_metrics(log: Path) -> dict:
    """The last training line (one with a "loss") of a JSON-lines log, or {}."""
    last = {}
    if log.exists():
        for line in log.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec:
                last = rec
    return last


def main(argv=None) -> int:
    """Command line: run the configurations concurrently, wait, write recipe.json.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).

    Returns:
        0 when every configuration exited with 0, else 1.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, required=True, help="folder of crops (.carry/crops)")
    p.add_argument("--out", type=Path, required=True, help="output folder ($OUT)")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget, start-up included")
    p.add_argument("--reserve", type=float, default=75.0,
                   help="seconds of the budget kept for start-up, saving and export")
    p.add_argument("--ckpt-dir", type=Path, default=Path(".carry/ckpt"),
                   help="checkpoints and stderr (kept between calls on a warm lease machine)")
    p.add_argument("--init-dir", type=Path, default=None, help="float files of an earlier lease")
    p.add_argument("--only", nargs="*", default=None, help="configuration names to run")
    p.add_argument("--tiny", action="store_true", help="tiny CPU settings (tests)")
    args = p.parse_args(argv)
    t0 = time.time()
    args.out.mkdir(parents=True, exist_ok=True)
    args.ckpt_dir.mkdir(parents=True, exist_ok=True)
    todo = {k: v for k, v in configs(args.tiny).items() if args.only is None or k in args.only}
    seconds = max(1.0, args.minutes * 60 - args.reserve)
    threads = max(1, (os.cpu_count() or 2) // len(todo))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    procs = {}
    for name, opts in todo.items():
        with open(args.ckpt_dir / f"{name}.stderr.txt", "w") as err:
            procs[name] = subprocess.Popen(command(name, opts, args, seconds), env=env,
                                           stdout=subprocess.DEVNULL, stderr=err)
    codes = {name: proc.wait() for name, proc in procs.items()}
    summary = {"minutes": args.minutes, "time_limit_s": seconds, "wall_s": round(time.time() - t0, 1),
               "exit_codes": codes,
               "configs": {name: {"options": opts, **costs(opts),
                                  "last": last_metrics(args.out / f"{name}.log.jsonl"),
                                  "stderr_tail": (args.ckpt_dir / f"{name}.stderr.txt").read_text()[-2000:]}
                           for name, opts in todo.items()}}
    (args.out / "recipe.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(json.dumps({"wall_s": summary["wall_s"], "exit_codes": codes}))
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
