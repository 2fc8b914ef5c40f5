"""Orchestration: image -> `.vqc` bytes and back, one call each.

compress:   images.load_image -> (downscale to the coded size, Pillow Lanczos, when the scale is < 1)
            -> pad to a multiple of f -> VQ-VAE encoder (float, in tiles) ->
            index grid -> entropy.encode_grid (integer prior, one stream per 64x64 tile) ->
            container.write (+ alpha / ICC / EXIF chunks); at effort >= 1 the index grid is
            chosen and range-coded by vqcodec.rdo (entropy-constrained VQ), quality Q -> model
            and lambda by rdo.plan, a target size by rdo.search_quality
decompress: container.read -> zoo.load (by name + hash) -> entropy.decode_grid ->
            integer VQ-VAE decoder (in tiles with a halo: seamless and bit-identical to a
            whole-image decode) -> crop to the coded size -> (upsample.upsample to the display
            size when a coded-size chunk says it differs) -> PIL image

A multi-stage model (`CodecModel.arch` "rvq", S_max = `CodecModel.stages`) codes S stages
of indices per latent position, codes int64 [S, H, W] (greedy residual quantisation,
`RVQVAE.encode`; no RDO), with S chosen per file (`compress(..., stages=S)`, the rate control of
such a model); a file with S > 1 has a stages chunk and minor version 3 (format/SPEC.md 1.3).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
from PIL import Image

from vqcodec import container, entropy, images, metrics, profiles, rdo, upsample, zoo
from vqcodec.constants import DEFAULT_QUALITY, MAX_PRIOR_TILE, PIXEL_TILE
from vqcodec.errors import VqcFormatError
from vqcodec.registry import QUALITY_LEVELS

__all__ = ["compress", "compress_report", "CompressReport", "decompress", "downscale",
           "QUALITY_LEVELS", "DEFAULT_QUALITY"]


def _as_loaded(image) -> images.LoadedImage:
    if isinstance(image, images.LoadedImage):
        return image
    if isinstance(image, np.ndarray):
        if image.ndim not in (2, 3):
            raise ValueError(f"pixel arrays must be uint8 [H, W], [H, W, 1] or [H, W, 3]; "
                             f"got a {image.ndim}-D array of shape {image.shape}")
        arr = image if image.ndim == 3 else image[..., None]
        if arr.dtype != np.uint8 or arr.shape[-1] not in (1, 3) or 0 in arr.shape:
            raise ValueError("pixel arrays must be uint8 [H, W], [H, W, 1] or [H, W, 3]; "
                             f"got {arr.dtype} of shape {image.shape}")
        if arr.shape[0] * arr.shape[1] > images.MAX_INPUT_PIXELS:
            raise ValueError(f"pixel array of {arr.shape[1]}x{arr.shape[0]} has more than "
                             f"{images.MAX_INPUT_PIXELS} pixels")
        return images.LoadedImage(pixels=np.ascontiguousarray(arr), alpha=None, icc_profile=None, exif=None)
    return images.load_image(image)


def _check_device(device: object) -> str:
    """TypeError / ValueError unless device is "auto", "cpu", "cuda" or "cuda:N"."""
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be 'auto', 'cpu' or 'cuda', got {type(device).__name__}")
    name = str(device)
    if name not in ("auto", "cpu") and not (name == "cuda" or (name.startswith("cuda:")
                                                              and name[5:].isdigit())):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {name!r}")
    return name


def _check_quality(quality: object) -> float:
    """TypeError unless quality is a real number (not a bool or a string); the range [0, 100] is
    checked by `rdo.plan`."""
    if isinstance(quality, bool) or not isinstance(quality, (int, float, np.integer, np.floating)):
        raise TypeError(f"quality must be a number from 0 to 100; got {type(quality).__name__} {quality!r}")
    return float(quality)


def _check_max_pixels(max_pixels: object) -> int:
    """TypeError / ValueError unless max_pixels is an int >= 1."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise TypeError(f"max_pixels must be an int >= 1, got {type(max_pixels).__name__} {max_pixels!r}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    return int(max_pixels)


def tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale_in: int,
          scale_out: int, core: int, halo: int) -> torch.Tensor:
    """Apply a local operator tile by tile on a latent-aligned grid.

    Tiles have `core` latent positions plus `halo` on each side; only the core of each output
    is kept.  When `halo` covers fn's receptive field the result equals fn(x) exactly.

    Args:
        fn: maps an input tile of g latent positions per side, [1, C, scale_in * g...], to
            [1, C', scale_out * g...].
        x: input tensor [1, C, scale_in * gh, scale_in * gw] (any dtype fn accepts).
        scale_in: pixels (or elements) of x per latent position, per side.
        scale_out: elements of fn's output per latent position, per side.
        core: tile size kept from each output, in latent positions per side.
        halo: extra context on each side of a tile, in latent positions.

    Returns:
        Tensor [1, C', scale_out * gh, scale_out * gw], fn's dtype and device.
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


def model_stages(model: zoo.CodecModel) -> int:
    """S_max, the most stages of indices a model codes per position (`CodecModel.stages`: 1 for
    architecture "vq")."""
    return model.stages


def is_multistage(model: zoo.CodecModel) -> bool:
    """True for a model of architecture "rvq" (codes [S, H, W] instead of an index grid [H, W])."""
    return model.arch == profiles.ARCH_RVQ


def encode_indices(model: zoo.CodecModel, pixels: np.ndarray, stages: int | None = None) -> np.ndarray:
    """Nearest-neighbour VQ indices of an image with the float encoder (effort 0, and the
    fallback grid of guarded efforts); for a multi-stage model, greedy residual quantisation
    (`RVQVAE.encode`), stage s quantising what stages < s left.

    Runs in tiles of PIXEL_TILE pixels with an 8-position halo, on `model.device`.

    Args:
        model: the loaded codec model (downsampling factor f).
        pixels: uint8 [H, W, 3], H and W multiples of f.
        stages: S for a multi-stage model, 1..model_stages(model) (None: all); must be None
            for a single-stage model. Greedy residual codes of S stages are the first S
            stages of those of more.

    Returns:
        Index grid int64 [H/f, W/f] (single-stage model) or codes int64 [S, H/f, W/f]
        (multi-stage model), values in [0, K).
    """
    f = model.f
    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].to(model.device)
    multi = is_multistage(model)
    depth = (stages or model_stages(model)) if multi else None

    def enc(t: torch.Tensor) -> torch.Tensor:
        if multi:  # [1, S, h, w]
            return model.vqvae.encode(t.float() / 255.0, depth=depth).to(torch.float32)
        return model.vqvae.encode(t.float() / 255.0)[:, None].to(torch.float32)

    idx = tiled(enc, x, f, 1, max(1, PIXEL_TILE // f), 8)
    return idx[0].to(torch.int64).cpu().numpy() if multi else idx[0, 0].to(torch.int64).cpu().numpy()


def decode_pixels(model: zoo.CodecModel, idx: np.ndarray, out: np.ndarray | Image.Image | None = None,
                  gray: bool = False) -> np.ndarray | Image.Image:
    """Index grid (or multi-stage codes) -> pixels with the integer decoder, in tiles with a
    halo (format/SPEC.md, "VQ-VAE decoder").

    Each decoded tile goes straight into `out`; pixels beyond its size are cropped.  Grey is
    floor((R + G + B + 1) / 3), per format/SPEC.md.  Memory beyond `out`: one tile's
    activations.  The result is bit-identical to a whole-image decode.

    Args:
        model: the loaded codec model (factor f, integer decoder and its halo).
        idx: index grid int64 [h, w], or codes int64 [S, h, w] of a multi-stage model (the
            decoder takes [N, S, h, w]), values in [0, K).
        out: where the pixels go: a uint8 array [H, W, C] (channels 0..C'-1 are written,
            C' = 1 when `gray`, else 3) or a PIL image of size W x H (the tile is pasted; an
            alpha channel becomes 255), with H <= f*h, W <= f*w.  None: a uint8 array
            [f*h, f*w, 1 or 3] is made.
        gray: write one grey channel instead of RGB.

    Returns:
        `out` (or the new array).
    """
    f, halo = model.f, model.decoder.halo
    gh, gw = idx.shape[-2:]
    if out is None:
        out = np.empty((f * gh, f * gw, 1 if gray else 3), dtype=np.uint8)
    width, height = out.size if isinstance(out, Image.Image) else (out.shape[1], out.shape[0])
    core = max(1, PIXEL_TILE // f)
    grid = torch.from_numpy(np.ascontiguousarray(idx))
    for r0 in range(0, -(-height // f), core):
        r1 = min(gh, r0 + core)
        a0, a1 = max(0, r0 - halo), min(gh, r1 + halo)
        for c0 in range(0, -(-width // f), core):
            c1 = min(gw, c0 + core)
            b0, b1 = max(0, c0 - halo), min(gw, c1 + halo)
            y = model.decoder(grid[None, ..., a0:a1, b0:b1])[0]  # uint8 [3, f*(a1-a0), f*(b1-b0)]
            y0, x0 = (r0 - a0) * f, (c0 - b0) * f
            ph, pw = min(height, r1 * f) - r0 * f, min(width, c1 * f) - c0 * f
            tile = y[:, y0:y0 + ph, x0:x0 + pw].permute(1, 2, 0).cpu().numpy()
            if gray:
                tile = ((tile.astype(np.uint16).sum(2, keepdims=True) + 1) // 3).astype(np.uint8)
            if isinstance(out, Image.Image):
                out.paste(Image.fromarray(np.ascontiguousarray(tile[..., 0] if gray else tile)),
                          (c0 * f, r0 * f))
            else:
                out[r0 * f:r0 * f + ph, c0 * f:c0 * f + pw, :tile.shape[2]] = tile
    return out


def _check_scale(scale: object) -> float | None:
    """TypeError / ValueError unless scale is None or a real number in [0.125, 1]."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.integer, np.floating)):
        raise TypeError(f"scale must be a number in (0, 1] or None; got {type(scale).__name__} {scale!r}")
    rdo.coded_size(1, 1, float(scale))  # ValueError outside [1/8, 1]
    return float(scale)


def downscale(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The encoder's downscale to the coded size: Pillow's Lanczos filter
    (`Image.resize(..., Image.Resampling.LANCZOS)`) on the uint8 channels.

    Not normative: how an encoder downscales is its own choice (format/SPEC.md, "Upsampling");
    only the decoder's upsampler is defined.

    Args:
        pixels: uint8 [H, W, C] with C = 1 (grey) or 3 (RGB).
        height: coded height in pixels, 1..H.
        width: coded width in pixels, 1..W.

    Returns:
        uint8 [height, width, C]; `pixels` itself when the size is already (H, W).

    Raises:
        ValueError: pixels is not uint8 [H, W, 1 or 3], or the coded size is outside 1..H x 1..W.
    """
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be uint8 [H, W, 1 or 3], got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    if not (1 <= height <= h and 1 <= width <= w):
        raise ValueError(f"coded size {width}x{height} is not within 1x1..{w}x{h}")
    if (height, width) == (h, w):
        return pixels
    im = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    small = np.asarray(im.resize((width, height), Image.Resampling.LANCZOS))
    return small.reshape(height, width, pixels.shape[2])


def _chunks(img: images.LoadedImage) -> tuple[container.Chunk, ...]:
    chunks = []
    if img.alpha is not None:
        chunks.append(container.Chunk(container.CHUNK_ALPHA, True, images.encode_alpha(img.alpha)))
    if img.icc_profile:
        chunks.append(container.Chunk(container.CHUNK_ICC, False, img.icc_profile))
    if img.exif:
        chunks.append(container.Chunk(container.CHUNK_EXIF, False, img.exif))
    return tuple(chunks)


class CompressReport(NamedTuple):
    """What `compress_report` made.

    Attributes:
        data: the `.vqc` file (bytes).
        quality: the quality Q it was made at: the `quality` asked for, or the one a target
            search found.
        coded_size: (height, width) in pixels of the image the payloads code; the display
            size when the file has no coded-size chunk (format/SPEC.md, "Chunks", type 5).
    """

    data: bytes
    quality: float
    coded_size: tuple[int, int]


def compress(image, quality: float = DEFAULT_QUALITY, *, device: str = "auto",
             model: str | None = None, effort: int = rdo.DEFAULT_EFFORT,
             target_bpp: float | None = None, size: int | None = None,
             scale: float | None = None, stages: int | None = None) -> bytes:
    """Compress an image to `.vqc` bytes (format/SPEC.md, "Layout").

    At effort >= 1 the index grid is chosen by entropy-constrained VQ (`vqcodec.rdo`, after
    Chou, Lookabaugh and Gray 1989) and the file is format 1.1 with a quality chunk; effort 0
    writes vqc 0.1's nearest-neighbour file byte for byte.  At a scale below 1 the image
    (not its alpha plane, which stays lossless at full size) is downscaled to
    `rdo.coded_size(H, W, scale)` with `downscale` and coded at that size; when that differs
    from H x W the file gets a coded-size chunk and minor version 2, and decoders upsample it
    with the normative filter (format/SPEC.md, "Upsampling").

    Args:
        image: a path, bytes, binary stream, PIL image, or uint8 array [H, W], [H, W, 1] or
            [H, W, 3]; alpha, ICC profile and EXIF of a loaded image are stored as chunks.
        quality: Q in [0, 100] on the continuous scale (`vqcodec.rdo.plan`: model, lambda,
            scale).
        device: "auto", "cpu", "cuda" or "cuda:N" for the encoder and prior pass.
        model: names a model directly instead of the one Q picks (lambda still from Q).
        effort: 0..9 (`vqcodec.rdo.EFFORTS`; 0 = nearest-neighbour encoder; 8 and 9 also try
            the neighbouring scales of Q's plan and keep the best per image, `rdo.pick_scale`,
            unless `scale` is given).
        target_bpp: instead of `quality`, a size in bits per pixel: the highest Q whose real
            file fits (`vqcodec.rdo.search_quality`; the Q=0 file when nothing fits).
        size: as target_bpp, in bytes of the whole file.
        scale: coded size / display size along each axis, in [0.125, 1] (the format allows at
            most 8x upsampling; like cwebp's -resize, an encoder choice); None: the scale of Q's
            plan (`rdo.plan(Q).scale`; 1 for a multi-stage model).
        stages: S, stages of indices per position, for a `model` of architecture "rvq"
            (1..`model_stages`; None: all of them). It is such a model's rate control: more
            stages, more bits and quality. With a multi-stage model `quality` is not used
            (nor is any effort: the codes are the greedy residual quantisation, as effort 0,
            and the file has no quality chunk), and `target_bpp` / `size` pick the most stages
            whose file fits (S = 1 when none does) instead of a quality; giving them together
            with `stages` is an error. For a single-stage model only None or 1.

    Returns:
        The `.vqc` file (bytes).

    Raises:
        VqcImageError: the image cannot be read or is not supported.
        VqcModelError: unknown model, missing or bad weights.
        TypeError: an argument of the wrong type (quality or scale not a number, model not a
            str, device not a str).
        ValueError: an argument of the wrong value (quality outside [0, 100], scale outside
            [0.125, 1], effort, target, an unknown device, an array that is not uint8
            [H, W(, 1|3)] or is too large, stages outside 1..the model's stages or with a
            target size, stages > 1 without a multi-stage `model`).
    """
    return compress_report(image, quality, device=device, model=model, effort=effort,
                           target_bpp=target_bpp, size=size, scale=scale, stages=stages).data


def compress_report(image, quality: float = DEFAULT_QUALITY, *, device: str = "auto",
                    model: str | None = None, effort: int = rdo.DEFAULT_EFFORT,
                    target_bpp: float | None = None, size: int | None = None,
                    scale: float | None = None, stages: int | None = None) -> CompressReport:
    """`compress`, also returning the quality Q and the coded size the file was made at.

    Args:
        image, quality, device, model, effort, target_bpp, size, scale, stages: as `compress`.

    Returns:
        `CompressReport` (data, quality, coded_size); it unpacks as a 3-tuple (for a
        multi-stage model, quality is the `quality` argument, which it did not use; the file
        header's `stages` says what was coded).

    Raises:
        As `compress`.
    """
    _check_quality(quality)
    if model is not None and not isinstance(model, str):
        raise TypeError(f"model must be a model name (str), got {type(model).__name__}")
    device = _check_device(device)
    scale = _check_scale(scale)
    rdo.effort(effort)
    rdo.target_bytes(target_bpp, size, 1, 1)  # argument checks before any work
    if target_bpp is None and size is None:
        rdo.plan(quality)
    staged = _staged_model(model, stages, device, target_bpp is not None or size is not None)
    img = _as_loaded(image)
    h, w = img.pixels.shape[:2]
    target = rdo.target_bytes(target_bpp, size, w, h)
    if staged is not None:
        return _compress_stages(img, staged, stages, scale, target, float(quality))
    resized: dict[tuple[int, int], np.ndarray] = {}  # coded size -> RGB pixels at that size
    cache: dict[tuple[str, int, int], tuple] = {}  # (model, coded size) -> (nn grid, latents)

    def rgb_at(coded: tuple[int, int]) -> np.ndarray:
        if coded not in resized:
            resized[coded] = _rgb(img, coded)
        return resized[coded]

    def encode_plan(q: float, p: rdo.Plan, coded: tuple[int, int]
                    ) -> tuple[bytes, np.ndarray, zoo.CodecModel]:
        """The file of one plan at one coded size, its index grid and model."""
        m = zoo.load(model or p.model, device=device)
        ch, cw = coded
        if (m.name, ch, cw) not in cache:
            padded = images.pad_to_multiple(rgb_at(coded), m.f)
            nn = encode_indices(m, padded) if effort == 0 or rdo.effort(effort).guard else None
            cache[m.name, ch, cw] = (nn, rdo.latents(m, padded) if effort else None)
        nn, z = cache[m.name, ch, cw]
        # effort 0 is vqc 0.1's encoder, byte for byte (no quality chunk either)
        quality_chunk = () if effort == 0 else (
            container.Chunk(container.CHUNK_QUALITY, False, container.pack_quality(q, effort)),)
        header, chunks = _header(img, m, coded, (-(-ch // m.f), -(-cw // m.f)), quality_chunk)
        grid = nn
        if effort == 0:
            payloads = entropy.encode_grid(m.prior, nn, header.tile_slices())
        else:
            chosen = rdo.choose_grid(m, z, p.lam, effort, header.tile_slices(), nn)
            payloads, grid = chosen.payloads, chosen.grid
        return container.write(container.VqcFile(header, tuple(payloads), chunks)), grid, m

    def shown_psnr(m: zoo.CodecModel, grid: np.ndarray, coded: tuple[int, int]) -> float:
        """PSNR (dB) at the display size of what a decoder shows for a grid."""
        gray = img.pixels.shape[2] == 1
        small = decode_pixels(m, grid, np.empty((*coded, 1 if gray else 3), dtype=np.uint8), gray=gray)
        shown = small if coded == (h, w) else upsample.upsample(small, h, w)
        return metrics.psnr(img.pixels, shown)

    made: dict[bytes, tuple[int, int]] = {}  # file -> its coded size

    def encode_at(q: float) -> bytes:
        plans = rdo.scale_candidates(q, effort) if scale is None else [rdo.plan(q)]
        files = [(*encode_plan(q, p, coded), coded) for p in plans
                 for coded in [rdo.coded_size(h, w, p.scale if scale is None else scale)]]
        best = 0
        if len(files) > 1:  # efforts 8-9: the plan's scale or a neighbour, per image (rdo.pick_scale)
            points = [(8 * len(data) / (h * w), shown_psnr(m, grid, coded)) for data, grid, m, coded in files]
            best = rdo.pick_scale(points, rdo.rd_slope(q))
        made[files[best][0]] = files[best][3]
        return files[best][0]

    if target is None:
        q = float(quality)
        data = encode_at(q)
        return CompressReport(data, q, made[data])
    breaks = rdo.quality_breaks()  # where the model or the scale changes (either may be fixed)
    q, data, _ = rdo.search_quality(encode_at, target, breaks)
    return CompressReport(data, q, made[data])


def _check_stages_arg(stages: object) -> None:
    """TypeError unless stages is None or an int (not a bool)."""
    if stages is not None and (isinstance(stages, bool) or not isinstance(stages, (int, np.integer))):
        raise TypeError(f"stages must be an int or None, got {type(stages).__name__} {stages!r}")


def _staged_model(model: str | None, stages: object, device: str, targeted: bool) -> zoo.CodecModel | None:
    """The multi-stage model `model` names (loaded), after checking `stages` against it; None
    for no model or a single-stage one (then stages must be None or 1).

    Raises:
        TypeError: stages is not None or an int.
        ValueError: stages outside 1..the model's stages, given with a target size (targeted),
            or > 1 without a multi-stage model.
        VqcModelError: as `zoo.load`.
    """
    _check_stages_arg(stages)
    if model is None:
        if stages not in (None, 1):
            raise ValueError(f"stages={stages} needs a multi-stage (arch rvq) model: name it with model=")
        return None
    m = zoo.load(model, device=device)
    if not is_multistage(m):
        if stages not in (None, 1):
            raise ValueError(f"model {model!r} codes 1 stage per position, not {stages}")
        return None
    _stages_in_range(m, stages, targeted)
    return m


def _stages_in_range(m: zoo.CodecModel, stages: int | None, targeted: bool) -> None:
    """ValueError unless stages is None or in 1..model_stages(m), and not given with a target."""
    if stages is not None and not 1 <= stages <= model_stages(m):
        raise ValueError(f"stages must be in 1..{model_stages(m)} for model {m.name!r}, got {stages}")
    if stages is not None and targeted:
        raise ValueError("give stages or a target size (target_bpp / size), not both: with a "
                         "multi-stage model the target picks the stages")


def _rgb(img: images.LoadedImage, coded: tuple[int, int]) -> np.ndarray:
    """The image's colour samples at the coded size as uint8 [h, w, 3] (grey repeated)."""
    small = downscale(img.pixels, *coded)
    return np.repeat(small, 3, axis=2) if small.shape[2] == 1 else small


def _header(img: images.LoadedImage, m: zoo.CodecModel, coded: tuple[int, int], grid_hw: tuple[int, int],
            extra: tuple[container.Chunk, ...] = (), stages: int = 1
            ) -> tuple[container.Header, tuple[container.Chunk, ...]]:
    """The header and chunks of a file of `img` coded by `m` at the coded size `coded` (h, w):
    the image's chunks (`_chunks`), then `extra`, a coded-size chunk when the coded size is not
    the display size, a stages chunk when stages > 1; minor version `container.minor_version`
    of those chunks (files without the later chunks stay byte-identical to older ones)."""
    h, w = img.pixels.shape[:2]
    chunks = _chunks(img) + extra
    if coded != (h, w):
        chunks += (container.Chunk(container.CHUNK_CODED_SIZE, True, container.pack_coded_size(*coded)),)
    if stages > 1:
        chunks += (container.stages_chunk(stages),)
    header = container.Header(
        model_name=m.name, model_hash=m.model_hash, width=w, height=h,
        mode=container.Mode.L if img.mode == "L" else container.Mode.RGB,
        grid_h=grid_hw[0], grid_w=grid_hw[1], tile_h=m.tile, tile_w=m.tile,
        version_minor=container.minor_version(chunks), stages=stages)
    return header, chunks


def _stages_file(img: images.LoadedImage, m: zoo.CodecModel, codes: np.ndarray,
                 coded: tuple[int, int]) -> bytes:
    """The `.vqc` file of multi-stage codes int64 [S, gh, gw] (`_header` with S stages)."""
    header, chunks = _header(img, m, coded, codes.shape[1:], stages=codes.shape[0])
    payloads = entropy.encode_grid(m.prior, codes, header.tile_slices())
    return container.write(container.VqcFile(header, tuple(payloads), chunks))


def _compress_stages(img: images.LoadedImage, m: zoo.CodecModel, stages: int | None, scale: float | None,
                     target: int | None, quality: float) -> CompressReport:
    """`compress_report` for a multi-stage model: greedy residual codes (no RDO, any effort),
    `stages` of them, or with a target the most stages whose file has at most `target` bytes
    (1 when none fits); coded at `scale` (None: 1)."""
    h, w = img.pixels.shape[:2]
    coded = rdo.coded_size(h, w, 1.0 if scale is None else scale)
    padded = images.pad_to_multiple(_rgb(img, coded), m.f)
    s_max = model_stages(m)
    codes = encode_indices(m, padded, s_max if target is not None else (stages or s_max))
    if target is None:
        return CompressReport(_stages_file(img, m, codes, coded), quality, coded)
    for s in range(s_max, 1, -1):
        data = _stages_file(img, m, codes[:s], coded)
        if len(data) <= target:
            return CompressReport(data, quality, coded)
    return CompressReport(_stages_file(img, m, codes[:1], coded), quality, coded)


def _decode_indices(data: bytes, device: str, max_pixels: int
                    ) -> tuple[container.VqcFile, zoo.CodecModel, np.ndarray]:
    """Parse, check everything that is cheap to check (grid, tile budget, alpha and ICC chunk
    headers), then decode the index grid."""
    device = _check_device(device)
    f = container.read(data, max_pixels=_check_max_pixels(max_pixels))
    hd = f.header
    m = zoo.load(hd.model_name, hd.model_hash, device=device)
    if hd.stages > model_stages(m):
        raise VqcFormatError(f"file codes {hd.stages} stages, model {m.name} has {model_stages(m)}")
    coded_h, coded_w = container.coded_size(hd, f.chunks)
    if (hd.grid_h, hd.grid_w) != (-(-coded_h // m.f), -(-coded_w // m.f)):
        coded = "" if (coded_h, coded_w) == (hd.height, hd.width) else " coded"
        raise VqcFormatError(f"latent grid {hd.grid_h}x{hd.grid_w} does not fit a "
                             f"{coded_w}x{coded_h}{coded} image at f={m.f}")
    entropy.check_tile_shape(*hd.tile_shape)
    chunks = {c.type: c.data for c in f.chunks}
    images.check_metadata_sizes(chunks.get(container.CHUNK_ICC), chunks.get(container.CHUNK_EXIF),
                            VqcFormatError)
    if container.CHUNK_ALPHA in chunks:
        images.check_alpha_header(chunks[container.CHUNK_ALPHA], hd.width, hd.height)
    if is_multistage(m):
        return f, m, entropy.decode_grid(m.prior, f.payloads, hd.grid_h, hd.grid_w, hd.tiles,
                                         stages=hd.stages)
    return f, m, entropy.decode_grid(m.prior, f.payloads, hd.grid_h, hd.grid_w, hd.tiles)


def decompress_grid(data: bytes, *, device: str = "auto",
                    max_pixels: int = container.DEFAULT_MAX_PIXELS) -> tuple[container.VqcFile, np.ndarray]:
    """Parse a `.vqc` file and decode its index grid, without decoding pixels.

    Args:
        data, device, max_pixels: as `decompress`.

    Returns:
        (parsed `container.VqcFile`, index grid int64 [grid_h, grid_w]; codes int64
        [S, grid_h, grid_w] for a multi-stage model, S = the header's `stages`).

    Raises:
        As `decompress`.
    """
    f, _, idx = _decode_indices(data, device, max_pixels)
    return f, idx


def _upsampled(m: zoo.CodecModel, idx: np.ndarray, coded: tuple[int, int], height: int,
               width: int, gray: bool) -> Image.Image:
    """Decode the pixels at the coded size and upsample them to the display size
    (format/SPEC.md, "Decoding procedure" step 5, "Upsampling"), strip by strip straight into
    the output image: a PIL image L or RGB (`putalpha` adds the alpha plane)."""
    small = decode_pixels(m, idx, np.empty((*coded, 1 if gray else 3), dtype=np.uint8), gray=gray)
    image = Image.new("L" if gray else "RGB", (width, height))
    for y0, strip in upsample.strips(small, height, width):
        image.paste(Image.fromarray(strip[..., 0] if gray else strip), (0, y0))
    return image


def decompress_with_grid(data: bytes, *, device: str = "auto",
                         max_pixels: int = container.DEFAULT_MAX_PIXELS) -> tuple[Image.Image, np.ndarray]:
    """`decompress`, also returning the decoded index grid int64 [grid_h, grid_w] (one decode;
    codes int64 [S, grid_h, grid_w] for a multi-stage model).

    The output PIL image is allocated once, at its final mode and size, and pixel tiles are
    pasted into it as they are decoded (no whole-image array or float tensor); the alpha plane
    is put in place afterwards.  A file with a coded-size chunk is decoded into a uint8 array
    at the coded size, then upsampled to the display size in strips pasted into the output
    image (`vqcodec.upsample.strips`).

    Args:
        data, device, max_pixels: as `decompress`.

    Returns:
        (PIL image as `decompress`, index grid int64 [grid_h, grid_w]).

    Raises:
        As `decompress`.
    """
    f, m, idx = _decode_indices(data, device, max_pixels)
    hd = f.header
    gray = hd.mode == container.Mode.L
    chunks = {c.type: c.data for c in f.chunks}
    has_alpha = container.CHUNK_ALPHA in chunks
    mode = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
    coded = container.coded_size(hd, f.chunks)
    if coded == (hd.height, hd.width):
        image = Image.new(mode, (hd.width, hd.height))
        decode_pixels(m, idx, image, gray=gray)
    else:
        image = _upsampled(m, idx, coded, hd.height, hd.width, gray)
    if has_alpha:
        alpha = images.decode_alpha(chunks[container.CHUNK_ALPHA], hd.width, hd.height)
        image.putalpha(Image.fromarray(alpha))  # in place (L -> LA, RGB -> RGBA when upsampled)
    for key, chunk in (("icc_profile", container.CHUNK_ICC), ("exif", container.CHUNK_EXIF)):
        if chunks.get(chunk):
            image.info[key] = bytes(chunks[chunk])
    return image, idx


def decompress(data: bytes, *, device: str = "auto",
               max_pixels: int = container.DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `.vqc` bytes to a PIL image (mode L, LA, RGB or RGBA, with ICC/EXIF if stored).

    Memory: the model, the decoder's fixed budgets (`entropy.DECODE_POSITIONS`, one pixel tile),
    the index grid (8 bytes per latent position) and the output image (Pillow: 1 byte per pixel
    for L, 4 for LA, RGB and RGBA): see format/SPEC.md, "Resource limits and conforming
    payloads" and "Decoding procedure".

    Args:
        data: the `.vqc` file (bytes).
        device: "auto", "cpu", "cuda" or "cuda:N" for the prior and decoder.
        max_pixels: refuse images of more pixels (width x height) than this.

    Returns:
        PIL image of the stored width x height, mode L, LA, RGB or RGBA; `info["icc_profile"]`
        and `info["exif"]` (bytes) when stored.

    Raises:
        VqcFormatError: malformed file, non-conforming payload, bad alpha/ICC/EXIF chunk.
        VqcLimitError: image over `max_pixels`, tile above the decoder's budget.
        VqcModelError: model unknown or not installed, or its weights fail the hash check.
        TypeError: `device` or `max_pixels` of the wrong type.
        ValueError: `device` or `max_pixels` of the wrong value.
    """
    return decompress_with_grid(data, device=device, max_pixels=max_pixels)[0]
