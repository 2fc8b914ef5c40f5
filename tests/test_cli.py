"""Tests of the `vqc` command-line tool (vqcodec/cli.py).

Everything runs on the CPU with the tiny random model of conftest.py (no trained weights): in
process through typer's CliRunner, and, for real stdin/stdout pipes and a real process exit, through
a subprocess that registers the same model before running the app.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vqcodec import cli, container, zoo
from vqcodec.cli import EXIT_CODES, app

REPO = Path(__file__).resolve().parent.parent

runner = CliRunner()

SUMMARY = re.compile(r"^(?P<src>.+) -> (?P<dst>.+): [\d,]+ bytes -> (?P<out>[\d,]+) bytes, .*"
                     r"(?P<bpp>\d+\.\d+) bpp, \d+\.\d+ s$")


def vqc(*args, input: bytes | None = None):
    """Run the app in process; returns click's Result (stdout, stderr, exit_code)."""
    return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


def assert_error(result, code: int, *needles: str) -> str:
    """Exit `code`, exactly one 'vqc: error:' line on stderr containing `needles`, no traceback,
    nothing on stdout. Returns the error line."""
    assert result.exit_code == code, (result.exit_code, result.output)
    errs = [ln for ln in lines(result.stderr) if ln.startswith("vqc: error:")]
    assert len(errs) == 1, result.stderr
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in errs[0], errs[0]
    return errs[0]


def leftovers(directory: Path) -> list[str]:
    """Temporary files the CLI might have left behind."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def vqc_file(tiny_model, images, tmp_path) -> Path:
    """A valid .vqc of the 40x24 RGB test image (tiny model), in its own directory."""
    d = tmp_path / "vqc"
    d.mkdir()
    out = d / "rgb.vqc"
    r = vqc("compress", images["rgb"], "-o", out, "--model", tiny_model, "--device", "cpu")
    assert r.exit_code == 0, r.output
    return out


# ---------------------------------------------------------------------------------- basics


def test_help_lists_every_exit_code():
    r = vqc("--help")
    assert r.exit_code == 0
    assert "Exit codes" in r.stdout
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"\b{code}\b", r.stdout), code
        assert meaning.split()[0] in r.stdout
    assert {0, 1, 2, 3, 4, 5, 6, 7, 8, 130} <= set(EXIT_CODES)
    assert cli.EXIT_EXISTS == 7 and cli.EXIT_IO == 8


def test_round_trip_default_names_and_summary(tiny_model, images, tmp_path):
    src = images["rgb"]
    before = src.read_bytes()
    r = vqc("compress", src, "--model", tiny_model, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    out = src.with_suffix(".vqc")
    assert out.is_file() and out.read_bytes()[:4] == container.MAGIC
    (summary,) = lines(r.stderr)
    m = SUMMARY.match(summary)
    assert m, summary
    assert m["src"] == str(src) and m["dst"] == str(out)
    assert int(m["out"].replace(",", "")) == out.stat().st_size
    assert float(m["bpp"]) == pytest.approx(8 * out.stat().st_size / (40 * 24), abs=1e-4)
    assert src.read_bytes() == before  # inputs are never modified

    # decompress next to a copy of the .vqc: <stem>.png
    d = tmp_path / "dec"
    d.mkdir()
    copy = d / "rgb.vqc"
    copy.write_bytes(out.read_bytes())
    r = vqc("decompress", copy, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert r.stdout == ""
    (summary,) = lines(r.stderr)
    assert SUMMARY.match(summary), summary
    assert "40x24 RGB" in summary
    with Image.open(d / "rgb.png") as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (40, 24)
    assert leftovers(d) == [] and leftovers(src.parent) == []


def test_grayscale_stays_grayscale(tiny_model, images, tmp_path):
    vqc_path, png = tmp_path / "g.vqc", tmp_path / "g.png"
    assert vqc("compress", images["gray"], "-o", vqc_path, "--model", tiny_model).exit_code == 0
    r = vqc("decompress", vqc_path, "-o", png)
    assert r.exit_code == 0, r.output
    with Image.open(png) as im:
        assert im.mode == "L" and im.size == (40, 24)
    assert container.read(vqc_path.read_bytes()).header.mode == container.Mode.L


def test_rgba_alpha_is_lossless(tiny_model, images, tmp_path):
    vqc_path, png = tmp_path / "a.vqc", tmp_path / "a.png"
    assert vqc("compress", images["rgba"], "-o", vqc_path, "--model", tiny_model).exit_code == 0
    assert vqc("decompress", vqc_path, "-o", png).exit_code == 0
    with Image.open(images["rgba"]) as a, Image.open(png) as b:
        assert b.mode == "RGBA" and b.size == a.size
        assert np.array_equal(np.asarray(a)[:, :, 3], np.asarray(b)[:, :, 3])


def test_info_fields(tiny_model, images, tmp_path):
    vqc_path = tmp_path / "a.vqc"
    assert vqc("compress", images["rgba"], "-o", vqc_path, "--model", tiny_model).exit_code == 0
    data = vqc_path.read_bytes()
    f = container.read(data)
    r = vqc("info", vqc_path)
    assert r.exit_code == 0, r.output
    assert r.stderr == ""
    fields = dict(re.match(r"^([^:]+):\s+(.*)$", ln).groups() for ln in lines(r.stdout))
    model_hash = zoo.load(tiny_model, device="cpu").model_hash.hex()
    assert fields["file"] == str(vqc_path)
    assert fields["format version"] == "1.1"  # 1.1: the file has a quality chunk
    assert fields["model"] == f"{tiny_model} (id {model_hash})"
    assert fields["image"] == "40x24, RGB"
    assert fields["latent grid"] == "6x10"  # f = 4
    assert fields["tiles"].startswith("1 ")
    alpha_len = len(next(c.data for c in f.chunks if c.type == container.CHUNK_ALPHA))
    assert re.fullmatch(rf"alpha \({alpha_len:,} bytes(, critical)?\), quality \(3 bytes\)",
                        fields["chunks"])
    assert fields["quality"] == f"{cli.DEFAULT_QUALITY:g} (effort {cli.DEFAULT_EFFORT})"
    payload = sum(len(p) for p in f.payloads)
    assert fields["payload bytes"] == f"{payload:,}"
    assert fields["container overhead bytes"] == f"{container.overhead_bytes(f):,}"
    assert fields["total bytes"] == f"{len(data):,}" and payload + container.overhead_bytes(f) == len(data)
    assert float(fields["bpp"]) == pytest.approx(8 * len(data) / (40 * 24), abs=1e-4)


def test_info_without_chunks_and_from_stdin(tiny_model, images, tmp_path):
    vqc_file = tmp_path / "nn.vqc"  # effort 0 writes no quality chunk (vqc 0.1's bytes)
    assert vqc("compress", images["rgb"], "-o", vqc_file, "--model", tiny_model,
               "--effort", "0").exit_code == 0
    r = vqc("info", "-", input=vqc_file.read_bytes())
    assert r.exit_code == 0, r.output
    assert re.search(r"^chunks:\s+none$", r.stdout, re.M)
    assert re.search(r"^file:\s+<stdin>$", r.stdout, re.M)


# ------------------------------------------------------------------------------- overwrite


def test_existing_output_is_refused_and_untouched(tiny_model, images, vqc_file):
    out = images["rgb"].with_suffix(".vqc")
    out.write_bytes(b"precious")
    r = vqc("compress", images["rgb"], "--model", tiny_model)
    assert_error(r, 7, str(images["rgb"]), "already exists", "--force")
    assert out.read_bytes() == b"precious"

    png = vqc_file.with_suffix(".png")
    png.write_bytes(b"precious too")
    r = vqc("decompress", vqc_file)
    assert_error(r, 7, "already exists")
    assert png.read_bytes() == b"precious too"
    assert leftovers(out.parent) == [] and leftovers(png.parent) == []


def test_force_overwrites(tiny_model, images, vqc_file):
    out = images["rgb"].with_suffix(".vqc")
    out.write_bytes(b"old")
    r = vqc("compress", images["rgb"], "--model", tiny_model, "--force")
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == vqc_file.read_bytes()  # same input, same model: same bytes

    png = vqc_file.with_suffix(".png")
    png.write_bytes(b"old")
    assert vqc("decompress", vqc_file, "-f").exit_code == 0
    with Image.open(png) as im:
        assert im.size == (40, 24)


def test_output_equal_to_input_is_refused_even_with_force(tiny_model, images, vqc_file):
    before = images["rgb"].read_bytes()
    r = vqc("compress", images["rgb"], "-o", images["rgb"], "--force", "--model", tiny_model)
    assert_error(r, 7, "input")
    assert images["rgb"].read_bytes() == before
    data = vqc_file.read_bytes()
    r = vqc("decompress", vqc_file, "-o", vqc_file, "--force")
    assert_error(r, 7, "input")
    assert vqc_file.read_bytes() == data


def test_same_output_twice_in_one_run_is_refused(tiny_model, images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "rgb.png").write_bytes(images["rgb2"].read_bytes())
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = vqc("compress", images["rgb"], other / "rgb.png", "-o", outdir, "--force",
            "--model", tiny_model)
    assert_error(r, 7, str(other / "rgb.png"), "earlier input")
    assert (outdir / "rgb.vqc").is_file()


# ------------------------------------------------------------------------------ stdin/stdout


def test_stdin_stdout_in_process(tiny_model, images, vqc_file):
    r = vqc("compress", "-", "-o", "-", "--model", tiny_model, input=images["rgb"].read_bytes())
    assert r.exit_code == 0, r.stderr
    assert r.stdout_bytes == vqc_file.read_bytes()
    assert "<stdin> -> <stdout>" in r.stderr and "bpp" in r.stderr

    r = vqc("decompress", "-", input=vqc_file.read_bytes())  # stdin defaults to stdout
    assert r.exit_code == 0, r.stderr
    with Image.open(io.BytesIO(r.stdout_bytes)) as im:
        assert im.format == "PNG" and im.size == (40, 24)


SUBPROCESS_MAIN = """
import sys
from pathlib import Path
from vqcodec import zoo
model = Path(sys.argv.pop(1))
zoo.register(model.read_bytes(), model.stem)
from vqcodec.cli import app
app(prog_name="vqc")
"""


@pytest.fixture
def run_vqc(tiny_model_file):
    """Run the CLI in a fresh Python process, with real pipes, the tiny model registered there
    from the same bytes as in this process (so file model ids agree)."""

    def run(*args, stdin: bytes = b"") -> subprocess.CompletedProcess:
        env = dict(os.environ,
                   PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-c", SUBPROCESS_MAIN, str(tiny_model_file), *map(str, args)]
        return subprocess.run(cmd, input=stdin, capture_output=True, env=env, timeout=120)

    return run


def test_stdin_stdout_pipes_in_a_real_process(run_vqc, images, vqc_file, tmp_path):
    p = run_vqc("compress", "-", "-o", "-", "--model", "test-tiny", "--device", "cpu",
                stdin=images["rgb"].read_bytes())
    assert p.returncode == 0, p.stderr
    assert p.stdout == vqc_file.read_bytes()  # nothing but the .vqc bytes on stdout
    assert b"<stdin> -> <stdout>" in p.stderr

    p = run_vqc("decompress", "-", "-o", "-", "--device", "cpu", stdin=p.stdout)
    assert p.returncode == 0, p.stderr
    via_file = tmp_path / "f.png"
    assert vqc("decompress", vqc_file, "-o", via_file).exit_code == 0
    with Image.open(io.BytesIO(p.stdout)) as a, Image.open(via_file) as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_real_process_error_is_one_line_without_traceback(run_vqc, tmp_path):
    bad = tmp_path / "bad.vqc"
    bad.write_bytes(container.MAGIC + b"\x01\x00garbage")
    p = run_vqc("decompress", bad, "-o", tmp_path / "x.png")
    assert p.returncode == 3
    err = p.stderr.decode()
    assert len(lines(err)) == 1 and err.startswith(f"vqc: error: {bad}: "), err
    assert p.stdout == b""
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------ many inputs


def test_several_inputs_one_bad(tiny_model, images, tmp_path):
    bad = images["rgb"].parent / "bad.png"
    bad.write_text("this is not an image")
    r = vqc("compress", images["rgb"], bad, images["rgb2"], "--model", tiny_model)
    assert_error(r, 4, str(bad), "not a recognised image")
    summaries = [ln for ln in lines(r.stderr) if SUMMARY.match(ln)]
    assert len(summaries) == 2
    assert images["rgb"].with_suffix(".vqc").is_file()
    assert images["rgb2"].with_suffix(".vqc").is_file()
    assert not bad.with_suffix(".vqc").exists()


def test_several_inputs_exit_with_first_error(tiny_model, images, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    missing = tmp_path / "missing.png"
    r = vqc("compress", missing, bad, images["rgb"], "--model", tiny_model)
    assert r.exit_code == 8, r.output
    errs = [ln for ln in lines(r.stderr) if ln.startswith("vqc: error:")]
    assert len(errs) == 2 and str(missing) in errs[0] and str(bad) in errs[1]
    assert images["rgb"].with_suffix(".vqc").is_file()


def test_output_directory_for_several_inputs(tiny_model, images, tmp_path):
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = vqc("compress", images["rgb"], images["gray"], "-o", outdir, "--model", tiny_model)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in outdir.iterdir()) == ["gray.vqc", "rgb.vqc"]
    pngdir = tmp_path / "png"
    pngdir.mkdir()
    r = vqc("decompress", outdir / "rgb.vqc", outdir / "gray.vqc", "-o", pngdir)
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in pngdir.iterdir()) == ["gray.png", "rgb.png"]


# ---------------------------------------------------------------------------- error classes


def _corrupt(data: bytes, how: str) -> bytes:
    if how == "flipped":
        i = len(data) // 2
        return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:]
    if how == "truncated":
        return data[: len(data) - 7]
    if how == "empty":
        return b""
    if how == "not-vqc":
        return b"GIF89a and then some"
    if how == "trailing":
        return data + b"\0"
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["flipped", "truncated", "empty", "not-vqc", "trailing"])
def test_corrupt_vqc_is_exit_3(vqc_file, tmp_path, how):
    bad = tmp_path / f"{how}.vqc"
    bad.write_bytes(_corrupt(vqc_file.read_bytes(), how))
    out = tmp_path / f"{how}.png"
    assert_error(vqc("decompress", bad, "-o", out), 3, str(bad))
    assert not out.exists() and leftovers(tmp_path) == []
    assert_error(vqc("info", bad), 3, str(bad))


@pytest.mark.parametrize("content", [b"", b"plain text, not an image", b"\x89PNG\r\n\x1a\n\0\0"])
def test_non_image_input_is_exit_4(tiny_model, tmp_path, content):
    src = tmp_path / "x.png"
    src.write_bytes(content)
    assert_error(vqc("compress", src, "--model", tiny_model), 4, str(src))
    assert not (tmp_path / "x.vqc").exists()


def test_unknown_model_is_exit_5(vqc_file, tmp_path):
    f = container.read(vqc_file.read_bytes())
    unknown = tmp_path / "unknown.vqc"
    unknown.write_bytes(container.write(dataclasses.replace(
        f, header=dataclasses.replace(f.header, model_name="no-such-model-v9"))))
    assert_error(vqc("decompress", unknown, "-o", tmp_path / "u.png"), 5, "no-such-model-v9")
    # info only reads the container: it works and names the model
    r = vqc("info", unknown)
    assert r.exit_code == 0 and "no-such-model-v9" in r.stdout

    wrong_id = tmp_path / "wrong-id.vqc"
    wrong_id.write_bytes(container.write(dataclasses.replace(
        f, header=dataclasses.replace(f.header, model_hash=bytes(8)))))
    assert_error(vqc("decompress", wrong_id, "-o", tmp_path / "w.png"), 5, "0000000000000000")


def test_unknown_model_on_compress_is_exit_5(images):
    assert_error(vqc("compress", images["rgb"], "--model", "no-such-model-v9"), 5)


def test_max_pixels_is_exit_6(vqc_file, tmp_path):
    out = tmp_path / "x.png"
    assert_error(vqc("decompress", vqc_file, "-o", out, "--max-pixels", 959), 6, "959")
    assert not out.exists()
    assert vqc("decompress", vqc_file, "-o", out, "--max-pixels", 960).exit_code == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_gpu_is_exit_5(images):
    r = vqc("compress", images["rgb"], "--device", "cuda")
    assert r.exit_code == 5 and "cuda" in r.stderr.lower() and "Traceback" not in r.output


def test_missing_input_is_exit_8(tiny_model, tmp_path):
    missing = tmp_path / "missing.png"
    assert_error(vqc("compress", missing, "--model", tiny_model), 8, str(missing), "No such file")
    assert_error(vqc("decompress", tmp_path / "missing.vqc"), 8)
    assert_error(vqc("info", tmp_path / "missing.vqc"), 8)
    assert_error(vqc("compress", tmp_path, "-o", tmp_path / "d.vqc", "--model", tiny_model), 8)


def test_unwritable_output_is_exit_8(tiny_model, images, tmp_path):
    out = tmp_path / "no" / "such" / "dir" / "x.vqc"
    assert_error(vqc("compress", images["rgb"], "-o", out, "--model", tiny_model), 8, str(out))


def test_disk_full_while_writing_leaves_nothing(vqc_file, tmp_path, monkeypatch):
    out = tmp_path / "x.png"
    out.write_bytes(b"previous")

    def failing_save(img, fh):
        fh.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("vqcodec.images.save_png", failing_save)
    assert_error(vqc("decompress", vqc_file, "-o", out, "--force"), 8, os.strerror(errno.ENOSPC))
    assert out.read_bytes() == b"previous"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("args", [
    ["compress", "a.png", "b.png", "-o", "not-a-dir.vqc"],
    ["compress", "-", "a.png"],
    ["compress", "a.png", "--quality", "100.5"],
    ["compress", "a.png", "--quality", "-1"],
    ["compress", "a.png", "--quality", "high"],
    ["compress", "a.png", "--quality", "nan"],
    ["compress", "a.png", "--quality", "50", "--size", "30k"],
    ["compress", "a.png", "--target-bpp", "0.2", "--size", "30k"],
    ["compress", "a.png", "--target-bpp", "0"],
    ["compress", "a.png", "--target-bpp", "nan"],
    ["compress", "a.png", "--size", "0"],
    ["compress", "a.png", "--size", "30q"],
    ["compress", "a.png", "--size", "k"],
    ["compress", "a.png", "--effort", "10"],
    ["compress", "a.png", "--effort", "1.5"],
    ["compress", "a.png", "--device", "tpu"],
    ["decompress", "a.vqc", "--max-pixels", "0"],
    ["compress"],
])
def test_usage_errors_are_exit_2(args):
    r = vqc(*args)
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_keeps_completed_outputs_and_removes_partial(tiny_model, images, monkeypatch):
    from vqcodec import codec

    real = codec.compress
    calls = []

    def compress_then_interrupt(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(codec, "compress", compress_then_interrupt)
    r = vqc("compress", images["rgb"], images["rgb2"], images["gray"], "--model", tiny_model)
    assert r.exit_code == 130
    assert "interrupted" in r.stderr and "Traceback" not in r.output
    d = images["rgb"].parent
    assert images["rgb"].with_suffix(".vqc").is_file()
    assert not images["rgb2"].with_suffix(".vqc").exists()
    assert not images["gray"].with_suffix(".vqc").exists()  # stopped, not continued
    assert leftovers(d) == []


def test_ctrl_c_while_writing_removes_temp_file(vqc_file, tmp_path, monkeypatch):
    def interrupted_save(img, fh):
        fh.write(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("vqcodec.images.save_png", interrupted_save)
    out = tmp_path / "x.png"
    r = vqc("decompress", vqc_file, "-o", out)
    assert r.exit_code == 130 and "interrupted" in r.stderr
    assert not out.exists() and leftovers(tmp_path) == []


# ------------------------------------------------------------------------------ odds and ends


def test_default_quality_matches_the_zoo():
    assert cli.DEFAULT_QUALITY == zoo.DEFAULT_QUALITY
    assert 0 <= cli.DEFAULT_QUALITY <= 100 and cli.DEFAULT_EFFORT in range(10)


def test_quality_effort_and_target_size(tiny_model, images, tmp_path):
    """--quality takes any number, --size a byte count with k/m; info reports the quality."""
    out = tmp_path / "q.vqc"
    r = vqc("compress", images["rgb"], "-o", out, "--model", tiny_model, "-q", "63.5",
            "--effort", "3")
    assert r.exit_code == 0, r.output
    assert "quality 63.5 (effort 3)" in r.stderr
    info = vqc("info", out)
    assert re.search(r"^quality: +63\.5 \(effort 3\)$", info.stdout, re.M), info.stdout
    from vqcodec import codec

    ends = [len(codec.compress(images["rgb"], q, model=tiny_model, device="cpu")) for q in (0, 100)]
    target = (ends[0] + ends[1]) // 2
    sized = tmp_path / "s.vqc"
    r = vqc("compress", images["rgb"], "-o", sized, "--model", tiny_model, "--size", str(target))
    assert r.exit_code == 0, r.output
    assert ends[0] <= sized.stat().st_size <= target < ends[1] and "met" in r.stderr
    r = vqc("compress", images["rgb"], "-o", tmp_path / "t.vqc", "--model", tiny_model,
            "--size", "1k")  # 1024 bytes: more than this tiny image needs at quality 100
    assert r.exit_code == 0 and "quality 100" in r.stderr, r.output
    nn = tmp_path / "nn.vqc"
    assert vqc("compress", images["rgb"], "-o", nn, "--model", tiny_model, "--effort", "0").exit_code == 0
    assert "quality:" not in vqc("info", nn).stdout  # effort 0 writes vqc 0.1's bytes: no chunk


def test_missing_output_directory_is_a_usage_error(images, tmp_path):
    r = vqc("compress", images["rgb"], "-o", f"{tmp_path / 'nodir'}/")
    assert r.exit_code == 2 and not (tmp_path / "nodir").exists()


def test_info_several_files_continues_after_a_bad_one(vqc_file, tmp_path):
    bad = tmp_path / "bad.vqc"
    bad.write_bytes(b"")
    r = vqc("info", vqc_file, bad, vqc_file)
    assert_error(r, 3, str(bad), "empty")
    assert r.stdout.count("format version:") == 2


def test_pillow_debug_logging_stays_quiet(tiny_model, images, tmp_path, caplog):
    pil = logging.getLogger("PIL")
    saved = pil.level
    pil.setLevel(logging.NOTSET)  # as in a fresh process (an earlier run has set it already)
    try:
        caplog.set_level(logging.DEBUG)  # e.g. an application that logs everything
        r = vqc("compress", images["rgb"], "-o", tmp_path / "x.vqc", "--model", tiny_model)
        assert r.exit_code == 0
        assert vqc("decompress", tmp_path / "x.vqc", "-o", tmp_path / "x.png").exit_code == 0
    finally:
        pil.setLevel(saved)
    assert not [rec for rec in caplog.records if rec.name.startswith("PIL")]


def test_unknown_chunks(vqc_file, tmp_path):
    f = container.read(vqc_file.read_bytes())
    optional = tmp_path / "optional.vqc"
    optional.write_bytes(container.write(dataclasses.replace(
        f, chunks=(container.Chunk(77, False, b"future" * 5),))))
    r = vqc("info", optional)
    assert r.exit_code == 0, r.output
    fields = dict(re.match(r"^([^:]+):\s+(.*)$", ln).groups() for ln in lines(r.stdout))
    assert "skipped" in fields["chunks"]
    total = int(fields["total bytes"].replace(",", ""))
    assert total == optional.stat().st_size == (int(fields["payload bytes"].replace(",", ""))
                                                + int(fields["container overhead bytes"].replace(",", "")))
    assert vqc("decompress", optional, "-o", tmp_path / "o.png").exit_code == 0

    critical = tmp_path / "critical.vqc"
    critical.write_bytes(container.write(dataclasses.replace(
        f, chunks=(container.Chunk(77, True, b"future"),))))
    assert_error(vqc("decompress", critical, "-o", tmp_path / "c.png"), 3, "critical")
    assert_error(vqc("info", critical), 3, "critical")
