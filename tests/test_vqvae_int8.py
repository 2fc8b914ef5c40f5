"""Tests of the int8-profile VQ-VAE decoder (vqcodec/vqvae_int8.py) and its post-training
calibration (vqcodec/train/calibrate_decoder.py): the fast path equals the contract's formulas
written plainly in int64, tiles with the halo equal a whole-image decode, threads and the
non-VNNI oneDNN kernels give identical pixels, and the file form is validated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from conftest import needs_cuda, needs_isa_above_avx2, needs_two_cores, threads_seen
from vqcodec import codec, int8, intops
from vqcodec.train.calibrate_decoder import _percentile_scales, build_tensors, calibrate_decoder
from vqcodec.vqvae import VQVAE, ResBlock, VQVAEConfig
from vqcodec.vqvae_int8 import PREFIX, Int8Decoder

ROOT = Path(__file__).resolve().parents[1]


def make_model(f: int, c: int = 16, seed: int = 0, codebook_std: float = 0.5) -> VQVAE:
    torch.manual_seed(seed)
    model = VQVAE(VQVAEConfig(f=f, K=16, D=4, c_lo=c, c_hi=c, n_res=2)).eval()
    model.quantizer.codebook.normal_(0, codebook_std)
    return model


def random_grids(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 16, (h, w)).astype(np.int64) for _ in range(n)]


def make_tensors(model: VQVAE, seed: int = 1) -> dict[str, torch.Tensor]:
    return calibrate_decoder(model, random_grids(4, 6, 7, seed), search=(), correct_bias=False,
                             use_gptq=False)


@pytest.fixture(scope="module", params=[4, 8])
def decoder(request):
    model = make_model(request.param)
    return Int8Decoder.from_tensors(make_tensors(model), model.cfg)


def reference_decode(dec: Int8Decoder, idx: torch.Tensor, clamped: list | None = None) -> torch.Tensor:
    """INT8.md's decoder written plainly: int64 convolutions with zero padding (nine taps summed
    one by one), `int8.requantize`, u8 activations as their values (no -128 storage).  Appends
    to `clamped` how many outputs of each layer reached a clamp bound from outside."""
    t = dec.tensors()

    def layer(x, name, lo, hi, r=None):
        w = t[f"{PREFIX}{name}.weight"].to(torch.int64)
        k = w.shape[2]
        xp = F.pad(x, (k // 2,) * 4)
        acc = t[f"{PREFIX}{name}.bias"].to(torch.int64)[None, :, None, None].expand(
            x.shape[0], -1, x.shape[2], x.shape[3]).clone()
        for dy in range(k):
            for dx in range(k):
                patch = xp[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
                acc += torch.einsum("oi,nihw->nohw", w[:, :, dy, dx], patch)
        if r is not None:
            acc += t[f"{PREFIX}{name}.resid"].to(torch.int64)[None, :, None, None] * r
        mult, shift = t[f"{PREFIX}{name}.mult"].to(torch.int64), int(t[f"{PREFIX}{name}.shift"][0])
        y = int8.requantize(acc.permute(0, 2, 3, 1), mult, shift, lo, hi)
        if clamped is not None:
            free = int8.requantize(acc.permute(0, 2, 3, 1), mult, shift, -(1 << 40), 1 << 40)
            clamped.append(int((free != y).sum()))
        return y.permute(0, 3, 1, 2)

    x = t[PREFIX + "codebook"].to(torch.int64)[idx].permute(0, 3, 1, 2)
    net = [m for m in _net(dec.cfg)]
    last = max(i for i, m in enumerate(net) if isinstance(m, torch.nn.Conv2d))
    for slot, m in enumerate(net):
        if isinstance(m, torch.nn.Conv2d):
            x = layer(x, f"net.{slot}", *((0, 255) if slot == last else (-127, 127)))
        elif isinstance(m, ResBlock):
            u = layer(x.clamp(min=0), f"net.{slot}.conv3", 0, 255)
            x = layer(u, f"net.{slot}.conv1", -127, 127, r=x)
        elif isinstance(m, torch.nn.PixelShuffle):
            x = F.pixel_shuffle(x, m.upscale_factor)
        else:
            x = x.clamp(min=0)
    return x.to(torch.uint8)


def _net(cfg):
    from vqcodec.vqvae import Decoder
    with torch.device("meta"):
        return Decoder(cfg).net


# ------------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("f", [4, 8])
@pytest.mark.parametrize("squeeze", [1.0, 0.05])  # 0.05: scales too small, activations clamp
def test_fast_path_equals_int64_reference(f, squeeze):
    model = make_model(f, seed=f)
    grids = [torch.from_numpy(g) for g in random_grids(4, 6, 7, f)]
    scales = {k: v * squeeze for k, v in _percentile_scales(model, grids, 99.99).items()}
    dec = Int8Decoder.from_tensors(build_tensors(model, scales), model.cfg)
    for shape in [(1, 1), (1, 7), (5, 1), (6, 9)]:
        idx = torch.randint(0, 16, (2, *shape), generator=torch.Generator().manual_seed(shape[1]))
        got = dec(idx)
        assert got.dtype == torch.uint8 and got.shape == (2, 3, f * shape[0], f * shape[1])
        clamped = []
        assert torch.equal(got, reference_decode(dec, idx, clamped)), shape
    if squeeze < 1:  # every s8/u8 layer reached its clamps
        assert min(clamped[:-1]) > 0  # (the last layer has no room to clamp)


@pytest.mark.parametrize("f", [4, 8])
def test_float64_requantisation_equals_int64_reference(f):
    """Layers whose int32 requantisation could overflow (large shifts, or M > 2**S) take the
    float64 path; both give the contract's integers."""
    model = make_model(f, seed=20 + f)
    t = make_tensors(model)
    for i, key in enumerate(k for k in sorted(t) if k.endswith(".shift")):
        mult = key[:-len("shift")] + "mult"
        if i % 2:  # S + 12, M * 2**12 (saturated below 2**16)
            t[key] = t[key] + 12
            t[mult] = (t[mult].to(torch.int64) << 12).clamp(max=(1 << 16) - 1).to(torch.int32)
        else:  # M > 2**S: output steps of several units
            t[key] = torch.tensor([2], dtype=torch.int32)
            t[mult] = torch.arange(t[mult].numel(), dtype=torch.int32) % 7
    dec = Int8Decoder.from_tensors(t, model.cfg)
    paths = [g.int32 for op in dec.ops for g in op[1:] if hasattr(g, "int32")]
    assert not all(paths)
    idx = torch.randint(0, 16, (2, 5, 6), generator=torch.Generator().manual_seed(f))
    assert torch.equal(dec(idx), reference_decode(dec, idx))


def _psnr_to_float(model: VQVAE, tensors, grids) -> float:
    dec = Int8Decoder.from_tensors(tensors, model.cfg)
    idx = torch.from_numpy(np.stack(grids))
    with torch.no_grad():
        want = (model.decoder(model.quantizer.lookup(idx)).double() * 255).clamp(0, 255)
    assert float(want.std()) > 5  # a non-trivial image
    return 10 * np.log10(255**2 / float(((dec(idx).double() - want) ** 2).mean()))


@pytest.mark.parametrize("f", [4, 8])
def test_close_to_float_decoder(f):
    """Calibrated int8 pixels are close to the float decoder's; GPTQ rounding, the scale search
    and the bias correction do better than percentile scales alone on the calibration grids."""
    model = make_model(f, c=32, seed=10 + f)
    calib = random_grids(8, 8, 8, f)
    tuned = calibrate_decoder(model, calib, max_grids=8)
    plain = calibrate_decoder(model, calib, search=(), correct_bias=False, use_gptq=False)
    rounded = calibrate_decoder(model, calib, search=(), correct_bias=False, max_grids=8)
    assert _psnr_to_float(model, tuned, random_grids(2, 6, 9, 100 + f)) > 35  # dB, unseen grids
    assert _psnr_to_float(model, tuned, calib) > _psnr_to_float(model, plain, calib)
    assert _psnr_to_float(model, rounded, calib) > _psnr_to_float(model, plain, calib)  # GPTQ alone


def test_batch_invariant(decoder):
    idx = torch.randint(0, 16, (3, 6, 5), generator=torch.Generator().manual_seed(0))
    together = decoder(idx)
    for b in range(3):
        assert torch.equal(decoder(idx[b:b + 1])[0], together[b])


@needs_two_cores
def test_same_with_one_and_two_threads(decoder, monkeypatch):
    monkeypatch.setattr(intops, "idle_cores", lambda: 64)  # really use 2 threads when busy
    idx = torch.randint(0, 16, (2, 24, 20), generator=torch.Generator().manual_seed(1))
    before = torch.get_num_threads()
    try:
        out = []
        for n in (1, 2):
            torch.set_num_threads(n)
            with threads_seen(monkeypatch, Int8Decoder, "_decode_one") as seen:
                out.append(decoder(idx))
            assert set(seen) == {n}  # the decoder really ran on n threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0], out[1])


_AVX2_SCRIPT = """
import sys, numpy as np, torch
from safetensors.torch import load_file
from vqcodec.vqvae import VQVAEConfig
from vqcodec.vqvae_int8 import Int8Decoder
cfg = VQVAEConfig(f=4, K=16, D=4, c_lo=32, c_hi=64, n_res=2)
dec = Int8Decoder.from_tensors(load_file(sys.argv[1]), cfg)
np.save(sys.argv[3], dec(torch.from_numpy(np.load(sys.argv[2]))).numpy())
"""


@needs_isa_above_avx2
def test_non_vnni_kernels_give_identical_pixels(tmp_path):
    """oneDNN restricted to AVX2 (vpmaddubsw, 16-bit pair sums) gives the same pixels."""
    torch.manual_seed(2)
    model = VQVAE(VQVAEConfig(f=4, K=16, D=4, c_lo=32, c_hi=64, n_res=2)).eval()
    model.quantizer.codebook.normal_(0, 0.5)
    tensors = calibrate_decoder(model, random_grids(4, 8, 8, 3), search=(), correct_bias=False,
                                use_gptq=False)
    save_file(tensors, str(tmp_path / "d.safetensors"))
    idx = torch.from_numpy(np.stack(random_grids(2, 12, 10, 4)))
    np.save(tmp_path / "idx.npy", idx.numpy())
    env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", _AVX2_SCRIPT, str(tmp_path / "d.safetensors"),
                    str(tmp_path / "idx.npy"), str(tmp_path / "out.npy")], env=env, check=True)
    want = Int8Decoder.from_tensors(tensors, model.cfg)(idx).numpy()
    assert np.array_equal(np.load(tmp_path / "out.npy"), want)


@needs_cuda
def test_same_on_cuda(decoder):
    idx = torch.randint(0, 16, (2, 9, 10), generator=torch.Generator().manual_seed(5))
    cuda = Int8Decoder.from_tensors(decoder.tensors(), decoder.cfg, "cuda")
    assert torch.equal(cuda(idx.cuda()).cpu(), decoder(idx))


# ------------------------------------------------------------------------------------ tiles


@pytest.mark.parametrize("shape", [(11, 13), (1, 9), (9, 1), (4, 4)])
def test_tiled_decode_equals_whole_image(decoder, monkeypatch, shape):
    m = SimpleNamespace(f=decoder.cfg.f, decoder=decoder)
    monkeypatch.setattr(codec, "PIXEL_TILE", 4 * m.f)  # tiles of 4x4 latent positions
    idx = np.random.default_rng(shape[0] * 31 + shape[1]).integers(0, 16, shape).astype(np.int64)
    tiled = codec.decode_pixels(m, idx)
    whole = decoder(torch.from_numpy(idx)[None])[0].permute(1, 2, 0).numpy()
    assert tiled.shape == (shape[0] * m.f, shape[1] * m.f, 3) and tiled.dtype == np.uint8
    assert np.array_equal(tiled, whole)


def test_halo_is_tight(decoder):
    """Tiles with `halo` equal the whole image; with one position less they show seams."""
    f, halo = decoder.cfg.f, decoder.halo
    assert halo == 4
    seams = 0
    for seed in range(4):
        grid = torch.from_numpy(np.random.default_rng(seed).integers(0, 16, (1, 1, 13, 14)))
        whole = decoder(grid[:, 0])

        def tiled(h):
            return codec.tiled(lambda t: decoder(t[:, 0]), grid, 1, f, 3, h)

        assert torch.equal(tiled(halo), whole)
        seams += not torch.equal(tiled(halo - 1), whole)
    assert seams > 0


# -------------------------------------------------------------------------------- file form


def test_tensors_round_trip(decoder):
    t = decoder.tensors()
    assert t[PREFIX + "codebook"].dtype == torch.int8 and t[PREFIX + "codebook"].shape == (16, 4)
    assert t[PREFIX + "net.1.conv1.resid"].dtype == torch.int32
    assert t[PREFIX + "net.0.weight"].shape == (16, 4, 3, 3)
    again = Int8Decoder.from_tensors(t, decoder.cfg)
    assert again.tensors().keys() == t.keys()
    assert all(torch.equal(again.tensors()[k], v) for k, v in t.items())
    idx = torch.randint(0, 16, (1, 5, 6), generator=torch.Generator().manual_seed(9))
    assert torch.equal(again(idx), decoder(idx))


def _broken(decoder, edit):
    t = dict(decoder.tensors())
    edit(t)
    with pytest.raises(ValueError) as e:
        Int8Decoder.from_tensors(t, decoder.cfg)
    return str(e.value)


def test_from_tensors_rejects_bad_files(decoder):
    w = PREFIX + "net.1.conv3.weight"

    def weight_64(t):
        t[w] = t[w].clone()
        t[w].view(-1)[0] = 64
    assert "outside [-63, 63]" in _broken(decoder, weight_64)
    assert "expected torch.int8" in _broken(decoder, lambda t: t.update({w: t[w].to(torch.int16)}))
    assert "expected" in _broken(decoder, lambda t: t.update({w: t[w][:, :, :1]}))
    assert "missing" in _broken(decoder, lambda t: t.pop(PREFIX + "net.0.mult"))
    assert "missing" in _broken(decoder, lambda t: t.pop(PREFIX + "codebook"))
    assert "unexpected" in _broken(decoder, lambda t: t.update({PREFIX + "net.99.weight": t[w]}))

    def codebook_128(t):
        t[PREFIX + "codebook"] = t[PREFIX + "codebook"].clone()
        t[PREFIX + "codebook"][0, 0] = -128
    assert "codebook" in _broken(decoder, codebook_128)

    def bound(t):  # a bias that alone reaches 2**24
        b = PREFIX + "net.1.conv1.bias"
        t[b] = t[b].clone()
        t[b][0] = 1 << 24
    assert "2**24" in _broken(decoder, bound)

    def resid_bound(t):  # 127 * |R| + the weights' part reaches 2**24
        r = PREFIX + "net.1.conv1.resid"
        t[r] = t[r].clone()
        t[r][1] = (1 << 24) // 127
    assert "2**24" in _broken(decoder, resid_bound)

    def shift_0(t):
        t[PREFIX + "net.0.shift"] = torch.tensor([0], dtype=torch.int32)
    assert "shift" in _broken(decoder, shift_0)


# ---------------------------------------------------------------------------- calibration CLI


def test_calibrate_cli_writes_loadable_tensors_and_never_overwrites(tmp_path, capsys):
    from safetensors.torch import load_file

    from conftest import tiny_model_bytes
    from vqcodec import zoo
    from vqcodec.train import calibrate_decoder as cli

    zoo.register(tiny_model_bytes(), "test-int8-calib")
    cfg = zoo.load("test-int8-calib", device="cpu").vqvae.cfg
    grids = tmp_path / "g.npz"
    np.savez(grids, **{f"c{i}.jpg": g for i, g in enumerate(random_grids(3, 5, 6, 7))})
    out = tmp_path / "d.safetensors"
    args = ["--model", "test-int8-calib", "--grids", str(grids), "--out", str(out), "--no-search"]
    cli.main(args)
    dec = Int8Decoder.from_tensors(load_file(str(out)), cfg)
    assert dec(torch.zeros(1, 2, 3, dtype=torch.int64)).shape == (1, 3, 2 * cfg.f, 3 * cfg.f)
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="exists"):
        cli.main(args)
    assert out.read_bytes() == before
    with pytest.raises(SystemExit, match="no such grid file"):
        cli.main(["--model", "test-int8-calib", "--grids", str(tmp_path / "none.npz"),
                  "--out", str(tmp_path / "x.safetensors")])
    assert not (tmp_path / "x.safetensors").exists()
