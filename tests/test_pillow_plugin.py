"""Tests of the Pillow plugin (vqcodec/pillow_plugin.py): `Image.open` / `Image.save` of `.vqc`
files with real files (RGB, grayscale, alpha; tiny model), one with a released model, and broken
files."""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

import vqcodec
from vqcodec import codec, container, native, pillow_plugin, rdo


@pytest.fixture
def vqc_files(tiny_model, images, tmp_path):
    """name -> (path of a .vqc written by vqcodec.compress, the image decoded by vqcodec)."""
    out = {}
    for name in ("rgb", "gray", "rgba"):
        data = codec.compress(images[name], model=tiny_model, device="cpu")
        path = tmp_path / f"{name}.vqc"
        path.write_bytes(data)
        out[name] = (path, codec.decompress(data, device="cpu"))
    return out


def test_registered_by_import():
    assert Image.registered_extensions()[".vqc"] == "VQC"
    assert Image.MIME["VQC"] == "image/x-vqc"
    vqcodec.register_pillow()  # idempotent
    assert Image.ID.count("VQC") == 1


@pytest.mark.parametrize("name, mode", [("rgb", "RGB"), ("gray", "L"), ("rgba", "RGBA")])
def test_open_reports_header_then_decodes_on_load(vqc_files, monkeypatch, name, mode):
    path, expected = vqc_files[name]
    calls = []
    real = native.decompress_auto  # the native core when available, else codec.decompress
    monkeypatch.setattr(native, "decompress_auto", lambda *a, **k: calls.append(1) or real(*a, **k))
    with Image.open(path) as im:
        assert (im.format, im.mode, im.size) == ("VQC", mode, (40, 24))
        assert im.get_format_mimetype() == "image/x-vqc"
        assert calls == []  # nothing decoded yet
        im.load()
        assert calls == [1]
        assert np.array_equal(np.asarray(im), np.asarray(expected))
    assert expected.mode == mode


def test_open_from_a_stream_and_bytes(vqc_files):
    path, expected = vqc_files["rgb"]
    with Image.open(io.BytesIO(path.read_bytes())) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(expected))


def test_save_with_quality_and_format(tiny_model, images, tmp_path, monkeypatch):
    """im.save(..., quality=Q, effort=E) passes them to vqcodec.compress (here with the tiny
    model); the bytes are those of vqcodec.compress."""
    seen = []
    real = codec.compress

    def compress(image, quality=vqcodec.DEFAULT_QUALITY, **kwargs):
        seen.append((quality, kwargs.get("effort"), kwargs.get("size")))
        return real(image, quality, model=tiny_model, device="cpu",
                    **{k: v for k, v in kwargs.items() if k != "device"})

    monkeypatch.setattr(codec, "compress", compress)
    src = Image.open(images["rgba"])
    src.save(tmp_path / "a.vqc", quality=12.5, effort=2)
    src.save(tmp_path / "b.bin", format="VQC")
    src.save(tmp_path / "c.vqc", size=150)
    assert seen == [(12.5, 2, None), (vqcodec.DEFAULT_QUALITY, None, None),
                    (vqcodec.DEFAULT_QUALITY, None, 150)]
    assert (tmp_path / "a.vqc").read_bytes() == real(images["rgba"], 12.5, model=tiny_model,
                                                     device="cpu", effort=2)
    assert (tmp_path / "b.bin").read_bytes() == real(images["rgba"], model=tiny_model, device="cpu")
    # the alpha chunk alone is larger than 150 bytes: the smallest file (quality 0) it is
    assert (tmp_path / "c.vqc").read_bytes() == real(images["rgba"], 0, model=tiny_model, device="cpu")
    with Image.open(tmp_path / "a.vqc") as im:
        assert im.mode == "RGBA"
        assert np.array_equal(np.asarray(im)[..., 3], np.asarray(src)[..., 3])  # alpha is lossless


@pytest.mark.parametrize("options", [{"quality": 101}, {"quality": "high"}, {"effort": 12},
                                     {"size": 0}, {"target_bpp": -1.0}])
def test_save_refuses_bad_settings_and_leaves_no_file(images, tmp_path, options):
    with pytest.raises(ValueError, match="quality|effort|target"):
        Image.open(images["rgb"]).save(tmp_path / "x.vqc", **options)
    assert not (tmp_path / "x.vqc").exists()


def test_icc_and_exif_in_info(tiny_model, tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010E] = "a test image"  # ImageDescription
    src = tmp_path / "meta.png"
    Image.new("RGB", (20, 12), (200, 30, 60)).save(src, icc_profile=icc, exif=exif.tobytes())
    path = tmp_path / "meta.vqc"
    path.write_bytes(codec.compress(src, model=tiny_model, device="cpu"))
    with Image.open(path) as im:
        assert im.info["icc_profile"] == icc
        assert im.getexif()[0x010E] == "a test image"


@pytest.mark.parametrize("damage", ["truncated", "crc", "version"])
def test_broken_file_is_unidentified_with_the_vqc_message(vqc_files, tmp_path, damage):
    data = bytearray(vqc_files["rgb"][0].read_bytes())
    if damage == "truncated":
        data = data[:-3]
        message = "truncated"
    elif damage == "crc":
        data[-6] ^= 0x01
        message = "CRC mismatch"
    else:
        data[4] = 9
        message = "unsupported .vqc version 9"
    path = tmp_path / f"{damage}.vqc"
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the file handle is closed, nothing leaks
        with pytest.raises(UnidentifiedImageError, match=message):
            Image.open(path)


class _CountingStream(io.BytesIO):
    """A seekable stream that counts the bytes read from it."""

    bytes_read = 0

    def read(self, n=-1):
        out = super().read(n)
        self.bytes_read += len(out)
        return out


def test_open_reads_no_more_than_the_header_allows(vqc_files):
    """Issue 21, finding 7: Image.open read a whole 500 MB non-.vqc file before failing on its
    byte 6. The header is read first; what follows is bounded by the size it declares."""
    good = vqc_files["rgb"][0].read_bytes()  # 40 x 24
    limit = container.max_file_bytes(40 * 24)
    longer = _CountingStream(good + b"\0" * limit)
    with pytest.raises(UnidentifiedImageError, match=f"more than the {limit} bytes a .vqc of 40x24"):
        Image.open(longer)
    junk = _CountingStream(container.MAGIC + b"\x01\x00\xff" + b"\0" * 10**7)
    with pytest.raises(UnidentifiedImageError, match="model name length 255 is not in 1..32"):
        Image.open(junk)
    for stream in (longer, junk):  # Pillow's own sniffing reads 16 bytes first
        assert stream.bytes_read <= 16 + container.HEADER_MAX_BYTES


def test_verify_checks_the_container_without_decoding(vqc_files, monkeypatch):
    """verify() checks lengths and CRC of the bytes as they are now (here damaged after open),
    decodes nothing, and load() afterwards says to reopen (Pillow's PNG: a bare AssertionError)."""
    monkeypatch.setattr(codec, "decompress", lambda *a, **k: pytest.fail("decoded"))
    monkeypatch.setattr(native, "decompress", lambda *a, **k: pytest.fail("decoded"))
    good = vqc_files["rgb"][0].read_bytes()
    with Image.open(io.BytesIO(good)) as im:
        im.verify()
        with pytest.raises(RuntimeError, match="verify must be called directly after open"):
            im.verify()
        with pytest.raises(OSError, match=r"after verify\(\).*open it again"):
            im.load()
    stream = io.BytesIO(good)
    with Image.open(stream) as im:
        stream.getbuffer()[-6] ^= 0x01  # damaged after it was opened
        with pytest.raises(SyntaxError, match="broken .vqc file: CRC mismatch"):
            im.verify()
    with Image.open(vqc_files["rgb"][0]) as im:  # from a path: verify() closes the file
        fp = im.fp
        im.verify()
        assert fp.closed and im.fp is None


def test_other_formats_unaffected(images):
    with Image.open(images["rgb"]) as im:
        assert im.format == "PNG"
    assert not pillow_plugin._accept(b"\x89PNG\r\n\x1a\n")


def test_missing_model_fails_at_load_with_oserror(tiny_model, images, tmp_path):
    data = codec.compress(images["rgb"], model=tiny_model, device="cpu")
    f = container.read(data)
    hd = f.header
    other = container.Header("test-not-installed", hd.model_hash, hd.width, hd.height, hd.mode,
                             hd.grid_h, hd.grid_w, hd.tile_h, hd.tile_w)
    path = tmp_path / "orphan.vqc"
    path.write_bytes(container.write(container.VqcFile(other, f.payloads, f.chunks)))
    with Image.open(path) as im:
        assert im.size == (40, 24)  # the header alone is fine
        with pytest.raises(OSError, match="unknown model 'test-not-installed'"):
            im.load()


def test_released_model_file_opens_like_any_image(tmp_path):
    """A real photograph through a released model: Image.open -> load -> the codec's pixels."""
    from pathlib import Path

    sample = Path(__file__).parent / "data" / "sample.png"
    src = Image.open(sample)
    src.save(tmp_path / "photo.vqc", quality=1)
    data = (tmp_path / "photo.vqc").read_bytes()
    assert container.read_header(data).model_name == rdo.plan(1).model  # "vqc-f8k1024-v2"
    with Image.open(tmp_path / "photo.vqc") as im:
        assert (im.format, im.mode, im.size) == ("VQC", "RGB", (256, 192))
        pixels = im.tobytes()
    assert hashlib.sha256(pixels).digest() == hashlib.sha256(codec.decompress(data).tobytes()).digest()
