"""Tests of benchmarks/: metric helpers (PSNR, MS-SSIM, BD-rate, interpolation) and small runs of
benchmarks.rd, benchmarks.crossdevice and benchmarks.large with vqc on the tiny random model
(conftest), and of benchmarks.speed against a stand-in codec module."""

from __future__ import annotations

import hashlib
import json
import math
import textwrap

import numpy as np
import pytest
from PIL import Image

from benchmarks import metrics

# --- PSNR / MS-SSIM -----------------------------------------------------------------------------


def test_psnr_known_values():
    a = np.zeros((4, 4, 3), np.uint8)
    b = np.full((4, 4, 3), 255, np.uint8)
    assert metrics.psnr(a, b) == pytest.approx(0.0)  # MSE = 255^2
    c = a.copy()
    c[...] = 1  # MSE 1 -> 20 log10(255)
    assert metrics.psnr(a, c) == pytest.approx(20 * math.log10(255))
    d = a.copy()
    d[0, 0, 0] = 16  # MSE = 256 / 48
    assert metrics.psnr(a, d) == pytest.approx(10 * math.log10(255**2 * 48 / 256))
    assert metrics.psnr(a, a) == math.inf


def test_psnr_no_uint8_wraparound():
    a = np.full((2, 2, 3), 10, np.uint8)
    b = np.full((2, 2, 3), 20, np.uint8)
    assert metrics.psnr(a, b) == pytest.approx(metrics.psnr(b, a))
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError):
        metrics.psnr(np.zeros((2, 2, 3), np.uint8), np.zeros((2, 3, 3), np.uint8))


def test_msssim_identity_and_small_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (176, 180, 3), dtype=np.uint8)
    assert metrics.msssim(a, a) == pytest.approx(1.0, abs=1e-5)
    noisy = np.clip(a.astype(int) + rng.integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    assert 0.0 < metrics.msssim(a, noisy) < 0.999
    assert math.isnan(metrics.msssim(a[:100], a[:100]))


def test_msssim_db_and_bpp():
    assert metrics.msssim_db(0.9) == pytest.approx(10.0)
    assert metrics.msssim_db(0.99) == pytest.approx(20.0)
    assert metrics.msssim_db(1.0) == math.inf
    assert metrics.bpp(1000, 100, 80) == pytest.approx(1.0)
    assert metrics.bpp(49152, 768, 512) == pytest.approx(1.0)


# --- interpolation ------------------------------------------------------------------------------


def test_pareto_front_drops_dominated_points():
    r, q = metrics.pareto_front([1, 2, 3, 4, 5], [10, 12, 11, 15, 15])
    assert list(r) == [1, 2, 4]
    assert list(q) == [10, 12, 15]


def test_rate_at_quality_interpolates_log_rate_and_never_extrapolates():
    rates = [100.0, 400.0]
    quals = [30.0, 40.0]
    assert metrics.rate_at_quality(rates, quals, 30.0) == pytest.approx(100.0)
    assert metrics.rate_at_quality(rates, quals, 40.0) == pytest.approx(400.0)
    assert metrics.rate_at_quality(rates, quals, 35.0) == pytest.approx(200.0)  # geometric mean
    assert metrics.rate_at_quality(rates, quals, 29.9) is None
    assert metrics.rate_at_quality(rates, quals, 40.1) is None
    # unsorted input and a dominated point are handled
    assert metrics.rate_at_quality([400, 150, 100], [40, 29, 30], 35.0) == pytest.approx(200.0)


def test_bits_saved():
    assert metrics.bits_saved(50, 100) == pytest.approx(50.0)
    assert metrics.bits_saved(150, 100) == pytest.approx(-50.0)
    assert metrics.bits_saved(50, None) is None


# --- BD-rate ------------------------------------------------------------------------------------

RATES = [0.1, 0.2, 0.35, 0.5, 0.8, 1.2]
PSNRS = [26.0, 28.1, 29.9, 31.0, 32.8, 34.5]


@pytest.mark.parametrize("method", ["cubic", "linear", "auto"])
def test_bd_rate_self_is_zero(method):
    assert metrics.bd_rate(RATES, PSNRS, RATES, PSNRS, method=method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["cubic", "linear"])
@pytest.mark.parametrize("factor,expected", [(0.5, -50.0), (2.0, 100.0), (0.8, -20.0)])
def test_bd_rate_scaled_rate(method, factor, expected):
    test = [r * factor for r in RATES]
    assert metrics.bd_rate(RATES, PSNRS, test, PSNRS, method=method) == pytest.approx(expected, abs=1e-6)


def test_bd_rate_antisymmetric_in_log_domain():
    test = [r * 0.7 for r in RATES]
    fwd = metrics.bd_rate(RATES, PSNRS, test, PSNRS)
    back = metrics.bd_rate(test, PSNRS, RATES, PSNRS)
    assert (1 + fwd / 100) * (1 + back / 100) == pytest.approx(1.0)


def test_bd_rate_partial_overlap_and_different_sampling():
    # anchor: log-rate linear in PSNR; test: half the rate, sampled at other, fewer PSNRs
    anchor_q = np.linspace(24, 40, 20)
    anchor_r = np.exp(0.2 * anchor_q - 7)
    test_q = np.array([28.0, 30.0, 33.0])
    test_r = 0.5 * np.exp(0.2 * test_q - 7)
    assert metrics.bd_method_for(len(anchor_q), len(test_q)) == "linear"
    assert metrics.bd_rate(anchor_r, anchor_q, test_r, test_q) == pytest.approx(-50.0, abs=1e-6)
    test_q4 = np.array([27.0, 28.0, 30.0, 33.0])
    test_r4 = 0.5 * np.exp(0.2 * test_q4 - 7)
    assert metrics.bd_method_for(len(anchor_q), 4) == "cubic"
    assert metrics.bd_rate(anchor_r, anchor_q, test_r4, test_q4) == pytest.approx(-50.0, abs=1e-6)


def test_bd_rate_no_overlap_and_bad_input():
    assert metrics.bd_rate([1, 2], [20, 22], [1, 2], [30, 32]) is None
    assert metrics.bd_rate([1], [20], [1, 2], [20, 22]) is None
    with pytest.raises(ValueError):
        metrics.bd_rate(RATES, PSNRS, RATES[:3], PSNRS[:3], method="cubic")
    with pytest.raises(ValueError):
        metrics.bd_rate(RATES, PSNRS, RATES, PSNRS, method="spline")


def test_bd_rate_better_codec_is_negative():
    # test codec: +1 dB everywhere at the same rate -> fewer bits at equal PSNR
    better = [q + 1.0 for q in PSNRS]
    assert metrics.bd_rate(RATES, PSNRS, RATES, better) < 0


# --- end-to-end with a stand-in vqc -------------------------------------------------------------

FAKE_VQC = textwrap.dedent(
    '''
    """Stand-in for vqcodec.codec: posterised pixels, zlib-compressed, with a tiny header."""
    import struct, zlib
    import numpy as np
    from PIL import Image

    QUALITY_LEVELS = [1, 2, 3]

    def compress(pixels, quality=2, device="cpu"):
        a = np.asarray(pixels, dtype=np.uint8)
        shift = 6 - quality
        q = (a >> shift).astype(np.uint8)
        return b"FAKE" + struct.pack(">HHB", a.shape[0], a.shape[1], shift) + zlib.compress(q.tobytes(), 9)

    def decompress(data, device="cpu"):
        assert data[:4] == b"FAKE"
        h, w, shift = struct.unpack(">HHB", data[4:9])
        q = np.frombuffer(zlib.decompress(data[9:]), np.uint8).reshape(h, w, 3)
        a = (q.astype(np.uint16) << shift) + (1 << shift) // 2
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
    '''
)


@pytest.fixture()
def fake_vqc(tmp_path, monkeypatch):
    mod_dir = tmp_path / "fakemods"
    mod_dir.mkdir()
    (mod_dir / "fake_vqc_codec.py").write_text(FAKE_VQC)
    monkeypatch.syspath_prepend(str(mod_dir))
    monkeypatch.setenv("PYTHONPATH", str(mod_dir))
    return "fake_vqc_codec"


@pytest.fixture()
def tiny_images(tmp_path):
    folder = tmp_path / "tinyset"
    folder.mkdir()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:168, 0:176]
    for i in range(2):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(float)
        img = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


@pytest.fixture()
def tiny_releases(tiny_model, monkeypatch):
    """Quality levels 1 and 2 served by two tiny random models instead of the released ones
    (same code path: vqcodec.codec.compress(quality=q) -> registry.for_quality -> zoo.load)."""
    from conftest import random_model_bytes, tiny_model_bytes
    from vqcodec import registry, zoo
    from vqcodec.prior import PriorConfig
    from vqcodec.vqvae import VQVAEConfig

    second = random_model_bytes(VQVAEConfig(f=8, K=16, D=4, c_lo=8, c_hi=8, n_res=1),
                                PriorConfig(K=16, channels=8, layers=2), seed=1, name="test-tiny-f8")
    zoo.register(second, "test-tiny-f8")
    releases = {name: registry.Release(name, q, hashlib.sha256(data).hexdigest())
                for q, name, data in [(1, "test-tiny-f8", second), (2, tiny_model, tiny_model_bytes())]}
    monkeypatch.setattr(registry, "RELEASES", releases)
    monkeypatch.setattr(registry, "QUALITY_LEVELS", [1, 2])
    from vqcodec import rdo

    monkeypatch.setattr(rdo, "QUALITY_SEGMENTS", (rdo.Segment("test-tiny-f8", 0, 40, 2.0, 8.0),
                                                  rdo.Segment(tiny_model, 40, 100, 0.3, 8.0)))
    return releases


def test_rd_end_to_end_with_cache(tmp_path, tiny_images, tiny_releases, monkeypatch):
    from benchmarks import rd
    from vqcodec import codec

    monkeypatch.setattr(rd, "VQC_QUALITIES", (0, 20, 40, 70, 100))
    out = tmp_path / "out"
    argv = ["--images", str(tiny_images), "--out", str(out), "--codecs", "vqc,vqc-nn,jpeg420,webp",
            "--quiet", "--no-visual"]
    report = rd.main(argv)
    n_jobs = 2 * (5 + 2 + len(rd.JPEG_QUALITIES) + len(rd.WEBP_QUALITIES))
    assert report["meta"]["run"]["computed"] == n_jobs
    assert not report["errors"]
    for name in ("tinyset.json", "tinyset.md", "rd_tinyset.png"):
        assert (out / name).exists(), name
    data = json.loads((out / "tinyset.json").read_text())
    assert len(data["points"]) == n_jobs
    p = data["points"][0]
    for key in ("codec", "setting", "image", "bytes", "bpp", "psnr", "msssim", "enc_s", "dec_s"):
        assert key in p
    assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (168 * 176))
    for p in data["points"]:
        if p["codec"].startswith("vqc"):  # the real codec's file sizes and decoded pixels
            pixels = np.asarray(Image.open(tiny_images / f"{p['image']}.png").convert("RGB"))
            file = codec.compress(pixels, quality=p["setting"], device="cpu",
                                  effort=0 if p["codec"] == "vqc-nn" else 6)
            assert p["bytes"] == len(file)
            real = np.asarray(codec.decompress(file).convert("RGB"))
            # PSNR from the float decoder on the coded grid: within 0.05 dB of the real decoder's
            assert p["psnr"] == pytest.approx(metrics.psnr(pixels, real), abs=0.05)
    assert "test-tiny-f8" in data["meta"]["codecs"]["vqc"]["fingerprint"]
    vqc = data["vqc"]
    assert {r["anchor"] for r in vqc["bd_rates"]} == {"jpeg420", "webp", "vqc-nn"}
    assert {r["anchor"] for r in vqc["bd_vs_published"]} == set(rd.PUBLISHED)
    assert len(vqc["saved_vs_jpeg420"]) == 5
    for r in vqc["saved_vs_jpeg420"]:
        assert r["n_images"] == 2
        assert r["n_defined"] + len(r["out_of_range"]) == 2
    md = (out / "tinyset.md").read_text()
    assert "saved vs JPEG" in md and "PUBLISHED" in md

    # resume: everything comes from the cache now
    report2 = rd.main(argv)
    assert report2["meta"]["run"]["computed"] == 0
    assert report2["meta"]["run"]["cached"] == n_jobs
    assert report2["averages"] == report["averages"]


def test_rd_skips_vqc_when_import_fails(tmp_path, tiny_images, capsys, monkeypatch):
    import sys

    from benchmarks import rd

    import vqcodec

    monkeypatch.setitem(sys.modules, "vqcodec.codec", None)  # makes `import vqcodec.codec` fail
    monkeypatch.delattr(vqcodec, "codec", raising=False)
    report = rd.main(["--images", str(tiny_images), "--out", str(tmp_path / "o"), "--limit", "1",
                      "--codecs", "vqc,jpeg420", "--quiet", "--no-visual"])
    assert "vqc skipped" in report["meta"]["vqc_note"]
    assert "vqc" not in report
    assert {p["codec"] for p in report["points"]} == {"jpeg420"}
    assert "vqc skipped" in capsys.readouterr().err


def test_classic_codecs_roundtrip():
    from benchmarks import rd

    rng = np.random.default_rng(2)
    px = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name, codec in rd.classic_codecs().items():
        data = codec.encode(px, codec.settings[len(codec.settings) // 2])
        out = codec.decode(data)
        assert out.shape == px.shape and out.dtype == np.uint8, name
        assert len(data) > 0


def test_speed_with_fake_vqc(tmp_path, tiny_images, fake_vqc):
    from benchmarks import speed

    out = tmp_path / "speed.json"
    report = speed.main(["--image", str(tiny_images / "img0.png"), "--runs", "2", "--device", "cpu",
                         "--quality", "all", "--out", str(out), "--vqc-module", fake_vqc, "--no-cli"])
    assert out.exists()
    assert [r["quality"] for r in report["results"]] == [1, 2, 3]
    for r in report["results"]:
        assert r["device"] == "cpu" and r["enc_s"] > 0 and r["dec_s"] > 0
        assert len(r["enc_s_runs"]) == 2
        for op in ("enc_mem", "dec_mem"):
            assert "error" not in r[op], r[op]
            assert r[op]["peak_rss_delta_mib"] >= 0
            if r[op]["peak_source"] == "VmHWM":
                # the stand-in needs a few MiB; the parent's peak (torch imported) must not leak in
                assert r[op]["peak_rss_delta_mib"] < 100
    assert report["machine"]["cores"] >= 1 and "cpu" in report["machine"]
    assert report["cli"] is None  # --no-cli
    for r in report["results"]:
        assert r["busy_dec_s"] > 0 and r["busy_ratio"] == pytest.approx(r["busy_dec_s"] / r["dec_s"])
    first = report["results"][0]
    assert [c["codec"] for c in report["classic"]] == list(speed.CLASSIC)
    for c in report["classic"]:
        assert c["enc_s"] > 0 and c["dec_s"] > 0 and c["psnr"] > 10
        assert c["dec_ratio"] == pytest.approx(first["dec_s"] / c["dec_s"])
        assert c["enc_ratio"] == pytest.approx(first["enc_s"] / c["enc_s"])


# --- benchmarks.crossdevice and benchmarks.large on the tiny model ----------------------------


def test_crossdevice_encode_then_decode_detects_a_changed_file(tmp_path, tiny_images, tiny_model, capsys):
    from benchmarks import crossdevice
    from vqcodec import codec

    out = tmp_path / "files"
    assert crossdevice.main(["encode", "--device", "cpu", "--images", str(tiny_images), "--out", str(out),
                             "--model", tiny_model]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["files"]) == [f"img0.{tiny_model}.vqc", f"img1.{tiny_model}.vqc"]
    for name, want in manifest["files"].items():
        data = (out / name).read_bytes()
        assert want["vqc_sha256"] == hashlib.sha256(data).hexdigest()
        image, grid = codec.decompress_with_grid(data, device="cpu")
        assert want["grid_sha256"] == hashlib.sha256(grid.astype("<i8").tobytes()).hexdigest()
        assert want["pixels_sha256"] == hashlib.sha256(image.tobytes()).hexdigest()
    capsys.readouterr()
    assert crossdevice.main(["decode", "--device", "cpu", "--files", str(out)]) == 0
    assert "2 of 2 files decode to identical index grids and pixels" in capsys.readouterr().out
    # a file whose decode differs from the manifest is reported and fails the run
    (out / f"img0.{tiny_model}.vqc").write_bytes((out / f"img1.{tiny_model}.vqc").read_bytes())
    assert crossdevice.main(["decode", "--device", "cpu", "--files", str(out)]) == 1
    text = capsys.readouterr().out
    assert f"img0.{tiny_model}.vqc: grid DIFFERENT, pixels DIFFERENT" in text
    assert "1 of 2 files" in text


def test_large_on_the_tiny_model(tmp_path, tiny_images, tiny_model, monkeypatch, capsys):
    """The whole benchmark with the tiny model in child processes (found via VQC_MODEL_PATH):
    the mosaic, both CLI runs, peak memory, PSNR per tile grid, the JSON report."""
    from benchmarks import large
    from conftest import tiny_model_bytes
    from vqcodec import codec, metrics

    models = tmp_path / "models"
    models.mkdir()
    (models / f"{tiny_model}.safetensors").write_bytes(tiny_model_bytes())
    monkeypatch.setenv("VQC_MODEL_PATH", str(models))
    out, work = tmp_path / "large.json", tmp_path / "work"
    status = large.main(["--width", "300", "--height", "200", "--model", tiny_model, "--images",
                         str(tiny_images), "--out", str(out), "--workdir", str(work), "--threads", "1",
                         "--rss-method", "proc", "--check-memory-limit", "100000"])
    assert status == 0
    report = json.loads(out.read_text())
    data = (work / "large.vqc").read_bytes()
    assert (report["width"], report["height"], report["model"], report["f"]) == (300, 200, tiny_model, 4)
    assert report["vqc_bytes"] == len(data) and report["bpp"] == pytest.approx(8 * len(data) / 60000, abs=1e-4)
    source = np.asarray(Image.open(work / "large.png").convert("RGB"))
    decoded = np.asarray(codec.decompress(data, device="cpu").convert("RGB"))
    assert np.array_equal(decoded, np.asarray(Image.open(work / "large.dec.png").convert("RGB")))
    assert report["psnr_whole"] == pytest.approx(metrics.psnr(source, decoded), abs=1e-4)
    for grid in report["grids"].values():
        assert grid["period_px"] == 256 and 0 < grid["band_fraction"] < 1
    for step in ("compress", "decompress"):
        # a real peak: Python and its libraries; with the native core (vqcodec.native) the
        # decompress process imports no torch and stays near 40 MiB
        assert report[step]["seconds"] > 0 and 20 < report[step]["peak_rss_mib"] < 100000
    assert report["memory_limit"]["pass"] is True
    assert "PASS" in capsys.readouterr().out


def test_closest_setting_bisects_to_the_nearest_size():
    from benchmarks import speed
    from benchmarks.rd import Codec

    sizes = {q: 100 * q for q in range(1, 21)}
    calls = []

    def encode(px, q):
        calls.append(q)
        return b"x" * sizes[q]

    codec = Codec("fake", "Fake", tuple(sizes), encode, lambda d: None, "", "")
    for target, want in ((1, 1), (349, 3), (351, 4), (1000, 10), (10**6, 20)):
        calls.clear()
        setting, data = speed.closest_setting(codec, None, target)
        assert setting == want and len(data) == sizes[want]
        assert len(calls) <= 7  # bisection, not a sweep
