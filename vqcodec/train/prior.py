"""Train the gated PixelCNN prior on the index grids of a frozen VQ-VAE:
`python -m vqcodec.train.prior --vqvae VQ.pt --data DIR --ckpt FILE ...` (torchrun for DDP).

As in van den Oord et al. 2017: the VQ-VAE is trained first and frozen; its index grids for the
training crops (and their mirror images) are the prior's data; the loss is cross-entropy,
logged as bits per index.  Re-running with the same --ckpt resumes.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from vqcodec.prior import GatedPixelCNN, PriorConfig
from vqcodec.train import common
from vqcodec.vqvae import VQVAE, VQVAEConfig


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (see `--help`).

    Args:
        argv: arguments (default: sys.argv[1:]).

    Returns:
        The options; --time-limit is in seconds.

    Raises:
        SystemExit: bad arguments, or --help.
    """
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--vqvae", required=True, type=Path, help="VQ-VAE training checkpoint")
    p.add_argument("--data", required=True, help="folder of training images")
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint file (resumed if present)")
    p.add_argument("--log", type=Path, default=None)
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--time-limit", type=float, default=1e9)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--crop", type=int, default=256, help="image crop size before encoding")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=int, default=40, help="crops held out to report validation bits")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--layers", type=int, default=6)
    return p.parse_args(argv)


@torch.no_grad()
def encode_dataset(vq: VQVAE, data: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Index grids of training crops: each crop at 4 offsets and mirrored.

    The offsets are 0 or f/2 pixels down and right, so the prior sees varied grids.

    Args:
        vq: the frozen VQ-VAE.
        data: uint8 [N, 3, S, S] on vq's device, S a multiple of f.
        batch: crops encoded at a time.

    Returns:
        int64 [8N, S/f - 1, S/f - 1]; per batch of crops, 8 blocks of one grid per crop, in
        the order offset (dy, dx) = (0, 0), (0, 0) mirrored, (0, f/2), (0, f/2) mirrored,
        ..., (f/2, f/2) mirrored.
    """
    f = vq.cfg.f
    size = data.shape[-1] - f
    grids = []
    for i in range(0, data.shape[0], batch):
        x = data[i:i + batch].float() / 255.0
        for dy in (0, f // 2):
            for dx in (0, f // 2):
                crop = x[..., dy:dy + size, dx:dx + size]
                grids += [vq.encode(crop), vq.encode(crop.flip(-1))]
    return torch.cat(grids)


@torch.no_grad()
def mean_bits(model: GatedPixelCNN, grids: torch.Tensor, batch: int = 64) -> float:
    """Mean cross-entropy of the float prior on index grids, in bits per index.

    Args:
        model: the float prior (left in training mode afterwards).
        grids: int64 [N, h, w] on the model's device.
        batch: grids per forward pass.

    Returns:
        Bits per index.

    Raises:
        ZeroDivisionError: grids is empty.
    """
    model.eval()
    total = sum(float(F.cross_entropy(model(grids[i:i + batch]).float(), grids[i:i + batch],
                                      reduction="sum")) for i in range(0, len(grids), batch))
    model.train()
    return total / grids.numel() / math.log(2)


def main(argv=None) -> None:
    """Command line: train the prior (see the module docstring), log, checkpoint.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
    """
    args = parse_args(argv)
    info = common.setup_distributed(args.device)
    torch.manual_seed(args.seed)
    log = common.Logger(args.log, info.main)
    vq_state = common.load_checkpoint(args.vqvae, info.device)
    vq = VQVAE(VQVAEConfig(**vq_state["config"])).to(info.device).eval()
    vq.load_state_dict(vq_state["model"])
    crops = common.load_crops(args.data, args.crop, args.limit).to(info.device)
    n_val = min(args.val, len(crops) // 4)
    grids = encode_dataset(vq, crops[n_val:])
    val_grids = encode_dataset(vq, crops[:n_val])[::8]
    ckpt = common.load_checkpoint(args.ckpt, info.device)
    cfg = PriorConfig(**ckpt["config"]) if ckpt else PriorConfig(
        K=vq.cfg.K, channels=args.channels, layers=args.layers)
    model = GatedPixelCNN(cfg).to(info.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = common.resume(ckpt, model, opt)
    use_cuda = info.device.type == "cuda"
    net = DDP(model, device_ids=[info.device] if use_cuda else None) if info.world > 1 else model
    log(event="start", grids=list(grids.shape), config=cfg.to_dict(), world=info.world, step=step)

    def loss_step(gen):
        pick = torch.randint(0, grids.shape[0], (args.batch,), generator=gen).to(info.device)
        idx = grids[pick]
        with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=use_cuda):
            logits = net(idx)
        loss = F.cross_entropy(logits.float(), idx)
        return loss, {"bits_per_index": loss.detach() / math.log(2)}

    step, seconds = common.train_loop(args, info, opt, step, loss_step,
                                      common.saver(args.ckpt, model, opt, cfg.to_dict()))
    if info.main:
        log(event="saved", step=step, seconds=seconds,
            val_bits_per_index=mean_bits(model, val_grids), log2_K=math.log2(cfg.K))
    common.cleanup_distributed()



if __name__ == "__main__":
    main()
