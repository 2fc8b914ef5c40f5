"""Train a residual VQ-VAE (architecture "rvq") and its stage prior, rate-aware:
`python -m vqcodec.train.rvq --data DIR --ckpt FILE [--export OUT.safetensors] ...`.

Objective (`--objective joint`, the default), per optimiser step on a batch x of crops:

    loss = MSE(x_hat, x) + lam * R + beta * commitment

with MSE on pixel values in [0, 1], R the rate in bits per pixel (bpp) of the coded indices under
the stage prior, and the VQ-VAE and the prior updated in one Adam step.

- Quantiser dropout (Zeghidour et al., "SoundStream", 2021, section 3.3): each step draws the
  depth S' uniformly in 1..S (`draw_depth`); the decoder sees the sum of the first S' stages'
  codewords and the rate counts only those S' stages (the prior sees idx[:, :S']).
- The prior is trained on the cross-entropy of the hard (nearest-codeword) indices, teacher-forced:
  R_hard = sum over coded indices of -log2 p_s(i_s(p) | context) / pixels (`hard_bits`).
- Hard indices give the encoder no gradient through R_hard, so the rate reaches the encoder through
  a soft assignment (soft-to-hard VQ: Agustsson et al., "Soft-to-Hard Vector Quantization for
  End-to-End Learning Compressible Representations", NeurIPS 2017): for stage s with residual
  r_s = z - sum_{t<s} C_t[i_t] (codebooks C_t fixed in this term),
  q_s(k) = softmax_k(-||r_s - C_s[k]||^2 / tau_s), and the expected rate
  R_soft = sum_s sum_k q_s(k) * (-log2 p_s(k | context)) / pixels, with p_s from the prior on the
  hard indices and held fixed in this term (`soft_bits`).  The temperature is relative:
  tau_s = tau * mean_p min_k ||r_s - C_s[k]||^2 (batch mean, no gradient), because the residuals
  shrink about tenfold from stage 0 to stage 3 (measured on vqc-f8k1024-v1's latents: mean
  nearest squared distance 0.126, 0.039, 0.018, 0.010); with tau = 0.5 the second-nearest
  codeword of stage 0 gets about e^-1 of the nearest one's weight.  The loss uses
  lam * (R_hard + R_soft - sg(R_soft)): its value is lam * R_hard, the prior's gradient comes from
  R_hard alone and the encoder's from R_soft alone.  Codebooks follow their EMA updates
  (`vqcodec.rvq.ResidualVQ`), not gradients.
- `--objective two-stage` reproduces the recipe of the released models at the same budget: the
  first `--vq-frac` of the run (in steps, or in --time-limit seconds when that ends the run first)
  trains the VQ-VAE alone (lam = 0, still with quantiser dropout), the rest trains the prior alone
  on the frozen VQ-VAE's hard indices (van den Oord et al., NeurIPS 2017).

Warm start (`--init-from`): a released model name (e.g. vqc-f8k1024-v1, read with
`vqcodec.serialise.parse_model`) gives the encoder, decoder and stage 0's codebook, and the prior's
trunk, embed[0] and head 0 when the prior's K, channels and layers match; or a float rvq file
(`float_rvq_bytes`) gives everything.  Stages without a codebook are k-means initialised on the
residuals of one batch (`init_stages`).  Ignored when --ckpt exists (resume).

Speed flags: --bf16 (autocast), --channels-last and --compile default to on for CUDA except
--compile (off: not measured on a GPU yet; compiling costs start-up time out of a 9-minute lease,
and the quantiser's data-dependent code would break the graph, so only the encoder and decoder
are compiled).  bf16 and channels-last are the settings of the released models' GPU runs; their
gain here was not measured (no GPU on the development machine).  On the CPU all are off.

Output: the checkpoint (--ckpt, plus .opt; `common.save_checkpoint`) holds the `RVQSystem`
state (vqvae.* with EMA statistics, prior.*), the step and the configs.  `--export FILE` writes
the float rvq checkpoint (`float_rvq_bytes`: fp16 safetensors in the layout of
`vqcodec.train.export_rvq_int8`) that the int8 calibration turns into a released profile-int8 file; with
--steps at or below the checkpoint's step, a run only exports.
Log lines (JSON, `common.Logger`): step, loss, mse, psnr (dB), bpp, depth, steps_per_s, lr, and
gpu_util (%) on CUDA when torch.cuda.utilization() works.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save as st_save

from vqcodec.prior_stages import StagePrior, StagePriorConfig
from vqcodec.rvq import RVQVAE, RVQConfig
from vqcodec.train import common

#: Prior fields that are not also VQ-VAE fields (K and stages come from the VQ-VAE).
PRIOR_FIELDS = ("channels", "layers")


class RVQSystem(nn.Module):
    """The trained pair: `vqvae` (RVQVAE) and `prior` (StagePrior); one state dict with keys
    vqvae.* and prior.*, one optimiser.

    Args:
        vq_cfg: the VQ-VAE's architecture.
        prior_cfg: the prior's (K and stages must equal the VQ-VAE's).

    Raises:
        ValueError: K or stages differ.
    """

    def __init__(self, vq_cfg: RVQConfig, prior_cfg: StagePriorConfig):
        super().__init__()
        if (prior_cfg.K, prior_cfg.stages) != (vq_cfg.K, vq_cfg.stages):
            raise ValueError("the prior's K and stages must be the VQ-VAE's")
        self.vqvae = RVQVAE(vq_cfg)
        self.prior = StagePrior(prior_cfg)

    def configs(self) -> dict:
        """{"vqvae": RVQConfig fields, "prior": StagePriorConfig fields} (JSON-ready)."""
        return {"vqvae": self.vqvae.cfg.to_dict(), "prior": self.prior.cfg.to_dict()}


def parse_args(argv=None) -> argparse.Namespace:
    """Parse the command line (see `--help`); every RVQConfig and StagePriorConfig field is an
    option (--K and --stages serve both).

    Args:
        argv: arguments (default: sys.argv[1:]).

    Returns:
        The options; --time-limit in seconds, --crop in pixels, --lam in MSE per bpp.

    Raises:
        SystemExit: bad arguments, or --help.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="folder of training images")
    p.add_argument("--ckpt", required=True, type=Path, help="checkpoint file (resumed if present)")
    p.add_argument("--log", type=Path, default=None, help="JSON-lines log file")
    p.add_argument("--export", type=Path, default=None, help="write the float rvq file at the end")
    p.add_argument("--name", default="vqc-rvq", help="model name recorded by --export")
    p.add_argument("--objective", choices=("joint", "two-stage"), default="joint")
    p.add_argument("--vq-frac", type=float, default=0.6, help="two-stage: share of the VQ-VAE phase")
    p.add_argument("--lam", type=float, default=2e-3, help="lambda: MSE units per bpp")
    p.add_argument("--tau", type=float, default=0.5,
                   help="soft-assignment temperature, relative to the mean nearest squared distance")
    p.add_argument("--steps", type=int, default=20000, help="total optimiser steps")
    p.add_argument("--time-limit", type=float, default=1e9, help="stop (and save) after seconds")
    p.add_argument("--batch", type=int, default=16, help="crops per step")
    p.add_argument("--crop", type=int, default=128, help="crop side in pixels (multiple of f)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--limit", type=int, default=None, help="use only the first N images")
    p.add_argument("--load-size", type=int, default=256,
                   help="centre crop (pixels) kept of each image; random --crop crops are drawn from it")
    p.add_argument("--init-from", default=None, help="released model name or float rvq file")
    p.add_argument("--init-batch", type=int, default=64, help="crops for the k-means of new stages")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    for flag in ("bf16", "channels-last", "compile"):
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                       help="default: on for CUDA" if flag != "compile" else "default: off")
    p.add_argument("--seed", type=int, default=0)
    for name, field in RVQConfig.__dataclass_fields__.items():
        p.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=field.default)
    for name in PRIOR_FIELDS:
        field = StagePriorConfig.__dataclass_fields__[name]
        p.add_argument(f"--{name}", type=type(field.default), default=field.default)
    return p.parse_args(argv)


def configs_from_args(args) -> tuple[RVQConfig, StagePriorConfig]:
    """The architectures named by the options.

    Args:
        args: `parse_args` output.

    Returns:
        (RVQConfig, StagePriorConfig) with the prior's K and stages taken from the VQ-VAE.
    """
    vq = RVQConfig(**{k: getattr(args, k) for k in RVQConfig.__dataclass_fields__})
    return vq, StagePriorConfig(K=vq.K, stages=vq.stages, **{k: getattr(args, k) for k in PRIOR_FIELDS})


def draw_depth(gen: torch.Generator, stages: int) -> int:
    """Quantiser dropout (SoundStream, section 3.3): the number of stages decoded this step.

    Args:
        gen: CPU generator.
        stages: S.

    Returns:
        S' uniform in 1..S.
    """
    return int(torch.randint(1, stages + 1, (1,), generator=gen))


def hard_bits(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the hard indices under the (teacher-forced) prior.

    Args:
        logits: float [N, S', K, h, w] (nats), `StagePrior.forward` of idx.
        idx: int64 [N, S', h, w].

    Returns:
        float32 scalar: total bits, sum over all N * S' * h * w indices of -log2 p.
    """
    n, s, k, h, w = logits.shape
    return F.cross_entropy(logits.float().reshape(n * s, k, h, w), idx.reshape(n * s, h, w),
                           reduction="sum") / math.log(2)


def soft_bits(z: torch.Tensor, idx: torch.Tensor, codebooks: list[torch.Tensor], logits: torch.Tensor,
              tau: float) -> torch.Tensor:
    """Expected bits under the soft assignment of the residuals (soft-to-hard VQ, Agustsson et
    al., NeurIPS 2017): sum_s sum_p sum_k q_s(k | p) * (-log2 p_s(k | context)).

    The codebooks and the prior's log-probabilities are held fixed, so the gradient reaches only z.

    Args:
        z: encoder output float [N, D, h, w] (with gradient).
        idx: hard indices int64 [N, S', h, w] (the first S' stages).
        codebooks: the S' (or more) codebooks, float32 [K, D] each.
        logits: prior logits float [N, S', K, h, w] (nats) on idx.
        tau: relative temperature (> 0): stage s uses tau * (batch mean of the nearest squared
            distance of stage s).

    Returns:
        float32 scalar, total bits.
    """
    n, d, h, w = z.shape
    flat = z.float().permute(0, 2, 3, 1).reshape(-1, d)
    nll = -F.log_softmax(logits.detach().float(), dim=2) / math.log(2)  # [N, S', K, h, w]
    total = flat.new_zeros(())
    residual = flat
    for s in range(idx.shape[1]):
        cb = codebooks[s].detach().float()
        d2 = residual.pow(2).sum(1, keepdim=True) - 2 * residual @ cb.T + cb.pow(2).sum(1)[None]
        d2_near = d2.detach().min(1).values.mean().clamp(min=1e-12)
        q = F.softmax(-d2 / (tau * d2_near), dim=1)  # [N*h*w, K]
        total = total + (q * nll[:, s].permute(0, 2, 3, 1).reshape(-1, cb.shape[0])).sum()
        residual = residual - cb[idx[:, s].reshape(-1)]
    return total


def step_terms(system: RVQSystem, x: torch.Tensor, depth: int, lam: float, tau: float,
               phase: str = "joint", autocast: bool = False) -> tuple[torch.Tensor, dict]:
    """Loss and metrics of one training step (module docstring).

    Args:
        system: the models (the VQ-VAE is put in training mode except in phase "prior").
        x: float32 [N, 3, H, W] in [0, 1], H and W multiples of f.
        depth: S', stages decoded and coded (1..S).
        lam: rate weight (MSE per bpp); 0 skips the soft rate.
        tau: soft-assignment temperature.
        phase: "joint" (both models), "vqvae" (VQ-VAE alone, lam ignored, the prior's rate only
            logged) or "prior" (prior alone on the frozen VQ-VAE's indices).
        autocast: run the networks under bf16 autocast.

    Returns:
        (loss float32 scalar, metrics dict of detached scalars: loss, mse, psnr (dB), bpp,
        commit, depth, perplexity; phase "prior" logs only loss, bpp and depth).
    """
    vq, prior = system.vqvae, system.prior
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    if phase == "prior":  # the frozen VQ-VAE only encodes (no decoder pass, no codebook update)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            idx = vq.encode(x, depth)
            bpp = hard_bits(prior(idx), idx) / pixels
        return bpp, {"loss": bpp.detach(), "bpp": bpp.detach(), "depth": depth}
    vq.train()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        x_hat, idx, commit, stats, z = vq(x, depth)
        idx = idx[:, :depth]
        with torch.set_grad_enabled(phase == "joint"):
            logits = prior(idx)
    mse = F.mse_loss(x_hat.float(), x)
    bpp = hard_bits(logits, idx) / pixels
    loss = mse + vq.cfg.beta * commit
    if phase == "joint":
        loss = loss + lam * bpp
        if lam:
            soft = soft_bits(z, idx, [st.codebook for st in vq.quantizer.stages], logits, tau) / pixels
            loss = loss + lam * (soft - soft.detach())
    mse_d = mse.detach()
    return loss, {"loss": loss.detach(), "mse": mse_d, "psnr": -10 * torch.log10(mse_d),
                  "bpp": bpp.detach(), "commit": commit.detach(), "depth": depth,
                  "perplexity": stats["perplexity"]}


@torch.no_grad()
def init_stages(vq: RVQVAE, x: torch.Tensor, first: int = 0) -> None:
    """k-means initialise the codebooks of stages >= first on the residuals the earlier stages
    leave for a batch (`VectorQuantizer._kmeans_init`, 10 Lloyd iterations).

    Args:
        vq: the VQ-VAE (its encoder and stages < first already set).
        x: float32 [N, 3, H, W] in [0, 1].
        first: the first stage to initialise.
    """
    z = vq.encoder(x).float()
    residual = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    for s, st in enumerate(vq.quantizer.stages):
        if s >= first:
            st._kmeans_init(residual)
        residual = residual - st.codebook[st.nearest(residual)]


def warm_start(system: RVQSystem, source: str) -> int:
    """Copy weights from a released model or a float rvq file (module docstring).

    Args:
        system: freshly built models.
        source: a path to a float rvq file (`float_rvq_bytes`), or a released model name.

    Returns:
        The number of stages whose codebooks were set (the rest need `init_stages`).

    Raises:
        ValueError: the source's encoder/decoder architecture or K differs from system's.
        VqcModelError: the released model cannot be read.
    """
    vq, prior = system.vqvae, system.prior
    if Path(source).is_file():
        src_vq, src_prior = load_float_rvq(Path(source).read_bytes())
        keep = ("f", "K", "D", "c_lo", "c_hi", "n_res")
        if any(getattr(src_vq.cfg, k) != getattr(vq.cfg, k) for k in keep):
            raise ValueError(f"{source}: architecture {src_vq.cfg} differs from {vq.cfg}")
        n = min(src_vq.cfg.stages, vq.cfg.stages)
        vq.encoder.load_state_dict(src_vq.encoder.state_dict())
        vq.decoder.load_state_dict(src_vq.decoder.state_dict())
        for s in range(n):
            _set_codebook(vq.quantizer.stages[s], src_vq.quantizer.stages[s].codebook)
        if src_prior.cfg == prior.cfg:
            prior.load_state_dict(src_prior.state_dict())
        return n
    from vqcodec import registry
    from vqcodec.serialise import parse_model

    mf = parse_model(registry.weights(source), source)
    src = mf.vqvae
    keep = ("f", "K", "D", "c_lo", "c_hi", "n_res")
    if any(getattr(src.cfg, k) != getattr(vq.cfg, k) for k in keep):
        raise ValueError(f"{source}: architecture {src.cfg} differs from {vq.cfg}")
    vq.encoder.load_state_dict(src.encoder.state_dict())
    vq.decoder.load_state_dict(src.decoder.state_dict())
    _set_codebook(vq.quantizer.stages[0], src.quantizer.codebook)
    p = mf.prior
    if p is not None and (p.cfg.K, p.cfg.channels, p.cfg.layers) == (prior.cfg.K, prior.cfg.channels,
                                                                      prior.cfg.layers):
        with torch.no_grad():
            prior.embed[0].copy_(p.embed.weight)
            prior.layers.load_state_dict(p.layers.state_dict())
            prior.heads[0].out1.load_state_dict(p.out1.state_dict())
            prior.heads[0].out2.load_state_dict(p.out2.state_dict())
    return 1


@torch.no_grad()
def _set_codebook(vq_stage, codebook: torch.Tensor) -> None:
    vq_stage.codebook.copy_(codebook)
    vq_stage.embed_sum.copy_(codebook)
    vq_stage.cluster_size.fill_(1.0)
    vq_stage.initialized.fill_(True)


def float_rvq_bytes(vqvae: RVQVAE, prior: StagePrior, name: str) -> bytes:
    """Serialise a trained float rvq pair ("float rvq checkpoint", the float layout of `vqcodec.train.export_rvq_int8`).

    Tensors, all fp16: vqvae.encoder.*, vqvae.decoder.*, vqvae.quantizer.stages.{s}.codebook
    [K, D] (no EMA statistics) and prior.* (StagePrior's state dict: embed [S, K, C], layers.*,
    heads.{s}.out1/out2/cond).  Metadata: name, arch "rvq", vqvae_config (RVQConfig fields,
    with stages), prior_config {K, channels, layers, stages} (JSON, sorted keys).

    Args:
        vqvae: the VQ-VAE (any device; float32 parameters).
        prior: its stage prior.
        name: model name recorded in the metadata.

    Returns:
        Deterministic safetensors bytes (header keys sorted, `vqcodec.serialise.canonical`).
    """
    from vqcodec.serialise import ARCH_KEY, ARCH_RVQ, canonical, metadata

    tensors = {f"vqvae.{k}": v for k, v in vqvae.state_dict().items()
               if not k.startswith("quantizer.") or k.endswith(".codebook")}
    tensors.update({f"prior.{k}": v for k, v in prior.state_dict().items()})
    tensors = {k: v.detach().to(torch.float16).contiguous().cpu() for k, v in tensors.items()}
    return canonical(st_save(tensors, metadata={**metadata(vqvae, prior.cfg, name), ARCH_KEY: ARCH_RVQ}))


def load_float_rvq(data: bytes) -> tuple[RVQVAE, StagePrior]:
    """Read a float rvq file (`float_rvq_bytes`) to train on from it: `export_rvq_int8.read_float_rvq`,
    with each stage's EMA sum set to its codebook so EMA updates continue from it.

    Args:
        data: the file's bytes.

    Returns:
        (RVQVAE, StagePrior) in eval mode on the CPU, float32 weights.

    Raises:
        ValueError: as `read_float_rvq` (not a float rvq file, a tensor missing or misshapen).
    """
    from vqcodec.train.export_rvq_int8 import read_float_rvq

    vq, prior = read_float_rvq(data)
    with torch.no_grad():
        for st in vq.quantizer.stages:
            st.embed_sum.copy_(st.codebook)
    return vq, prior


def _gpu_util(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # pynvml missing or NVML unavailable
        return None


def _phase(args, progress: float) -> str:
    if args.objective == "joint":
        return "joint"
    return "vqvae" if progress < args.vq_frac else "prior"


def main(argv=None) -> None:
    """Command line: train (module docstring), log, checkpoint, optionally export.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
    """
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = common.setup_distributed(args.device)
    if info.world > 1:
        raise SystemExit("vqcodec.train.rvq runs as one process (no DDP); the recipe runs "
                         "configurations side by side instead")
    torch.manual_seed(args.seed)
    use_cuda = info.device.type == "cuda"
    bf16 = use_cuda if args.bf16 is None else args.bf16
    channels_last = use_cuda if args.channels_last is None else args.channels_last
    log = common.Logger(args.log, info.main)
    ckpt = common.load_checkpoint(args.ckpt, info.device)
    if ckpt:
        vq_cfg, prior_cfg = RVQConfig(**ckpt["config"]["vqvae"]), StagePriorConfig(**ckpt["config"]["prior"])
    else:
        vq_cfg, prior_cfg = configs_from_args(args)
    system = RVQSystem(vq_cfg, prior_cfg).to(info.device)
    opt = torch.optim.Adam(system.parameters(), lr=args.lr)
    step = common.resume(ckpt, system, opt)
    data = common.load_crops(args.data, max(args.crop, args.load_size), args.limit).to(info.device)
    gen0 = torch.Generator().manual_seed(args.seed)
    if ckpt:
        log(event="resume", step=step)
    else:
        first = warm_start(system, args.init_from) if args.init_from else 0
        if first < vq_cfg.stages:
            init_stages(system.vqvae, common.random_batch(data, args.init_batch, args.crop, gen0), first)
    if use_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if channels_last:
        system.vqvae.to(memory_format=torch.channels_last)
    if args.compile:
        system.vqvae.encoder.compile()
        system.vqvae.decoder.compile()
    log(event="start", images=int(data.shape[0]), config=system.configs(), objective=args.objective,
        lam=args.lam, tau=args.tau, bf16=bf16, channels_last=channels_last, compile=bool(args.compile),
        device=str(info.device), threads=torch.get_num_threads(), step=step)
    clock = {"step": step, "t0": time.time()}

    def loss_step(gen):
        progress = common.progress_step(clock["step"], args.steps, time.time() - clock["t0"],
                                        args.time_limit) / args.steps
        x = common.random_batch(data, args.batch, args.crop, gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        depth = draw_depth(gen, vq_cfg.stages)
        loss, metrics = step_terms(system, x, depth, args.lam, args.tau, _phase(args, progress), bf16)
        clock["step"] += 1
        if clock["step"] % args.log_every == 0:
            util = _gpu_util(info.device)
            if util is not None:
                metrics["gpu_util"] = util
        return loss, metrics

    step, seconds = common.train_loop(args, info, opt, step, loss_step,
                                      common.saver(args.ckpt, system, opt, system.configs()))
    log(event="saved", step=step, seconds=round(seconds, 1))
    if args.export and info.main:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        args.export.write_bytes(float_rvq_bytes(system.vqvae, system.prior, args.name))
        log(event="exported", path=str(args.export))
    common.cleanup_distributed()


if __name__ == "__main__":
    main()
