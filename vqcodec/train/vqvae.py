"""Train a VQ-VAE on a folder of crops: `python -m vqcodec.train.vqvae --data DIR --ckpt FILE ...`.

Data-parallel with `torchrun --nproc_per_node=N -m vqcodec.train.vqvae -- ...` (DDP; the `--`
stops torchrun from reading `--log` as its own `--log-dir`).  The whole
crop set is held on the device as uint8; each step draws random crops and flips.  Loss: MSE of
pixels in [0, 1] plus beta x commitment loss; the codebook follows its EMA updates.
Re-running with the same --ckpt resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from vqcodec.train import common
from vqcodec.vqvae import VQVAE, VQVAEConfig


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (see `--help`); every `VQVAEConfig` field is an option.

    Args:
        argv: arguments (default: sys.argv[1:]).

    Returns:
        The options; --time-limit is in seconds, --crop in pixels.

    Raises:
        SystemExit: bad arguments, or --help.
    """
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="folder of training images")
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint file (resumed if present)")
    p.add_argument("--log", type=Path, default=None, help="JSON-lines log file")
    p.add_argument("--steps", type=int, default=20000, help="total optimiser steps")
    p.add_argument("--time-limit", type=float, default=1e9, help="stop (and save) after seconds")
    p.add_argument("--batch", type=int, default=32, help="crops per step per process")
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=int, default=0)
    for name, field in VQVAEConfig.__dataclass_fields__.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=field.default)
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Command line: train the VQ-VAE (see the module docstring), log, checkpoint.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
    """
    args = parse_args(argv)
    info = common.setup_distributed(args.device)
    torch.manual_seed(args.seed)
    log = common.Logger(args.log, info.main)
    ckpt = common.load_checkpoint(args.ckpt, info.device)
    cfg = VQVAEConfig(**ckpt["config"]) if ckpt else VQVAEConfig(
        **{k: getattr(args, k) for k in VQVAEConfig.__dataclass_fields__})
    model = VQVAE(cfg).to(info.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = common.resume(ckpt, model, opt)
    if ckpt:
        log(event="resume", step=step)
    use_cuda = info.device.type == "cuda"
    if use_cuda:
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    net = DDP(model, device_ids=[info.device] if use_cuda else None) if info.world > 1 else model
    fwd = torch.compile(net) if args.compile else net
    data = common.load_crops(args.data, max(args.crop, 64), args.limit).to(info.device)
    log(event="start", images=int(data.shape[0]), config=cfg.to_dict(), world=info.world)

    def loss_step(gen):
        x = common.random_batch(data, args.batch, args.crop, gen)
        if use_cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=use_cuda):
            x_hat, _, commit, stats = fwd(x)
        mse = F.mse_loss(x_hat.float(), x)
        return mse + cfg.beta * commit, {
            "mse": mse.detach(), "psnr": -10 * torch.log10(mse.detach()), "commit": commit.detach(),
            "perplexity": stats["perplexity"], "usage": stats["usage"]}

    step, seconds = common.train_loop(args, info, opt, step, loss_step,
                                      common.saver(args.ckpt, model, opt, cfg.to_dict()))
    log(event="saved", step=step, seconds=seconds)
    common.cleanup_distributed()



if __name__ == "__main__":
    main()
