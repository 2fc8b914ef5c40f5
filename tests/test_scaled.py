"""Coding at a lower resolution (issue 19): the coded-size chunk (format/SPEC.md, "Chunks", type
5), the codec's downscale / upsample path, `vqc compress --scale` and `vqc info`.

Every image is made here (tests/conftest.py's tiny random model, f = 4); ../shared is not needed.
"""

from __future__ import annotations

import dataclasses
import re
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import make_pixels
from vqcodec import codec, container, rdo, upsample, zoo
from vqcodec.errors import VqcFormatError


# ------------------------------------------------------------------------------- helpers


def _spliced(data: bytes, raw_chunks: list[tuple[int, bytes]]) -> bytes:
    """`data` (a file with no chunks and short payloads) with (key, chunk data) pairs put in
    by hand after the chunk count (keys and lengths < 128), CRC updated: files the writer
    refuses to make."""
    f = container.read(data)
    assert not f.chunks and all(len(p) < 128 for p in f.payloads)
    at = len(data) - 4 - sum(1 + len(p) for p in f.payloads)  # just after the chunk count
    assert data[at - 1] == 0
    body = b"".join(bytes([key, len(d)]) + d for key, d in raw_chunks)
    out = data[:at - 1] + bytes([len(raw_chunks)]) + body + data[at:-4]
    return out + zlib.crc32(out).to_bytes(4, "little")


CODED_KEY = container.CHUNK_CODED_SIZE * 2 + 1  # type 5, critical


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return make_pixels(height=24, width=40, channels=3, seed=5)


@pytest.fixture(scope="module")
def plain(tiny_model, pixels) -> bytes:
    """An effort-0 file of the 40x24 image at full size: no chunks, one short payload."""
    return codec.compress(pixels, model=tiny_model, device="cpu", effort=0)


# ------------------------------------------------------------------------------- container


def test_chunk_data_is_two_shortest_varints_width_first():
    assert container.pack_coded_size(72, 96) == bytes([96, 72])
    assert container.pack_coded_size(300, 200) == bytes([0xC8, 0x01, 0xAC, 0x02])
    assert container.unpack_coded_size(bytes([0xC8, 0x01, 0xAC, 0x02]), 400, 400) == (300, 200)
    with pytest.raises(ValueError):
        container.pack_coded_size(0, 5)


@pytest.mark.parametrize("data, problem", [
    (bytes([0, 10]), "not within"),               # coded width 0
    (bytes([10, 0]), "not within"),               # coded height 0
    (bytes([41, 10]), "not within"),              # wider than the 40-pixel display
    (bytes([10, 25]), "not within"),              # taller than the 24-pixel display
    (bytes([4, 24]), "at most 8x upsampling"),    # 40 > 8 * 4
    (bytes([40, 2]), "at most 8x upsampling"),    # 24 > 8 * 2
    (bytes([10, 10, 0]), "1 bytes after"),        # extra byte
    (bytes([0x8A, 0x00, 10]), "over-long"),       # width 10 as a 2-byte varint
    (bytes([10]), "truncated"),                   # height missing
    (b"", "truncated"),
    (bytes([0xFF] * 11), "longer than"),
])
def test_malformed_chunk_is_a_format_error(plain, data, problem):
    bad = _spliced(plain, [(CODED_KEY, data)])
    with pytest.raises(VqcFormatError, match=problem):
        container.read(bad)
    with pytest.raises(VqcFormatError, match=problem):
        codec.decompress(bad, device="cpu")


def test_duplicate_chunk_is_a_format_error(plain):
    bad = _spliced(plain, [(CODED_KEY, bytes([40, 24])), (CODED_KEY, bytes([40, 24]))])
    with pytest.raises(VqcFormatError, match="duplicate coded size chunk"):
        container.read(bad)


def test_coded_size_equal_to_display_is_accepted_as_the_identity(plain):
    same = _spliced(plain, [(CODED_KEY, bytes([40, 24]))])
    f = container.read(same)
    assert container.coded_size(f.header, f.chunks) == (24, 40)
    assert np.array_equal(np.asarray(codec.decompress(same, device="cpu")),
                          np.asarray(codec.decompress(plain, device="cpu")))


def test_critical_bit_is_not_required_for_the_known_type(plain):
    f = container.read(_spliced(plain, [(container.CHUNK_CODED_SIZE * 2, bytes([40, 24]))]))
    assert container.coded_size(f.header, f.chunks) == (24, 40)


def test_without_the_chunk_the_coded_size_is_the_display_size(plain):
    f = container.read(plain)
    assert container.coded_size(f.header, f.chunks) == (24, 40)


def test_a_reader_without_type_5_refuses_the_file_clearly(tiny_model, pixels, monkeypatch):
    data = codec.compress(pixels, model=tiny_model, device="cpu", scale=0.5)
    monkeypatch.setattr(container, "KNOWN_CHUNKS", {k: v for k, v in container.KNOWN_CHUNKS.items()
                                                    if k != container.CHUNK_CODED_SIZE})
    with pytest.raises(VqcFormatError, match="unknown critical chunk type 5: this file needs a newer"):
        container.read(data)


def test_writer_refuses_a_coded_size_larger_than_the_image(plain):
    f = container.read(plain)
    chunk = container.Chunk(container.CHUNK_CODED_SIZE, True, container.pack_coded_size(25, 40))
    with pytest.raises(ValueError, match="not within"):
        container.write(dataclasses.replace(f, chunks=(chunk,)))


# ------------------------------------------------------------------------------- codec


def test_scaled_file_codes_the_coded_size_and_decodes_to_the_display_size(tiny_model, pixels):
    report = codec.compress_report(pixels, model=tiny_model, device="cpu", scale=0.5)
    data, _, coded = report
    assert coded == (12, 20)
    f = container.read(data)
    h = f.header
    assert (h.width, h.height, h.version_minor) == (40, 24, container.VERSION_MINOR_CODED_SIZE)
    assert (h.grid_h, h.grid_w) == (3, 5)  # ceil(12 / 4), ceil(20 / 4)
    chunk = next(c for c in f.chunks if c.type == container.CHUNK_CODED_SIZE)
    assert chunk.critical and chunk.data == bytes([20, 12])
    image, grid = codec.decompress_with_grid(data, device="cpu")
    assert image.mode == "RGB" and image.size == (40, 24)
    # the decoder's pixels at the coded size, then the normative upsampler, exactly
    small = codec.decode_pixels(zoo.load(tiny_model, device="cpu"), grid)[:12, :20]
    assert np.array_equal(np.asarray(image), upsample.upsample(np.ascontiguousarray(small), 24, 40))


def test_tall_gray_image_is_upsampled_across_strips(tiny_model):
    tall = make_pixels(height=600, width=12, channels=1, seed=9)
    data = codec.compress(tall, model=tiny_model, device="cpu", effort=0, scale=0.5)
    image, grid = codec.decompress_with_grid(data, device="cpu")
    assert image.mode == "L" and image.size == (12, 600)
    small = codec.decode_pixels(zoo.load(tiny_model, device="cpu"), grid, gray=True)[:300, :6]
    want = upsample.upsample(np.ascontiguousarray(small), 600, 12)[..., 0]
    assert np.array_equal(np.asarray(image), want)


def test_coded_size_never_needs_more_than_8x_upsampling():
    assert rdo.coded_size(24, 40, 0.125) == (3, 5)
    assert rdo.coded_size(9, 100, 0.125) == (2, 13)  # rounded 1 and 12 are raised to ceil(side / 8)
    assert rdo.coded_size(7, 7, 0.5) == (4, 4)
    container.unpack_coded_size(bytes([13, 2]), 9, 100)  # the smallest allowed: no error
    with pytest.raises(ValueError, match=r"\[1/8, 1\]"):
        rdo.coded_size(24, 40, 0.1)


def test_downscale_is_pillows_lanczos(pixels):
    small = codec.downscale(pixels, 12, 20)
    want = np.asarray(Image.fromarray(pixels).resize((20, 12), Image.Resampling.LANCZOS))
    assert small.shape == (12, 20, 3) and np.array_equal(small, want)
    gray = codec.downscale(pixels[..., :1], 7, 9)
    assert gray.shape == (7, 9, 1)
    assert codec.downscale(pixels, 24, 40) is pixels
    with pytest.raises(ValueError, match="not within"):
        codec.downscale(pixels, 25, 40)


def test_scale_one_and_a_scale_that_rounds_to_the_image_write_todays_bytes(tiny_model, pixels):
    today = codec.compress(pixels, model=tiny_model, device="cpu")
    assert codec.compress(pixels, model=tiny_model, device="cpu", scale=1.0) == today
    assert rdo.coded_size(24, 40, 0.99) == (24, 40)
    assert codec.compress(pixels, model=tiny_model, device="cpu", scale=0.99) == today
    assert container.read(today).header.version_minor == 1


def test_none_takes_the_scale_of_the_quality_plan(tiny_model, pixels, monkeypatch):
    plan = rdo.plan
    monkeypatch.setattr(rdo, "plan", lambda q: dataclasses.replace(plan(q), scale=0.75))
    data, _, coded = codec.compress_report(pixels, 60, model=tiny_model, device="cpu")
    assert coded == (18, 30)
    assert container.coded_size(*_header_and_chunks(data)) == (18, 30)
    explicit = codec.compress(pixels, 60, model=tiny_model, device="cpu", scale=0.5)
    assert container.coded_size(*_header_and_chunks(explicit)) == (12, 20)


def _header_and_chunks(data: bytes):
    f = container.read(data)
    return f.header, f.chunks


def test_gray_with_alpha_keeps_its_alpha_at_full_size_losslessly(tiny_model):
    la = make_pixels(height=24, width=40, channels=2, seed=7)
    la[..., 1] = np.arange(40, dtype=np.uint8)[None, :] * 6  # a real alpha plane
    image = Image.fromarray(la, mode="LA")
    data = codec.compress(image, model=tiny_model, device="cpu", effort=0, scale=0.6)
    f = container.read(data)
    assert container.coded_size(f.header, f.chunks) == (14, 24)
    assert f.header.version_minor == 2 and f.header.mode == container.Mode.L
    out = codec.decompress(data, device="cpu")
    assert out.mode == "LA" and out.size == (40, 24)
    assert np.array_equal(np.asarray(out)[..., 1], la[..., 1])


def test_grid_must_follow_the_coded_size(tiny_model, pixels):
    data = codec.compress(pixels, model=tiny_model, device="cpu", scale=0.5)
    f = container.read(data)
    display_grid = dataclasses.replace(f.header, grid_h=6, grid_w=10)  # ceil(24/4), ceil(40/4)
    bad = container.write(dataclasses.replace(
        f, header=display_grid, payloads=(f.payloads[0],) * display_grid.n_tiles))
    with pytest.raises(VqcFormatError, match=r"does not fit a 20x12 coded image at f=4"):
        codec.decompress(bad, device="cpu")


@pytest.mark.parametrize("scale, error", [(0, ValueError), (1.5, ValueError), (0.12, ValueError),
                                          (float("nan"), ValueError), (-0.5, ValueError),
                                          ("0.5", TypeError), (True, TypeError)])
def test_bad_scale_is_one_clear_error(tiny_model, pixels, scale, error):
    with pytest.raises(error, match="scale"):
        codec.compress(pixels, model=tiny_model, device="cpu", scale=scale)


def test_target_size_search_works_at_a_scale(tiny_model, pixels):
    sizes = [len(codec.compress(pixels, q, model=tiny_model, device="cpu", scale=0.5))
             for q in (0, 100)]
    target = (sizes[0] + sizes[1]) // 2
    data, q, coded = codec.compress_report(pixels, model=tiny_model, device="cpu", size=target,
                                           scale=0.5)
    assert len(data) <= target and 0 <= q < 100 and coded == (12, 20)
    assert codec.decompress(data, device="cpu").size == (40, 24)


# ------------------------------------------------------------------------------- CLI


def test_cli_scale_and_info(tiny_model, tmp_path, pixels):
    from typer.testing import CliRunner

    from vqcodec.cli import app

    src, out = tmp_path / "a.png", tmp_path / "a.vqc"
    Image.fromarray(pixels).save(src)
    runner = CliRunner()
    r = runner.invoke(app, ["compress", str(src), "-o", str(out), "--model", tiny_model,
                            "--scale", "0.5"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["info", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert re.search(r"^format version:\s+1\.2$", r.stdout, re.M)
    assert re.search(r"^coded size:\s+20x12 \(scale 0\.5 x 0\.5, upsampled", r.stdout, re.M)
    assert re.search(r"^latent grid:\s+3x5$", r.stdout, re.M)
    for bad in ("0", "0.1", "1.01", "nan"):
        r = runner.invoke(app, ["compress", str(src), "-o", str(tmp_path / "b.vqc"),
                                "--model", tiny_model, "--scale", bad])
        assert r.exit_code == 2 and "--scale" in r.output
    assert not (tmp_path / "b.vqc").exists()


def test_info_has_no_coded_size_line_for_a_full_size_file(plain):
    from vqcodec.cli import describe

    assert "coded size" not in dict(describe(plain))


# ------------------------------------------------------------------------------- SPEC, reference, vectors

import hashlib  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "format" / "reference"
VECTORS = ROOT / "format" / "vectors"


def _reference(name: str):
    """A module of the reference decoder (format/reference/), imported as its siblings do."""
    if str(REFERENCE) not in sys.path:
        sys.path.insert(0, str(REFERENCE))
    return importlib.import_module(name)


def test_spec_prints_the_tap_table_and_hash_of_the_taps_file():
    spec = (ROOT / "format" / "SPEC.md").read_text()
    rows = re.findall(r"^ {4,5}(\d+):((?: +-?\d+){6})$", spec, re.M)
    assert [int(ph) for ph, _ in rows] == list(range(64))
    assert [tuple(int(v) for v in taps.split()) for _, taps in rows] == list(upsample.TAPS)
    digest = hashlib.sha256((ROOT / "format" / "upsample-taps.txt").read_bytes()).hexdigest()
    assert digest in spec and digest == _reference("decode").TAPS_SHA256


@pytest.mark.parametrize("coded, display, channels", [
    ((1, 1), (5, 7), 1), ((3, 4), (4, 9), 3), ((17, 13), (40, 41), 1), ((2, 2), (2, 3), 3),
    ((36, 48), (48, 64), 3),
    ((300, 20), (700, 45), 1),  # three strips of 256 output rows, sharing source rows
    ((2, 9), (600, 9), 3),      # every strip reads the same two rows; the width is copied
])
def test_reference_upsampler_equals_vqcodecs(coded, display, channels):
    decode = _reference("decode")
    rng = np.random.default_rng(sum(coded + display))
    src = rng.choice(np.array([0, 255, 17, 240], dtype=np.uint8), (*coded, channels))  # clamps
    got = upsample.upsample(src, *display)
    taps = decode.read_taps()
    for k in range(channels):
        want = decode.upsample(src[..., k].astype(np.int64), *display, taps)
        assert np.array_equal(got[..., k], want)


def test_reference_computes_the_pinned_upsampling_values():
    want = json.loads((VECTORS / "intermediate.json").read_text())["upsampling"]
    assert _reference("conformance").upsampling(want) == want
    assert set(want["coded_pixels"]) == {"rgb-64x48.coded-48x36.f4k512-v2.vqc",
                                         "gray-45x31.coded-27x19.f8k1024-v2.vqc",
                                         "gray-45x31.coded-27x19.s4.rvq-f8k1024s4-cpu.vqc"}
    ex = want["example"]  # the input is 0s and 255s: the output clamps at both ends
    src = np.array(ex["src"], dtype=np.uint8)[..., None]
    assert upsample.upsample(src, ex["height"], ex["width"])[..., 0].tolist() == ex["out"]


def test_suite_has_coded_size_vectors_and_broken_files():
    manifest = json.loads((VECTORS / "vectors.json").read_text())
    scaled = {}
    for name in manifest:
        f = container.read((VECTORS / name).read_bytes())
        coded = container.coded_size(f.header, f.chunks)
        chunked = any(c.type == container.CHUNK_CODED_SIZE for c in f.chunks)
        assert chunked == (coded != (f.header.height, f.header.width))
        # vqc writes the highest minor version that applies: 3 with a stages chunk, else 2
        assert f.header.version_minor == (3 if f.header.stages > 1 else 2 if chunked else f.header.version_minor)
        if chunked:
            scaled[name] = (manifest[name]["mode"], coded)
    assert scaled == {"rgb-64x48.coded-48x36.f4k512-v2.vqc": ("RGB", (36, 48)),
                      "gray-45x31.coded-27x19.f8k1024-v2.vqc": ("L", (19, 27)),
                      "gray-45x31.coded-27x19.s4.rvq-f8k1024s4-cpu.vqc": ("L", (19, 27))}
    broken = json.loads((VECTORS / "broken" / "broken.json").read_text())
    coded_faults = {n: v["error"] for n, v in broken.items() if n.startswith("coded-size-")}
    assert len(coded_faults) == 8 and set(coded_faults.values()) == {"format"}
