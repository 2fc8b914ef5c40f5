"""Post-training calibration of the int8 VQ-VAE decoder (`vqcodec.vqvae_int8.Int8Decoder`) from a
released v1 model, on index grids of TRAINING crops (never on the evaluation images).

Per-tensor activation scales: a percentile of |activation| of the float decoder, then a greedy
line search per activation (scale multiplied or divided by a step while that helps; steps 1.25,
then 1.1) that minimises the mean squared pixel error of the int8 decoder against the float
decoder on the calibration grids.  Weights per output channel by
`int8.quantize_layer` with the input scale folded in; the ResBlock residual folded as resid; the
+0.5 and x255 of the last convolution folded in so that it outputs pixel values.  Integer-only
inference after Jacob et al., "Quantization and Training of Neural Networks for Efficient
Integer-Arithmetic-Only Inference", CVPR 2018 (post-training calibration, their section 3).

`python -m vqcodec.train.calibrate_decoder --model vqc-f4k512-v1 --out X.safetensors`
(grids from --grids NPZ, default /work/coord/cache/train_<model>.npz: every 4th training crop).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vqcodec import int8
from vqcodec.int8 import S8_MAX, U8_MAX
from vqcodec.vqvae import VQVAE, ResBlock
from vqcodec.vqvae_int8 import PREFIX, Int8Decoder

#: Default percentile of |activation| that maps to the largest integer.
PERCENTILE = 99.99
#: Steps of the greedy line search, one pass over all activations each.
SEARCH = (1.25, 1.1)
#: Samples per activation tensor and calibration grid kept for the percentiles.
SAMPLES = 1 << 14


def calibrate_decoder(vqvae: VQVAE, grids: list[np.ndarray], percentile: float = PERCENTILE,
                      search: tuple[float, ...] = SEARCH, w_max: int = int8.W_MAX,
                      max_grids: int = 64, correct_bias: bool = True, log=None) -> dict[str, torch.Tensor]:
    """The `int8.decoder.*` tensors of a float VQ-VAE.

    Args:
        vqvae: the float v1 VQ-VAE (codebook and decoder are used), on the CPU.
        grids: index grids int64 [h, w] of training crops (values in [0, K)).
        percentile: percentile of |activation| (float decoder, all grids) mapped to the
            largest integer (127 for s8, 255 for u8); 100 is the maximum.
        search: steps of the greedy line search, one pass over all activations per step
            (empty: percentile scales only).
        w_max: largest integer weight magnitude (<= int8.W_MAX).
        max_grids: grids used for the search's error and the bias correction (the first ones).
        correct_bias: apply `bias_correction` after the search (kept only if it lowers the error).
        log: callable taking a str for progress, or None.

    Returns:
        {name: tensor} as `Int8Decoder.tensors()`.

    Raises:
        ValueError: grids is empty, or no layer fits the accumulator bound.
    """
    if not grids:
        raise ValueError("no calibration grids")
    vqvae = vqvae.float().eval()
    idx = [torch.as_tensor(np.asarray(g), dtype=torch.int64) for g in grids]
    scales = _percentile_scales(vqvae, idx, percentile)
    tensors = build_tensors(vqvae, scales, w_max)
    if not search and not correct_bias:
        return tensors
    sub = idx[:max_grids]
    target = [_float_pixels(vqvae, g) for g in sub]
    best = _mse(vqvae, tensors, sub, target)
    if log:
        log(f"percentile {percentile}: MSE {best:.4f}")
    for step in search:
        for key in list(scales):
            base = scales[key]
            for factor in (step, 1 / step):
                moved = False
                while True:
                    trial = dict(scales, **{key: scales[key] * factor})
                    try:
                        t = build_tensors(vqvae, trial, w_max)
                    except ValueError:
                        break
                    err = _mse(vqvae, t, sub, target)
                    if err >= best:
                        break
                    best, scales, tensors, moved = err, trial, t, True
                if moved:
                    break
            if log:
                log(f"step {step} {key}: x{scales[key] / base:.3f} MSE {best:.4f}")
    if correct_bias:
        t = build_tensors(vqvae, scales, w_max, bias_correction(vqvae, scales, sub, w_max))
        err = _mse(vqvae, t, sub, target)
        if log:
            log(f"bias correction: MSE {err:.4f}")
        if err < best:
            tensors = t
    return tensors


def build_tensors(vqvae: VQVAE, scales: dict[str, float], w_max: int = int8.W_MAX,
                  bias: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Integer tensors for given activation scales.

    Args:
        vqvae: the float VQ-VAE.
        scales: real value of one integer unit per activation: "codebook" (the s8 codebook),
            "net.{slot}" (s8 output of a convolution or ResBlock), "net.{slot}.u" (u8 output of a
            ResBlock's conv3).
        w_max: largest integer weight magnitude.
        bias: per layer ("net.{slot}", "net.{slot}.conv3", "net.{slot}.conv1"), float64 [O]
            added to the float bias, in output units (pixels for the last convolution); the
            bias correction.

    Returns:
        {name: tensor} as `Int8Decoder.tensors()`.

    Raises:
        ValueError: a layer cannot satisfy the accumulator bound.
    """
    bias = bias or {}

    def b_of(conv, key):
        b = conv.bias.detach().double()
        return b + bias[key] if key in bias else b

    cb = vqvae.quantizer.codebook.detach().double()
    s = scales["codebook"]
    out = {PREFIX + "codebook": torch.round(cb / s).clamp_(-S8_MAX, S8_MAX).to(torch.int8)}
    net = vqvae.decoder.net
    last = max(i for i, m in enumerate(net) if isinstance(m, torch.nn.Conv2d))
    for slot, m in enumerate(net):
        name = f"{PREFIX}net.{slot}"
        if isinstance(m, torch.nn.Conv2d):
            w, b = m.weight.detach().double() * s, m.bias.detach().double()
            if slot == last:  # pixel = 255 * (y + 0.5), in pixel units
                b = 255 * b + 127.5 + bias.get(f"net.{slot}", 0.0)
                layer = int8.quantize_layer(255 * w, b, 1.0, w_max=w_max)
            else:
                b = b_of(m, f"net.{slot}")
                layer = int8.quantize_layer(w, b, scales[f"net.{slot}"], w_max=w_max)
                s = scales[f"net.{slot}"]
            out.update(layer.tensors(name))
        elif isinstance(m, ResBlock):
            su, sx = scales[f"net.{slot}.u"], scales[f"net.{slot}"]
            c3 = int8.quantize_layer(m.conv3.weight.detach().double() * s, b_of(m.conv3, f"net.{slot}.conv3"),
                                     su, w_max=w_max)
            c1 = int8.quantize_layer(m.conv1.weight.detach().double() * su, b_of(m.conv1, f"net.{slot}.conv1"),
                                     sx, resid_eff=torch.full((m.conv1.out_channels,), s, dtype=torch.float64),
                                     amax_in=U8_MAX, w_max=w_max)
            out.update(c3.tensors(f"{name}.conv3"))
            out.update(c1.tensors(f"{name}.conv1"))
            s = sx
    return out


@torch.no_grad()
def bias_correction(vqvae: VQVAE, scales: dict[str, float], idx: list[torch.Tensor],
                    w_max: int = int8.W_MAX) -> dict[str, torch.Tensor]:
    """Empirical bias correction: per layer, in order, the mean over the calibration grids of
    (float decoder's pre-activation - the int8 decoder's accumulator in real units), per channel.

    After Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
    Correction", ICCV 2019 (section 4.2, here with the float network's actual outputs).

    Args:
        vqvae: the float VQ-VAE.
        scales: the activation scales (`build_tensors`).
        idx: calibration grids int64 [h, w].
        w_max: largest integer weight magnitude.

    Returns:
        {layer name: float64 [O]}, the `bias` argument of `build_tensors`.
    """
    delta: dict[str, torch.Tensor] = {}
    for name in [n for n, *_ in _paired_layers(vqvae)]:
        tensors = build_tensors(vqvae, scales, w_max, delta)
        total, count = 0.0, 0
        for g in idx:
            for key, acc_real, want in _paired_forward(vqvae, tensors, scales, g):
                if key == name:
                    total = total + (want - acc_real).sum((0, 2, 3))
                    count += want.shape[0] * want.shape[2] * want.shape[3]
                    break
        delta[name] = total / count
    return delta


def _paired_layers(vqvae: VQVAE):
    """(layer name, module) of each integer layer in order."""
    for slot, m in enumerate(vqvae.decoder.net):
        if isinstance(m, torch.nn.Conv2d):
            yield f"net.{slot}", m
        elif isinstance(m, ResBlock):
            yield f"net.{slot}.conv3", m.conv3
            yield f"net.{slot}.conv1", m.conv1


def _paired_forward(vqvae: VQVAE, t: dict[str, torch.Tensor], scales: dict[str, float], idx: torch.Tensor):
    """Run the int8 decoder (plain float64 convolutions on the integers, exact) next to the float
    decoder on one grid; yield (layer name, the int8 accumulator in real units, the float
    decoder's pre-activation), float64 [1, O, h, w] each."""
    net = vqvae.decoder.net
    last = max(i for i, m in enumerate(net) if isinstance(m, torch.nn.Conv2d))
    xf = vqvae.quantizer.codebook.detach().double()[idx].permute(2, 0, 1)[None]
    xi = t[PREFIX + "codebook"].double()[idx].permute(2, 0, 1)[None]

    def run(name, x, r, conv, lo, hi, s_out):
        w = t[f"{PREFIX}{name}.weight"].double()
        acc = F.conv2d(x, w, t[f"{PREFIX}{name}.bias"].double(), padding=w.shape[2] // 2)
        if r is not None:
            acc = acc + t[f"{PREFIX}{name}.resid"].double()[None, :, None, None] * r
        mult = t[f"{PREFIX}{name}.mult"].to(torch.int64)
        y = int8.requantize(acc.permute(0, 2, 3, 1), mult, int(t[f"{PREFIX}{name}.shift"][0]), lo, hi)
        real = acc * (mult.double() * 2.0 ** -int(t[f"{PREFIX}{name}.shift"][0]) * s_out)[None, :, None, None]
        return y.permute(0, 3, 1, 2).double(), real

    for slot, m in enumerate(net):
        name = f"net.{slot}"
        if isinstance(m, torch.nn.Conv2d):
            k = m.kernel_size[0] // 2
            pre = F.conv2d(xf, m.weight.double(), m.bias.double(), padding=k)
            if slot == last:
                _, real = run(name, xi, None, m, 0, U8_MAX, 1.0)
                yield name, real, 255 * (pre + 0.5)
                return
            xi, real = run(name, xi, None, m, -S8_MAX, S8_MAX, scales[name])
            yield name, real, pre
            xf = pre
        elif isinstance(m, ResBlock):
            pre = F.conv2d(F.relu(xf), m.conv3.weight.double(), m.conv3.bias.double(), padding=1)
            ui, real = run(f"{name}.conv3", xi.clamp(min=0), None, m.conv3, 0, U8_MAX, scales[f"{name}.u"])
            yield f"{name}.conv3", real, pre
            uf = F.relu(pre)
            pre = xf + F.conv2d(uf, m.conv1.weight.double(), m.conv1.bias.double())
            xi, real = run(f"{name}.conv1", ui, xi, m.conv1, -S8_MAX, S8_MAX, scales[name])
            yield f"{name}.conv1", real, pre
            xf = pre
        elif isinstance(m, torch.nn.PixelShuffle):
            xf, xi = F.pixel_shuffle(xf, m.upscale_factor), F.pixel_shuffle(xi, m.upscale_factor)
        else:
            xf, xi = F.relu(xf), xi.clamp(min=0)


@torch.no_grad()
def _activations(vqvae: VQVAE, idx: torch.Tensor):
    """Yield (key, float activation) of the float decoder on one grid [h, w], in the int8
    decoder's order of activations (`build_tensors` keys), then ("pixels", float [3, H, W])."""
    net = vqvae.decoder.net
    x = vqvae.quantizer.codebook[idx].permute(2, 0, 1)[None]
    last = max(i for i, m in enumerate(net) if isinstance(m, torch.nn.Conv2d))
    for slot, m in enumerate(net):
        if isinstance(m, ResBlock):
            u = F.relu(m.conv3(F.relu(x)))
            yield f"net.{slot}.u", u
            x = x + m.conv1(u)
            yield f"net.{slot}", x
        else:
            x = m(x)
            if isinstance(m, torch.nn.Conv2d) and slot != last:
                yield f"net.{slot}", x
    yield "pixels", (255 * (x[0] + 0.5)).clamp(0, 255)


def _percentile_scales(vqvae: VQVAE, idx: list[torch.Tensor], percentile: float) -> dict[str, float]:
    gen = torch.Generator().manual_seed(0)
    samples: dict[str, list[torch.Tensor]] = {}
    for g in idx:
        for key, a in _activations(vqvae, g):
            if key == "pixels":
                continue
            flat = a.abs().flatten()
            if flat.numel() > SAMPLES:
                flat = flat[torch.randint(0, flat.numel(), (SAMPLES,), generator=gen)]
            samples.setdefault(key, []).append(flat)
    cb = vqvae.quantizer.codebook.detach().abs()
    scales = {"codebook": float(cb.max()) / S8_MAX}
    for key, parts in samples.items():
        v = float(torch.quantile(torch.cat(parts).double(), percentile / 100))
        scales[key] = max(v, 1e-8) / (U8_MAX if key.endswith(".u") else S8_MAX)
    return scales


def _float_pixels(vqvae: VQVAE, idx: torch.Tensor) -> torch.Tensor:
    for key, a in _activations(vqvae, idx):
        if key == "pixels":
            return a.double()
    raise AssertionError


def _mse(vqvae: VQVAE, tensors: dict[str, torch.Tensor], idx: list[torch.Tensor],
         target: list[torch.Tensor]) -> float:
    dec = Int8Decoder.from_tensors(tensors, vqvae.cfg)
    sse = n = 0
    for g, t in zip(idx, target):
        y = dec(g[None])[0].double()
        sse += float(((y - t) ** 2).sum())
        n += t.numel()
    return sse / n


def main(argv=None) -> None:
    """Command line: calibrate a released v1 model's decoder and write the int8 tensors.

    Args:
        argv: command-line arguments (default: sys.argv[1:]).

    Raises:
        SystemExit: bad arguments, a missing grid file, or the output file exists.
    """
    from safetensors.torch import save_file

    from vqcodec import zoo

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="v1 model name, e.g. vqc-f4k512-v1")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors (int8.decoder.* tensors)")
    p.add_argument("--grids", type=Path, help="NPZ of training index grids (default: the coord cache)")
    p.add_argument("--percentile", type=float, default=PERCENTILE)
    p.add_argument("--w-max", type=int, default=int8.W_MAX)
    p.add_argument("--no-search", action="store_true", help="percentile scales only")
    args = p.parse_args(argv)
    grids_path = args.grids or Path(f"/work/coord/cache/train_{args.model}.npz")
    if not grids_path.is_file():
        raise SystemExit(f"{grids_path}: no such grid file")
    if args.out.exists():
        raise SystemExit(f"{args.out} exists; not overwritten")
    if not 1 <= args.w_max <= int8.W_MAX:
        raise SystemExit(f"--w-max must be in [1, {int8.W_MAX}]")
    with np.load(grids_path) as z:
        grids = [z[k] for k in sorted(z.files)]
    vqvae = zoo.load(args.model, device="cpu").vqvae
    tensors = calibrate_decoder(vqvae, grids, args.percentile, () if args.no_search else SEARCH,
                                args.w_max, log=lambda s: print(s, flush=True))
    tmp = args.out.with_name(args.out.name + ".part")
    save_file(tensors, str(tmp), metadata={"source": args.model, "profile": "int8"})
    tmp.replace(args.out)
    print(f"{args.out}: {len(tensors)} tensors")


if __name__ == "__main__":
    main()
