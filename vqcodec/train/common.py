"""Shared training plumbing: distributed set-up, data loading onto the device, checkpoints, logs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

#: File suffixes (lower case) that `list_images` treats as images.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


@dataclass
class DistInfo:
    """Rank, world size and device of this process (world size 1 without torchrun).

    Attributes:
        rank: global rank, 0..world-1.
        world: number of processes.
        device: this process's device (cuda:LOCAL_RANK or cpu).
    """

    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """True on rank 0, the process that logs and writes checkpoints."""
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (WORLD_SIZE > 1).

    Reads WORLD_SIZE, RANK and LOCAL_RANK from the environment; backend NCCL when CUDA is
    used, gloo otherwise.

    Args:
        device: "auto" (CUDA when available), "cpu", or a string starting with "cuda"; the
            GPU used is always cuda:LOCAL_RANK (a given index is ignored).

    Returns:
        This process's `DistInfo`.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, dev)


def cleanup_distributed() -> None:
    """Destroy the torch.distributed process group, if one was initialised, and end the process.

    Under torchrun, a rank sometimes aborted at interpreter exit after a finished run (SIGABRT,
    "terminate called without an active exception", in torch's C++ teardown; about 1 run in 20
    on this CPU with gloo, with or without this project's changes), which fails the whole job.
    Every rank's work is written by then (checkpoints, log lines flushed), so after a barrier and
    the group's destruction a distributed rank leaves with os._exit(0), skipping the C++ static
    destructors.  A single-process run (no process group) returns normally.
    """
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside a folder.

    Args:
        folder: the folder (not searched recursively).

    Returns:
        Paths with a suffix in `IMAGE_SUFFIXES` (any case), sorted.

    Raises:
        OSError: the folder cannot be listed (e.g. FileNotFoundError, NotADirectoryError).
    """
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load_crops(folder: str | Path, size: int, limit: int | None = None) -> torch.Tensor:
    """All images in a folder, converted to RGB and centre-cropped to size x size.

    Args:
        folder: folder of images (`list_images`).
        size: crop side in pixels; smaller images are skipped.
        limit: read only the first `limit` files (sorted order), None for all.

    Returns:
        uint8 [N, 3, size, size] on the CPU.

    Raises:
        FileNotFoundError: no image of at least size x size pixels.
        OSError: the folder cannot be listed, or a file with an image suffix cannot be read
            as an image (PIL.UnidentifiedImageError is an OSError).
    """
    arrays = []
    for path in list_images(folder)[:limit]:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            if w < size or h < size:
                continue
            left, top = (w - size) // 2, (h - size) // 2
            arrays.append(np.asarray(im.crop((left, top, left + size, top + size))))
    if not arrays:
        raise FileNotFoundError(f"no images of at least {size}x{size} in {folder}")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def random_batch(data: torch.Tensor, batch: int, crop: int, gen: torch.Generator) -> torch.Tensor:
    """A training batch of random crops with random horizontal flips.

    Args:
        data: uint8 images [N, 3, H, W] (any device), H and W >= crop.
        batch: number of crops.
        crop: crop side in pixels.
        gen: CPU random generator that draws images, offsets and flips.

    Returns:
        float32 [batch, 3, crop, crop], pixel values / 255 in [0, 1], on data's device.

    Raises:
        RuntimeError: crop is larger than H or W.
    """
    n, _, h, w = data.shape
    pick = torch.randint(0, n, (batch,), generator=gen, device="cpu")
    ys = torch.randint(0, h - crop + 1, (batch,), generator=gen, device="cpu")
    xs = torch.randint(0, w - crop + 1, (batch,), generator=gen, device="cpu")
    flips = torch.rand(batch, generator=gen, device="cpu") < 0.5
    out = torch.stack([data[i, :, y:y + crop, x:x + crop] for i, y, x in zip(pick, ys, xs)])
    out = torch.where(flips.to(out.device)[:, None, None, None], out.flip(-1), out)
    return out.float() / 255.0


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def lr_at(step: int, lr: float, warmup: int, total: int) -> float:
    """Learning rate at a step: linear warm-up, then cosine decay to 5% of the peak.

    Args:
        step: optimiser step, from 0.
        lr: peak learning rate.
        warmup: warm-up steps (lr reached at step warmup - 1).
        total: step at which the decay ends (held at 5% after).

    Returns:
        The learning rate.
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))


def progress_step(step: int, total: int, elapsed: float, time_limit: float) -> int:
    """The step the learning-rate schedule should use.

    Ahead of `step` when the time limit will end the run first, so the learning rate still
    decays fully by the end of the time budget.

    Args:
        step: optimiser steps done.
        total: steps planned.
        elapsed: seconds spent in this run.
        time_limit: seconds allowed for this run (> 0).

    Returns:
        max(step, int(total * elapsed / time_limit)).
    """
    return max(step, int(total * elapsed / time_limit))


def resume(ckpt: dict | None, model: torch.nn.Module, opt) -> int:
    """Load model and optimiser state from a checkpoint, if any.

    Args:
        ckpt: a dict from `load_checkpoint` (keys "model", "step", optionally "opt"), or None.
        model: the model to load into.
        opt: its `torch.optim.Optimizer` (loaded only when ckpt has "opt").

    Returns:
        The step to resume at (0 without a checkpoint).

    Raises:
        KeyError: ckpt lacks "model" or "step".
        RuntimeError: the state does not match the model.
    """
    if not ckpt:
        return 0
    model.load_state_dict(ckpt["model"])
    if "opt" in ckpt:
        opt.load_state_dict(ckpt["opt"])
    return ckpt["step"]


def saver(path: Path, model: torch.nn.Module, opt, config: dict):
    """A `save(step)` callback for `train_loop` that calls `save_checkpoint`.

    Args:
        path: checkpoint file.
        model: the (unwrapped, not DDP) model whose state_dict is saved.
        opt: its optimiser.
        config: the architecture as a dict, saved as "config".

    Returns:
        A function of the step number that writes the checkpoint.
    """
    return lambda step: save_checkpoint(path, opt=opt.state_dict(), model=model.state_dict(),
                                        step=step, config=config)


def train_loop(args, info: DistInfo, opt, step: int, loss_step, save) -> tuple[int, float]:
    """Optimiser steps until `args.steps` or `args.time_limit` seconds, whichever comes first.

    The learning rate follows `lr_at` (see `progress_step`).  Metrics are logged every
    `args.log_every` steps (with steps_per_s); the main rank calls save every
    `args.save_every` steps and at the end.

    Args:
        args: namespace with steps, time_limit (seconds), lr, warmup, log (path or None),
            seed, log_every and save_every.
        info: this process's `DistInfo`.
        opt: the optimiser.
        step: step to start from (`resume`).
        loss_step: loss_step(gen) -> (scalar loss tensor, dict of scalar metrics to log);
            gen is a CPU `torch.Generator` seeded from seed, rank and step.
        save: save(step) writes a checkpoint (`saver`).

    Returns:
        (final step, seconds spent).
    """
    log = Logger(args.log, info.main)
    gen = torch.Generator().manual_seed(args.seed * 1000 + info.rank + step)
    t0 = t_last = time.time()
    s_last = step
    while step < args.steps and time.time() - t0 < args.time_limit:
        lr = lr_at(progress_step(step, args.steps, time.time() - t0, args.time_limit),
                   args.lr, args.warmup, args.steps)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, metrics = loss_step(gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            now = time.time()
            log(step=step, **{k: float(v) for k, v in metrics.items()}, lr=lr,
                steps_per_s=(step - s_last) / (now - t_last))
            t_last, s_last = now, step
        if info.main and step % args.save_every == 0:
            save(step)
    if info.main:
        save(step)
    return step, time.time() - t0


def save_checkpoint(path: Path, opt=None, **state) -> None:
    """Atomically write a checkpoint: model state etc. to `path`, the optimiser to `path`.opt.

    Two files keep each one small enough to copy off a leased machine.  Each is written to a
    .tmp file and renamed, so an interrupted save leaves the previous file intact.

    Args:
        path: checkpoint file; its folder is created if needed.
        opt: optimiser state_dict, or None to write no .opt file.
        **state: what to save (e.g. model, step, config), with `torch.save`.
    """
    _atomic_save(state, path)
    if opt is not None:
        _atomic_save(opt, path.with_name(path.name + ".opt"))


def load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """Read a checkpoint written by `save_checkpoint`.

    Loads with `weights_only=False` (pickle): use only on our own training files.

    Args:
        path: checkpoint file.
        device: where tensors are mapped.

    Returns:
        The saved dict, with "opt" added from `path`.opt when that file exists; None when
        `path` does not exist.
    """
    if not path.exists():
        return None
    state = torch.load(path, map_location=device, weights_only=False)
    opt_path = path.with_name(path.name + ".opt")
    if opt_path.exists():
        state["opt"] = torch.load(opt_path, map_location=device, weights_only=False)
    return state


class Logger:
    """JSON-lines training log: prints (main rank only) and appends to a file.

    Args:
        path: log file to append to, or None to print only.
        main: whether this is the main rank (other ranks log nothing).
    """

    def __init__(self, path: Path | None, main: bool):
        self.path, self.main, self.t0 = path, main, time.time()

    def __call__(self, **fields) -> None:
        """Log one line: {"t": seconds since creation, **fields}, floats rounded to 5 decimals.

        Args:
            **fields: JSON-serialisable values.
        """
        if not self.main:
            return
        fields = {"t": round(time.time() - self.t0, 1), **fields}
        line = json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in fields.items()})
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
