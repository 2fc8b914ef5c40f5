"""Tests of the rvq training script (vqcodec/train/rvq.py), its one-lease recipe
(vqcodec/train/recipe.py) and the crop packer (vqcodec/train/pack_crops.py): tiny models on
images made here, so nothing under ../shared is needed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqcodec.prior_stages import StagePriorConfig
from vqcodec.rvq import RVQConfig
from vqcodec.train import common, pack_crops, recipe, rvq
from vqcodec.vqvae import VQVAEConfig

TINY_VQ = RVQConfig(f=4, K=16, D=4, c_lo=8, c_hi=8, n_res=1, stages=3)
TINY_PRIOR = StagePriorConfig(K=16, channels=8, layers=1, stages=3)
TINY_ARGS = ["--f", "4", "--K", "16", "--D", "4", "--c-lo", "8", "--c-hi", "8", "--n-res", "1",
             "--stages", "2", "--channels", "8", "--layers", "1", "--batch", "2", "--crop", "16",
             "--load-size", "32", "--init-batch", "4", "--device", "cpu", "--threads", "1",
             "--log-every", "1"]


def smooth_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """uint8 [n, size, size, 3]: upsampled noise, so the images have structure to learn."""
    g = np.random.default_rng(seed)
    small = g.integers(0, 256, (n, size // 4, size // 4, 3)).astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR)) for a in small])


@pytest.fixture
def crops(tmp_path) -> Path:
    folder = tmp_path / "crops"
    folder.mkdir()
    for i, a in enumerate(smooth_images(4, 32)):
        Image.fromarray(a).save(folder / f"c{i}.png")
    return folder


def tiny_system(seed: int = 0) -> rvq.RVQSystem:
    torch.manual_seed(seed)
    return rvq.RVQSystem(TINY_VQ, TINY_PRIOR)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_decreases_on_a_tiny_batch():
    system = tiny_system()
    x = torch.from_numpy(smooth_images(2, 16)).permute(0, 3, 1, 2).float() / 255
    rvq.init_stages(system.vqvae, x)
    opt = torch.optim.Adam(system.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss, _ = rvq.step_terms(system, x, 3, lam=1e-2, tau=0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_loss_value_and_gradient_paths():
    system = tiny_system()
    x = torch.from_numpy(smooth_images(2, 16)).permute(0, 3, 1, 2).float() / 255
    rvq.init_stages(system.vqvae, x)
    loss, m = rvq.step_terms(system, x, 2, lam=0.5, tau=0.5)
    beta = system.vqvae.cfg.beta
    assert float(loss.detach()) == pytest.approx(float(m["mse"] + beta * m["commit"] + 0.5 * m["bpp"]), rel=1e-5)
    # the soft rate reaches the encoder output; the hard rate cannot
    z = system.vqvae.encoder(x).detach().requires_grad_(True)
    idx = system.vqvae.quantizer.encode(z.detach(), 2)
    logits = system.prior(idx)
    cbs = [st.codebook for st in system.vqvae.quantizer.stages]
    (g,) = torch.autograd.grad(rvq.soft_bits(z, idx, cbs, logits, 0.5), z)
    assert g.abs().sum() > 0
    assert not rvq.hard_bits(logits.detach(), idx).requires_grad


def test_quantiser_dropout_draws_depths_in_range():
    gen = torch.Generator().manual_seed(0)
    depths = [rvq.draw_depth(gen, 4) for _ in range(400)]
    assert set(depths) == {1, 2, 3, 4}
    assert all(200 // 4 / 2 < depths.count(d) for d in (1, 2, 3, 4))  # roughly uniform


def test_two_stage_phases_train_one_model_each():
    system = tiny_system()
    x = torch.from_numpy(smooth_images(2, 16)).permute(0, 3, 1, 2).float() / 255
    rvq.init_stages(system.vqvae, x)
    for phase, trained, frozen in (("vqvae", system.vqvae, system.prior), ("prior", system.prior, system.vqvae)):
        system.zero_grad(set_to_none=True)
        loss, _ = rvq.step_terms(system, x, 2, lam=1.0, tau=0.5, phase=phase)
        loss.backward()
        assert any(p.grad is not None for p in trained.parameters())
        assert all(p.grad is None for p in frozen.parameters())


def test_resume_continues_the_step_count(crops, tmp_path):
    ckpt, log = tmp_path / "c.pt", tmp_path / "log.jsonl"
    base = ["--data", str(crops), "--ckpt", str(ckpt), "--log", str(log), *TINY_ARGS]
    rvq.main(base + ["--steps", "3"])
    rvq.main(base + ["--steps", "5", "--objective", "two-stage"])
    lines = read_log(log)
    assert {"event": "resume", "step": 3}.items() <= next(r for r in lines if r.get("event") == "resume").items()
    steps = [r["step"] for r in lines if "loss" in r]
    assert steps == [1, 2, 3, 4, 5]
    assert all(1 <= r["depth"] <= 2 for r in lines if "depth" in r)
    assert torch.load(ckpt, weights_only=False)["step"] == 5


def test_float_rvq_bytes_is_deterministic_and_in_the_contract_layout():
    system = tiny_system()
    x = torch.from_numpy(smooth_images(2, 16)).permute(0, 3, 1, 2).float() / 255
    rvq.init_stages(system.vqvae, x)
    a = rvq.float_rvq_bytes(system.vqvae, system.prior, "tiny")
    assert a == rvq.float_rvq_bytes(system.vqvae, system.prior, "tiny")
    n = int.from_bytes(a[:8], "little")
    header = json.loads(a[8:8 + n])
    assert list(header) == sorted(header)
    meta = header.pop("__metadata__")
    assert meta["arch"] == "rvq" and meta["name"] == "tiny"
    assert json.loads(meta["vqvae_config"])["stages"] == 3
    assert json.loads(meta["prior_config"]) == {"K": 16, "channels": 8, "layers": 1, "stages": 3}
    assert all(v["dtype"] == "F16" for v in header.values())
    names = set(header)
    for s in range(3):
        assert header[f"vqvae.quantizer.stages.{s}.codebook"]["shape"] == [16, 4]
    assert header["prior.embed"]["shape"] == [3, 16, 8]
    assert header["prior.heads.2.cond"]["shape"] == [2, 16, 8]
    assert "prior.heads.0.cond" not in names
    assert any(k.startswith("vqvae.encoder.") for k in names)
    assert any(k.startswith("vqvae.decoder.") for k in names)
    assert all(k.startswith(("vqvae.encoder.", "vqvae.decoder.", "vqvae.quantizer.stages.", "prior."))
               for k in names)
    assert not any(k.endswith(("cluster_size", "embed_sum", "initialized")) for k in names)
    vq, prior = rvq.load_float_rvq(a)
    assert torch.equal(vq.quantizer.stages[1].codebook,
                       system.vqvae.quantizer.stages[1].codebook.half().float())
    assert torch.equal(prior.embed, system.prior.embed.detach().half().float())


def test_warm_start_from_a_float_file(tmp_path):
    src = tiny_system(1)
    path = tmp_path / "m.float.safetensors"
    path.write_bytes(rvq.float_rvq_bytes(src.vqvae, src.prior, "m"))
    dst = tiny_system(2)
    assert rvq.warm_start(dst, str(path)) == 3
    assert torch.equal(dst.vqvae.decoder.net[0].weight, src.vqvae.decoder.net[0].weight.detach().half().float())


def test_decoder_macs_per_pixel_of_the_released_f8_decoder():
    # hand count: 576 + 5120 + 1024 (latent) + 10240 + 2048 (H/4) + 10240 + 1728 (H/2)
    assert recipe.decoder_macs_per_pixel(VQVAEConfig(f=8, K=1024, D=32, c_lo=64, c_hi=128, n_res=2)) == 30976


def test_pack_crops_round_trips_losslessly(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    imgs = smooth_images(3, 32, seed=3)
    for i, a in enumerate(imgs):
        Image.fromarray(a).save(src / f"p{i}.png")
    Image.fromarray(imgs[0]).save(src / "j.jpg", quality=90)
    jpeg = (src / "j.jpg").read_bytes()
    info = pack_crops.pack(src, out, 10 ** 9)
    assert info["files"] == 4 and info["webp"] == 3
    assert (out / "j.jpg").read_bytes() == jpeg
    for i, a in enumerate(imgs):
        with Image.open(out / f"p{i}.webp") as im:
            assert np.array_equal(np.asarray(im.convert("RGB")), a)
    assert common.load_crops(out, 32).shape == (4, 3, 32, 32)  # training reads the packed folder
    small = pack_crops.pack(src, out, info["bytes"] - 1)
    assert small["files"] < 4 and small["bytes"] < info["bytes"]


def test_recipe_writes_its_files_and_resumes(crops, tmp_path):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    argv = ["--data", str(crops), "--out", str(out), "--ckpt-dir", str(ckpt), "--minutes", "0.05",
            "--reserve", "0", "--tiny"]
    assert recipe.main(argv) == 0
    names = {"rvq-joint", "rvq-twostage"}
    for n in names:
        assert (out / f"{n}.float.safetensors").stat().st_size > 0
        assert (ckpt / f"{n}.pt").exists()
    summary = json.loads((out / "recipe.json").read_text())
    assert set(summary["configs"]) == names and summary["exit_codes"] == {n: 0 for n in names}
    assert len(list(out.iterdir())) <= 8
    first = {n: torch.load(ckpt / f"{n}.pt", weights_only=False)["step"] for n in names}
    assert recipe.main(argv) == 0
    for n in names:
        lines = read_log(out / f"{n}.log.jsonl")
        assert any(r.get("event") == "resume" and r["step"] == first[n] for r in lines)
        assert torch.load(ckpt / f"{n}.pt", weights_only=False)["step"] > first[n]
