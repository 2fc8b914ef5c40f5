"""Tests for vqcodec.images: every image is built here with numpy + Pillow, nothing is read from disk
outside tmp_path."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms, ImageFile

from vqcodec.errors import VqcFormatError, VqcImageError
from vqcodec.images import (
    MAX_INPUT_PIXELS,
    LoadedImage,
    crop,
    check_alpha_header,
    decode_alpha,
    encode_alpha,
    load_image,
    pad_to_multiple,
    save_png,
    to_pil,
)

RNG = np.random.default_rng(1234)


# ---------------------------------------------------------------------------------------------
# helpers


def rand(shape, dtype=np.uint8, low=0, high=256):
    return RNG.integers(low, high, size=shape, dtype=dtype)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **params)
    return buf.getvalue()


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes | None) -> bytes:
    """A PNG assembled by hand (for what Pillow cannot write: 16-bit RGB, zero or huge sizes)."""
    out = b"\x89PNG\r\n\x1a\n"
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    out += png_chunk(b"IHDR", ihdr)
    if rows is not None:
        out += png_chunk(b"IDAT", zlib.compress(rows))
    return out + png_chunk(b"IEND", b"")


def blocks_rgb(h: int, w: int) -> np.ndarray:
    """Four flat 8-pixel-aligned colour quadrants: survives lossy JPEG/WebP almost exactly."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (200, 30, 40)
    arr[: h // 2, w // 2 :] = (20, 180, 60)
    arr[h // 2 :, : w // 2] = (30, 40, 210)
    arr[h // 2 :, w // 2 :] = (240, 240, 20)
    return arr


def close(a: np.ndarray, b: np.ndarray, tol: int) -> bool:
    return a.shape == b.shape and int(np.abs(a.astype(int) - b.astype(int)).max()) <= tol


def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def check_loaded(img: LoadedImage, h: int, w: int, mode: str) -> None:
    assert img.pixels.dtype == np.uint8
    assert img.pixels.flags.c_contiguous and img.pixels.flags.writeable
    assert img.pixels.shape == (h, w, 1 if mode == "L" else 3)
    assert img.mode == mode
    assert (img.height, img.width) == (h, w)
    if img.alpha is not None:
        assert img.alpha.dtype == np.uint8 and img.alpha.shape == (h, w)
        assert img.alpha.flags.c_contiguous and img.alpha.flags.writeable
        assert img.alpha.min() < 255


# ---------------------------------------------------------------------------------------------
# PNG, all modes


def test_png_rgb_exact(tmp_path):
    arr = rand((13, 17, 3))
    img = load_image(write(tmp_path, "a.png", encode(Image.fromarray(arr), "PNG")))
    check_loaded(img, 13, 17, "RGB")
    assert np.array_equal(img.pixels, arr)
    assert img.alpha is None and img.icc_profile is None and img.exif is None


def test_png_gray_stays_gray(tmp_path):
    arr = rand((9, 11))
    img = load_image(write(tmp_path, "g.png", encode(Image.fromarray(arr), "PNG")))
    check_loaded(img, 9, 11, "L")
    assert np.array_equal(img.pixels[:, :, 0], arr)
    assert img.alpha is None


def test_png_rgba_and_la(tmp_path):
    rgba = rand((8, 10, 4))
    img = load_image(encode(Image.fromarray(rgba), "PNG"))
    check_loaded(img, 8, 10, "RGB")
    assert np.array_equal(img.pixels, rgba[:, :, :3])
    assert np.array_equal(img.alpha, rgba[:, :, 3])

    la = rand((8, 10, 2))
    img = load_image(encode(Image.fromarray(la), "PNG"))
    check_loaded(img, 8, 10, "L")
    assert np.array_equal(img.pixels[:, :, 0], la[:, :, 0])
    assert np.array_equal(img.alpha, la[:, :, 1])


@pytest.mark.parametrize("channels", [2, 4])
def test_opaque_alpha_is_dropped(channels):
    arr = rand((6, 7, channels))
    arr[:, :, -1] = 255
    img = load_image(encode(Image.fromarray(arr), "PNG"))
    assert img.alpha is None
    assert np.array_equal(img.pixels, arr[:, :, :-1])


def test_png_palette_without_transparency_is_rgb():
    palette = rand((256, 3))
    idx = rand((10, 12))
    p = Image.fromarray(idx)
    p = p.convert("P") if p.mode != "P" else p
    p.putpalette(palette.tobytes())
    img = load_image(encode(p, "PNG"))
    check_loaded(img, 10, 12, "RGB")
    assert img.alpha is None
    assert np.array_equal(img.pixels, palette[np.asarray(p)])


def test_png_palette_with_transparency_is_rgba():
    palette = rand((4, 3))
    idx = (np.arange(48).reshape(6, 8) % 4).astype(np.uint8)
    p = Image.frombytes("P", (8, 6), idx.tobytes())
    p.putpalette(palette.tobytes())
    data = encode(p, "PNG", transparency=bytes([255, 0, 128, 255]))  # tRNS: per-index alpha
    img = load_image(data)
    check_loaded(img, 6, 8, "RGB")
    assert np.array_equal(img.pixels, palette[idx])
    assert np.array_equal(img.alpha, np.array([255, 0, 128, 255], np.uint8)[idx])


def test_png_palette_transparency_unused_gives_no_alpha():
    idx = np.zeros((4, 4), np.uint8)  # only index 0 (opaque) used
    p = Image.frombytes("P", (4, 4), idx.tobytes())
    p.putpalette(bytes(range(12)))
    img = load_image(encode(p, "PNG", transparency=bytes([255, 0, 0, 0])))
    assert img.alpha is None and img.mode == "RGB"


def test_png_trns_colour_key_rgb_and_gray():
    arr = rand((5, 6, 3), low=0, high=200)
    arr[1, 2] = (250, 251, 252)
    img = load_image(encode(Image.fromarray(arr), "PNG", transparency=(250, 251, 252)))
    assert img.mode == "RGB" and img.alpha is not None
    expect = np.full((5, 6), 255, np.uint8)
    expect[1, 2] = 0
    assert np.array_equal(img.alpha, expect)

    g = rand((5, 6), low=0, high=200)
    g[4, 5] = 222
    img = load_image(encode(Image.fromarray(g), "PNG", transparency=222))
    assert img.mode == "L"
    expect = np.full((5, 6), 255, np.uint8)
    expect[4, 5] = 0
    assert np.array_equal(img.alpha, expect)
    assert np.array_equal(img.pixels[:, :, 0], g)


def test_png_bilevel_becomes_l():
    bits = rand((7, 9), high=2).astype(bool)
    one = Image.fromarray(bits)
    assert one.mode == "1"
    img = load_image(encode(one, "PNG"))
    check_loaded(img, 7, 9, "L")
    assert np.array_equal(img.pixels[:, :, 0], np.where(bits, 255, 0).astype(np.uint8))


SIXTEEN_BIT_VALUES = np.array(
    [0, 1, 128, 129, 257, 257 + 128, 257 + 129, 32767, 32768, 65278, 65407, 65408, 65535],
    dtype=np.uint16,
)


def expected_8bit(v: np.ndarray) -> np.ndarray:
    return np.round(np.clip(v.astype(np.float64), 0, 65535) / 257).astype(np.uint8)


def test_png_16bit_gray_rounds():
    v = np.concatenate([SIXTEEN_BIT_VALUES, rand((51,), dtype=np.uint16, high=65536)]).reshape(8, 8)
    im = Image.fromarray(v)
    assert im.mode.startswith("I")
    img = load_image(encode(im, "PNG"))
    check_loaded(img, 8, 8, "L")
    assert np.array_equal(img.pixels[:, :, 0], expected_8bit(v))
    # the exact edge cases: 128/257 rounds down, 129/257 rounds up
    assert list(img.pixels[0, :7, 0]) == [0, 0, 0, 1, 1, 1, 2]


def test_png_16bit_rgb_handmade():
    h, w = 3, 4
    v = rand((h, w, 3), dtype=np.uint16, high=65536)
    rows = b"".join(b"\x00" + v[y].astype(">u2").tobytes() for y in range(h))
    img = load_image(raw_png(w, h, 16, 2, rows))
    check_loaded(img, h, w, "RGB")
    # Pillow reads 48-bit RGB as 8-bit by keeping the high byte: within 1 of round(v/257).
    assert close(img.pixels, expected_8bit(v), 1)


def test_animated_png_first_frame():
    frames = [rand((6, 5, 3)) for _ in range(3)]
    ims = [Image.fromarray(f) for f in frames]
    data = encode(ims[0], "PNG", save_all=True, append_images=ims[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = load_image(data)
    assert np.array_equal(img.pixels, frames[0])


# ---------------------------------------------------------------------------------------------
# JPEG


def test_jpeg_rgb_and_gray():
    arr = blocks_rgb(32, 48)
    img = load_image(encode(Image.fromarray(arr), "JPEG", quality=95, subsampling=0))
    check_loaded(img, 32, 48, "RGB")
    assert close(img.pixels, arr, 8)

    g = np.full((16, 24), 77, np.uint8)
    img = load_image(encode(Image.fromarray(g), "JPEG", quality=95, subsampling=0))
    check_loaded(img, 16, 24, "L")
    assert close(img.pixels[:, :, 0], g, 2)


def test_jpeg_cmyk_becomes_rgb():
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:8] = (10, 200, 30, 0)
    cmyk[8:] = (0, 0, 0, 100)
    im = Image.frombytes("CMYK", (16, 16), cmyk.tobytes())
    expect = np.asarray(im.convert("RGB"))
    data = encode(im, "JPEG", quality=95, subsampling=0)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    img = load_image(data)
    check_loaded(img, 16, 16, "RGB")
    assert img.alpha is None
    assert close(img.pixels, expect, 6)


def make_exif(orientation: int) -> bytes:
    ex = Image.Exif()
    ex[0x0112] = orientation
    ex[0x010F] = "vqc-test-camera"  # Make: must survive untouched
    return ex.tobytes()


def test_jpeg_exif_orientation_6_is_applied():
    # Stored 48 wide x 32 high, red block at the stored top-left corner.
    arr = np.full((32, 48, 3), 255, np.uint8)
    arr[:16, :16] = (255, 0, 0)
    raw_exif = make_exif(6)
    img = load_image(encode(Image.fromarray(arr), "JPEG", quality=95, subsampling=0, exif=raw_exif))
    # Orientation 6 = rotate 90 degrees clockwise for display: shape is transposed ...
    check_loaded(img, 48, 32, "RGB")
    # ... and the stored top-left corner ends up at the top-right.
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    assert close(img.pixels[:16, -16:], red, 10)
    assert close(img.pixels[-16:, :16], np.full((16, 16, 3), 255, np.uint8), 10)
    # EXIF is kept, same length, orientation reset to 1, other tags untouched.
    assert img.exif is not None and len(img.exif) == len(raw_exif)
    ex = Image.Exif()
    ex.load(img.exif)
    assert ex[0x0112] == 1 and ex[0x010F] == "vqc-test-camera"


def test_exif_without_orientation_is_kept_verbatim():
    ex = Image.Exif()
    ex[0x010F] = "cam"
    raw = ex.tobytes()
    img = load_image(encode(Image.fromarray(rand((8, 8, 3))), "JPEG", exif=raw))
    assert img.exif == raw
    assert img.pixels.shape == (8, 8, 3)


def test_tiff_orientation_tag_is_applied():
    arr = rand((4, 6, 3))
    data = encode(Image.fromarray(arr), "TIFF", tiffinfo={0x0112: 8})  # 8 = rotate 90 CCW to show
    img = load_image(data)
    assert np.array_equal(img.pixels, np.rot90(arr, 1))


# ---------------------------------------------------------------------------------------------
# WebP, TIFF, BMP, GIF


def test_webp_lossless_rgb_rgba_and_gray():
    arr = rand((10, 14, 3))
    img = load_image(encode(Image.fromarray(arr), "WEBP", lossless=True))
    check_loaded(img, 10, 14, "RGB")
    assert np.array_equal(img.pixels, arr)

    rgba = rand((10, 14, 4))
    img = load_image(encode(Image.fromarray(rgba), "WEBP", lossless=True, exact=True))
    assert np.array_equal(img.pixels, rgba[:, :, :3])
    assert np.array_equal(img.alpha, rgba[:, :, 3])

    # WebP has no grayscale mode: a gray picture comes back as RGB with equal channels.
    g = rand((6, 6))
    img = load_image(encode(Image.fromarray(g), "WEBP", lossless=True))
    assert img.mode == "RGB"
    assert np.array_equal(img.pixels, np.repeat(g[:, :, None], 3, axis=2))


def test_webp_lossy():
    arr = blocks_rgb(32, 32)
    img = load_image(encode(Image.fromarray(arr), "WEBP", quality=95))
    check_loaded(img, 32, 32, "RGB")
    assert close(img.pixels[2:14, 2:14], arr[2:14, 2:14], 12)


def test_animated_webp_first_frame():
    frames = [rand((6, 5, 3)) for _ in range(3)]
    ims = [Image.fromarray(f) for f in frames]
    data = encode(ims[0], "WEBP", save_all=True, append_images=ims[1:], lossless=True, duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = load_image(data)
    assert np.array_equal(img.pixels, frames[0])


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_tiff_modes(channels):
    arr = rand((7, 5, channels)) if channels > 1 else rand((7, 5))
    img = load_image(encode(Image.fromarray(arr), "TIFF"))
    arr3 = arr if arr.ndim == 3 else arr[:, :, None]
    colour = 3 if channels >= 3 else 1
    assert img.mode == ("RGB" if colour == 3 else "L")
    assert np.array_equal(img.pixels, arr3[:, :, :colour])
    if channels in (2, 4):
        assert np.array_equal(img.alpha, arr3[:, :, -1])
    else:
        assert img.alpha is None


def test_tiff_16bit_and_32bit_int_gray():
    v = np.concatenate([SIXTEEN_BIT_VALUES, rand((3,), dtype=np.uint16, high=65536)]).reshape(4, 4)
    img = load_image(encode(Image.fromarray(v), "TIFF"))
    assert img.mode == "L" and np.array_equal(img.pixels[:, :, 0], expected_8bit(v))

    i32 = np.array([[-5, 0, 257, 65535], [70000, 129, 128, 2**31 - 1]], dtype=np.int32)
    im = Image.fromarray(i32)
    assert im.mode == "I"
    img = load_image(encode(im, "TIFF"))
    assert img.mode == "L"
    assert np.array_equal(img.pixels[:, :, 0], expected_8bit(i32))  # clipped to 0..65535 first


def test_tiff_cmyk_exact():
    cmyk = rand((5, 6, 4))
    im = Image.frombytes("CMYK", (6, 5), cmyk.tobytes())
    img = load_image(encode(im, "TIFF"))
    assert img.mode == "RGB"
    assert np.array_equal(img.pixels, np.asarray(im.convert("RGB")))


def test_tiff_multipage_first_page():
    pages = [rand((4, 4, 3)) for _ in range(2)]
    ims = [Image.fromarray(p) for p in pages]
    img = load_image(encode(ims[0], "TIFF", save_all=True, append_images=ims[1:]))
    assert np.array_equal(img.pixels, pages[0])


def test_float_tiff_is_refused(tmp_path):
    im = Image.frombytes("F", (3, 2), np.linspace(0, 1, 6, dtype=np.float32).tobytes())
    path = write(tmp_path, "f.tif", encode(im, "TIFF"))
    assert_image_error(path, "f.tif", "unsupported pixel mode F")


def test_lab_becomes_srgb():
    img = load_image(Image.new("LAB", (2, 2), (128, 128, 128)))  # L* = 50, a* = b* = 0
    assert img.mode == "RGB" and close(img.pixels, np.full((2, 2, 3), 119, np.uint8), 2)


def test_bmp_rgb_gray_bilevel():
    arr = rand((5, 9, 3))
    img = load_image(encode(Image.fromarray(arr), "BMP"))
    assert img.mode == "RGB" and np.array_equal(img.pixels, arr)

    g = rand((5, 9))
    img = load_image(encode(Image.fromarray(g), "BMP"))
    assert img.mode == "L" and np.array_equal(img.pixels[:, :, 0], g)

    bits = rand((5, 9), high=2).astype(bool)
    img = load_image(encode(Image.fromarray(bits), "BMP"))
    assert img.mode == "L"
    assert np.array_equal(img.pixels[:, :, 0], np.where(bits, 255, 0).astype(np.uint8))


def few_colours(h: int, w: int, seed: int) -> np.ndarray:
    palette = np.random.default_rng(seed).integers(0, 256, (4, 3), dtype=np.uint8)
    return palette[(np.arange(h * w).reshape(h, w) + seed) % 4]


def test_gif_palette_and_transparency():
    arr = few_colours(6, 7, 0)
    img = load_image(encode(Image.fromarray(arr), "GIF"))
    check_loaded(img, 6, 7, "RGB")
    assert img.alpha is None
    assert np.array_equal(img.pixels, arr)

    idx = (np.arange(42).reshape(6, 7) % 3).astype(np.uint8)
    p = Image.frombytes("P", (7, 6), idx.tobytes())
    p.putpalette(bytes([10, 20, 30, 40, 50, 60, 70, 80, 90]))
    img = load_image(encode(p, "GIF", transparency=1))
    assert img.mode == "RGB" and img.alpha is not None
    assert np.array_equal(img.alpha, np.where(idx == 1, 0, 255).astype(np.uint8))
    opaque = idx != 1
    palette = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90]], np.uint8)
    assert np.array_equal(img.pixels[opaque], palette[idx][opaque])


def test_animated_gif_first_frame():
    frames = [few_colours(8, 6, s) for s in range(3)]
    ims = [Image.fromarray(f) for f in frames]
    data = encode(ims[0], "GIF", save_all=True, append_images=ims[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    img = load_image(data)
    assert np.array_equal(img.pixels, frames[0])


# ---------------------------------------------------------------------------------------------
# sizes, sources, metadata


@pytest.mark.parametrize("h,w", [(1, 1), (1, 37), (37, 1)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_tiny_sizes(fmt, h, w):
    arr = np.full((h, w, 3), (10, 120, 230), np.uint8)
    params = {"lossless": True} if fmt == "WEBP" else {}
    img = load_image(encode(Image.fromarray(arr), fmt, **params))
    check_loaded(img, h, w, "RGB")
    assert close(img.pixels, arr, 0 if fmt in ("PNG", "WEBP", "BMP", "TIFF", "GIF") else 6)


def test_all_source_kinds(tmp_path):
    arr = rand((4, 5, 3))
    data = encode(Image.fromarray(arr), "PNG")
    path = write(tmp_path, "s.png", data)
    with open(path, "rb") as fh:
        from_file = load_image(fh)
    lazy = Image.open(path)  # opened, not yet loaded
    sources = [str(path), path, data, bytearray(data), io.BytesIO(data), lazy, Image.fromarray(arr)]
    for img in [from_file] + [load_image(s) for s in sources]:
        assert np.array_equal(img.pixels, arr)
    lazy.close()


def test_pil_image_source_not_closed():
    im = Image.fromarray(rand((3, 3, 3)))
    load_image(im)
    assert im.size == (3, 3) and im.getpixel((0, 0)) is not None


def test_icc_profile_kept_when_it_fits(tmp_path):
    icc = srgb_icc()
    arr = rand((4, 4, 3))
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF"):
        img = load_image(encode(Image.fromarray(arr), fmt, icc_profile=icc))
        assert img.icc_profile == icc, fmt
    # An RGB profile on a grayscale image is dropped rather than carried into a wrong PNG.
    img = load_image(encode(Image.fromarray(rand((4, 4))), "PNG", icc_profile=icc))
    assert img.mode == "L" and img.icc_profile is None


def test_png_exif_is_kept():
    raw = make_exif(1)
    img = load_image(encode(Image.fromarray(rand((4, 4, 3))), "PNG", exif=raw))
    ex = Image.Exif()
    ex.load(img.exif)
    assert ex[0x010F] == "vqc-test-camera" and ex[0x0112] == 1


# ---------------------------------------------------------------------------------------------
# errors


def assert_image_error(source, *fragments: str) -> VqcImageError:
    with pytest.raises(VqcImageError) as info:
        load_image(source)
    msg = str(info.value)
    assert msg.startswith("cannot read image ") and "\n" not in msg
    for frag in fragments:
        assert frag in msg, msg
    return info.value


def test_not_an_image(tmp_path):
    path = write(tmp_path, "x.png", b"hello, this is not an image")
    assert_image_error(path, "'", "x.png", "not a recognised")
    assert_image_error(b"\x00" * 100, "<bytes>")
    assert_image_error(io.BytesIO(rand((500,)).tobytes()), "<stream>")


def test_empty_inputs(tmp_path):
    assert_image_error(write(tmp_path, "e.png", b""), "e.png", "empty file")
    assert_image_error(b"", "empty file")
    assert_image_error(io.BytesIO(b""), "empty file")


def test_missing_path_and_directory(tmp_path):
    assert_image_error(tmp_path / "nope.png", "nope.png", "no such file")
    with pytest.raises(VqcImageError):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(tmp_path, fmt):
    data = encode(Image.fromarray(rand((64, 64, 3))), fmt)
    path = write(tmp_path, "t." + fmt.lower(), data[: len(data) // 2])
    assert_image_error(path, "t." + fmt.lower(), "truncated file")


def test_png_cut_inside_header_and_corrupt_idat():
    data = encode(Image.fromarray(rand((16, 16, 3))), "PNG")
    assert_image_error(data[:40])
    bad = bytearray(data)
    idat = data.index(b"IDAT")
    for i in range(idat + 8, idat + 40):
        bad[i] ^= 0x5A
    assert_image_error(bytes(bad))


def test_zero_size():
    assert_image_error(Image.new("RGB", (0, 5)), "zero size")
    assert_image_error(raw_png(0, 5, 8, 0, b""))


def test_pixel_cap_checked_from_header(monkeypatch):
    # 20000 x 20000 = 400 Mpx > 268 Mpx: refused before anything is decoded (there is no IDAT),
    # also where the application has switched Pillow's own guard off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    err = assert_image_error(raw_png(20000, 20000, 8, 0, None), "too large")
    assert str(MAX_INPUT_PIXELS) in str(err)
    with pytest.raises(VqcImageError, match="too large"):
        load_image(Image.new("L", (10, 10)), max_pixels=99)
    assert load_image(Image.new("L", (10, 10)), max_pixels=100).pixels.shape == (10, 10, 1)


def test_pillow_bomb_limit_applies_and_is_reported_with_both_limits(monkeypatch):
    # 14000 x 14000 = 196 Mpx: within vqc's cap but above Pillow's default hard limit (~179 Mpx),
    # which vqc leaves as the application set it (issue 21, finding 7).
    before = Image.MAX_IMAGE_PIXELS
    err = assert_image_error(raw_png(14000, 14000, 1, 0, None), "too large")
    assert f"{2 * before:,} pixels Pillow's decompression-bomb guard allows" in str(err)
    assert f"vqc's limit is {MAX_INPUT_PIXELS:,}" in str(err)
    assert Image.MAX_IMAGE_PIXELS == before
    # an application that raises Pillow's limit gets vqc's own cap: the header is accepted and
    # the file fails only because its pixel data is missing
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", MAX_INPUT_PIXELS)
    err = assert_image_error(raw_png(14000, 14000, 1, 0, None))
    assert "too large" not in str(err)
    assert Image.MAX_IMAGE_PIXELS == MAX_INPUT_PIXELS


def test_loads_never_change_pillow_settings_seen_from_another_thread():
    """Issue 21, finding 7: vqc raised Image.MAX_IMAGE_PIXELS for the whole process during its
    loads, so a 225 Mpx PNG opened by another thread meanwhile escaped Pillow's bomb guard."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    small = encode(Image.fromarray(rand((32, 32, 3))), "PNG")
    bomb = raw_png(15000, 15000, 1, 0, None)  # 225 Mpx
    stop, guarded, escaped = threading.Event(), [], []

    def other_thread():
        while not stop.is_set():
            try:
                Image.open(io.BytesIO(bomb)).close()
                escaped.append(1)
            except Image.DecompressionBombError:
                guarded.append(1)

    watcher = threading.Thread(target=other_thread)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            shapes = list(pool.map(lambda _: load_image(small).pixels.shape, range(200)))
    finally:
        stop.set()
        watcher.join()
    assert shapes == [(32, 32, 3)] * 200
    assert escaped == [] and len(guarded) > 0
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    assert after == before


def test_eps_is_refused():
    data = encode(Image.fromarray(rand((4, 4, 3))), "EPS")
    assert_image_error(data, "EPS")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=4),
)
def test_damaged_files_raise_only_vqc_errors(fmt, cut, flips):
    data = bytearray(_FUZZ_SEEDS[fmt])
    for pos, x in flips:
        data[min(int(pos * len(data)), len(data) - 1)] ^= x
    data = bytes(data[: int(cut * len(data))])
    try:
        img = load_image(data)
    except VqcImageError:
        return
    assert img.pixels.dtype == np.uint8 and img.pixels.ndim == 3


_FUZZ_SEEDS = {
    fmt: encode(Image.fromarray(few_colours(12, 10, 1)), fmt)
    for fmt in ["PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF"]
}


# ---------------------------------------------------------------------------------------------
# to_pil / save_png


@pytest.mark.parametrize(
    "channels,with_alpha,mode",
    [(1, False, "L"), (1, True, "LA"), (3, False, "RGB"), (3, True, "RGBA")],
)
def test_to_pil_and_save_png_round_trip(tmp_path, channels, with_alpha, mode):
    pixels = rand((6, 9, channels))
    alpha = rand((6, 9), high=255) if with_alpha else None  # < 255 somewhere, so it is kept
    icc = srgb_icc() if channels == 3 else None
    exif = make_exif(1)
    im = to_pil(pixels, alpha, icc_profile=icc, exif=exif)
    assert im.mode == mode and im.size == (9, 6)
    path = tmp_path / "out.png"
    save_png(im, path)
    buf = io.BytesIO()
    save_png(im, buf)
    assert buf.getvalue() == path.read_bytes()
    with Image.open(path) as check:
        assert check.format == "PNG"
    back = load_image(path)
    assert np.array_equal(back.pixels, pixels)
    assert (back.alpha is None) == (alpha is None)
    if alpha is not None:
        assert np.array_equal(back.alpha, alpha)
    assert back.icc_profile == icc
    ex = Image.Exif()
    ex.load(back.exif)
    assert ex[0x010F] == "vqc-test-camera"


def test_save_png_without_metadata_and_other_extension(tmp_path):
    arr = rand((3, 4, 3))
    path = tmp_path / "out.jpg"  # the extension does not pick the format
    save_png(to_pil(arr), path)
    with Image.open(path) as check:
        assert check.format == "PNG"
    back = load_image(path)
    assert np.array_equal(back.pixels, arr) and back.icc_profile is None and back.exif is None


def test_to_pil_accepts_2d_and_rejects_bad_input():
    assert to_pil(rand((3, 4))).mode == "L"
    with pytest.raises(ValueError):
        to_pil(rand((3, 4, 3)).astype(np.float32))
    with pytest.raises(ValueError):
        to_pil(rand((3, 4, 2)))
    with pytest.raises(ValueError):
        to_pil(rand((3, 4, 3)), alpha=rand((4, 3)))
    with pytest.raises(ValueError):
        to_pil(np.zeros((0, 4, 3), np.uint8))


# ---------------------------------------------------------------------------------------------
# alpha coding


@settings(max_examples=40, deadline=None)
@given(
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    seed=st.integers(0, 2**32 - 1),
    levels=st.sampled_from([2, 3, 256]),
)
def test_alpha_round_trip(h, w, seed, levels):
    steps = np.random.default_rng(seed).integers(0, levels, (h, w))
    alpha = (steps * (255 // (levels - 1))).astype(np.uint8)
    data = encode_alpha(alpha)
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    out = decode_alpha(data, w, h)
    assert out.dtype == np.uint8 and out.shape == (h, w)
    assert np.array_equal(out, alpha)


def test_encode_alpha_is_plain_png_l():
    data = encode_alpha(np.full((5, 7), 128, np.uint8))
    im = Image.open(io.BytesIO(data))
    assert im.mode == "L" and im.size == (7, 5)
    chunks, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append(data[pos + 4 : pos + 8])
        pos += 12 + n
    assert set(chunks) == {b"IHDR", b"IDAT", b"IEND"}
    with pytest.raises(ValueError):
        encode_alpha(np.zeros((2, 2, 1), np.uint8))
    with pytest.raises(ValueError):
        encode_alpha(np.zeros((2, 2), np.uint16))


def test_decode_alpha_rejects_bad_data():
    alpha = rand((6, 5))
    good = encode_alpha(alpha)
    bad_inputs = {
        "wrong size": (good, 6, 5),
        "garbage": (b"not a png at all", 5, 6),
        "empty": (b"", 5, 6),
        "truncated": (good[: len(good) // 2], 5, 6),
        "rgb png": (encode(Image.fromarray(rand((6, 5, 3))), "PNG"), 5, 6),
        "jpeg": (encode(Image.fromarray(alpha), "JPEG"), 5, 6),
        "16-bit png": (encode(Image.fromarray(alpha.astype(np.uint16)), "PNG"), 5, 6),
    }
    for label, (data, w, h) in bad_inputs.items():
        with pytest.raises(VqcFormatError):
            decode_alpha(data, w, h)
            pytest.fail(label)
    # Sizes are checked from the header, before any pixel buffer is allocated.
    with pytest.raises(VqcFormatError, match="expected 5x6"):
        decode_alpha(raw_png(20000, 20000, 8, 0, None), 5, 6)
    with pytest.raises(VqcFormatError):
        decode_alpha(raw_png(50000, 50000, 8, 0, None), 5, 6)


def test_alpha_plane_may_exceed_pillows_bomb_limit_only_in_the_header_check(monkeypatch):
    """The alpha PNG's size is bounded by the container header, not by Pillow's process-wide
    guard: a plane as large as the .vqc's image passes the header check whatever that guard is."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    check_alpha_header(raw_png(20, 10, 8, 0, None), 20, 10)  # 200 px > 2 x 100: still fine
    alpha = rand((10, 20))
    assert np.array_equal(decode_alpha(encode_alpha(alpha), 20, 10), alpha)


@pytest.mark.parametrize("frames", [1, 2])
def test_animated_alpha_png_is_refused(frames):
    """format/SPEC.md, "Chunks": the alpha chunk holds one still PNG; an APNG (acTL chunk) is a
    format error even with one frame, so no reader has to choose between its frames."""
    plane = Image.fromarray(rand((3, 4)))
    buf = io.BytesIO()
    plane.save(buf, "PNG", save_all=True, append_images=[plane.point(lambda v: 255 - v)])
    apng = buf.getvalue()
    if frames == 1:  # the same still PNG with an acTL chunk of one frame after its IHDR
        still = encode(plane, "PNG")
        apng = still[:33] + png_chunk(b"acTL", struct.pack(">II", 1, 0)) + still[33:]
    assert b"acTL" in apng and Image.open(io.BytesIO(apng)).mode == "L"
    for check in (check_alpha_header, decode_alpha):
        with pytest.raises(VqcFormatError, match="alpha plane PNG is animated"):
            check(apng, 4, 3)


# ---------------------------------------------------------------------------------------------
# pad / crop


@settings(max_examples=80, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    c=st.sampled_from([None, 1, 3]),
    multiple=st.integers(1, 17),
    seed=st.integers(0, 2**32 - 1),
)
def test_pad_crop_round_trip(h, w, c, multiple, seed):
    shape = (h, w) if c is None else (h, w, c)
    x = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    p = pad_to_multiple(x, multiple)
    ph, pw = p.shape[:2]
    assert p.dtype == x.dtype and p.shape[2:] == x.shape[2:]
    assert ph % multiple == 0 and pw % multiple == 0
    assert h <= ph < h + multiple and w <= pw < w + multiple
    assert np.array_equal(p[:h, :w], x)
    assert np.array_equal(p[h:, :w], np.broadcast_to(x[h - 1 : h, :], p[h:, :w].shape))
    assert np.array_equal(p[:, w:], np.broadcast_to(p[:, w - 1 : w], p[:, w:].shape))
    assert np.array_equal(crop(p, h, w), x)


def test_pad_and_crop_reject_bad_arguments():
    x = rand((4, 6, 3))
    assert pad_to_multiple(x, 1).shape == x.shape
    assert pad_to_multiple(x, 8).shape == (8, 8, 3)
    for m in (0, -2):
        with pytest.raises(ValueError):
            pad_to_multiple(x, m)
    with pytest.raises(ValueError):
        pad_to_multiple(np.zeros((0, 3, 3), np.uint8), 4)
    for hh, ww in ((5, 6), (4, 7), (0, 6), (4, 0)):
        with pytest.raises(ValueError):
            crop(x, hh, ww)
    assert np.shares_memory(crop(x, 2, 3), x)


def test_loaded_image_mode_property():
    assert LoadedImage(np.zeros((2, 2, 1), np.uint8), None, None, None).mode == "L"
    assert LoadedImage(np.zeros((2, 2, 3), np.uint8), None, None, None).mode == "RGB"
