"""The `.vqc` container, version 1: bytes <-> header + one payload per tile + optional chunks.

The byte layout and every rule enforced here are specified in `format/SPEC.md`. The reader is
strict: every length is checked against a cap and against the bytes present before it is used,
nothing proportional to a header field is allocated, the CRC-32 and the absence of trailing bytes
are verified, and every failure raises `VqcFormatError` (or `VqcLimitError` for the pixel cap)
with a message that says what is wrong.
"""

from __future__ import annotations

import array
import dataclasses
import enum
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from vqcodec.constants import DECODE_MAX_PIXELS, MAX_TILES, MAX_UPSCALE
from vqcodec.errors import VqcFormatError, VqcLimitError

MAGIC = b"\x89VQC"
VERSION_MAJOR = 1
VERSION_MINOR = 0
DEFAULT_MAX_PIXELS = DECODE_MAX_PIXELS  # decoding; inputs to the encoder may have up to MAX_PIXELS

MAX_MODEL_NAME_BYTES = 32
MODEL_HASH_BYTES = 8
MAX_DIM = 2**32 - 1  # image width/height, grid and tile dimensions
MAX_GRID_CELLS = 2**28  # grid_h * grid_w
MAX_CHUNKS = 64
MAX_CHUNK_TYPE = 2**31 - 1
MAX_CHUNK_BYTES = 2**32 - 1
MAX_PAYLOAD_BYTES = 2**32 - 1
MAX_VARINT_BYTES = 10
CRC_BYTES = 4

CHUNK_ALPHA = 1  # alpha plane, lossless: an 8-bit greyscale PNG of width x height
CHUNK_ICC = 2  # ICC colour profile, verbatim
CHUNK_EXIF = 3  # EXIF metadata, verbatim (TIFF header onwards, no "Exif\0\0" prefix)
CHUNK_QUALITY = 4  # encoder settings, optional (1.1): quality * 100 as u16le, effort u8
CHUNK_CODED_SIZE = 5  # coded size, critical (1.2): varint coded_width, varint coded_height
CHUNK_STAGES = 6  # stages of indices per position, critical (1.3): u8 S in 1..MAX_FILE_STAGES
KNOWN_CHUNKS = {CHUNK_ALPHA: "alpha", CHUNK_ICC: "ICC profile", CHUNK_EXIF: "EXIF",
                CHUNK_QUALITY: "quality", CHUNK_CODED_SIZE: "coded size", CHUNK_STAGES: "stages"}
#: Minor version of files with a coded-size chunk (vqc writes it exactly then, unless a stages
#: chunk makes it 3; without either chunk files stay 1.0 / 1.1, byte for byte).
VERSION_MINOR_CODED_SIZE = 2
#: Minor version of files with a stages chunk (vqc writes it exactly then).
VERSION_MINOR_STAGES = 3
#: Most stages a file may code (the stages chunk's range; a model has at most 8).
MAX_FILE_STAGES = 16


class Mode(enum.IntEnum):
    """Colour mode of the coded image; the value is the byte written in the file."""

    L = 1
    RGB = 3


@dataclass(frozen=True)
class Header:
    """Fixed header fields of a `.vqc` file (format/SPEC.md, "Layout" and "Tiling").

    Attributes:
        model_name: printable ASCII, 1..MAX_MODEL_NAME_BYTES (32) bytes.
        model_hash: MODEL_HASH_BYTES (8) bytes: the truncated SHA-256 of the weights.
        width: image width in pixels, 1..MAX_DIM.
        height: image height in pixels, 1..MAX_DIM.
        mode: colour mode (`Mode.L` or `Mode.RGB`); alpha is a chunk.
        grid_h: latent index grid rows (ceil(height / f) for the model's factor f).
        grid_w: latent index grid columns.
        tile_h: prior tile rows in latent positions (tile_h = tile_w = 0: a single tile).
        tile_w: prior tile columns in latent positions.
        version_minor: format minor version (0..255; vqc writes `minor_version`'s).
        stages: S, stages of indices per latent position, 1..MAX_FILE_STAGES (format/SPEC.md,
            "Chunks", type 6): not a fixed-header field but the stages chunk's value, filled in
            by the reader (1 when the file has none); a writer's header must agree with its
            chunks (`write` checks).
    """

    model_name: str  # printable ASCII, 1..32 bytes
    model_hash: bytes  # 8 bytes: truncated SHA-256 of the weights
    width: int  # pixels, 1..2**32-1
    height: int
    mode: Mode
    grid_h: int  # latent index grid
    grid_w: int
    tile_h: int  # tile size in latent positions (both 0 = a single tile)
    tile_w: int
    version_minor: int = VERSION_MINOR
    stages: int = 1

    @property
    def tile_shape(self) -> tuple[int, int]:
        """(rows, columns) of a full tile in latent positions, clipped to the grid (the whole
        grid for tile 0x0)."""
        return (_tile_extent(self.grid_h, self.tile_h), _tile_extent(self.grid_w, self.tile_w))

    @property
    def tile_grid(self) -> tuple[int, int]:
        """Number of tiles along (rows, columns); computed, nothing is allocated."""
        th, tw = self.tile_shape
        return -(-self.grid_h // th), -(-self.grid_w // tw)

    @property
    def n_tiles(self) -> int:
        """Number of tiles, hence of payloads (arithmetic: O(1) whatever the header says)."""
        rows, cols = self.tile_grid
        return rows * cols

    def tile_slice(self, k: int) -> tuple[slice, slice]:
        """The region of one tile in the latent grid.

        Args:
            k: tile number in raster order, 0..n_tiles-1 (not checked here).

        Returns:
            (row slice, column slice) in latent coordinates.
        """
        th, tw = self.tile_shape
        r, c = divmod(k, self.tile_grid[1])
        return (slice(r * th, min((r + 1) * th, self.grid_h)),
                slice(c * tw, min((c + 1) * tw, self.grid_w)))

    @property
    def tiles(self) -> "TileSlices":
        """The tiles' (row slice, column slice) as a lazy sequence (nothing allocated per tile)."""
        return TileSlices(self)

    def tile_slices(self) -> list[tuple[slice, slice]]:
        """The region of every tile in the latent grid.

        Allocates one entry per tile: call it only on a header whose file was read (or that
        vqc made); use `tiles` otherwise.

        Returns:
            (row slice, column slice) of each tile in latent coordinates, in raster order.
        """
        return [self.tile_slice(k) for k in range(self.n_tiles)]


class TileSlices(Sequence):
    """Lazy sequence of a header's tiles: item k is `header.tile_slice(k)`, len is n_tiles.

    Indexing accepts negative k and slices; an index out of range raises IndexError.

    Args:
        header: the header whose tiles are listed.
    """

    def __init__(self, header: Header) -> None:
        self._header = header

    def __len__(self) -> int:
        return self._header.n_tiles

    def __getitem__(self, k):  # type: ignore[override]
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        n = len(self)
        if not -n <= k < n:
            raise IndexError(f"tile {k} out of range ({n} tiles)")
        return self._header.tile_slice(k % n)


@dataclass(frozen=True)
class Chunk:
    """An extra block of data (format/SPEC.md, "Chunks").

    Attributes:
        type: chunk type code, 1..MAX_CHUNK_TYPE (CHUNK_ALPHA, CHUNK_ICC, CHUNK_EXIF,
            CHUNK_QUALITY are known).
        critical: a reader that does not know `type` must refuse the file.
        data: the chunk's bytes, at most MAX_CHUNK_BYTES.
    """

    type: int
    critical: bool
    data: bytes


@dataclass(frozen=True)
class VqcFile:
    """A whole `.vqc` file.

    Attributes:
        header: the fixed header.
        payloads: one range-coded payload per tile (raster order), bytes of whole
            little-endian 32-bit words.
        chunks: the optional chunks, in file order.
    """

    header: Header
    payloads: tuple[bytes, ...]
    chunks: tuple[Chunk, ...] = ()


def _tile_extent(n: int, tile: int) -> int:
    """Size of a full tile along an axis of n positions (tile 0 = one piece), at least 1."""
    return max(1, n if tile <= 0 else min(tile, n))


# ---------------------------------------------------------------- validation shared by both sides


def _is_int(x: object, lo: int, hi: int) -> bool:
    """True if `x` is an int (not bool) with lo <= x <= hi."""
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


def _name_problem(name: object) -> str | None:
    """Why `name` is not a valid model name, or None."""
    if not isinstance(name, str):
        return f"model name must be a str, got {type(name).__name__}"
    if not 1 <= len(name) <= MAX_MODEL_NAME_BYTES:
        return f"model name must be 1..{MAX_MODEL_NAME_BYTES} characters, got {len(name)}"
    if not all(0x21 <= ord(ch) <= 0x7E for ch in name):
        return f"model name {name!r} is not printable ASCII without spaces"
    return None


def _header_problem(h: Header) -> str | None:
    """Why header `h` cannot be stored in a v1 file, or None if it is valid."""
    problem = _name_problem(h.model_name)
    if problem:
        return problem
    if not isinstance(h.model_hash, bytes) or len(h.model_hash) != MODEL_HASH_BYTES:
        return f"model hash must be {MODEL_HASH_BYTES} bytes"
    for field in ("width", "height"):
        if not _is_int(getattr(h, field), 1, MAX_DIM):
            return f"image {field} {getattr(h, field)!r} is not in 1..{MAX_DIM}"
    if h.mode not in tuple(Mode):
        return f"image mode {h.mode!r} is not one of {[m.value for m in Mode]} (L, RGB)"
    if not _is_int(h.stages, 1, MAX_FILE_STAGES):
        return f"stages {h.stages!r} is not in 1..{MAX_FILE_STAGES}"
    return _grid_problem(h) or _minor_problem(h.version_minor)


def _grid_problem(h: Header) -> str | None:
    """Why the grid/tile fields of `h` are inconsistent, or None."""
    if not (_is_int(h.grid_h, 1, h.height) and _is_int(h.grid_w, 1, h.width)):
        return f"latent grid {h.grid_h}x{h.grid_w} must be 1..height x 1..width ({h.height}x{h.width})"
    if h.grid_h * h.grid_w > MAX_GRID_CELLS:
        return f"latent grid {h.grid_h}x{h.grid_w} has more than {MAX_GRID_CELLS} positions"
    if not (_is_int(h.tile_h, 0, MAX_DIM) and _is_int(h.tile_w, 0, MAX_DIM)):
        return f"tile size {h.tile_h!r}x{h.tile_w!r} is not in 0..{MAX_DIM}"
    if (h.tile_h == 0) != (h.tile_w == 0):
        return f"tile size {h.tile_h}x{h.tile_w}: either both or neither dimension may be 0"
    return None


def _minor_problem(minor: object) -> str | None:
    """Why `minor` is not a valid minor version byte, or None."""
    return None if _is_int(minor, 0, 255) else f"minor version {minor!r} is not in 0..255"


# ---------------------------------------------------------------------------------------- writer


def _varint(n: int) -> bytes:
    """Unsigned LEB128 encoding of n >= 0 (minimal length)."""
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _check_payloads_for_write(f: VqcFile) -> None:
    """ValueError unless there is one payload of whole 32-bit words per tile."""
    if len(f.payloads) != f.header.n_tiles:
        raise ValueError(f"{len(f.payloads)} payloads given for {f.header.n_tiles} tiles")
    for i, p in enumerate(f.payloads):
        if not isinstance(p, (bytes, bytearray, memoryview)):
            raise ValueError(f"payload {i} is a {type(p).__name__}, not bytes")
        if len(p) % 4 or len(p) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload {i} is {len(p)} bytes: need whole 32-bit words, <= {MAX_PAYLOAD_BYTES}")


def _check_chunks_for_write(chunks: tuple[Chunk, ...]) -> None:
    """ValueError unless the chunks can be stored (count, type range, size, no duplicate known type)."""
    if len(chunks) > MAX_CHUNKS:
        raise ValueError(f"{len(chunks)} chunks: at most {MAX_CHUNKS} allowed")
    seen: set[int] = set()
    for c in chunks:
        if not _is_int(c.type, 1, MAX_CHUNK_TYPE) or not isinstance(c.critical, bool):
            raise ValueError(f"chunk type {c.type!r}: type must be an int in 1..{MAX_CHUNK_TYPE}, critical a bool")
        if not isinstance(c.data, (bytes, bytearray, memoryview)) or len(c.data) > MAX_CHUNK_BYTES:
            raise ValueError(f"chunk type {c.type}: data must be bytes of at most {MAX_CHUNK_BYTES}")
        if c.type in KNOWN_CHUNKS and c.type in seen:
            raise ValueError(f"duplicate {KNOWN_CHUNKS[c.type]} chunk")
        seen.add(c.type)


def _encode_header(h: Header) -> bytes:
    """Magic, version and fixed header fields (everything before the chunk count)."""
    name = h.model_name.encode("ascii")
    fields = [
        MAGIC,
        bytes([VERSION_MAJOR, h.version_minor, len(name)]),
        name,
        h.model_hash,
        _varint(h.width),
        _varint(h.height),
        bytes([int(h.mode)]),
    ]
    fields += [_varint(v) for v in (h.grid_h, h.grid_w, h.tile_h, h.tile_w)]
    return b"".join(fields)


def write(f: VqcFile) -> bytes:
    """Serialise a file to `.vqc` bytes (format/SPEC.md, "Layout"), CRC-32 included.

    Args:
        f: the file to write.

    Returns:
        The `.vqc` bytes.

    Raises:
        ValueError: `f` breaks a rule of the format (a header field out of range, a payload
            count other than n_tiles, a payload that is not whole 32-bit words, too many,
            malformed or duplicate chunks).
    """
    problem = _header_problem(f.header)
    if problem:
        raise ValueError(problem)
    _check_payloads_for_write(f)
    _check_chunks_for_write(tuple(f.chunks))
    try:
        coded_size(f.header, f.chunks)
        stages = file_stages(f.chunks)
    except VqcFormatError as exc:
        raise ValueError(str(exc)) from None
    if stages != f.header.stages:
        raise ValueError(f"header says {f.header.stages} stages, the chunks {stages} "
                         "(a file with S > 1 needs a stages chunk, `stages_chunk`)")
    out = bytearray(_encode_header(f.header))
    out += _varint(len(f.chunks))
    for c in f.chunks:
        out += _varint(c.type << 1 | int(c.critical)) + _varint(len(c.data)) + bytes(c.data)
    for p in f.payloads:
        out += _varint(len(p)) + bytes(p)
    out += zlib.crc32(out).to_bytes(CRC_BYTES, "little")
    return bytes(out)


def overhead_bytes(f: VqcFile) -> int:
    """Container bytes that are not entropy-coded payload.

    Args:
        f: the file (serialised with `write`).

    Returns:
        len(write(f)) minus the total payload size, in bytes.

    Raises:
        ValueError: as `write`.
    """
    return len(write(f)) - sum(len(p) for p in f.payloads)


# ---------------------------------------------------------------------------------------- reader


class _Cursor:
    """Bounds-checked sequential reader over a memoryview; never reads past the end."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.pos = 0

    @property
    def left(self) -> int:
        """Bytes not yet consumed."""
        return len(self.view) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        """The next n bytes (a zero-copy view), or a 'truncated' error naming `what`."""
        if n > self.left:
            raise VqcFormatError(f"truncated: {what} needs {n} bytes, {self.left} left")
        out = self.view[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        """The next byte as an int."""
        return self.take(1, what)[0]

    def varint(self, what: str, max_value: int) -> int:
        """The next unsigned LEB128 varint: at most 10 bytes, minimal, and <= max_value."""
        value = 0
        for i in range(MAX_VARINT_BYTES):
            byte = self.u8(what)
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if byte == 0 and i > 0:
                    raise VqcFormatError(f"{what}: over-long varint encoding")
                break
        else:
            raise VqcFormatError(f"{what}: varint longer than {MAX_VARINT_BYTES} bytes")
        if value > max_value:
            raise VqcFormatError(f"{what} is {value}, above the maximum {max_value}")
        return value


def _as_view(data: bytes) -> memoryview:
    """A flat byte view of `data` (bytes, bytearray, memoryview); TypeError for anything else."""
    if isinstance(data, str):
        raise TypeError("read() needs bytes, not str")
    return memoryview(data).cast("B")


def _check_magic(view: memoryview) -> None:
    """Error unless `view` starts with MAGIC."""
    if len(view) == 0:
        raise VqcFormatError("empty input: not a .vqc file")
    head = bytes(view[: len(MAGIC)])
    if head != MAGIC:
        if len(view) < len(MAGIC) and MAGIC.startswith(head):
            raise VqcFormatError(f"truncated: magic needs {len(MAGIC)} bytes, {len(view)} left")
        raise VqcFormatError("not a .vqc file (bad magic)")


def _read_version(cur: _Cursor) -> int:
    """Read major/minor version; error for any major version but 1. Returns the minor version."""
    major = cur.u8("version")
    minor = cur.u8("version")
    if major != VERSION_MAJOR:
        newer = " (written by a newer vqc: upgrade to read it)" if major > VERSION_MAJOR else ""
        raise VqcFormatError(
            f"unsupported .vqc version {major}.{minor}: this reader reads major version {VERSION_MAJOR}{newer}"
        )
    return minor


def _read_model_name(cur: _Cursor) -> str:
    """Length byte + printable ASCII model name."""
    n = cur.u8("model name length")
    if not 1 <= n <= MAX_MODEL_NAME_BYTES:
        raise VqcFormatError(f"model name length {n} is not in 1..{MAX_MODEL_NAME_BYTES}")
    raw = bytes(cur.take(n, "model name"))
    name = raw.decode("latin-1")
    problem = _name_problem(name)
    if problem:
        raise VqcFormatError(problem)
    return name


def _read_mode(cur: _Cursor) -> Mode:
    """Image mode byte."""
    value = cur.u8("image mode")
    try:
        return Mode(value)
    except ValueError:
        raise VqcFormatError(f"unknown image mode {value} (1 = L, 3 = RGB)") from None


def _read_header(cur: _Cursor, minor: int) -> Header:
    """All fixed header fields after the version, validated."""
    name = _read_model_name(cur)
    model_hash = bytes(cur.take(MODEL_HASH_BYTES, "model hash"))
    width = cur.varint("image width", MAX_DIM)
    height = cur.varint("image height", MAX_DIM)
    mode = _read_mode(cur)
    grid = [cur.varint(f"latent grid {d}", MAX_DIM) for d in ("height", "width")]
    tile = [cur.varint(f"tile {d}", MAX_DIM) for d in ("height", "width")]
    header = Header(name, model_hash, width, height, mode, *grid, *tile, version_minor=minor)
    problem = _header_problem(header)
    if problem:
        raise VqcFormatError(problem)
    return header


def _read_chunks(cur: _Cursor) -> list[tuple[int, bool, memoryview, int]]:
    """Chunk count and chunks as (type, critical, data view, bytes in the file); rules are
    checked later."""
    count = cur.varint("chunk count", MAX_CHUNKS)
    chunks = []
    for i in range(count):
        start = cur.pos
        key = cur.varint(f"chunk {i} type", MAX_CHUNK_TYPE << 1 | 1)
        length = cur.varint(f"chunk {i} length", MAX_CHUNK_BYTES)
        data = cur.take(length, f"chunk {i} (type {key >> 1})")
        chunks.append((key >> 1, bool(key & 1), data, cur.pos - start))
    return chunks


def _check_tile_count(cur: _Cursor, n_tiles: int) -> None:
    """Before anything is done per tile: each payload needs at least its 1-byte length, and
    no more than MAX_TILES tiles are read."""
    if n_tiles > cur.left:
        raise VqcFormatError(f"truncated: {n_tiles} tiles need at least {n_tiles} bytes, {cur.left} left")
    if n_tiles > MAX_TILES:
        raise VqcLimitError(f"file has {n_tiles} tiles, above this reader's limit of {MAX_TILES}")


def _read_payloads(cur: _Cursor, n_tiles: int) -> array.array:
    """Walk the length-prefixed payloads (each a whole number of 32-bit words) and return
    their [start, stop) offsets as a flat array('Q') of 2 * n_tiles numbers; no payload is
    copied, and at most 16 bytes per tile are stored (n_tiles <= bytes present)."""
    spans = array.array("Q")
    for i in range(n_tiles):
        length = cur.varint(f"payload {i} length", MAX_PAYLOAD_BYTES)
        if length % 4:
            raise VqcFormatError(f"payload {i} is {length} bytes, not a whole number of 32-bit words")
        cur.take(length, f"payload {i}")
        spans.append(cur.pos - length)
        spans.append(cur.pos)
    return spans


def _check_crc_and_end(cur: _Cursor) -> None:
    """Verify the CRC-32 of everything before it, then that nothing follows it."""
    covered = cur.view[: cur.pos]
    stored = int.from_bytes(cur.take(CRC_BYTES, "CRC-32"), "little")
    if stored != zlib.crc32(covered):
        raise VqcFormatError("CRC mismatch: file is corrupted")
    if cur.left:
        raise VqcFormatError(f"trailing garbage: {cur.left} bytes after the end of the .vqc data")


def _keep_chunks(raw: list[tuple[int, bool, memoryview, int]]) -> tuple[Chunk, ...]:
    """Apply the chunk rules: known types once, unknown critical = error, unknown optional skipped."""
    kept: list[Chunk] = []
    for ctype, critical, data, _ in raw:
        if ctype == 0:
            raise VqcFormatError("chunk type 0 is reserved")
        if ctype not in KNOWN_CHUNKS:
            if critical:
                raise VqcFormatError(f"unknown critical chunk type {ctype}: this file needs a newer vqc reader")
            continue
        if any(c.type == ctype for c in kept):
            raise VqcFormatError(f"duplicate {KNOWN_CHUNKS[ctype]} chunk")
        kept.append(Chunk(ctype, critical, bytes(data)))
    return tuple(kept)


def _check_pixels(h: Header, max_pixels: int) -> None:
    """VqcLimitError if the image would have more than max_pixels pixels."""
    pixels = h.width * h.height
    if pixels > max_pixels:
        raise VqcLimitError(
            f"image is {h.width}x{h.height} = {pixels} pixels, above the limit of {max_pixels} (max_pixels)"
        )


def _parse(data: bytes, max_pixels: int
           ) -> tuple[Header, memoryview, array.array, tuple[Chunk, ...], int]:
    """Parse and fully validate `data`: (header, whole-file view, payload offsets, chunks).

    Work and memory are bounded by the bytes present: the tile count is computed, checked
    against the bytes left and MAX_TILES before any per-tile work, and payloads are offsets.
    """
    view = _as_view(data)
    _check_magic(view)
    cur = _Cursor(view)
    cur.take(len(MAGIC), "magic")
    header = _read_header(cur, _read_version(cur))
    raw_chunks = _read_chunks(cur)
    _check_tile_count(cur, header.n_tiles)
    spans = _read_payloads(cur, header.n_tiles)
    _check_crc_and_end(cur)
    chunks = _keep_chunks(raw_chunks)
    coded_size(header, chunks)  # a malformed coded-size chunk is a format error
    header = dataclasses.replace(header, stages=file_stages(chunks))  # and a malformed stages chunk
    _check_pixels(header, max_pixels)
    skipped = sum(size for ctype, _, _, size in raw_chunks if ctype not in KNOWN_CHUNKS)
    return header, view, spans, chunks, skipped


def read(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> VqcFile:
    """Parse `.vqc` bytes.

    Args:
        data: the whole file (bytes, bytearray or memoryview).
        max_pixels: refuse images with more pixels (width * height) than this.

    Returns:
        The parsed file; payloads are copies (bytes), unknown optional chunks are dropped.

    Raises:
        VqcFormatError: any malformed input (see format/SPEC.md, "Reader rules").
        VqcLimitError: more than `max_pixels` pixels or more than MAX_TILES tiles.
    """
    header, view, spans, chunks, _ = _parse(data, max_pixels)
    payloads = tuple(bytes(view[spans[i]:spans[i + 1]]) for i in range(0, len(spans), 2))
    return VqcFile(header, payloads, chunks)


def read_header(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Header:
    """The header of `.vqc` bytes, for `vqc info`.

    Validates the whole file, CRC included, without copying the payloads.

    Args:
        data, max_pixels: as `read`.

    Returns:
        The parsed header.

    Raises:
        As `read`.
    """
    return _parse(data, max_pixels)[0]


#: Most bytes the fixed header can take (magic, version, model name and hash, 2 + 1 + 4 varints):
#: a reader of a stream needs no more to know the image size.
HEADER_MAX_BYTES = len(MAGIC) + 2 + 1 + MAX_MODEL_NAME_BYTES + MODEL_HASH_BYTES + 6 * MAX_VARINT_BYTES + 1


def read_header_prefix(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[Header, int]:
    """The fixed header from the first bytes of a `.vqc` file, before the rest has been read.

    For readers of streams: the image size known from at most HEADER_MAX_BYTES bytes bounds
    what may follow (`max_file_bytes`).  Nothing after the header is checked (use `read`); the
    header's `stages` is 1 here whatever the file's stages chunk says (chunks follow the header).

    Args:
        data: the file's first bytes (HEADER_MAX_BYTES of them, or the whole file if shorter).
        max_pixels: refuse images with more pixels (width * height) than this; None: no
            pixel limit (the caller applies its own, e.g. to name the option that raises it).

    Returns:
        (the validated header, its length in bytes).

    Raises:
        VqcFormatError: bad magic, version or header field, or `data` ends inside the header.
        VqcLimitError: more than `max_pixels` pixels (when given).
    """
    view = _as_view(data)
    _check_magic(view)
    cur = _Cursor(view)
    cur.take(len(MAGIC), "magic")
    header = _read_header(cur, _read_version(cur))
    if max_pixels is not None:
        _check_pixels(header, max_pixels)
    return header, cur.pos


@dataclass(frozen=True)
class Summary:
    """What `vqc info` shows of a file, found without copying any payload.

    Attributes:
        header: the parsed header.
        chunks: the chunks a reader keeps (unknown optional chunks dropped).
        payload_bytes: sum of the payload lengths, in bytes.
        skipped_chunk_bytes: bytes of unknown optional chunks (dropped by a reader).
    """

    header: Header
    chunks: tuple[Chunk, ...]  # the chunks a reader keeps
    payload_bytes: int  # sum of the payload lengths
    skipped_chunk_bytes: int  # bytes of unknown optional chunks (dropped by a reader)


def read_summary(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Summary:
    """Validate `.vqc` bytes like `read` and summarise them (no payload copied).

    Args:
        data, max_pixels: as `read`.

    Returns:
        The file's `Summary`.

    Raises:
        As `read`.
    """
    header, _, spans, chunks, skipped = _parse(data, max_pixels)
    payload = sum(spans[i + 1] - spans[i] for i in range(0, len(spans), 2))
    return Summary(header, chunks, payload, skipped)


def max_file_bytes(max_pixels: int) -> int:
    """Most bytes a `.vqc` file written by vqc can have when its image has at most `max_pixels`
    pixels (format/SPEC.md, "Resource limits"): payloads at most 21 bits per latent position and
    stage (f >= 4: at most max_pixels / 16 positions; at most 8 stages, the most a model has:
    10.5 bits per pixel) plus 13 bytes per tile, an alpha PNG at most ~1.01 bytes per pixel, ICC
    profile and EXIF at most 1 MiB each; 3 bytes per pixel + 4 MiB covers all of them (2 did
    before format 1.3's multi-stage codes). Readers of streams stop reading there
    (VqcLimitError).

    Args:
        max_pixels: the pixel cap (width * height).

    Returns:
        3 * max_pixels + 4 MiB, in bytes.
    """
    return 3 * max_pixels + (4 << 20)


def pack_quality(quality: float, effort: int) -> bytes:
    """Data of a quality chunk (format/SPEC.md, "Chunks"): round(quality * 100) as u16le, effort u8.

    Args:
        quality: Q in [0, 100] on the continuous scale.
        effort: encoder effort level, 0..255 (vqc writes 1..9).

    Returns:
        The chunk's 3 bytes.

    Raises:
        ValueError: quality not in [0, 100] or effort not in 0..255.
    """
    if not 0 <= quality <= 100 or not 0 <= effort <= 255:
        raise ValueError(f"quality {quality!r} / effort {effort!r} out of range")
    return int(round(quality * 100)).to_bytes(2, "little") + bytes([effort])


def unpack_quality(data: bytes) -> tuple[float, int] | None:
    """Decode a quality chunk's data (format/SPEC.md, "Chunks").

    The chunk is informative: a bad one is reported, never fatal, so nothing is raised.

    Args:
        data: the chunk's bytes.

    Returns:
        (quality Q as float in [0, 100], effort as int), or None when data is not 3 bytes with
        quality <= 100.
    """
    if len(data) != 3 or int.from_bytes(data[:2], "little") > 10000:
        return None
    return int.from_bytes(data[:2], "little") / 100, data[2]


def pack_coded_size(height: int, width: int) -> bytes:
    """Data of a coded-size chunk (format/SPEC.md, "Chunks", type 5): varint coded width, then
    varint coded height, shortest encodings.

    Args:
        height: coded height in pixels, 1..MAX_DIM.
        width: coded width in pixels, 1..MAX_DIM.

    Returns:
        The chunk's 2..10 bytes.

    Raises:
        ValueError: a side is not an int in 1..MAX_DIM.
    """
    if not (_is_int(height, 1, MAX_DIM) and _is_int(width, 1, MAX_DIM)):
        raise ValueError(f"coded size {width!r}x{height!r} is not in 1..{MAX_DIM} a side")
    return _varint(width) + _varint(height)


def unpack_coded_size(data: bytes, height: int, width: int) -> tuple[int, int]:
    """Decode and check a coded-size chunk's data against the display size (format/SPEC.md,
    "Chunks", type 5).

    Args:
        data: the chunk's bytes.
        height: display height (the header's), pixels.
        width: display width (the header's), pixels.

    Returns:
        (coded_height, coded_width) in pixels, 1 <= coded <= display on each axis (equal to the
        display size is allowed: the upsampler is then the identity), and display <=
        MAX_UPSCALE (8) * coded on each axis.

    Raises:
        VqcFormatError: bad varints (over-long, longer than 10 bytes, truncated), bytes after the
            two varints, a side of 0, a side larger than the display side, or a display side
            more than MAX_UPSCALE times the coded side.
    """
    cur = _Cursor(memoryview(bytes(data)))
    coded_w = cur.varint("coded width", MAX_DIM)
    coded_h = cur.varint("coded height", MAX_DIM)
    if cur.left:
        raise VqcFormatError(f"coded-size chunk has {cur.left} bytes after its two varints")
    if not (1 <= coded_w <= width and 1 <= coded_h <= height):
        raise VqcFormatError(f"coded size {coded_w}x{coded_h} is not within 1x1..{width}x{height} "
                             "(the display size)")
    if width > MAX_UPSCALE * coded_w or height > MAX_UPSCALE * coded_h:
        raise VqcFormatError(f"coded size {coded_w}x{coded_h} is too small for {width}x{height}: "
                             f"at most {MAX_UPSCALE}x upsampling per side")
    return coded_h, coded_w


def coded_size(header: Header, chunks: Sequence[Chunk]) -> tuple[int, int]:
    """The size of the image the payloads code (format/SPEC.md, "Chunks", type 5, and
    "Upsampling"): the coded-size chunk's, or the display size when there is none.

    Args:
        header: the file's header (display width and height).
        chunks: the file's chunks (a reader's kept chunks, or a writer's).

    Returns:
        (coded_height, coded_width) in pixels.

    Raises:
        VqcFormatError: the coded-size chunk is malformed (`unpack_coded_size`).
    """
    for c in chunks:
        if c.type == CHUNK_CODED_SIZE:
            return unpack_coded_size(c.data, header.height, header.width)
    return header.height, header.width


def pack_stages(stages: int) -> bytes:
    """Data of a stages chunk (format/SPEC.md, "Chunks", type 6): S as one u8.

    Args:
        stages: S, 1..MAX_FILE_STAGES (vqc writes the chunk only for S > 1).

    Returns:
        The chunk's 1 byte.

    Raises:
        ValueError: stages is not an int in 1..MAX_FILE_STAGES.
    """
    if not _is_int(stages, 1, MAX_FILE_STAGES):
        raise ValueError(f"stages {stages!r} is not in 1..{MAX_FILE_STAGES}")
    return bytes([stages])


def stages_chunk(stages: int) -> Chunk:
    """The critical stages chunk of a file coding `stages` stages (format/SPEC.md, type 6).

    Args:
        stages: S, 2..MAX_FILE_STAGES (S = 1 files carry no stages chunk).

    Returns:
        Chunk(CHUNK_STAGES, critical=True, one byte S).

    Raises:
        ValueError: stages is not an int in 2..MAX_FILE_STAGES.
    """
    if not _is_int(stages, 2, MAX_FILE_STAGES):
        raise ValueError(f"a stages chunk is written for 2..{MAX_FILE_STAGES} stages, not {stages!r}")
    return Chunk(CHUNK_STAGES, True, pack_stages(stages))


def unpack_stages(data: bytes) -> int:
    """Decode a stages chunk's data (format/SPEC.md, "Chunks", type 6).

    Args:
        data: the chunk's bytes.

    Returns:
        S, 1..MAX_FILE_STAGES.

    Raises:
        VqcFormatError: "bad stages chunk": not exactly 1 byte, or S = 0 or S > MAX_FILE_STAGES.
    """
    if len(data) != 1:
        raise VqcFormatError(f"bad stages chunk: {len(data)} bytes, expected exactly 1")
    if not 1 <= data[0] <= MAX_FILE_STAGES:
        raise VqcFormatError(f"bad stages chunk: {data[0]} stages, expected 1..{MAX_FILE_STAGES}")
    return data[0]


def file_stages(chunks: Sequence[Chunk]) -> int:
    """S, the stages of indices a file codes per latent position: its stages chunk's value, or 1
    when it has none (format/SPEC.md, "Chunks", type 6).

    Args:
        chunks: the file's chunks (a reader's kept chunks, or a writer's).

    Returns:
        S, 1..MAX_FILE_STAGES.

    Raises:
        VqcFormatError: the stages chunk is malformed (`unpack_stages`).
    """
    for c in chunks:
        if c.type == CHUNK_STAGES:
            return unpack_stages(c.data)
    return 1


def minor_version(chunks: Sequence[Chunk]) -> int:
    """The minor version vqc writes for a file with these chunks (format/SPEC.md, "Versioning"):
    the highest that applies of 3 (a stages chunk), 2 (a coded-size chunk), 1 (a quality chunk),
    else 0, so a file without these chunks is byte-identical to a 1.0 file.

    Args:
        chunks: the file's chunks.

    Returns:
        0..3.
    """
    types = {c.type for c in chunks}
    for minor, ctype in ((VERSION_MINOR_STAGES, CHUNK_STAGES),
                         (VERSION_MINOR_CODED_SIZE, CHUNK_CODED_SIZE), (1, CHUNK_QUALITY)):
        if ctype in types:
            return minor
    return 0
