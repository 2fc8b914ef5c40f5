"""Multi-stage codes (architecture "rvq", format 1.3): the stages chunk of the container, range
coding of codes [S, H, W] in the coding order of format/SPEC.md, and the codec paths, with the fake
stage prior of `stage_fakes` (the integer networks plug in at merge: tests marked int8s)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from stage_fakes import FakeCfg, FakeStagePrior
from vqcodec import container, entropy
from vqcodec.errors import VqcFormatError

HEADER = container.Header(model_name="m", model_hash=bytes(8), width=16, height=12,
                          mode=container.Mode.RGB, grid_h=3, grid_w=4, tile_h=0, tile_w=0)


def _file(stages: int, extra=()) -> bytes:
    chunks = tuple(extra) + ((container.stages_chunk(stages),) if stages > 1 else ())
    header = dataclasses.replace(HEADER, stages=stages, version_minor=container.minor_version(chunks))
    return container.write(container.VqcFile(header, (b"\0\0\0\0",), chunks))


def _splice(chunks: list[tuple[int, bytes]]) -> bytes:
    """HEADER's file with hand-made (key, data) chunks (the writer refuses these)."""
    plain = _file(1)
    at = len(plain) - 4 - 5  # chunk count byte is just before the one payload (1 + 4 bytes)
    assert plain[at - 1] == 0
    body = b"".join(bytes([key, len(data)]) + data for key, data in chunks)
    out = plain[:at - 1] + bytes([len(chunks)]) + body + plain[at:-4]
    import zlib
    return out + zlib.crc32(out).to_bytes(4, "little")


KEY = container.CHUNK_STAGES * 2 + 1


# ---------------------------------------------------------------------------------- container


@pytest.mark.parametrize("stages", [1, 2, 8, 16])
def test_stages_round_trip(stages):
    data = _file(stages)
    f = container.read(data)
    assert f.header.stages == stages
    assert f.header.version_minor == (3 if stages > 1 else 0)
    assert [c.type for c in f.chunks] == ([container.CHUNK_STAGES] if stages > 1 else [])
    assert all(c.critical for c in f.chunks)
    assert container.read_summary(data).header.stages == stages


def test_s1_files_unchanged():
    """S = 1: no chunk, header and bytes as before 1.3."""
    assert _file(1) == container.write(container.VqcFile(HEADER, (b"\0\0\0\0",)))


def test_minor_version_highest_applicable():
    cs = container.Chunk(container.CHUNK_CODED_SIZE, True, container.pack_coded_size(12, 16))
    q = container.Chunk(container.CHUNK_QUALITY, False, container.pack_quality(50, 1))
    st = container.stages_chunk(4)
    assert container.minor_version(()) == 0
    assert container.minor_version((q,)) == 1
    assert container.minor_version((q, cs)) == 2
    assert container.minor_version((q, cs, st)) == 3
    assert container.minor_version((st,)) == 3
    f = container.read(_file(4, extra=(cs, q)))
    assert f.header.version_minor == 3 and f.header.stages == 4


@pytest.mark.parametrize("data, message", [
    (b"", "1 bytes|exactly 1"), (b"\x02\x02", "exactly 1"), (b"\x00", "1..16"), (b"\x11", "1..16"),
    (b"\xff", "1..16")])
def test_bad_stages_chunk(data, message):
    with pytest.raises(VqcFormatError, match="bad stages chunk"):
        container.read(_splice([(KEY, data)]))


def test_stages_chunk_of_1_is_accepted():
    """S = 1 written explicitly: a reader accepts it (writers omit it)."""
    assert container.read(_splice([(KEY, b"\x01")])).header.stages == 1
    assert container.read(_splice([(KEY - 1, b"\x05")])).header.stages == 5  # critical bit 0


def test_duplicate_stages_chunk():
    with pytest.raises(VqcFormatError, match="duplicate stages chunk"):
        container.read(_splice([(KEY, b"\x02"), (KEY, b"\x02")]))


def test_writer_checks_stages():
    with pytest.raises(ValueError, match="stages"):  # header and chunks disagree
        container.write(container.VqcFile(dataclasses.replace(HEADER, stages=2), (b"\0\0\0\0",)))
    with pytest.raises(ValueError, match="stages"):
        container.write(container.VqcFile(HEADER, (b"\0\0\0\0",), (container.stages_chunk(3),)))
    with pytest.raises(ValueError, match="stages"):
        container.write(container.VqcFile(dataclasses.replace(HEADER, stages=17), (b"\0\0\0\0",)))
    for bad in (0, 1, 17, True, 2.0):
        with pytest.raises(ValueError):
            container.stages_chunk(bad)


# ---------------------------------------------------------------------------------- range coding


def _codes(S=3, h=9, w=11, K=16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, K, size=(S, h, w))


@pytest.mark.parametrize("S", [1, 2, 3])
def test_encode_decode_codes(S):
    prior = FakeStagePrior()
    codes = _codes(S)
    hd = dataclasses.replace(HEADER, grid_h=9, grid_w=11, tile_h=4, tile_w=5, width=44, height=36)
    payloads = entropy.encode_grid(prior, codes, hd.tile_slices())
    out = entropy.decode_grid(prior, payloads, 9, 11, hd.tiles, stages=S)
    assert out.shape == (S, 9, 11) and out.dtype == np.int64
    np.testing.assert_array_equal(out, codes)


def test_coding_order_is_step_then_stage():
    """Per wavefront step, every stage of the step's positions, stage by stage, rows increasing."""
    prior = FakeStagePrior(FakeCfg(layers=1))
    stage, rows, cols = entropy.coding_order(prior, 3, 3, 2)
    t = cols + 2 * rows
    key = list(zip(t, stage, rows))
    assert key == sorted(key) and len(key) == 18
    assert list(zip(stage[:3], rows[:3], cols[:3])) == [(0, 0, 0), (1, 0, 0), (0, 0, 1)]


def test_decoder_calls_step_per_stage():
    """The decoder sees one callback per (step, stage): the payload is the same stream."""
    prior = FakeStagePrior()
    codes = _codes(2, 4, 5)
    tiles = [(slice(0, 4), slice(0, 5))]
    payload = entropy.encode_grid(prior, codes, tiles)
    calls = []
    real = prior.decode

    def spy(n, h, w, step, stages=1):
        return real(n, h, w, lambda r, c, p: calls.append(len(r)) or step(r, c, p), stages=stages)

    prior.decode = spy
    np.testing.assert_array_equal(entropy.decode_grid(prior, payload, 4, 5, tiles, stages=2), codes)
    assert sum(calls) == codes.size and len(calls) == 2 * len([s for s in prior.schedule(4, 5) if len(s[0])])


def test_fewer_stages_is_a_prefix_of_the_rate():
    """Coding the first S' stages of the same codes costs fewer bits (ideal_bits)."""
    prior = FakeStagePrior()
    codes = _codes(3)
    bits = [entropy.ideal_bits(prior, codes[:s]) for s in (1, 2, 3)]
    assert bits[0] < bits[1] < bits[2]


def test_shape_checks():
    prior = FakeStagePrior()
    tiles = [(slice(0, 3), slice(0, 3))]
    with pytest.raises(ValueError, match=r"\[S, H, W\]"):
        entropy.encode_grid(prior, np.zeros((3, 3), dtype=np.int64), tiles)
    with pytest.raises(ValueError, match=r"\[S, H, W\]"):
        entropy.encode_grid(prior, np.zeros((4, 3, 3), dtype=np.int64), tiles)  # S_max = 3
    with pytest.raises(ValueError, match="stages"):
        entropy.decode_grid(prior, [b"\0" * 8], 3, 3, tiles, stages=4)


def test_batch_budget_scales_with_stages():
    prior = FakeStagePrior(FakeCfg(K=4096))
    assert entropy.decode_batch_size(prior, 64, 64, 4) <= entropy.decode_batch_size(prior, 64, 64, 1)
    assert entropy.decode_batch_size(prior, 64, 64, 16) >= 1


# ---------------------------------------------------------------------------------- codec


FAKE = "test-rvq-fake"


def _fake_model(stages_max: int = 3):
    import torch

    from stage_fakes import FakeStageDecoder
    from vqcodec import zoo
    from vqcodec.rvq import RVQConfig, RVQVAE

    torch.manual_seed(0)
    cfg = RVQConfig(f=4, K=16, D=4, c_lo=8, c_hi=8, n_res=1, stages=stages_max)
    vqvae = RVQVAE(cfg).eval()
    for st in vqvae.quantizer.stages:
        st.codebook.normal_(0, 0.3)
    return zoo.CodecModel(name=FAKE, model_hash=b"fakehash", vqvae=vqvae,
                          prior=FakeStagePrior(FakeCfg(stages=stages_max)),
                          decoder=FakeStageDecoder(4), profile="int8", arch="rvq", stages=stages_max)


@pytest.fixture
def fake_rvq(monkeypatch):
    """The fake rvq model, loadable by name on the CPU (int8s: the real Int8StagePrior and
    Int8StageDecoder replace the fakes once a model file of arch rvq can be built)."""
    from vqcodec import zoo

    model = _fake_model()
    monkeypatch.setitem(zoo._CACHE, (FAKE, "cpu"), model)
    return model


def _pixels(h=20, w=28):
    from conftest import make_pixels
    return make_pixels(h, w, 3, seed=3)


@pytest.mark.parametrize("S", [1, 2, 3, None])
def test_codec_round_trip(fake_rvq, S):
    from vqcodec import codec

    data = codec.compress(_pixels(), model=FAKE, stages=S, device="cpu")
    f, codes = codec.decompress_grid(data, device="cpu")
    want = 3 if S is None else S
    assert f.header.stages == want and codes.shape == (want, 5, 7)
    assert f.header.version_minor == (3 if want > 1 else 0)
    assert not any(c.type == container.CHUNK_QUALITY for c in f.chunks)
    padded = _pixels()  # 20x28: already a multiple of f = 4
    np.testing.assert_array_equal(codes, codec.encode_indices(fake_rvq, padded, want))
    image = codec.decompress(data, device="cpu")
    assert image.size == (28, 20) and image.mode == "RGB"
    expect = fake_rvq.decoder(__import__("torch").from_numpy(codes)[None])[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(image), expect)


def test_codec_more_stages_more_bytes(fake_rvq):
    from vqcodec import codec

    sizes = [len(codec.compress(_pixels(40, 56), model=FAKE, stages=s, device="cpu")) for s in (1, 2, 3)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_codec_prefix_codes(fake_rvq):
    """Greedy residual codes of S stages are the first S of S_max."""
    from vqcodec import codec

    full = codec.encode_indices(fake_rvq, _pixels(), 3)
    np.testing.assert_array_equal(codec.encode_indices(fake_rvq, _pixels(), 2), full[:2])


def test_codec_effort_is_ignored(fake_rvq):
    from vqcodec import codec

    assert (codec.compress(_pixels(), model=FAKE, stages=2, effort=9, device="cpu")
            == codec.compress(_pixels(), model=FAKE, stages=2, effort=0, device="cpu"))


def test_codec_target_picks_stages(fake_rvq):
    from vqcodec import codec

    files = {s: codec.compress(_pixels(40, 56), model=FAKE, stages=s, device="cpu") for s in (1, 2, 3)}
    for s in (1, 2, 3):
        got = codec.compress(_pixels(40, 56), model=FAKE, size=len(files[s]), device="cpu")
        assert got == files[s]
    assert codec.compress(_pixels(40, 56), model=FAKE, size=10, device="cpu") == files[1]


def test_codec_scaled_stages(fake_rvq):
    from vqcodec import codec

    data = codec.compress(_pixels(40, 56), model=FAKE, stages=2, scale=0.5, device="cpu")
    f = container.read(data)
    assert container.coded_size(f.header, f.chunks) == (20, 28) and f.header.stages == 2
    assert f.header.version_minor == 3
    assert codec.decompress(data, device="cpu").size == (56, 40)


def test_codec_stage_argument_errors(fake_rvq, tiny_model):
    from vqcodec import codec

    for bad in (0, 4):
        with pytest.raises(ValueError, match=r"1\.\.3"):
            codec.compress(_pixels(), model=FAKE, stages=bad, device="cpu")
    with pytest.raises(ValueError, match="not both"):
        codec.compress(_pixels(), model=FAKE, stages=2, target_bpp=1.0, device="cpu")
    with pytest.raises(ValueError, match="1 stage"):
        codec.compress(_pixels(), model=tiny_model, stages=2, device="cpu")
    with pytest.raises(ValueError, match="multi-stage"):
        codec.compress(_pixels(), stages=2, device="cpu")
    with pytest.raises(TypeError):
        codec.compress(_pixels(), model=FAKE, stages=2.0, device="cpu")
    codec.compress(_pixels(), model=tiny_model, stages=1, device="cpu")  # S = 1 of a vq model


def test_decode_more_stages_than_the_model(fake_rvq, monkeypatch):
    from vqcodec import codec, zoo

    data = codec.compress(_pixels(), model=FAKE, stages=3, device="cpu")
    monkeypatch.setitem(zoo._CACHE, (FAKE, "cpu"), _fake_model(2))
    with pytest.raises(VqcFormatError, match="file codes 3 stages, model test-rvq-fake has 2"):
        codec.decompress(data, device="cpu")


def test_stages_chunk_on_a_vq_model(tiny_model):
    """A stages chunk with S > 1 in a file of a single-stage model is a format error."""
    from vqcodec import codec

    data = codec.compress(_pixels(), model=tiny_model, effort=0, device="cpu")
    f = container.read(data)
    bad = container.write(container.VqcFile(
        dataclasses.replace(f.header, stages=2), f.payloads, f.chunks + (container.stages_chunk(2),)))
    with pytest.raises(VqcFormatError, match="file codes 2 stages, model test-tiny has 1"):
        codec.decompress(bad, device="cpu")


# ---------------------------------------------------------------------------------- CLI


def _cli(*args):
    from typer.testing import CliRunner

    from vqcodec.cli import app
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _flat(text: str) -> str:
    """A usage error's text without the box typer draws around it (it wraps long lines)."""
    return " ".join(text.replace("│", " ").split())


def _png(tmp_path, h=20, w=28):
    from PIL import Image
    path = tmp_path / "in.png"
    Image.fromarray(_pixels(h, w)).save(path)
    return path


def test_cli_compress_stages_and_info(fake_rvq, tmp_path, monkeypatch):
    monkeypatch.setenv("VQC_NATIVE", "0")  # the fake model is not in the registry the core reads
    src = _png(tmp_path)
    out = tmp_path / "out.vqc"
    r = _cli("compress", src, "-o", out, "--model", FAKE, "--stages", 2, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert "2 stages" in r.stderr
    assert container.read(out.read_bytes()).header.stages == 2
    r = _cli("info", out)
    assert r.exit_code == 0 and "stages" in r.stdout and "2 (indices per latent position)" in r.stdout
    assert "1.3" in r.stdout
    r = _cli("decompress", out, "-o", tmp_path / "out.png", "--device", "cpu")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("args, needle", [
    (("--stages", 4), "1..3 stages, got 4"),
    (("--stages", 0), ">= 1"),
    (("--stages", 2, "-q", 50), "without --quality"),
    (("--stages", 2, "--target-bpp", 1), "without --target-bpp"),
    (("-q", 50), "not --quality"),
])
def test_cli_stage_usage_errors(fake_rvq, tmp_path, args, needle):
    r = _cli("compress", _png(tmp_path), "-o", tmp_path / "o.vqc", "--model", FAKE, "--device", "cpu", *args)
    assert r.exit_code == 2 and needle in _flat(r.stderr), r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "o.vqc").exists()


def test_cli_stages_errors_for_vq_models(tiny_model, tmp_path):
    src = _png(tmp_path)
    r = _cli("compress", src, "-o", tmp_path / "o.vqc", "--model", tiny_model, "--stages", 2, "--device", "cpu")
    assert r.exit_code == 2 and "1..1 stages, got 2" in _flat(r.stderr)
    r = _cli("compress", src, "-o", tmp_path / "o.vqc", "--stages", 2, "--device", "cpu")
    assert r.exit_code == 2 and "needs --model" in _flat(r.stderr)
    r = _cli("compress", src, "-o", tmp_path / "o.vqc", "--model", tiny_model, "--stages", 1, "--device", "cpu")
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------------------------- vectors


def test_generator_makes_rvq_vectors_and_broken_files(fake_rvq):
    """format/vectors/generate.py with an rvq model (here the fake; the released CPU-trained
    model at merge): S = 1, S = S_max and S_max with a coded-size chunk decode, and the broken
    file of S_max + 1 stages is a format error."""
    from pathlib import Path

    from conftest import load_script
    from vqcodec import codec

    gen = load_script(Path(__file__).resolve().parent.parent / "format" / "vectors" / "generate.py",
                      "vqc_generate_rvq")
    makers = gen._rvq_makers(FAKE)
    assert list(makers) == ["rgb-64x48.s1.test-rvq-fake", "rgb-64x48.s3.test-rvq-fake",
                            "gray-45x31.coded-27x19.s3.test-rvq-fake"]
    files = {stem: make() for stem, make in makers.items()}
    stages = [container.read(d).header.stages for d in files.values()]
    assert stages == [1, 3, 3]
    scaled = container.read(files["gray-45x31.coded-27x19.s3.test-rvq-fake"])
    assert container.coded_size(scaled.header, scaled.chunks) == (19, 27)
    assert scaled.header.version_minor == 3
    for data in files.values():
        codec.decompress(data, device="cpu")
    (name, (data, error, _)), = gen.rvq_broken_files(files["rgb-64x48.s3.test-rvq-fake"]).items()
    assert name == "stages-above-model" and error == "format"
    with pytest.raises(VqcFormatError, match="file codes 4 stages"):
        codec.decompress(data, device="cpu")
    assert gen.decoder_output(FAKE)["pixels_shape"] == [8, 12, 3]
