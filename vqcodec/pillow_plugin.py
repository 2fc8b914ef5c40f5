"""Pillow plugin: open and save `.vqc` files with `PIL.Image`, like pillow-heif's
`register_heif_opener()` does for HEIF.

    >>> import vqcodec                      # registers the plugin (or: vqcodec.register_pillow())
    >>> im = Image.open("photo.vqc")        # header only: size and mode known, nothing decoded
    >>> im.size, im.mode
    ((768, 512), 'RGB')
    >>> im.load()                           # decodes (prior + VQ-VAE decoder, CPU or GPU)
    >>> im.save("copy.vqc", quality=60)     # encodes (quality 0..100, or target_bpp=, size=)

Opening reads the header first (at most `container.HEADER_MAX_BYTES` bytes: a file that is not a
`.vqc` fails there), then at most `container.max_file_bytes` of the image size the header
declares (a longer regular file is refused from its size, without reading it), and checks it all
with the container's reader (magic, version, every length, CRC; `format/SPEC.md`), so a damaged
file fails at `Image.open` with Pillow's `UnidentifiedImageError` carrying vqc's message.
`verify()` reads and checks the file again (lengths and CRC, nothing decoded) and raises
SyntaxError for a damaged one, like Pillow's PNG reader; as for every Pillow format, the image
must be opened again to be loaded after `verify()` (`load()` then raises OSError saying so).
Pillow's process-wide settings are never changed. Mode: "L" or "RGB" from the header, plus "A"
when the file has an alpha chunk ("LA", "RGBA"); `info` gets "icc_profile" and "exif" when
stored. torch is imported only when a file is encoded, or decoded without the native core
(`vqcodec.native`: the core decodes when it is available, torch otherwise, same pixels).
"""

from __future__ import annotations

import os
from typing import IO

from PIL import Image, ImageFile, UnidentifiedImageError

from vqcodec import container
from vqcodec.constants import DEFAULT_QUALITY
from vqcodec.errors import VqcError, VqcLimitError

FORMAT = "VQC"
EXTENSION = ".vqc"
MIME = "image/x-vqc"
_DECODER = "vqc"


def _accept(prefix: bytes) -> bool:
    """True when the first bytes of a file are the `.vqc` magic."""
    return prefix[:len(container.MAGIC)] == container.MAGIC


def _mode(vqc: container.VqcFile) -> str:
    """Pillow mode of the decoded image: L / RGB, with A when an alpha chunk is present."""
    base = "L" if vqc.header.mode == container.Mode.L else "RGB"
    has_alpha = any(c.type == container.CHUNK_ALPHA for c in vqc.chunks)
    return base + "A" if has_alpha else base


def _bytes_left(fp: IO[bytes]) -> int | None:
    """Bytes from fp's position to its end when fp is seekable, else None."""
    try:
        here = fp.tell()
        end = fp.seek(0, os.SEEK_END)
        fp.seek(here)
    except (AttributeError, OSError, ValueError):
        return None
    return end - here


def read_bounded(fp: IO[bytes], max_pixels: int = container.DEFAULT_MAX_PIXELS) -> tuple[bytes, int]:
    """Read a `.vqc` file from `fp` (at its start), never more than its header allows.

    First at most `container.HEADER_MAX_BYTES` bytes, whose header must be valid and within
    `max_pixels`; then the rest, up to `container.max_file_bytes(width * height)` in all.

    Args:
        fp: a binary file object positioned at the file's first byte.
        max_pixels: the pixel cap (width * height).

    Returns:
        (the file's bytes, the byte limit its header sets).

    Raises:
        VqcFormatError: the header is malformed or the file ends inside it.
        VqcLimitError: more than `max_pixels` pixels, or more bytes than the header allows
            (a seekable file is refused from its size before it is read).
    """
    head = fp.read(container.HEADER_MAX_BYTES)
    header, _ = container.read_header_prefix(head, max_pixels=max_pixels)
    limit = container.max_file_bytes(header.width * header.height)
    left = _bytes_left(fp)
    if left is not None and len(head) + left > limit:
        raise VqcLimitError(f"file is {len(head) + left} bytes, more than the {limit} bytes a .vqc of "
                            f"{header.width}x{header.height} pixels can have")
    data = head + fp.read(limit - len(head) + 1)
    if len(data) > limit:
        raise VqcLimitError(f"file is over {limit} bytes, more than a .vqc of "
                            f"{header.width}x{header.height} pixels can have")
    return data, limit


class VqcImageFile(ImageFile.ImageFile):
    """A `.vqc` file opened by Pillow: header parsed at open, pixels decoded on `load()`."""

    format = FORMAT
    format_description = "vqc learned lossy image"
    _verified = False

    def _open(self) -> None:
        assert self.fp is not None
        try:
            data, limit = read_bounded(self.fp)
            vqc = container.read(data)
        except VqcError as exc:
            raise UnidentifiedImageError(f"cannot identify image file {self.filename!r}: {exc}") from None
        self._mode = _mode(vqc)
        self._size = (vqc.header.width, vqc.header.height)
        for chunk in vqc.chunks:
            if chunk.type == container.CHUNK_ICC:
                self.info["icc_profile"] = chunk.data
            elif chunk.type == container.CHUNK_EXIF:
                self.info["exif"] = chunk.data
        self.info["vqc_model"] = vqc.header.model_name
        self.tile = [ImageFile._Tile(_DECODER, (0, 0) + self.size, 0, limit)]

    def verify(self) -> None:
        """Check the file's integrity without decoding it: read it again (bounded as at open)
        and check every length and the CRC (`container.read`); then close it, as Pillow's
        `verify()` does for every format.

        Raises:
            RuntimeError: not called directly after `Image.open` (as Pillow's PNG reader).
            SyntaxError: the file is damaged ("broken .vqc file: <vqc's message>"), as Pillow's
                PNG reader raises for a damaged PNG.
        """
        if self.fp is None or self._verified:
            raise RuntimeError("verify must be called directly after open")
        try:
            self.fp.seek(0)
            container.read(read_bounded(self.fp)[0])
        except VqcError as exc:
            raise SyntaxError(f"broken .vqc file: {exc}") from None
        finally:
            self._verified = True
            super().verify()  # closes the file if Image.open opened it; fp = None

    def load(self):
        """Decode the pixels (see `VqcDecoder`); Pillow's `ImageFile.load`.

        Raises:
            OSError: after `verify()` (the file is closed: open it again), or the file cannot be
                decoded (vqc's message).
        """
        if self._verified and self._im is None:
            raise OSError("cannot load a .vqc image after verify(): verify() closes the file, "
                          "open it again with Image.open to decode it")
        return super().load()


class VqcDecoder(ImageFile.PyDecoder):
    """Decodes the whole file in one call (the prior's serial decode needs every payload)."""

    _pulls_fd = True

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        """Read the file from `self.fd` (at most the byte limit its header set at open, the
        tile's argument), decode it (`vqcodec.native.decompress_auto`: the native core when
        available, else torch) and hand Pillow the pixels.

        Returns:
            (-1, 0): all data consumed, no error.

        Raises:
            OSError: the file cannot be decoded (e.g. its model is not installed, or the image
                is over `container.DEFAULT_MAX_PIXELS`), with vqc's message.
        """
        from vqcodec import native

        assert self.fd is not None and self.im is not None
        limit = self.args[0] if self.args else container.max_file_bytes(container.DEFAULT_MAX_PIXELS)
        try:
            image = native.decompress_auto(self.fd.read(limit + 1))
        except VqcError as exc:
            raise OSError(f"cannot decode .vqc file: {exc}") from None
        if image.mode != self.mode or image.size != self.state.extents()[2:]:
            raise OSError(f"decoded a {image.mode} {image.size} image, the header said "
                          f"{self.mode} {self.state.extents()[2:]}")
        self.set_as_raw(image.tobytes(), image.mode)
        return -1, 0


def _save(im: Image.Image, fp: IO[bytes], filename: str | bytes) -> None:
    """Pillow save handler: encode `im` as `.vqc`.

    `im.save(path, quality=Q, effort=E, target_bpp=B, size=N, device="auto"|"cpu"|"cuda")`:
    Q on the continuous scale 0..100 (default `DEFAULT_QUALITY`), effort 0..9, or instead of Q
    a target in bits per pixel or bytes (`vqcodec.codec.compress`).

    Raises:
        ValueError: quality, effort or target out of range.
        OSError: the image cannot be encoded (vqc's message).
    """
    from vqcodec import codec

    info = im.encoderinfo
    kwargs = {k: info[k] for k in ("effort", "target_bpp", "size") if info.get(k) is not None}
    quality = info.get("quality", DEFAULT_QUALITY)
    if isinstance(quality, bool) or not isinstance(quality, (int, float)):
        raise ValueError(f"vqc quality must be a number from 0 to 100, got {quality!r}")
    try:
        data = codec.compress(im, quality=quality, device=info.get("device", "auto"), **kwargs)
    except VqcError as exc:
        raise OSError(f"cannot write .vqc file: {exc}") from None
    fp.write(data)


def register_pillow() -> None:
    """Register the `.vqc` opener, saver, extension and MIME type with Pillow (idempotent).

    After this, `Image.open` recognises `.vqc` files by their magic, `Image.save` writes them for
    the ".vqc" extension or `format="VQC"`, and ".vqc" is in `Image.registered_extensions()`.
    """
    Image.register_open(FORMAT, VqcImageFile, _accept)
    Image.register_save(FORMAT, _save)
    Image.register_extension(FORMAT, EXTENSION)
    Image.register_mime(FORMAT, MIME)
    Image.register_decoder(_DECODER, VqcDecoder)
