"""Image I/O for vqc: read common image files into uint8 arrays, write PNG, code alpha losslessly.

The codec works on ``uint8`` arrays of shape ``(H, W, 3)`` (colour) or ``(H, W, 1)`` (grayscale).
:func:`load_image` turns whatever Pillow can read (PNG, JPEG, WebP, TIFF, BMP, GIF are the formats
the tests cover) into that form, together with the metadata worth carrying through a round trip:
an alpha plane (kept only when it is not fully opaque), the ICC profile and the EXIF block.

Conventions:

* Grayscale stays grayscale ("L", one channel); everything else becomes RGB. Palette images become
  RGB (or RGBA when they carry transparency), CMYK becomes RGB by Pillow's plain conversion, 16-bit
  grayscale becomes 8-bit by ``round(value / 257)``, bilevel ("1") becomes L with values 0/255.
  CIE L*a*b* becomes sRGB (Pillow converts it through LittleCMS). 32-bit float images ("F") are
  refused: their value range is unknown.
* The EXIF orientation is applied to the pixels (``PIL.ImageOps.exif_transpose``); the EXIF bytes
  handed back have their orientation tag reset to 1 so that no viewer rotates the image twice.
* Animated / multi-frame files (GIF, APNG, animated WebP, multi-page TIFF): the first frame.
* Every failure to read an input image is a single :class:`~vqcodec.errors.VqcImageError` with one
  line naming the file and the problem; Pillow's own exceptions never escape :func:`load_image`.

Pixel limit: an input may have at most ``max_pixels`` pixels (default :data:`MAX_INPUT_PIXELS`,
268 435 456 = 2**28, the codec's decode cap), checked from the header (``Image.open`` parses only
the header; for multi-frame files the size it reports, the first frame's, is what is coded) before
any pixel data is decoded. vqc never changes Pillow's process-wide settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``, warning filters): other
threads keep their guards. So Pillow's own decompression-bomb guard applies as well: by default
Pillow refuses images of more than 2 x ``Image.MAX_IMAGE_PIXELS`` = 178 956 970 pixels at
``Image.open``, which vqc reports as "image too large"; an application that wants larger inputs
raises ``Image.MAX_IMAGE_PIXELS`` itself. Truncated files are errors unless the application has
set ``ImageFile.LOAD_TRUNCATED_IMAGES`` (then Pillow grey-fills them, as it does for that
application everywhere).
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from PIL import Image, ImageOps, PngImagePlugin

from vqcodec.constants import MAX_PIXELS
from vqcodec.errors import VqcFormatError, VqcImageError

if TYPE_CHECKING:  # numpy is imported by the functions that use it: decoding a file without
    import numpy as np  # alpha and saving it as PNG (vqc decompress, native core) needs none

__all__ = [
    "MAX_EXIF_BYTES",
    "MAX_ICC_BYTES",
    "MAX_INPUT_PIXELS",
    "LoadedImage",
    "check_alpha_header",
    "check_metadata_sizes",
    "stream_byte_limit",
    "crop",
    "decode_alpha",
    "encode_alpha",
    "load_image",
    "pad_to_multiple",
    "save_png",
    "to_pil",
]

#: Largest accepted input, in pixels (width * height): 2**28, the codec's decode cap.
MAX_INPUT_PIXELS = MAX_PIXELS

#: Largest ICC profile / EXIF block vqc carries (bytes): what Pillow's PNG reader accepts back
#: (PngImagePlugin.MAX_TEXT_CHUNK), so every PNG vqc writes can be read again.
MAX_ICC_BYTES = 1 << 20
MAX_EXIF_BYTES = 1 << 20

#: Formats Pillow can open that vqc refuses: EPS is rendered by running Ghostscript on the file.
_REFUSED_FORMATS = frozenset({"EPS"})

_SIXTEEN_BIT_GRAY = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_GRAY_MODES = frozenset({"1", "L", "LA", "La"}) | _SIXTEEN_BIT_GRAY
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_EXIF_HEADER = b"Exif\x00\x00"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class _UnsupportedMode(ValueError):
    """A pixel mode vqc does not take (its message is shown to the user as is)."""
_ORIENTATION_TAG = 0x0112


@dataclass(eq=False)
class LoadedImage:
    """An input image as the codec sees it.

    Attributes:
        pixels: ``uint8`` array, shape ``(H, W, 3)`` for colour or ``(H, W, 1)`` for grayscale,
            already rotated/flipped as the EXIF orientation asks.
        alpha: ``uint8`` array of shape ``(H, W)``, or ``None`` when the image has no alpha channel
            or its alpha is 255 everywhere.
        icc_profile: the embedded ICC profile, or None; dropped when its colour space does not
            match ``mode`` (e.g. the CMYK profile of a CMYK JPEG, now RGB).
        exif: raw EXIF bytes (as Pillow stores them, normally starting ``b"Exif\\0\\0"``) with the
            orientation tag reset to 1, or None when the file has no EXIF block.
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    icc_profile: bytes | None
    exif: bytes | None

    @property
    def mode(self) -> str:
        """``"L"`` for one-channel (grayscale) pixels, ``"RGB"`` for three channels."""
        return "L" if self.pixels.shape[2] == 1 else "RGB"

    @property
    def height(self) -> int:
        """Image height H in pixels."""
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        """Image width W in pixels."""
        return int(self.pixels.shape[1])


# --------------------------------------------------------------------------------------------
# Loading


def _source_name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(os.fspath(source))
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, Image.Image):
        return "<PIL image>"
    name = getattr(source, "name", None)
    return repr(name) if isinstance(name, (str, bytes)) else "<stream>"


def _reason(exc: BaseException, max_pixels: int = MAX_INPUT_PIXELS) -> str:
    """One short line describing why Pillow failed (quoting vqc's pixel limit, not Pillow's)."""
    if isinstance(exc, Image.DecompressionBombError):
        pillow = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        return (f"image too large (more than the {pillow:,} pixels Pillow's decompression-bomb "
                f"guard allows, 2 x PIL.Image.MAX_IMAGE_PIXELS; vqc's limit is {max_pixels:,})")
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a recognised image format (or a corrupt header)"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, EOFError):
        return "truncated file"
    text = " ".join(str(exc).split())
    if "MAX_TEXT_CHUNK" in text:
        return (f"a metadata chunk (ICC profile or text) is larger than {MAX_ICC_BYTES:,} bytes, "
                "more than vqc carries")
    if "truncated" in text.lower():
        return "truncated file"
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    return f"corrupt or unsupported image ({text or type(exc).__name__})"


def _icc_matches(icc: bytes, mode: str) -> bool:
    """True when an ICC profile's data colour space (header bytes 16..20) fits ``mode``."""
    if len(icc) < 128:
        return False
    return icc[16:20] == (b"GRAY" if mode == "L" else b"RGB ")


def _raw_exif(info: dict) -> bytes | None:
    exif = info.get("exif")
    if isinstance(exif, (bytes, bytearray)) and exif:
        return bytes(exif)
    raw_profile = info.get("Raw profile type exif")  # ImageMagick-style PNG text chunk
    if isinstance(raw_profile, str):
        try:
            data = bytes.fromhex("".join(raw_profile.split("\n")[3:]))
        except ValueError:
            return None
        return data or None
    return None


def _reset_orientation(exif: bytes) -> bytes | None:
    """Return ``exif`` with its IFD0 orientation tag set to 1, touching no other byte.

    Returns the input unchanged when it has no orientation tag, and None when the block cannot be
    parsed well enough to be sure (dropping EXIF beats letting a viewer rotate the image twice).
    """
    base = len(_EXIF_HEADER) if exif.startswith(_EXIF_HEADER) else 0
    tiff = exif[base:]
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return None
    endian = "<" if tiff[:2] == b"II" else ">"
    (ifd0,) = struct.unpack_from(endian + "I", tiff, 4)
    if ifd0 + 2 > len(tiff):
        return None
    (count,) = struct.unpack_from(endian + "H", tiff, ifd0)
    for i in range(count):
        entry = ifd0 + 2 + 12 * i
        if entry + 12 > len(tiff):
            return None
        tag, typ, n = struct.unpack_from(endian + "HHI", tiff, entry)
        if tag != _ORIENTATION_TAG:
            continue
        if typ != 3 or n != 1:  # orientation must be one SHORT stored inline
            return None
        out = bytearray(exif)
        struct.pack_into(endian + "H", out, base + entry + 8, 1)
        return bytes(out)
    return exif


def _is_gray_png_with_alpha(im: Image.Image) -> bool:
    """True for a PNG of colour type 4 at 16 bits, which Pillow opens as RGBA (raw mode LA;16B):
    it is grey and must stay grey. Call before `load` (it reads the tile's raw mode)."""
    if im.format != "PNG" or im.mode != "RGBA" or not im.tile:
        return False
    args = im.tile[0].args if hasattr(im.tile[0], "args") else im.tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) else args
    return isinstance(rawmode, str) and rawmode.startswith("LA")


def check_metadata_sizes(icc: bytes | None, exif: bytes | None, error: type[Exception]) -> None:
    """Check the metadata vqc carries against its caps (format/SPEC.md, "Chunks").

    Args:
        icc: the ICC profile bytes, or None.
        exif: the EXIF bytes, or None.
        error: called with the message to make the exception raised (an exception class such
            as VqcFormatError when reading a `.vqc` file; `load_image` passes a function that
            makes a VqcImageError).

    Raises:
        error(...): the ICC profile is above MAX_ICC_BYTES or the EXIF block above
            MAX_EXIF_BYTES (bytes).
    """
    for what, data, cap in (("ICC profile", icc, MAX_ICC_BYTES), ("EXIF block", exif, MAX_EXIF_BYTES)):
        if data is not None and len(data) > cap:
            raise error(f"{what} is {len(data):,} bytes, more than the {cap:,} vqc carries")


def _to_arrays(im: Image.Image, gray_alpha: bool = False) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Convert a loaded Pillow image to (pixels (H, W, C) uint8, alpha (H, W) uint8 or None, mode).

    gray_alpha: the image is grey + alpha although Pillow shows it as RGBA (16-bit PNG).
    Raises ValueError for modes vqc does not accept (turned into VqcImageError by the caller).
    """
    import numpy as np

    if gray_alpha and im.mode == "RGBA":
        im = im.convert("LA")  # R = G = B: ITU-R 601 luma gives back exactly that value
    mode = im.mode
    transparency = im.info.get("transparency")
    if mode == "F":
        raise _UnsupportedMode("unsupported pixel mode F (32-bit floating point)")
    if mode in _SIXTEEN_BIT_GRAY:
        raw = np.asarray(im)
        if raw.dtype.kind == "i":  # mode "I" is 32-bit signed: take it as 16-bit, clipped
            raw = np.clip(raw, 0, 65535)
        # round(v / 257) with integer arithmetic: v = 257k + r rounds up exactly when r >= 129,
        # and no 16-bit value is ever halfway between two 8-bit levels.
        gray = ((raw.astype(np.uint32) + 128) // 257).astype(np.uint8)
        alpha = None
        if isinstance(transparency, int):
            alpha = np.where(raw == transparency, 0, 255).astype(np.uint8)
        return gray[:, :, None], alpha, "L"

    gray = mode in _GRAY_MODES
    has_alpha = mode in _ALPHA_MODES or transparency is not None
    if mode == "P" and im.palette is not None and im.palette.mode == "RGBA":
        has_alpha = True
    target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    if mode != target:
        try:
            im = im.convert(target)
        except ValueError:  # e.g. LAB: Pillow has no conversion to RGB
            raise _UnsupportedMode(f"unsupported pixel mode {mode}") from None
    arr = np.asarray(im, dtype=np.uint8)  # may be a read-only view of Pillow's bytes
    if arr.ndim == 2:
        arr = arr[:, :, None]
    alpha = None
    if has_alpha:
        if arr[:, :, -1].min() < 255:
            alpha = np.array(arr[:, :, -1], dtype=np.uint8, order="C")
        arr = arr[:, :, :-1]
    pixels = np.array(arr, dtype=np.uint8, order="C")  # own, writable, contiguous
    return pixels, alpha, ("L" if gray else "RGB")


def load_image(
    source: str | os.PathLike | bytes | BinaryIO | Image.Image,
    *,
    max_pixels: int = MAX_INPUT_PIXELS,
) -> LoadedImage:
    """Read an image into the arrays the codec works on.

    Args:
        source: a file path, the file's bytes, a binary file object (read from its start), or an
            already opened ``PIL.Image.Image`` (its current frame is used).
        max_pixels: refuse images with more than this many pixels (width * height); the check is
            made from the header, before decoding. Defaults to :data:`MAX_INPUT_PIXELS`.

    Returns:
        A :class:`LoadedImage`: ``pixels`` ``uint8`` ``(H, W, 3)`` or ``(H, W, 1)``; ``alpha``
        ``uint8`` ``(H, W)`` or None; the ICC profile and EXIF bytes or None. The EXIF orientation
        has been applied. For multi-frame files only the first frame is read.

    Raises:
        VqcImageError: the source does not exist or cannot be read, is empty, is not an image
            Pillow recognises, is truncated or corrupt, has zero width or height, has more than
            ``max_pixels`` pixels or more than Pillow's decompression-bomb guard allows (2 x
            ``PIL.Image.MAX_IMAGE_PIXELS``, as the application set it; vqc never changes it),
            or has an unsupported pixel mode (32-bit float).
            No Pillow exception escapes.
    """
    name = _source_name(source)

    def fail(reason: str) -> VqcImageError:
        return VqcImageError(f"cannot read image {name}: {reason}")

    fp: object = source
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise fail("empty file")
        fp = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        try:
            empty = os.path.getsize(source) == 0
        except OSError as exc:
            raise fail(_reason(exc)) from None
        if empty:
            raise fail("empty file")

    try:
        im = fp if isinstance(fp, Image.Image) else Image.open(fp)  # type: ignore[arg-type]
    except Exception as exc:  # Pillow raises a zoo of types for bad input
        if isinstance(exc, Image.UnidentifiedImageError) and _stream_is_empty(fp):
            raise fail("empty file") from None
        raise fail(_reason(exc, max_pixels)) from None
    try:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise fail(f"image has zero size ({width}x{height})")
        if width * height > max_pixels:
            raise fail(
                f"image too large ({width}x{height} = {width * height} pixels, "
                f"limit {max_pixels})"
            )
        if im.format in _REFUSED_FORMATS:
            raise fail(f"{im.format} files are not supported")
        gray_alpha = _is_gray_png_with_alpha(im)
        try:
            im.load()
            raw_exif = _raw_exif(im.info)
            icc = im.info.get("icc_profile") or None
            try:
                oriented = ImageOps.exif_transpose(im)
            except Exception:  # malformed EXIF must not make the pixels unreadable
                oriented, raw_exif = im, None
            pixels, alpha, mode = _to_arrays(oriented, gray_alpha)
        except VqcImageError:
            raise
        except _UnsupportedMode as exc:
            raise fail(str(exc)) from None
        except Exception as exc:
            raise fail(_reason(exc)) from None
    finally:
        if im is not source:
            im.close()

    if pixels.shape[0] * pixels.shape[1] == 0:  # defensive: a decoder reporting a bogus size
        raise fail("image has zero size")
    exif = _reset_orientation(raw_exif) if raw_exif is not None else None
    if icc is not None and not _icc_matches(icc, mode):
        icc = None
    check_metadata_sizes(icc, exif, fail)
    return LoadedImage(pixels=pixels, alpha=alpha, icc_profile=icc, exif=exif)


def stream_byte_limit(head: bytes, name: str, max_pixels: int = MAX_INPUT_PIXELS) -> int:
    """How many bytes an image stream starting with ``head`` may have, judged from its header.

    Used for inputs that cannot be sized beforehand (stdin, a FIFO, a device): ``head`` is its
    first bytes; the image must be identifiable from them, and the whole stream may then hold at
    most 8 bytes per pixel (16-bit RGBA, uncompressed) plus 32 MiB of metadata.

    Args:
        head: the stream's first bytes.
        name: the input's name for error messages.
        max_pixels: refuse images with more pixels (width * height) than this.

    Returns:
        8 * width * height + 32 MiB, in bytes.

    Raises:
        VqcImageError: not identifiable from ``head``, or more than ``max_pixels`` pixels.
    """
    try:
        with Image.open(io.BytesIO(head)) as im:
            width, height = im.size
    except Image.DecompressionBombError as exc:
        raise VqcImageError(f"cannot read image {name!r}: {_reason(exc, max_pixels)}") from None
    except Exception:  # noqa: BLE001 - Pillow raises a zoo of types for bad input
        raise VqcImageError(
            f"cannot read image {name!r}: not a recognised image format (identified from its "
            f"first {len(head):,} bytes; give a large stream as a file instead)") from None
    if width * height > max_pixels:
        raise VqcImageError(f"cannot read image {name!r}: image too large ({width}x{height} = "
                            f"{width * height} pixels, limit {max_pixels})")
    return 8 * width * height + (32 << 20)


def _stream_is_empty(fp: object) -> bool:
    """Best effort: True when a seekable binary stream holds no bytes at all."""
    try:
        fp.seek(0, os.SEEK_END)  # type: ignore[attr-defined]
        size = fp.tell()  # type: ignore[attr-defined]
        fp.seek(0)  # type: ignore[attr-defined]
    except Exception:
        return False
    return size == 0


# --------------------------------------------------------------------------------------------
# Writing


def to_pil(
    pixels: np.ndarray,
    alpha: np.ndarray | None = None,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
) -> Image.Image:
    """Build a Pillow image (mode L, LA, RGB or RGBA) from codec arrays.

    Args:
        pixels: ``uint8`` array of shape ``(H, W, 3)``, ``(H, W, 1)`` or ``(H, W)``.
        alpha: optional ``uint8`` array of shape ``(H, W)``; adds an alpha channel.
        icc_profile: stored in ``img.info["icc_profile"]`` when given.
        exif: stored in ``img.info["exif"]`` when given.

    Returns:
        A new image; :func:`save_png` writes the profile and EXIF kept in its ``info``.

    Raises:
        ValueError: wrong dtype, shape, or an alpha plane whose size differs from the pixels.
    """
    import numpy as np

    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must have shape (H, W, 1) or (H, W, 3), got {pixels.shape}")
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"pixels must be non-empty, got shape {pixels.shape}")
    planes = [pixels]
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.dtype != np.uint8 or alpha.shape != pixels.shape[:2]:
            raise ValueError(
                f"alpha must be uint8 of shape {pixels.shape[:2]}, "
                f"got {alpha.dtype} {alpha.shape}"
            )
        planes.append(alpha[:, :, None])
    arr = np.ascontiguousarray(np.concatenate(planes, axis=2) if len(planes) > 1 else pixels)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    img = Image.fromarray(arr[:, :, 0] if mode == "L" else arr)
    if img.mode != mode:  # pragma: no cover - fromarray infers these modes on all supported Pillows
        img = img.convert(mode)
    if icc_profile:
        img.info["icc_profile"] = bytes(icc_profile)
    if exif:
        img.info["exif"] = bytes(exif)
    return img


def save_png(img: Image.Image, dest: str | os.PathLike | BinaryIO) -> None:
    """Write ``img`` as PNG, keeping ``img.info["icc_profile"]`` and ``img.info["exif"]`` if set.

    Args:
        img: any image PNG can hold (normally L, LA, RGB or RGBA from :func:`to_pil`).
        dest: a path (written whatever its extension) or a writable binary file object.

    Raises:
        OSError: ``dest`` cannot be written.
    """
    params: dict[str, object] = {}
    if img.info.get("icc_profile"):
        params["icc_profile"] = img.info["icc_profile"]
    if img.info.get("exif"):
        params["exif"] = img.info["exif"]
    img.save(dest, format="PNG", **params)


# --------------------------------------------------------------------------------------------
# Alpha plane


def encode_alpha(alpha: np.ndarray) -> bytes:
    """Code an alpha plane losslessly as an 8-bit grayscale PNG (optimize, compress_level=9),
    the data of the alpha chunk (format/SPEC.md, "Chunks").

    Args:
        alpha: ``uint8`` array of shape ``(H, W)``, H, W >= 1.

    Returns:
        The PNG bytes (decoding is exact everywhere; the bytes themselves may differ between
        zlib builds).

    Raises:
        ValueError: wrong dtype or shape.
    """
    import numpy as np

    alpha = np.asarray(alpha)
    if alpha.dtype != np.uint8 or alpha.ndim != 2 or 0 in alpha.shape:
        raise ValueError(
            f"alpha must be a non-empty uint8 (H, W) array, got {alpha.dtype} {alpha.shape}"
        )
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(alpha))
    img.save(buf, format="PNG", optimize=True, compress_level=9)
    return buf.getvalue()


def _png_is_animated(data: bytes) -> bool:
    """True when a PNG has an acTL chunk (an APNG) before its first IDAT, where the APNG
    specification puts it; walks the chunk headers only (nothing is decompressed)."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        ctype = bytes(data[pos + 4:pos + 8])
        if ctype == b"acTL":
            return True
        if ctype in (b"IDAT", b"IEND"):
            return False
        pos += 12 + int.from_bytes(data[pos:pos + 4], "big")
    return False


def _open_alpha(data: bytes, width: int, height: int) -> Image.Image:
    """Open an alpha PNG and check mode, size and animation from its header (nothing decoded).

    The PNG reader is used directly: the size is bounded by the container header (itself within
    the decoder's pixel cap), so Pillow's process-wide bomb limit, which is lower, must not apply.
    """
    if _png_is_animated(data):
        raise VqcFormatError("alpha plane PNG is animated (it has an acTL chunk); "
                             "the alpha chunk holds one still PNG")
    im = PngImagePlugin.PngImageFile(io.BytesIO(bytes(data)))
    if im.mode != "L":
        im.close()
        raise VqcFormatError(f"alpha plane is not a grayscale PNG (mode {im.mode})")
    if im.size != (width, height):
        im.close()
        raise VqcFormatError(f"alpha plane is {im.size[0]}x{im.size[1]}, expected {width}x{height}")
    return im


def check_alpha_header(data: bytes, width: int, height: int) -> None:
    """Check an alpha chunk's PNG header (mode L, ``width`` x ``height``, not animated) without
    decoding it, so that a bad chunk fails before any other decoding work.

    Args:
        data: the alpha chunk's PNG bytes (format/SPEC.md, "Chunks").
        width: the image width in pixels (from the container header).
        height: the image height in pixels.

    Raises:
        VqcFormatError: as :func:`decode_alpha`, for problems visible in the header.
    """
    try:
        _open_alpha(data, width, height).close()
    except VqcFormatError:
        raise
    except Exception as exc:
        raise VqcFormatError(f"alpha plane is not a valid PNG: {_reason(exc)}") from None


def decode_alpha(data: bytes, width: int, height: int) -> np.ndarray:
    """Decode an alpha plane written by :func:`encode_alpha`.

    Args:
        data: PNG bytes (the alpha chunk, format/SPEC.md, "Chunks").
        width: the width in pixels the plane must have (from the container header).
        height: the height in pixels the plane must have.

    Returns:
        ``uint8`` array of shape ``(height, width)``.

    Raises:
        VqcFormatError: ``data`` is not a complete 8-bit grayscale (mode L) PNG of exactly
            ``width`` x ``height`` (the size is checked before anything is decoded), or it is
            an animated PNG (an acTL chunk, even for one frame: format/SPEC.md, "Chunks").
    """
    import numpy as np

    try:
        with _open_alpha(data, width, height) as im:
            im.load()
            return np.array(im, dtype=np.uint8)
    except VqcFormatError:
        raise
    except Exception as exc:
        raise VqcFormatError(f"alpha plane is not a valid PNG: {_reason(exc)}") from None


# --------------------------------------------------------------------------------------------
# Geometry


def pad_to_multiple(pixels: np.ndarray, multiple: int) -> np.ndarray:
    """Pad bottom and right by edge replication so that H and W become multiples of ``multiple``.

    Args:
        pixels: array of shape ``(H, W)`` or ``(H, W, C)`` (any dtype), H, W >= 1.
        multiple: positive integer (e.g. the model's downsampling factor).

    Returns:
        A new array of shape ``(ceil(H/m)*m, ceil(W/m)*m[, C])``, same dtype, whose top-left
        ``(H, W)`` block equals ``pixels`` (``np.pad(mode="edge")``).

    Raises:
        ValueError: ``multiple < 1``, fewer than 2 dimensions, or an empty image.
    """
    import numpy as np

    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if pixels.ndim < 2 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"pixels must be a non-empty (H, W[, C]) array, got shape {pixels.shape}")
    h, w = pixels.shape[:2]
    pad = [(0, -h % multiple), (0, -w % multiple)] + [(0, 0)] * (pixels.ndim - 2)
    return np.pad(pixels, pad, mode="edge")


def crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Keep the top-left ``height`` x ``width`` block (undoes :func:`pad_to_multiple`).

    Args:
        pixels: array of shape ``(H, W)`` or ``(H, W, C)``.
        height: rows to keep, 1 <= height <= H.
        width: columns to keep, 1 <= width <= W.

    Returns:
        A view of shape ``(height, width[, C])`` (not a copy).

    Raises:
        ValueError: the requested size is not within the array.
    """
    import numpy as np

    if pixels.ndim < 2:
        raise ValueError(f"pixels must be an (H, W[, C]) array, got shape {pixels.shape}")
    h, w = pixels.shape[:2]
    if not (1 <= height <= h and 1 <= width <= w):
        raise ValueError(f"cannot crop {h}x{w} (HxW) to {height}x{width}")
    return pixels[:height, :width]
