"""Tests of the training entry points (vqcodec/train/): a few steps of each, resuming from the
checkpoint, and data-parallel runs under torchrun (gloo on CPU), then export to a release."""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqcodec import codec, zoo

REPO = Path(__file__).resolve().parent.parent
TINY_VQ = ["--f", "4", "--K", "16", "--D", "4", "--c-lo", "8", "--c-hi", "8", "--n-res", "1",
           "--batch", "2", "--crop", "32", "--device", "cpu"]
TINY_PRIOR = ["--channels", "8", "--layers", "2", "--crop", "32", "--batch", "2", "--val", "2",
              "--device", "cpu"]
TIMEOUT = 240



def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{args}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def torchrun(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # "--" keeps torchrun's own parser away from our flags ("--log" is an ambiguous prefix of
    # torchrun's "--log-dir"/"--logs-specs"); torchrun drops it before starting the workers.
    return run(["-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "-m", module, "--", *args], cwd)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """tmp dir with data/: 8 smooth 64x64 PNGs (plus one too small and one non-image file)."""
    root = tmp_path_factory.mktemp("train")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((64, 64), Image.BILINEAR).save(data / f"img{i}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "tiny.png")  # skipped: < 64
    (data / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def vq_ckpt(workdir) -> Path:
    """A tiny VQ-VAE trained for 3 steps, then resumed up to 5."""
    ck = workdir / "vq.pt"
    base = ["-m", "vqcodec.train.vqvae", "--data", "data", "--ckpt", "vq.pt", "--log", "vq.jsonl", *TINY_VQ]
    run([*base, "--steps", "3"], workdir)
    state3 = load_ckpt(ck)
    assert state3["step"] == 3
    run([*base, "--steps", "5"], workdir)
    return ck, state3


def test_vqvae_train_and_resume(workdir, vq_ckpt):
    ck, state3 = vq_ckpt
    state = load_ckpt(ck)
    assert state["step"] == 5
    assert state["config"] == {"f": 4, "K": 16, "D": 4, "c_lo": 8, "c_hi": 8, "n_res": 1,
                               "beta": 0.25, "ema_decay": 0.99}
    assert (workdir / "vq.pt.opt").exists()
    assert bool(state["model"]["quantizer.initialized"])
    changed = [k for k, v in state["model"].items() if v.is_floating_point()
               and not torch.equal(v, state3["model"][k])]
    assert changed, "resumed run did not train"
    log = read_log(workdir / "vq.jsonl")
    assert [e["step"] for e in log if e.get("event") == "saved"] == [3, 5]
    assert [e["step"] for e in log if e.get("event") == "resume"] == [3]
    assert all(e["images"] == 8 for e in log if e.get("event") == "start")
    metrics = [e for e in log if "mse" in e]
    assert [e["step"] for e in metrics] == [3, 5]
    for e in metrics:
        assert 0 < e["mse"] < 1 and math.isfinite(e["psnr"])
        assert 1 <= e["perplexity"] <= 16 and 0 < e["usage"] <= 1


def test_vqvae_rerun_when_done_is_a_no_op(workdir, vq_ckpt, monkeypatch):
    from vqcodec.train import vqvae as train_vqvae

    ck, _ = vq_ckpt
    before = load_ckpt(ck)
    monkeypatch.chdir(workdir)
    rng_state = torch.get_rng_state()
    try:
        train_vqvae.main(["--data", "data", "--ckpt", "vq.pt", *TINY_VQ, "--steps", "5"])
    finally:
        torch.set_rng_state(rng_state)
    after = load_ckpt(ck)
    assert after["step"] == 5
    assert all(torch.equal(v, after["model"][k]) for k, v in before["model"].items())


@pytest.fixture(scope="module")
def prior_ckpt(workdir, vq_ckpt) -> Path:
    run(["-m", "vqcodec.train.prior", "--vqvae", "vq.pt", "--data", "data", "--ckpt", "prior.pt",
         "--log", "prior.jsonl", *TINY_PRIOR, "--steps", "3"], workdir)
    return workdir / "prior.pt"


def test_prior_train(workdir, prior_ckpt):
    state = load_ckpt(prior_ckpt)
    assert state["step"] == 3
    assert state["config"] == {"K": 16, "channels": 8, "layers": 2}
    log = read_log(workdir / "prior.jsonl")
    start = next(e for e in log if e.get("event") == "start")
    # 6 training crops (2 held out), 8 grids each of (32 - f) / f = 7 positions per side
    assert start["grids"] == [48, 7, 7]
    saved = next(e for e in log if e.get("event") == "saved")
    assert saved["step"] == 3 and saved["log2_K"] == 4.0
    assert 0 < saved["val_bits_per_index"] < 8


def test_prior_resume(workdir, prior_ckpt):
    """A copy of the 3-step prior checkpoint resumed to 5 steps: the step count, the model and
    the optimiser continue (Adam's step count is 5, not 2) and the checkpoint's architecture wins
    over conflicting flags."""
    import shutil

    for suffix in ("", ".opt"):
        shutil.copyfile(workdir / f"prior.pt{suffix}", workdir / f"prior2.pt{suffix}")
    before = load_ckpt(workdir / "prior2.pt")
    flags = list(TINY_PRIOR)
    flags[flags.index("--layers") + 1] = "3"  # ignored on resume: the checkpoint says 2
    run(["-m", "vqcodec.train.prior", "--vqvae", "vq.pt", "--data", "data", "--ckpt", "prior2.pt",
         "--log", "prior2.jsonl", *flags, "--steps", "5"], workdir)
    after = load_ckpt(workdir / "prior2.pt")
    assert before["step"] == 3 and after["step"] == 5
    assert after["config"] == before["config"] == {"K": 16, "channels": 8, "layers": 2}
    assert any(not torch.equal(v, before["model"][k]) for k, v in after["model"].items())
    opt = load_ckpt(workdir / "prior2.pt.opt")
    assert {float(s["step"]) for s in opt["state"].values()} == {5.0}
    start = next(e for e in read_log(workdir / "prior2.jsonl") if e.get("event") == "start")
    assert start["step"] == 3 and start["config"]["layers"] == 2


def test_export_trained_checkpoints_as_release(workdir, prior_ckpt, capsys):
    from vqcodec.train import export

    out = workdir / "release"
    args = ["--vqvae", str(workdir / "vq.pt"), "--prior", str(prior_ckpt),
            "--name", "test-trained-tiny", "--out", str(out)]
    export.main(args)
    path = out / "test-trained-tiny.safetensors"
    data = path.read_bytes()
    assert f"sha256 {hashlib.sha256(data).hexdigest()}" in capsys.readouterr().out
    m = zoo.build(data, "test-trained-tiny", "cpu")
    assert m.f == 4 and m.K == 16 and m.prior.cfg.channels == 8
    assert m.vqvae.cfg.to_dict() == load_ckpt(workdir / "vq.pt")["config"]
    # released models are immutable: a second export to the same name is refused
    with pytest.raises(SystemExit, match="immutable"):
        export.main(args)
    assert path.read_bytes() == data
    # and the trained model codes an image end to end
    zoo.register(data, "test-trained-tiny")
    img = np.asarray(Image.open(workdir / "data" / "img0.png").convert("RGB"))[:20, :28]
    out_img = codec.decompress(codec.compress(img, model="test-trained-tiny", device="cpu"), device="cpu")
    assert out_img.size == (28, 20) and out_img.mode == "RGB"


# ----------------------------------------------------------------------------- data-parallel


def test_vqvae_data_parallel(workdir):
    torchrun("vqcodec.train.vqvae", ["--data", "data", "--ckpt", "vq_ddp.pt", "--log", "vq_ddp.jsonl",
                                     *TINY_VQ, "--steps", "3"], workdir)
    state = load_ckpt(workdir / "vq_ddp.pt")
    assert state["step"] == 3
    assert bool(state["model"]["quantizer.initialized"])
    log = read_log(workdir / "vq_ddp.jsonl")  # main rank only
    assert [e["world"] for e in log if e.get("event") == "start"] == [2]
    assert [e["step"] for e in log if e.get("event") == "saved"] == [3]


def test_prior_data_parallel(workdir, vq_ckpt):
    torchrun("vqcodec.train.prior", ["--vqvae", "vq.pt", "--data", "data", "--ckpt", "prior_ddp.pt",
                                     "--log", "prior_ddp.jsonl", *TINY_PRIOR, "--steps", "3"], workdir)
    state = load_ckpt(workdir / "prior_ddp.pt")
    assert state["step"] == 3 and state["config"]["K"] == 16
    log = read_log(workdir / "prior_ddp.jsonl")
    assert [e["world"] for e in log if e.get("event") == "start"] == [2]
    saved = [e for e in log if e.get("event") == "saved"]
    assert len(saved) == 1 and saved[0]["step"] == 3 and math.isfinite(saved[0]["val_bits_per_index"])
