"""Image-quality metrics shared by `vqcodec.evaluate` and `benchmarks/` (one definition each).

Units: PSNR in dB over every sample of every channel (RGB PSNR for [H, W, 3] input), 8-bit peak
255; MS-SSIM is the plain index in [0, 1] (Wang, Simoncelli, Bovik, "Multiscale structural
similarity for image quality assessment", Asilomar 2003), `msssim_db` turns it into dB; bpp is
bits per pixel of a whole file.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["psnr", "psnr_from_sse", "msssim", "msssim_db", "bpp", "MSSSIM_MIN_SIDE"]

#: pytorch_msssim's default 5-scale MS-SSIM with an 11-pixel window needs the short side to be
#: larger than (11 - 1) * 2**4 = 160 pixels.
MSSSIM_MIN_SIDE = 161


def _as_float_hwc(a: np.ndarray) -> np.ndarray:
    """float64 [H, W, C] view of a uint8 [H, W] or [H, W, C] image."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[:, :, None]
    return a.astype(np.float64)


def psnr_from_sse(sse: float, samples: int, peak: float = 255.0) -> float | None:
    """PSNR in dB from a sum of squared errors.

    Args:
        sse: sum over `samples` samples of (reference - distorted)**2, in 8-bit units squared.
        samples: number of samples (pixels x channels) summed.
        peak: the largest sample value (255 for 8-bit data).

    Returns:
        10 * log10(peak**2 / (sse / samples)); inf when sse is 0; None when samples is 0.
    """
    if samples == 0:
        return None
    mse = sse / samples
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def psnr(reference: np.ndarray, distorted: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two images of equal shape, over every sample of every channel.

    Args:
        reference: uint8 [H, W] or [H, W, C].
        distorted: same shape and dtype.
        peak: the largest sample value (255 for 8-bit data).

    Returns:
        10 * log10(peak**2 / MSE) in dB; inf for identical images.

    Raises:
        ValueError: the shapes differ.
    """
    a = _as_float_hwc(reference)
    b = _as_float_hwc(distorted)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return psnr_from_sse(float(np.sum((a - b) ** 2)), a.size, peak)


def msssim(reference: np.ndarray, distorted: np.ndarray) -> float:
    """MS-SSIM index (0..1) of two uint8 [H, W, 3] images, via `pytorch_msssim.ms_ssim`.

    Computed on float32 tensors in 0..255 with data_range=255 and the library defaults (5
    scales, 11-pixel Gaussian window).

    Args:
        reference: uint8 [H, W, 3] (or [H, W] / [H, W, 1]).
        distorted: same shape.

    Returns:
        The index; NaN when the shorter side is below `MSSSIM_MIN_SIDE` pixels, where 5-scale
        MS-SSIM is undefined.

    Raises:
        ValueError: the shapes differ.
        ImportError: pytorch-msssim is not installed (it is in the `dev` extra).
    """
    import torch
    from pytorch_msssim import ms_ssim

    a = _as_float_hwc(reference)
    b = _as_float_hwc(distorted)
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    if min(a.shape[0], a.shape[1]) < MSSSIM_MIN_SIDE:
        return math.nan
    ta = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float()[None]
    tb = torch.from_numpy(np.ascontiguousarray(b.transpose(2, 0, 1))).float()[None]
    with torch.no_grad():
        return float(ms_ssim(ta, tb, data_range=255, size_average=True).item())


def msssim_db(value: float) -> float:
    """MS-SSIM index in dB.

    Args:
        value: MS-SSIM index in [0, 1], NaN or None.

    Returns:
        -10 * log10(1 - value) in dB; inf for 1.0; NaN for NaN or None.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


def bpp(num_bytes: int, width: int, height: int) -> float:
    """Bits per pixel of a whole file.

    Args:
        num_bytes: file size in bytes.
        width: image width in pixels.
        height: image height in pixels.

    Returns:
        8 * num_bytes / (width * height).
    """
    return 8.0 * num_bytes / (width * height)
