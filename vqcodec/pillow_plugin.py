"""Pillow plugin: open and save `.vqc` files with `PIL.Image`, like pillow-heif's
`register_heif_opener()` does for HEIF.

    >>> import vqcodec                      # registers the plugin (or: vqcodec.register_pillow())
    >>> im = Image.open("photo.vqc")        # header only: size and mode known, nothing decoded
    >>> im.size, im.mode
    ((768, 512), 'RGB')
    >>> im.load()                           # decodes (prior + VQ-VAE decoder, CPU or GPU)
    >>> im.save("copy.vqc", quality=60)     # encodes (quality 0..100, or target_bpp=, size=)

Opening reads the whole file and checks it with the container's reader (magic, version, every
length, CRC; `format/SPEC.md`), so a damaged file fails at `Image.open` with Pillow's
`UnidentifiedImageError` carrying vqc's message. Mode: "L" or "RGB" from the header, plus "A"
when the file has an alpha chunk ("LA", "RGBA"); `info` gets "icc_profile" and "exif" when
stored. torch is imported only when a file is decoded or encoded.
"""

from __future__ import annotations

from typing import IO

from PIL import Image, ImageFile, UnidentifiedImageError

from vqcodec import container
from vqcodec.constants import DEFAULT_QUALITY, MAX_PIXELS
from vqcodec.errors import VqcError

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


class VqcImageFile(ImageFile.ImageFile):
    """A `.vqc` file opened by Pillow: header parsed at open, pixels decoded on `load()`."""

    format = FORMAT
    format_description = "vqc learned lossy image"

    def _open(self) -> None:
        assert self.fp is not None
        limit = container.max_file_bytes(MAX_PIXELS)  # no .vqc within the pixel cap is larger
        try:
            data = self.fp.read(limit + 1)
            if len(data) > limit:
                raise VqcError(f"file is over {limit} bytes, larger than any .vqc of at most {MAX_PIXELS} pixels")
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
        self.tile = [ImageFile._Tile(_DECODER, (0, 0) + self.size, 0, None)]


class VqcDecoder(ImageFile.PyDecoder):
    """Decodes the whole file in one call (the prior's serial decode needs every payload)."""

    _pulls_fd = True

    def decode(self, buffer: bytes | Image.SupportsArrayInterface) -> tuple[int, int]:
        """Read the file from `self.fd`, decode it and hand Pillow the pixels.

        Returns:
            (-1, 0): all data consumed, no error.

        Raises:
            OSError: the file cannot be decoded (e.g. its model is not installed, or the image
                is over `vqcodec.constants.MAX_PIXELS`), with vqc's message.
        """
        from vqcodec import codec

        assert self.fd is not None and self.im is not None
        try:
            image = codec.decompress(self.fd.read(container.max_file_bytes(MAX_PIXELS) + 1))
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
