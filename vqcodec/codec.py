"""Orchestration: image -> `.vqc` bytes and back, one call each.

compress:   io.load_image -> pad to a multiple of f -> VQ-VAE encoder (float, in tiles) ->
            index grid -> entropy.encode_grid (integer prior, one stream per 64x64 tile) ->
            container.write (+ alpha / ICC / EXIF chunks); at effort >= 1 the index grid is
            chosen and range-coded by vqcodec.rdo (entropy-constrained VQ), quality Q -> model
            and lambda by rdo.plan, a target size by rdo.search_quality
decompress: container.read -> zoo.load (by name + hash) -> entropy.decode_grid ->
            integer VQ-VAE decoder (in tiles with a halo: seamless and bit-identical to a
            whole-image decode) -> crop -> PIL image
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
from PIL import Image

from vqcodec import container, entropy, io, rdo, zoo
from vqcodec.constants import DEFAULT_QUALITY, MAX_PRIOR_TILE, PIXEL_TILE
from vqcodec.errors import VqcFormatError
from vqcodec.registry import QUALITY_LEVELS

__all__ = ["compress", "decompress", "QUALITY_LEVELS", "DEFAULT_QUALITY"]


def _as_loaded(image) -> io.LoadedImage:
    if isinstance(image, io.LoadedImage):
        return image
    if isinstance(image, np.ndarray):
        arr = image if image.ndim == 3 else image[..., None]
        if arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3) or 0 in arr.shape:
            raise ValueError("pixel arrays must be uint8 [H, W], [H, W, 1] or [H, W, 3]")
        return io.LoadedImage(pixels=arr, alpha=None, icc_profile=None, exif=None)
    return io.load_image(image)


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale_in: int,
          scale_out: int, core: int, halo: int) -> torch.Tensor:
    """Apply a local operator tile by tile on a latent-aligned grid.

    x: [1, C, scale_in * gh, scale_in * gw]; fn maps an input tile of g latent positions per
    side to [1, C', scale_out * g...].  Tiles have `core` latent positions plus `halo` on each
    side; only the core of each output is kept.  Returns [1, C', scale_out * gh, scale_out * gw].
    When `halo` covers fn's receptive field the result equals fn(x) exactly.
    """
    gh, gw = x.shape[-2] // scale_in, x.shape[-1] // scale_in
    rows = []
    for r0 in range(0, gh, core):
        r1 = min(gh, r0 + core)
        a0, a1 = max(0, r0 - halo), min(gh, r1 + halo)
        row = []
        for c0 in range(0, gw, core):
            c1 = min(gw, c0 + core)
            b0, b1 = max(0, c0 - halo), min(gw, c1 + halo)
            y = fn(x[..., a0 * scale_in:a1 * scale_in, b0 * scale_in:b1 * scale_in])
            row.append(y[..., (r0 - a0) * scale_out:(r1 - a0) * scale_out,
                         (c0 - b0) * scale_out:(c1 - b0) * scale_out])
        rows.append(torch.cat(row, -1))
    return torch.cat(rows, -2)


def encode_indices(model: zoo.CodecModel, pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] (H, W multiples of f) -> index grid int64 [H/f, W/f] (float encoder)."""
    f = model.f
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].to(model.device)

    def enc(t: torch.Tensor) -> torch.Tensor:
        return model.vqvae.encode(t.float() / 255.0)[:, None].to(torch.float32)

    idx = tiled(enc, x, f, 1, max(1, PIXEL_TILE // f), 8)
    return idx[0, 0].to(torch.int64).cpu().numpy()


def decode_pixels(model: zoo.CodecModel, idx: np.ndarray) -> np.ndarray:
    """Index grid int64 [h, w] -> uint8 [f*h, f*w, 3] with the integer decoder, in tiles."""
    grid = torch.from_numpy(idx)[None, None].to(torch.float64)

    def dec(t: torch.Tensor) -> torch.Tensor:
        return model.decoder(t[:, 0].to(torch.int64)).to(torch.float64)

    out = tiled(dec, grid, 1, model.f, max(1, PIXEL_TILE // model.f), model.decoder.halo)
    return out[0].permute(1, 2, 0).to(torch.uint8).cpu().numpy()


def _chunks(img: io.LoadedImage) -> tuple[container.Chunk, ...]:
    chunks = []
    if img.alpha is not None:
        chunks.append(container.Chunk(container.CHUNK_ALPHA, True, io.encode_alpha(img.alpha)))
    if img.icc_profile:
        chunks.append(container.Chunk(container.CHUNK_ICC, False, img.icc_profile))
    if img.exif:
        chunks.append(container.Chunk(container.CHUNK_EXIF, False, img.exif))
    return tuple(chunks)


def compress(image, quality: float = DEFAULT_QUALITY, *, device: str = "auto",
             model: str | None = None, effort: int = rdo.DEFAULT_EFFORT,
             target_bpp: float | None = None, size: int | None = None) -> bytes:
    """Compress an image to `.vqc` bytes.

    image: a path, bytes, binary stream, PIL image, or uint8 array [H, W], [H, W, 1], [H, W, 3].
    quality: Q in [0, 100] on the continuous scale (`vqcodec.rdo.plan`: model and lambda);
    `model` names a model directly instead (lambda still from Q).  effort: 0..9
    (`vqcodec.rdo.EFFORTS`; 0 = nearest-neighbour encoder).  target_bpp (bits per pixel) or
    size (bytes of the whole file): instead of `quality`, the highest Q whose real file fits
    (`vqcodec.rdo.search_quality`; the Q=0 file when nothing fits).  device: "auto", "cpu" or
    "cuda" for the encoder and prior pass.
    Raises VqcImageError (unreadable image), VqcModelError (unknown model, bad weights),
    ValueError (quality, effort or target out of range).
    """
    return compress_report(image, quality, device=device, model=model, effort=effort,
                           target_bpp=target_bpp, size=size)[0]


def compress_report(image, quality: float = DEFAULT_QUALITY, *, device: str = "auto",
                    model: str | None = None, effort: int = rdo.DEFAULT_EFFORT,
                    target_bpp: float | None = None,
                    size: int | None = None) -> tuple[bytes, float]:
    """`compress`, also returning the quality Q the file was made at (found by the search when
    a target is given).  Arguments and errors as `compress`."""
    rdo.effort(effort)
    rdo.target_bytes(target_bpp, size, 1, 1)  # argument checks before any work
    if target_bpp is None and size is None:
        rdo.plan(quality)
    img = _as_loaded(image)
    h, w = img.pixels.shape[:2]
    target = rdo.target_bytes(target_bpp, size, w, h)
    rgb = np.repeat(img.pixels, 3, axis=2) if img.pixels.shape[2] == 1 else img.pixels
    cache: dict[str, tuple] = {}

    def encode_at(q: float) -> bytes:
        p = rdo.plan(q)
        m = zoo.load(model or p.model, device=device)
        if m.name not in cache:
            padded = io.pad_to_multiple(rgb, m.f)
            nn = encode_indices(m, padded) if effort == 0 or rdo.effort(effort).guard else None
            cache[m.name] = (nn, rdo.latents(m, padded) if effort else None)
        nn, z = cache[m.name]
        header = container.Header(
            model_name=m.name, model_hash=m.model_hash, width=w, height=h,
            mode=container.Mode.L if img.mode == "L" else container.Mode.RGB,
            grid_h=-(-h // m.f), grid_w=-(-w // m.f), tile_h=m.tile, tile_w=m.tile)
        chunks = _chunks(img)
        if effort == 0:  # vqc 0.1's encoder, byte for byte (no quality chunk either)
            payloads = entropy.encode_grid(m.prior, nn, header.tile_slices())
        else:
            payloads = rdo.choose_grid(m, z, p.lam, effort, header.tile_slices(), nn).payloads
            chunks += (container.Chunk(container.CHUNK_QUALITY, False,
                                       container.pack_quality(q, effort)),)
            header = dataclasses.replace(header, version_minor=1)  # 1.1: adds the quality chunk
        return container.write(container.VqcFile(header, tuple(payloads), chunks))

    if target is None:
        return encode_at(float(quality)), float(quality)
    breaks = () if model else tuple(seg.q_hi for seg in rdo.QUALITY_SEGMENTS[:-1])
    q, data, _ = rdo.search_quality(encode_at, target, breaks)
    return data, q


def _decode_indices(data: bytes, device: str, max_pixels: int
                    ) -> tuple[container.VqcFile, zoo.CodecModel, np.ndarray]:
    f = container.read(data, max_pixels=max_pixels)
    hd = f.header
    m = zoo.load(hd.model_name, hd.model_hash, device=device)
    if (hd.grid_h, hd.grid_w) != (-(-hd.height // m.f), -(-hd.width // m.f)):
        raise VqcFormatError(f"latent grid {hd.grid_h}x{hd.grid_w} does not fit a "
                             f"{hd.width}x{hd.height} image at f={m.f}")
    tiles = hd.tile_slices()
    if any(s.stop - s.start > MAX_PRIOR_TILE for t in tiles for s in t):
        raise VqcFormatError(f"tiles larger than {MAX_PRIOR_TILE} latent positions are not supported")
    return f, m, entropy.decode_grid(m.prior, list(f.payloads), hd.grid_h, hd.grid_w, tiles)


def decompress_grid(data: bytes, *, device: str = "auto",
                    max_pixels: int = container.DEFAULT_MAX_PIXELS) -> tuple[container.VqcFile, np.ndarray]:
    """Parse a `.vqc` file and decode its index grid: (file, int64 [grid_h, grid_w]).
    Raises as `decompress`."""
    f, _, idx = _decode_indices(data, device, max_pixels)
    return f, idx


def decompress_with_grid(data: bytes, *, device: str = "auto",
                         max_pixels: int = container.DEFAULT_MAX_PIXELS) -> tuple[Image.Image, np.ndarray]:
    """`decompress`, also returning the decoded index grid int64 [grid_h, grid_w] (one decode)."""
    f, m, idx = _decode_indices(data, device, max_pixels)
    hd = f.header
    pixels = io.crop(decode_pixels(m, idx), hd.height, hd.width)
    if hd.mode == container.Mode.L:
        pixels = ((pixels.astype(np.uint16).sum(2, keepdims=True) + 1) // 3).astype(np.uint8)
    chunks = {c.type: c.data for c in f.chunks}
    alpha = None
    if container.CHUNK_ALPHA in chunks:
        alpha = io.decode_alpha(chunks[container.CHUNK_ALPHA], hd.width, hd.height)
    image = io.to_pil(pixels, alpha, icc_profile=chunks.get(container.CHUNK_ICC),
                      exif=chunks.get(container.CHUNK_EXIF))
    return image, idx


def decompress(data: bytes, *, device: str = "auto",
               max_pixels: int = container.DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `.vqc` bytes to a PIL image (mode L, LA, RGB or RGBA, with ICC/EXIF if stored).

    Raises VqcFormatError (malformed file), VqcLimitError (over `max_pixels`),
    VqcModelError (model unknown or not installed).
    """
    return decompress_with_grid(data, device=device, max_pixels=max_pixels)[0]
