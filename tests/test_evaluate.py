"""Tests of `python -m vqcodec.evaluate` on the tiny random model: every figure is checked against
an independent computation from the codec's own output."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import make_pixels, tiny_model_bytes
from vqcodec import codec, container, evaluate, metrics, zoo


@pytest.fixture
def eval_images(tmp_path):
    """A 176x168 image (MS-SSIM defined) and a 40x24 one (too small: NaN)."""
    folder = tmp_path / "set"
    folder.mkdir()
    Image.fromarray(make_pixels(168, 176, seed=5)).save(folder / "a.png")
    Image.fromarray(make_pixels(24, 40, seed=6)).save(folder / "b.png")
    return folder


def test_evaluate_figures(tiny_model, eval_images):
    paths = sorted(eval_images.glob("*.png"))
    result = evaluate.evaluate(tiny_model, paths, device="cpu")
    model = zoo.load(tiny_model, device="cpu")
    assert result["model"] == tiny_model and result["images"] == 2
    used = np.zeros(model.K, dtype=np.int64)
    for path, row in zip(paths, result["per_image"]):
        x = np.asarray(Image.open(path).convert("RGB"))
        data = codec.compress(x, model=tiny_model, device="cpu", effort=0)  # model figures: NN
        image, grid = codec.decompress_with_grid(data, device="cpu")
        used += np.bincount(grid.ravel(), minlength=model.K)
        assert row["image"] == path.name and row["bytes"] == len(data)
        assert row["bpp"] == pytest.approx(len(data) * 8 / (x.shape[0] * x.shape[1]))
        assert row["psnr"] == pytest.approx(metrics.psnr(x, np.asarray(image)))
        assert row["indices"] == grid.size == math.ceil(x.shape[0] / 4) * math.ceil(x.shape[1] / 4)
        # the range coder spends about the integer prior's ideal bits, never fewer
        payload_bits = 8 * sum(len(p) for p in container.read(data).payloads)
        assert row["int_prior_bits"] <= payload_bits <= row["int_prior_bits"] + 64
        # fp16-rounded integer prior vs float prior: close, not equal
        assert row["float_prior_bits"] == pytest.approx(row["int_prior_bits"], rel=0.05)
        assert row["encode_s"] > 0 and row["decode_s"] > 0
    big, small = result["per_image"]
    assert 0 < big["ms_ssim"] < 1 and math.isnan(small["ms_ssim"])
    assert result["bpp"] == pytest.approx((big["bpp"] + small["bpp"]) / 2)
    assert result["codebook_usage"] == pytest.approx((used > 0).mean())
    p = used[used > 0] / used.sum()
    assert result["codebook_perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert result["log2_K"] == 4.0
    n = big["indices"] + small["indices"]
    int_bits = big["int_prior_bits"] + small["int_prior_bits"]
    assert result["prior_bits_per_index"] == pytest.approx(int_bits / n)
    assert result["prior_saving_vs_log2K_pct"] == pytest.approx(100 * (1 - int_bits / n / 4))


def test_evaluate_command_writes_the_card_next_to_the_weights(tmp_path, eval_images, monkeypatch, capsys):
    models = tmp_path / "models"
    models.mkdir()
    (models / "test-evalcard.safetensors").write_bytes(tiny_model_bytes())
    (models / "test-evalcard.json").write_text(json.dumps({"name": "test-evalcard", "steps": 7}))
    monkeypatch.setenv("VQC_MODEL_PATH", str(models))
    evaluate.main(["--model", "test-evalcard", "--images", str(eval_images), "--limit", "1", "--card"])
    lines = capsys.readouterr().out.splitlines()
    assert json.loads(lines[0])["image"] == "a.png"
    card = json.loads((models / "test-evalcard.json").read_text())
    assert card["steps"] == 7  # the rest of the card is kept
    ev = card["evaluation"]
    assert ev["model"] == "test-evalcard" and ev["images"] == 1 and ev["images_dir"] == "set"
    assert ev["command"] == "python -m vqcodec.evaluate --model test-evalcard --card"
    assert "per_image" not in ev
