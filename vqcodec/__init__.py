"""vqc: a learned lossy image codec.

A VQ-VAE maps an image to a grid of codebook indices, an integer-exact gated PixelCNN prior
gives each index a probability, a range coder writes the bits into a `.vqc` container.

    >>> import vqcodec
    >>> data = vqcodec.compress("photo.png")          # bytes of a .vqc file
    >>> image = vqcodec.decompress(data)              # PIL.Image.Image
    >>> from PIL import Image
    >>> Image.open("photo.vqc").size                  # importing vqcodec registered the plugin

Importing this package is cheap (no torch): the networks load on the first compress/decompress.
"""

from vqcodec import _early

_early.install()  # first: Ctrl-C while the imports below run is one line, not a traceback

from vqcodec.constants import DEFAULT_QUALITY  # noqa: E402
from vqcodec.pillow_plugin import register_pillow  # noqa: E402
from vqcodec.registry import add_model_dir  # noqa: E402

__version__ = "0.1.0"
__all__ = ["compress", "decompress", "register_pillow", "add_model_dir", "DEFAULT_QUALITY", "__version__"]


def compress(image, quality: float = DEFAULT_QUALITY, **kwargs) -> bytes:
    """Compress an image to `.vqc` bytes; see `vqcodec.codec.compress` for every argument.

    Args:
        image: a path, bytes, binary stream, PIL image, or uint8 array [H, W], [H, W, 1] or [H, W, 3].
        quality: Q on the continuous scale 0..100 (`vqcodec.rdo.plan`); higher is bigger and better.
        **kwargs: `effort` (0..9, 0 = nearest-neighbour encoder), `target_bpp` (bits per pixel)
            or `size` (bytes) to find the highest quality that fits instead, `device` ("auto",
            "cpu", "cuda"), `model` (a model name instead of the one Q selects).

    Returns:
        The bytes of a `.vqc` file (format/SPEC.md).

    Raises:
        VqcImageError: the image cannot be read. VqcModelError: unknown model, missing or
            tampered weights. ValueError: quality, effort or target out of range.
    """
    from vqcodec import codec

    return codec.compress(image, quality, **kwargs)


def decompress(data: bytes, **kwargs):
    """Decode `.vqc` bytes to a `PIL.Image.Image` (mode L, LA, RGB or RGBA); see
    `vqcodec.codec.decompress`.

    Decodes with the native core (libvqc) when it is available, without importing torch, else
    with the torch decoder: the same pixels either way; ``VQC_NATIVE=0`` forces torch,
    ``VQC_NATIVE=1`` requires the core (`vqcodec.native`).

    Args:
        data: the bytes of a `.vqc` file.
        **kwargs: `device` ("auto", "cpu", "cuda") and `max_pixels` (default 2**26, `container.DEFAULT_MAX_PIXELS`).

    Returns:
        The decoded image, with ICC profile and EXIF in `info` when the file stores them.

    Raises:
        VqcFormatError: malformed file. VqcLimitError: image over `max_pixels`.
            VqcModelError: the file's model is unknown or not installed.
    """
    from vqcodec import native

    return native.decompress_auto(data, **kwargs)


register_pillow()
