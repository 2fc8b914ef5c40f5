"""End-to-end tests of vqcodec/codec.py with the tiny random model (conftest `tiny_model`)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

import vqcodec
from conftest import needs_cuda, needs_two_cores, tiny_model_bytes
from vqcodec import codec, container, images, zoo
from vqcodec.errors import VqcFormatError, VqcLimitError, VqcModelError


@pytest.fixture(scope="module")
def model(tiny_model) -> zoo.CodecModel:
    return zoo.load(tiny_model, device="cpu")


def pixels(h, w, c=3, seed=0) -> np.ndarray:
    """Smooth pattern plus noise, uint8 [h, w, c]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    planes = [128 + 100 * np.sin(x / 5 + k) * np.cos(y / 7 - k) for k in range(c)]
    arr = np.stack(planes, -1) + rng.normal(0, 10, (h, w, c))
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def expected_pixels(model, grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """What a decoder must output for `grid`: the integer decoder on the whole grid, cropped."""
    out = model.decoder(torch.from_numpy(grid)[None])[0].permute(1, 2, 0).numpy()
    return out[:h, :w]


def compress(img, name):
    return codec.compress(img, 100, model=name, device="cpu")  # full size, lambda 0: the NN grid


def decompress(data):
    return codec.decompress(data, device="cpu")


# ----------------------------------------------------------------------------------- RGB


def test_rgb_roundtrip_not_multiple_of_f(tiny_model, model):
    h, w = 23, 37
    img = pixels(h, w)
    data = compress(img, tiny_model)
    hd = container.read(data).header
    assert (hd.width, hd.height, hd.mode) == (w, h, container.Mode.RGB)
    assert hd.model_name == tiny_model
    assert hd.model_hash == model.model_hash == hashlib.sha256(tiny_model_bytes()).digest()[:8]
    assert (hd.grid_h, hd.grid_w) == (-(-h // model.f), -(-w // model.f)) == (6, 10)
    assert (hd.tile_h, hd.tile_w) == (model.tile, model.tile)
    out = decompress(data)
    assert out.mode == "RGB" and out.size == (w, h)
    f, grid = codec.decompress_grid(data, device="cpu")
    assert f.header == hd
    # the grid the decoder recovers is exactly the encoder's
    assert np.array_equal(grid, codec.encode_indices(model, images.pad_to_multiple(img, model.f)))
    # and the pixels are the integer decoder's output for that grid
    assert np.array_equal(np.asarray(out), expected_pixels(model, grid, h, w))


def test_top_level_api_and_inputs(tiny_model, tmp_path):
    img = pixels(12, 18, seed=1)
    path = tmp_path / "in.png"
    Image.fromarray(img).save(path)
    from_array = vqcodec.compress(img, model=tiny_model, device="cpu")
    assert vqcodec.compress(path, model=tiny_model, device="cpu") == from_array
    assert vqcodec.compress(Image.fromarray(img), model=tiny_model, device="cpu") == from_array
    assert vqcodec.compress(path.read_bytes(), model=tiny_model, device="cpu") == from_array
    out = vqcodec.decompress(from_array, device="cpu")
    assert out.size == (18, 12)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (4, 4), (5, 3)])
def test_tiny_images(tiny_model, model, shape):
    h, w = shape
    img = pixels(h, w, seed=h * 10 + w)
    data = compress(img, tiny_model)
    out = decompress(data)
    assert out.size == (w, h) and out.mode == "RGB"
    _, grid = codec.decompress_grid(data, device="cpu")
    assert grid.shape == (-(-h // 4), -(-w // 4))
    assert np.array_equal(np.asarray(out), expected_pixels(model, grid, h, w))


def test_deterministic(tiny_model):
    img = pixels(21, 30, seed=3)
    a, b = compress(img, tiny_model), compress(img, tiny_model)
    assert a == b
    first = np.asarray(decompress(a))
    assert np.array_equal(first, np.asarray(decompress(a)))


@needs_two_cores
def test_deterministic_with_two_threads(tiny_model, monkeypatch):
    from vqcodec import intops

    monkeypatch.setattr(intops, "idle_cores", lambda: 64)  # really use 2 threads when busy
    img = pixels(21, 30, seed=3)
    a = compress(img, tiny_model)
    first = np.asarray(decompress(a))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert compress(img, tiny_model) == a
        assert np.array_equal(first, np.asarray(decompress(a)))
    finally:
        torch.set_num_threads(before)


@needs_cuda
def test_file_from_cpu_decodes_identically_on_cuda(tiny_model):
    data = compress(pixels(30, 45, seed=12), tiny_model)
    ref_file, ref_grid = codec.decompress_grid(data, device="cpu")
    _, grid = codec.decompress_grid(data, device="cuda")
    assert np.array_equal(grid, ref_grid)
    out = codec.decompress(data, device="cuda")
    assert np.array_equal(np.asarray(out), np.asarray(decompress(data)))


def test_max_pixels(good_file):
    from vqcodec.errors import VqcLimitError

    with pytest.raises(VqcLimitError):
        codec.decompress(good_file, device="cpu", max_pixels=23 * 37 - 1)
    assert codec.decompress(good_file, device="cpu", max_pixels=23 * 37).size == (37, 23)


def test_icc_profile_and_exif_pass_through(tiny_model):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.fromarray(pixels(10, 12, seed=13))
    exif = Image.Exif()
    exif[0x010E] = "vqc test"  # ImageDescription
    buf = __import__("io").BytesIO()
    img.save(buf, "PNG", icc_profile=icc, exif=exif.tobytes())
    out = decompress(compress(buf.getvalue(), tiny_model))
    assert out.info.get("icc_profile") == icc
    assert out.info.get("exif") and b"vqc test" in out.info["exif"]


def test_multiple_ragged_tiles(tiny_model, model, monkeypatch):
    monkeypatch.setattr(model, "tile", 4)
    h, w = 26, 37  # grid 7 x 10: tiles of 4x4, 4x2, 3x4 and 3x2
    img = pixels(h, w, seed=4)
    data = compress(img, tiny_model)
    hd = container.read(data).header
    assert (hd.tile_h, hd.tile_w) == (4, 4) and hd.n_tiles == 6
    out = decompress(data)
    _, grid = codec.decompress_grid(data, device="cpu")
    assert np.array_equal(grid, codec.encode_indices(model, images.pad_to_multiple(img, model.f)))
    assert np.array_equal(np.asarray(out), expected_pixels(model, grid, h, w))


def test_tiled_pixel_decode_matches_whole_grid(tiny_model, model, monkeypatch):
    monkeypatch.setattr(codec, "PIXEL_TILE", 8)  # 2x2 latent cores, many tiles with halos
    h, w = 30, 41
    data = compress(pixels(h, w, seed=5), tiny_model)
    _, grid = codec.decompress_grid(data, device="cpu")
    assert np.array_equal(np.asarray(decompress(data)), expected_pixels(model, grid, h, w))


# ---------------------------------------------------------------------------- modes


def test_grayscale_stays_grayscale(tiny_model, model):
    gray = pixels(19, 26, c=1, seed=6)[:, :, 0]
    data = compress(Image.fromarray(gray, "L"), tiny_model)
    hd = container.read(data).header
    assert hd.mode == container.Mode.L
    out = decompress(data)
    assert out.mode == "L" and out.size == (26, 19)
    _, grid = codec.decompress_grid(data, device="cpu")
    rgb3 = np.repeat(gray[:, :, None], 3, axis=2)
    assert np.array_equal(grid, codec.encode_indices(model, images.pad_to_multiple(rgb3, model.f)))
    rgb = expected_pixels(model, grid, 19, 26).astype(np.int64)
    assert np.array_equal(np.asarray(out), ((rgb.sum(2) + 1) // 3).astype(np.uint8))


def test_rgba_keeps_alpha_exactly(tiny_model, model):
    rgba = pixels(17, 22, c=4, seed=7)
    rgba[:3, :, 3] = 0
    rgba[-1, -1, 3] = 255
    data = compress(Image.fromarray(rgba, "RGBA"), tiny_model)
    chunks = {c.type for c in container.read(data).chunks}
    assert container.CHUNK_ALPHA in chunks
    out = decompress(data)
    assert out.mode == "RGBA" and out.size == (22, 17)
    arr = np.asarray(out)
    assert np.array_equal(arr[:, :, 3], rgba[:, :, 3])
    _, grid = codec.decompress_grid(data, device="cpu")
    assert np.array_equal(arr[:, :, :3], expected_pixels(model, grid, 17, 22))


def test_gray_with_alpha(tiny_model):
    la = pixels(9, 11, c=2, seed=8)
    out = decompress(compress(Image.fromarray(la, "LA"), tiny_model))
    assert out.mode == "LA"
    assert np.array_equal(np.asarray(out)[:, :, 1], la[:, :, 1])


def test_opaque_alpha_is_not_stored(tiny_model):
    rgba = pixels(8, 8, c=4, seed=9)
    rgba[:, :, 3] = 255
    data = compress(Image.fromarray(rgba, "RGBA"), tiny_model)
    assert container.CHUNK_ALPHA not in {c.type for c in container.read(data).chunks}
    assert decompress(data).mode == "RGB"


# ---------------------------------------------------------------------------- bad files


def rewrite(data: bytes, **header_changes) -> bytes:
    f = container.read(data)
    fields = {k: getattr(f.header, k) for k in f.header.__dataclass_fields__}
    fields.update(header_changes)
    header = container.Header(**fields)
    payloads = f.payloads
    if len(payloads) != header.n_tiles:
        payloads = tuple([b""] * header.n_tiles)
    return container.write(container.VqcFile(header, payloads, f.chunks))


@pytest.fixture(scope="module")
def good_file(tiny_model) -> bytes:
    return compress(pixels(23, 37, seed=10), tiny_model)  # grid 6 x 10


@pytest.mark.parametrize("grid", [(5, 10), (6, 9), (7, 10), (6, 11), (1, 1), (23, 37)])
def test_grid_not_matching_image_size(good_file, grid):
    bad = rewrite(good_file, grid_h=grid[0], grid_w=grid[1])
    with pytest.raises(VqcFormatError, match="does not fit"):
        decompress(bad)


def test_image_size_not_matching_grid(good_file):
    with pytest.raises(VqcFormatError):
        decompress(rewrite(good_file, width=41))  # needs an 11-wide grid
    with pytest.raises(VqcFormatError):
        decompress(rewrite(good_file, height=20))  # needs a 5-high grid
    # any size that needs the same grid is accepted (and cropped to)
    out = decompress(rewrite(good_file, width=38, height=21))
    assert out.size == (38, 21)


def test_prior_tile_too_large(tiny_model):
    data = compress(pixels(4, 8), tiny_model)
    w = 4 * (codec.MAX_PRIOR_TILE + 1)
    bad = rewrite(data, width=w, grid_w=w // 4, tile_h=0, tile_w=0)
    with pytest.raises(VqcLimitError, match="above this decoder's limit"):
        decompress(bad)


def test_wrong_model_hash(good_file):
    with pytest.raises(VqcModelError):
        decompress(rewrite(good_file, model_hash=b"\x01" * 8))


def test_unknown_model(good_file):
    with pytest.raises(VqcModelError, match="unknown model"):
        decompress(rewrite(good_file, model_name="vqc-never-released"))


def test_flipped_byte_fails_crc(good_file):
    bad = bytearray(good_file)
    bad[len(bad) - 8] ^= 0x10
    with pytest.raises(VqcFormatError):
        decompress(bytes(bad))


def test_garbage_payload_with_valid_crc(good_file, model):
    """A crafted file (valid container, one payload not a range-coder stream) decodes to some
    image or raises VqcFormatError, never anything else; the file's other tiles are independent
    streams, so when it decodes they come back exactly. The same file with every payload intact
    must decode (a decoder that refuses everything fails here)."""
    import dataclasses

    from vqcodec import entropy

    f, ref_grid = codec.decompress_grid(good_file, device="cpu")
    header = dataclasses.replace(f.header, tile_h=3, tile_w=5)  # 6 x 10 grid -> 4 tiles
    tiles = header.tile_slices()
    payloads = entropy.encode_grid(model.prior, ref_grid, tiles)
    intact = container.write(container.VqcFile(header, tuple(payloads), f.chunks))
    assert np.array_equal(codec.decompress_grid(intact, device="cpu")[1], ref_grid)
    assert np.array_equal(np.asarray(decompress(intact)), np.asarray(decompress(good_file)))
    rng = np.random.default_rng(0)
    for trial in range(4):
        k = trial % len(tiles)
        p = bytearray(payloads[k])
        for _ in range(3):
            p[int(rng.integers(0, len(p)))] ^= int(rng.integers(1, 256))
        corrupted = tuple(bytes(p) if j == k else q for j, q in enumerate(payloads))
        bad = container.write(container.VqcFile(header, corrupted, f.chunks))
        try:
            _, grid = codec.decompress_grid(bad, device="cpu")
        except VqcFormatError:
            continue
        assert grid.shape == ref_grid.shape and 0 <= grid.min() and grid.max() < model.K
        assert all(np.array_equal(grid[t], ref_grid[t]) for j, t in enumerate(tiles) if j != k)
        assert decompress(bad).size == (37, 23)
