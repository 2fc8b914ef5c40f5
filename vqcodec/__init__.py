"""vqc: a learned lossy image codec.

A VQ-VAE maps an image to a grid of codebook indices, an integer-exact gated PixelCNN prior
gives each index a probability, a range coder writes the bits into a `.vqc` container.

    >>> import vqcodec
    >>> data = vqcodec.compress("photo.png")          # bytes of a .vqc file
    >>> image = vqcodec.decompress(data)              # PIL.Image.Image
"""

__version__ = "0.1.0"


def compress(image, quality=None, **kwargs) -> bytes:
    """See `vqcodec.codec.compress`."""
    from vqcodec import codec

    return codec.compress(image, codec.DEFAULT_QUALITY if quality is None else quality, **kwargs)


def decompress(data: bytes, **kwargs):
    """See `vqcodec.codec.decompress`."""
    from vqcodec import codec

    return codec.decompress(data, **kwargs)
