#!/usr/bin/env python3
"""Reference decoder of the .vqc format, written from format/SPEC.md alone.

    python format/reference/decode.py IN.vqc OUT.png [--models DIR] [--max-pixels N]

Plain Python and NumPy: `safetensors.numpy` reads the model file and Pillow reads the alpha
plane's PNG and writes OUT.png; nothing of the `vqcodec` package is used.  It is written to be
read next to SPEC.md, not to be fast (a 768x512 Kodak image takes 5-30 s on one thread) and
not hardened against hostile sizes: it decodes the whole image at once, in int64.  The model
file's metadata key "profile" picks the networks (`network.Model`): those of `network.py`
(profile exact, the v1 models) or of `network_int8.py` (profile int8, the v2 models).  A file
with a coded-size chunk (SPEC.md 1.2) is decoded at its coded size and upsampled with the
filter of SPEC.md "Upsampling", its taps read from format/upsample-taps.txt.  A model file
with the metadata "arch": "rvq" (SPEC.md 1.3, "Architecture rvq") codes S indices per latent
position, S from the file's stages chunk (1 without one): its stage prior and decoder are those
of `network_int8.py`, and the indices are decoded in the coding order with stages.

Exit status: 0 on success; 3 for a malformed file (format error), 5 when the model is unknown
or its file does not match (model error), 6 when a decoder limit is exceeded (limit error);
the one-line message goes to stderr and OUT is not written.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import re
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules below
from network import Model, ModelError  # noqa: E402
from rangecoder import PayloadError, RangeDecoder, cdf_from_pmf  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "models"
MAGIC = b"\x89VQC"
MAX_DIM = 2**32 - 1
MAX_GRID = 2**28
MAX_CHUNKS = 64
MAX_CHUNK_TYPE = 2**31 - 1
DEFAULT_MAX_PIXELS = 2**28
MAX_TILES = 2**20  # decoder limits (SPEC.md "Resource limits and conforming payloads")
MAX_TILE_SIDE = 256
MAX_TILE_POSITIONS = 2**14
CHUNK_ALPHA, CHUNK_ICC, CHUNK_EXIF, CHUNK_CODED_SIZE, CHUNK_STAGES = 1, 2, 3, 5, 6
MAX_FILE_STAGES = 16  # SPEC.md "Chunks", type 6
TAPS_FILE = Path(__file__).resolve().parent.parent / "upsample-taps.txt"
TAPS_SHA256 = "477bb526b1bf5a338e45f2389460e9941fe41a6431e8392cb65028fb91e6ab02"  # SPEC.md "Upsampling"
MODEL_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{0,31}")  # SPEC.md "Model file": a name, never a path


class FormatError(Exception):
    exit_code = 3


class LimitError(Exception):
    exit_code = 6


ModelError.exit_code = 5


# ------------------------------------------------------------------------------ container


class Reader:
    """Sequential reader over the file bytes; never reads past the end."""

    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int, what: str) -> bytes:
        if n > self.left():
            raise FormatError(f"truncated: {what} needs {n} bytes, {self.left()} left")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def varint(self, what: str, maximum: int) -> int:
        """Unsigned LEB128, at most 10 bytes, shortest form, value <= maximum."""
        value = 0
        for i in range(10):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise FormatError(f"{what}: over-long varint")
                break
        else:
            raise FormatError(f"{what}: varint longer than 10 bytes")
        if value > maximum:
            raise FormatError(f"{what} is {value}, above the maximum {maximum}")
        return value


def tiles_of(grid_h: int, grid_w: int, tile_h: int, tile_w: int) -> tuple[int, int]:
    """Number of tile rows and tile columns (SPEC.md "Tiling")."""
    if tile_h == 0:
        return 1, 1
    return -(-grid_h // tile_h), -(-grid_w // tile_w)


def parse(data: bytes, max_pixels: int) -> dict:
    """Parse and check a whole .vqc file (SPEC.md "Layout", "Chunks", "Reader rules")."""
    if not data:
        raise FormatError("empty input: not a .vqc file")
    if data[:4] != MAGIC:
        raise FormatError("not a .vqc file (bad magic)")
    r = Reader(data)
    r.take(4, "magic")
    major, minor = r.u8("version"), r.u8("version")
    if major != 1:
        raise FormatError(f"unsupported .vqc version {major}.{minor}")
    n = r.u8("model name length")
    if not 1 <= n <= 32:
        raise FormatError(f"model name length {n} is not in 1..32")
    name = r.take(n, "model name")
    if not all(0x21 <= b <= 0x7E for b in name):
        raise FormatError("model name is not printable ASCII without spaces")
    f = {"model_name": name.decode("ascii"), "model_hash": r.take(8, "model hash")}
    f["width"] = r.varint("image width", MAX_DIM)
    f["height"] = r.varint("image height", MAX_DIM)
    f["mode"] = r.u8("image mode")
    for key in ("grid_h", "grid_w", "tile_h", "tile_w"):
        f[key] = r.varint(key, MAX_DIM)
    if f["width"] < 1 or f["height"] < 1:
        raise FormatError("image width and height must be at least 1")
    if f["mode"] not in (1, 3):
        raise FormatError(f"unknown image mode {f['mode']} (1 = L, 3 = RGB)")
    if not (1 <= f["grid_h"] <= f["height"] and 1 <= f["grid_w"] <= f["width"]):
        raise FormatError("latent grid must be 1..height x 1..width")
    if f["grid_h"] * f["grid_w"] > MAX_GRID:
        raise FormatError(f"latent grid has more than {MAX_GRID} positions")
    if (f["tile_h"] == 0) != (f["tile_w"] == 0):
        raise FormatError("tile size: either both or neither dimension may be 0")
    chunks = []
    for i in range(r.varint("chunk count", MAX_CHUNKS)):
        key = r.varint(f"chunk {i} type", MAX_CHUNK_TYPE * 2 + 1)
        length = r.varint(f"chunk {i} length", MAX_DIM)
        chunks.append((key >> 1, key & 1, r.take(length, f"chunk {i}")))
    rows, cols = tiles_of(f["grid_h"], f["grid_w"], f["tile_h"], f["tile_w"])
    if rows * cols > r.left():
        raise FormatError(f"truncated: {rows * cols} tiles need at least {rows * cols} bytes")
    if rows * cols > MAX_TILES:
        raise LimitError(f"file has {rows * cols} tiles, above the limit of {MAX_TILES}")
    payloads = []
    for i in range(rows * cols):
        length = r.varint(f"payload {i} length", MAX_DIM)
        if length % 4:
            raise FormatError(f"payload {i} is {length} bytes, not a whole number of 32-bit words")
        payloads.append(r.take(length, f"payload {i}"))
    covered = r.pos
    crc = int.from_bytes(r.take(4, "CRC-32"), "little")
    if crc != zlib.crc32(data[:covered]):
        raise FormatError("CRC mismatch: file is corrupted")
    if r.left():
        raise FormatError(f"trailing garbage: {r.left()} bytes after the CRC")
    f["chunks"] = {}
    for ctype, critical, body in chunks:
        if ctype == 0:
            raise FormatError("chunk type 0 is reserved")
        if ctype not in (CHUNK_ALPHA, CHUNK_ICC, CHUNK_EXIF, CHUNK_CODED_SIZE, CHUNK_STAGES):
            if critical:
                raise FormatError(f"unknown critical chunk type {ctype}")
            continue
        if ctype in f["chunks"]:
            raise FormatError(f"duplicate chunk of type {ctype}")
        f["chunks"][ctype] = body
    f["coded_w"], f["coded_h"] = f["width"], f["height"]
    if CHUNK_CODED_SIZE in f["chunks"]:
        f["coded_w"], f["coded_h"] = coded_size(f["chunks"][CHUNK_CODED_SIZE], f["width"], f["height"])
    f["stages"] = stages(f["chunks"][CHUNK_STAGES]) if CHUNK_STAGES in f["chunks"] else 1
    if f["width"] * f["height"] > max_pixels:
        raise LimitError(f"image is {f['width']}x{f['height']}, above the limit of {max_pixels} pixels")
    f["payloads"] = payloads
    return f


def coded_size(body: bytes, width: int, height: int) -> tuple[int, int]:
    """The coded-size chunk (SPEC.md "Chunks", type 5): varint coded_width, varint coded_height,
    nothing else, 1 <= coded <= display <= 8 * coded -> (coded_width, coded_height)."""
    r = Reader(body)
    coded_w = r.varint("coded width", MAX_DIM)
    coded_h = r.varint("coded height", MAX_DIM)
    if r.left():
        raise FormatError(f"coded-size chunk has {r.left()} bytes after its two varints")
    if not (1 <= coded_w <= width and 1 <= coded_h <= height):
        raise FormatError(f"coded size {coded_w}x{coded_h} is not within 1x1..{width}x{height}")
    if width > 8 * coded_w or height > 8 * coded_h:
        raise FormatError(f"coded size {coded_w}x{coded_h} needs more than 8x upsampling to {width}x{height}")
    return coded_w, coded_h


def stages(body: bytes) -> int:
    """The stages chunk (SPEC.md "Chunks", type 6): exactly one byte S, 1 <= S <= 16."""
    if len(body) != 1 or not 1 <= body[0] <= MAX_FILE_STAGES:
        raise FormatError(f"bad stages chunk ({len(body)} bytes"
                          + (f", S = {body[0]})" if len(body) == 1 else ")"))
    return body[0]


# ------------------------------------------------------------------------------ upsampling


def read_taps() -> np.ndarray:
    """TAPS int64 [64, 6] from format/upsample-taps.txt, checked against its SHA-256."""
    raw = TAPS_FILE.read_bytes()
    if hashlib.sha256(raw).hexdigest() != TAPS_SHA256:
        raise RuntimeError(f"{TAPS_FILE} does not match its SHA-256 in SPEC.md")
    rows = [line.split() for line in raw.decode("ascii").splitlines() if not line.startswith("#")]
    return np.array([[int(v) for v in row] for row in rows if row], dtype=np.int64)


def source_taps(n_in: int, n_out: int, taps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Along one axis: for each output sample x, the 6 source indices clamp(i(x) - 2 + t) and
    their weights TAPS[ph(x)][t], both int64 [n_out, 6] (SPEC.md "Upsampling")."""
    x = np.arange(n_out, dtype=np.int64)
    p = ((2 * x + 1) * n_in * 64 - 64 * n_out) // (2 * n_out)  # numpy's // is floor division
    i = p // 64
    ph = p - 64 * i
    index = np.clip(i[:, None] - 2 + np.arange(6)[None, :], 0, n_in - 1)
    return index, taps[ph]


def upsample(plane: np.ndarray, height: int, width: int, taps: np.ndarray) -> np.ndarray:
    """One channel, int64 [coded_height, coded_width] -> uint8 [height, width]: horizontally,
    then vertically, in exact int64 (SPEC.md "Upsampling")."""
    xi, xw = source_taps(plane.shape[1], width, taps)
    yi, yw = source_taps(plane.shape[0], height, taps)
    hor = (plane[:, xi] * xw[None]).sum(2)           # [coded_height, width], units 1/128
    ver = (hor[yi] * yw[:, :, None]).sum(1)          # [height, width], units 1/16384
    return np.clip((ver + 8192) // 16384, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------ decoding


def tile_spans(n: int, tile: int) -> list[tuple[int, int]]:
    return [(0, n)] if tile == 0 else [(a, min(a + tile, n)) for a in range(0, n, tile)]


def decode_tile(model: Model, payload: bytes, h: int, w: int, number: int, stages: int = 1) -> np.ndarray:
    """Range-decode one tile's indices with the prior's PMFs -> int64 [h, w], or for a model of
    arch rvq its codes of `stages` stages -> int64 [stages, h, w]."""
    try:
        coder = RangeDecoder(np.frombuffer(payload, dtype="<u4").tolist())

        def decode_symbols(pmfs: np.ndarray) -> list[int]:
            return [coder.decode(cdf_from_pmf(p)) for p in pmfs]

        if model.arch == "rvq":
            grid = model.prior.decode_tile(h, w, decode_symbols, stages)
        else:
            grid = model.prior.decode_tile(h, w, decode_symbols)
        coder.finish()
    except PayloadError as exc:
        raise FormatError(f"payload of tile {number} is not a conforming range-coder stream: {exc}") from None
    return grid


def decode_alpha(body: bytes, width: int, height: int) -> np.ndarray:
    """The alpha chunk: an 8-bit greyscale PNG of exactly width x height -> uint8 [height, width]."""
    # PNG signature, then IHDR: length, "IHDR", width, height, bit depth, colour type
    if len(body) < 33 or body[:8] != b"\x89PNG\r\n\x1a\n" or body[12:16] != b"IHDR":
        raise FormatError("alpha chunk is not a PNG")
    if (int.from_bytes(body[16:20], "big"), int.from_bytes(body[20:24], "big")) != (width, height):
        raise FormatError(f"alpha plane is not {width}x{height}")
    if body[24] != 8 or body[25] != 0:
        raise FormatError("alpha plane is not an 8-bit greyscale PNG")
    pos = 8  # chunk headers up to the first IDAT: an acTL chunk (APNG) is an error
    while pos + 8 <= len(body) and body[pos + 4:pos + 8] not in (b"IDAT", b"IEND"):
        if body[pos + 4:pos + 8] == b"acTL":
            raise FormatError("alpha plane PNG is animated")
        pos += 12 + int.from_bytes(body[pos:pos + 4], "big")
    try:
        # the PNG reader itself: the size was checked above against the header, so Pillow's
        # process-wide decompression-bomb limit (lower than the pixel cap) must not apply
        with PngImagePlugin.PngImageFile(io.BytesIO(body)) as im:
            im.load()
            return np.array(im, dtype=np.uint8)
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"alpha plane is not a valid PNG ({exc})") from None


def decode(data: bytes, models_dir: Path, max_pixels: int = DEFAULT_MAX_PIXELS
           ) -> tuple[Image.Image, np.ndarray]:
    """.vqc bytes -> (Pillow image L, LA, RGB or RGBA with any ICC profile and EXIF in .info,
    decoded index grid int64 [grid_h, grid_w], or codes int64 [S, grid_h, grid_w] for a model
    of arch rvq).  Raises FormatError, ModelError, LimitError."""
    f = parse(data, max_pixels)
    if not MODEL_NAME.fullmatch(f["model_name"]):
        raise ModelError(f"model name {f['model_name']!r} is not a model identifier")
    path = models_dir / f"{f['model_name']}.safetensors"
    if not path.is_file():
        raise ModelError(f"unknown model {f['model_name']!r} (no {path})")
    model = Model(path)
    if model.id != f["model_hash"]:
        raise ModelError(f"file needs model {f['model_name']} with id {f['model_hash'].hex()}, "
                         f"found id {model.id.hex()}")
    if f["stages"] > model.stages:
        raise FormatError(f"file codes {f['stages']} stages, model {f['model_name']} has {model.stages}")
    if (f["grid_h"], f["grid_w"]) != (-(-f["coded_h"] // model.f), -(-f["coded_w"] // model.f)):
        raise FormatError(f"latent grid {f['grid_h']}x{f['grid_w']} does not fit the "
                          f"{f['coded_w']}x{f['coded_h']} coded image at f={model.f}")
    th, tw = [min(t, g) if t else g for t, g in ((f["tile_h"], f["grid_h"]), (f["tile_w"], f["grid_w"]))]
    if max(th, tw) > MAX_TILE_SIDE or th * tw > MAX_TILE_POSITIONS:
        raise LimitError(f"prior tiles of {th}x{tw} are above the limit ({MAX_TILE_SIDE} a side, "
                         f"{MAX_TILE_POSITIONS} positions)")
    alpha = None
    if CHUNK_ALPHA in f["chunks"]:
        alpha = decode_alpha(f["chunks"][CHUNK_ALPHA], f["width"], f["height"])
    shape = (f["grid_h"], f["grid_w"]) if model.arch == "vq" else (f["stages"], f["grid_h"], f["grid_w"])
    grid = np.zeros(shape, dtype=np.int64)
    tiles = [(rs, cs) for rs in tile_spans(f["grid_h"], f["tile_h"])
             for cs in tile_spans(f["grid_w"], f["tile_w"])]
    for number, ((r0, r1), (c0, c1)) in enumerate(tiles):
        grid[..., r0:r1, c0:c1] = decode_tile(model, f["payloads"][number], r1 - r0, c1 - c0, number,
                                              f["stages"])
    rgb = model.decoder(grid)[:f["coded_h"], :f["coded_w"]]
    if f["mode"] == 1:
        planes = [(rgb.astype(np.uint16).sum(2) + 1) // 3]
    else:
        planes = [rgb[..., k] for k in range(3)]
    if (f["coded_h"], f["coded_w"]) != (f["height"], f["width"]):  # grey first, then upsample
        taps = read_taps()
        planes = [upsample(p.astype(np.int64), f["height"], f["width"], taps) for p in planes]
    if alpha is not None:
        planes.append(alpha)
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[len(planes)]
    pixels = np.stack(planes, 2).astype(np.uint8)
    image = Image.fromarray(pixels[..., 0] if mode == "L" else pixels)  # L, LA, RGB, RGBA
    assert image.mode == mode
    if CHUNK_ICC in f["chunks"]:
        image.info["icc_profile"] = f["chunks"][CHUNK_ICC]
    if CHUNK_EXIF in f["chunks"]:
        image.info["exif"] = f["chunks"][CHUNK_EXIF]
    return image, grid


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Reference .vqc decoder (format/SPEC.md).")
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--models", type=Path, default=MODELS_DIR, help="directory of <name>.safetensors")
    ap.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    ap.add_argument("--grid", type=Path, help="also write the decoded index grid (.npy)")
    args = ap.parse_args(argv)
    try:
        image, grid = decode(args.input.read_bytes(), args.models, args.max_pixels)
    except (FormatError, LimitError, ModelError) as exc:
        kind = {3: "format", 5: "model", 6: "limit"}[exc.exit_code]
        print(f"decode.py: {kind} error: {exc}", file=sys.stderr)
        return exc.exit_code
    if args.grid:
        np.save(args.grid, grid)
    params = {k: image.info[k] for k in ("icc_profile", "exif") if k in image.info}
    image.save(args.output, format="PNG", **params)
    return 0


if __name__ == "__main__":
    sys.exit(main())
