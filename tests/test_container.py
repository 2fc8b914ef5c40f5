"""Tests of the `.vqc` v1 container (vqcodec/container.py, format/SPEC.md)."""

from __future__ import annotations

import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqcodec import container as C
from vqcodec.container import CHUNK_ALPHA, CHUNK_EXIF, CHUNK_ICC, Chunk, Header, Mode, VqcFile
from vqcodec.errors import VqcFormatError, VqcLimitError

HASH = bytes.fromhex("0123456789abcdef")
NO_CAP = 2**64


def make_header(**kw) -> Header:
    """A valid header for a 768x512 RGB image, f = 8, one tile; fields overridable."""
    fields = dict(
        model_name="vqc-f8k1024", model_hash=HASH, width=768, height=512, mode=Mode.RGB,
        grid_h=64, grid_w=96, tile_h=0, tile_w=0,
    )
    fields.update(kw)
    return Header(**fields)


def small_file() -> bytes:
    """A small valid file exercising every part: 2x2 tiles, a known and an unknown optional chunk."""
    h = make_header(width=30, height=20, grid_h=3, grid_w=4, tile_h=2, tile_w=2)
    payloads = (b"\x01\x02\x03\x04", b"", b"abcdefgh", b"\xff" * 4)
    chunks = (Chunk(CHUNK_ALPHA, False, b"\x89PNG.."), Chunk(77, False, b"xy"))
    return C.write(VqcFile(h, payloads, chunks))


def with_crc(body: bytes) -> bytes:
    """Append a correct CRC-32 to hand-made file contents."""
    return body + zlib.crc32(body).to_bytes(4, "little")


def raw_file(*, major=1, minor=0, name=b"m", width=8, height=8, mode=3, grid=(1, 1), tile=(0, 0),
             chunks=b"\x00", payloads=(b"",)) -> bytes:
    """Hand-assemble a file (bypassing the writer's checks), with a correct CRC."""
    v = C._varint
    body = C.MAGIC + bytes([major, minor, len(name)]) + name + HASH + v(width) + v(height) + bytes([mode])
    body += b"".join(v(x) for x in (*grid, *tile)) + chunks
    body += b"".join(v(len(p)) + p for p in payloads)
    return with_crc(body)


# ------------------------------------------------------------------------------ strategies


@st.composite
def headers(draw) -> Header:
    """Valid headers: dims up to 2**32-1, grid <= dims and <= 2**28 cells, at most 64 tiles."""
    width = draw(st.one_of(st.integers(1, 4096), st.integers(1, 2**32 - 1)))
    height = draw(st.one_of(st.integers(1, 4096), st.integers(1, 2**32 - 1)))
    grid_h = draw(st.integers(1, min(height, 2**14)))
    grid_w = draw(st.integers(1, min(width, 2**14)))
    if draw(st.booleans()):
        tile_h = tile_w = 0
    else:  # at most 8 tiles per axis; sometimes larger than the grid
        tile_h = draw(st.integers(-(-grid_h // 8), grid_h + 3))
        tile_w = draw(st.integers(-(-grid_w // 8), grid_w + 3))
    name = draw(st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=32))
    return Header(name, draw(st.binary(min_size=8, max_size=8)), width, height,
                  draw(st.sampled_from(Mode)), grid_h, grid_w, tile_h, tile_w,
                  version_minor=draw(st.integers(0, 255)))


words = st.integers(0, 8).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))
known_chunk_lists = st.lists(st.sampled_from([CHUNK_ALPHA, CHUNK_ICC, CHUNK_EXIF]), unique=True).flatmap(
    lambda types: st.tuples(*[st.builds(Chunk, st.just(t), st.booleans(), st.binary(max_size=40)) for t in types])
)


@st.composite
def vqc_files(draw) -> VqcFile:
    """Valid VqcFiles with known chunks only (so they survive a round trip unchanged)."""
    h = draw(headers())
    payloads = tuple(draw(words) for _ in range(h.n_tiles))
    return VqcFile(h, payloads, draw(known_chunk_lists))


# ------------------------------------------------------------------------------ round trips


@settings(max_examples=300, deadline=None)
@given(vqc_files())
def test_round_trip(f: VqcFile) -> None:
    data = C.write(f)
    assert C.read(data, max_pixels=NO_CAP) == f
    assert C.read_header(data, max_pixels=NO_CAP) == f.header
    assert C.overhead_bytes(f) == len(data) - sum(map(len, f.payloads))


def test_round_trip_accepts_bytearray_and_memoryview() -> None:
    data = small_file()
    assert C.read(bytearray(data)) == C.read(memoryview(data)) == C.read(data)


def test_header_fields_of_small_file() -> None:
    f = C.read(small_file())
    assert (f.header.width, f.header.height, f.header.mode) == (30, 20, Mode.RGB)
    assert f.payloads == (b"\x01\x02\x03\x04", b"", b"abcdefgh", b"\xff" * 4)


def test_varint_encoding() -> None:
    assert [C._varint(n).hex() for n in (0, 127, 128, 768, 2**32 - 1)] == [
        "00", "7f", "8001", "8006", "ffffffff0f"]


# ------------------------------------------------------------------------------ tiling


def test_tile_slices_raster_order_and_clipping() -> None:
    h = make_header(grid_h=5, grid_w=7, tile_h=2, tile_w=4)
    assert h.n_tiles == 6
    assert h.tile_slices() == [
        (slice(0, 2), slice(0, 4)), (slice(0, 2), slice(4, 7)),
        (slice(2, 4), slice(0, 4)), (slice(2, 4), slice(4, 7)),
        (slice(4, 5), slice(0, 4)), (slice(4, 5), slice(4, 7)),
    ]


def test_single_tile() -> None:
    assert make_header().n_tiles == 1
    assert make_header().tile_slices() == [(slice(0, 64), slice(0, 96))]
    assert make_header(tile_h=100, tile_w=96).tile_slices() == [(slice(0, 64), slice(0, 96))]


@settings(max_examples=100, deadline=None)
@given(headers())
def test_tiles_partition_grid(h: Header) -> None:
    slices = h.tile_slices()
    assert len(slices) == h.n_tiles
    assert sum((r.stop - r.start) * (c.stop - c.start) for r, c in slices) == h.grid_h * h.grid_w


# ------------------------------------------------------------------------------ overhead


@pytest.mark.parametrize(
    ("payload_len", "expected"),
    [(4, 41), (24_576, 43), (2**21 - 4, 43), (2**21, 44)],  # 24 KiB = 0.5 bpp; length varint 1..4 bytes
)
def test_overhead_rgb_768x512_at_most_48(payload_len: int, expected: int) -> None:
    f = VqcFile(make_header(), (bytes(payload_len),))
    assert C.overhead_bytes(f) == expected
    assert C.overhead_bytes(f) <= 48


# ------------------------------------------------------------------------------ corruption


def test_every_single_byte_flip_is_a_format_error() -> None:
    data = small_file()
    for i in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(data)
            bad[i] ^= mask
            with pytest.raises(VqcFormatError):
                C.read(bytes(bad))


def test_every_truncation_is_a_format_error() -> None:
    data = small_file()
    for n in range(len(data)):
        with pytest.raises(VqcFormatError):
            C.read(data[:n])
        with pytest.raises(VqcFormatError):
            C.read_header(data[:n])


def test_empty_input() -> None:
    with pytest.raises(VqcFormatError, match="empty"):
        C.read(b"")


def test_bad_magic() -> None:
    with pytest.raises(VqcFormatError, match=r"bad magic"):
        C.read(b"\x89PNG\r\n\x1a\n" + bytes(40))


def test_truncated_payload_message() -> None:
    data = raw_file(payloads=(bytes(1236),))[:-4 - 1219]  # payload cut to 17 bytes
    with pytest.raises(VqcFormatError, match=r"truncated: payload 0 needs 1236 bytes, 17 left"):
        C.read(data)


def test_crc_mismatch_message() -> None:
    data = bytearray(small_file())
    data[-6] ^= 0x10  # inside the last payload
    with pytest.raises(VqcFormatError, match="CRC mismatch"):
        C.read(bytes(data))


def test_trailing_garbage() -> None:
    with pytest.raises(VqcFormatError, match="trailing garbage: 3 bytes"):
        C.read(small_file() + b"abc")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(lambda b: C.MAGIC + b),
    st.binary(max_size=200).map(lambda b: C.MAGIC + b"\x01\x00" + b),
    st.binary(max_size=200).map(lambda b: with_crc(C.MAGIC + b"\x01\x00" + b)),
))
def test_random_bytes_raise_only_vqc_errors(data: bytes) -> None:
    try:
        C.read(data)
    except (VqcFormatError, VqcLimitError):
        pass


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_random_mutations_raise_only_format_errors(data: st.DataObject) -> None:
    good = bytearray(small_file())
    pos = data.draw(st.lists(st.integers(0, len(good) - 1), min_size=1, max_size=4, unique=True))
    for i in pos:
        good[i] = data.draw(st.integers(0, 255).filter(lambda b, i=i: b != good[i]))
    with pytest.raises(VqcFormatError):
        C.read(bytes(good))


# ------------------------------------------------------------------------------ limits and checks


def test_huge_dimensions_hit_pixel_cap_without_allocating() -> None:
    m = 2**32 - 1
    data = raw_file(width=m, height=m, grid=(2**14, 2**14), payloads=(bytes(8),))
    tracemalloc.start()
    try:
        for fn in (C.read, C.read_header):
            with pytest.raises(VqcLimitError, match="pixels"):
                fn(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_pixel_cap_is_a_parameter() -> None:
    data = C.write(VqcFile(make_header(), (b"",)))
    assert C.DEFAULT_MAX_PIXELS == 2**26  # issue 21: was 2**28 (2.2 GB or more to decode)
    assert C.read(data, max_pixels=768 * 512).header.width == 768
    with pytest.raises(VqcLimitError):
        C.read(data, max_pixels=768 * 512 - 1)


def test_future_major_version_is_refused_with_the_version() -> None:
    with pytest.raises(VqcFormatError, match=r"version 2\.0"):
        C.read(raw_file(major=2))
    with pytest.raises(VqcFormatError, match=r"version 2\.3"):  # before any other parsing
        C.read(C.MAGIC + b"\x02\x03" + b"whatever the new layout is")
    with pytest.raises(VqcFormatError, match=r"version 0\.0"):
        C.read(raw_file(major=0))


def test_newer_minor_version_is_readable() -> None:
    f = C.read(raw_file(minor=7))
    assert f.header.version_minor == 7


def test_unknown_optional_chunk_is_skipped() -> None:
    chunks = (Chunk(1000, False, b"future"), Chunk(CHUNK_ICC, False, b"icc"), Chunk(2**31 - 1, False, b""))
    f = C.read(C.write(VqcFile(make_header(), (b"abcd",), chunks)))
    assert f.chunks == (Chunk(CHUNK_ICC, False, b"icc"),)
    assert f.payloads == (b"abcd",)


def test_unknown_critical_chunk_is_an_error() -> None:
    data = C.write(VqcFile(make_header(), (b"",), (Chunk(1000, True, b"must understand"),)))
    with pytest.raises(VqcFormatError, match=r"unknown critical chunk type 1000"):
        C.read(data)


def test_known_critical_chunk_is_kept() -> None:
    chunk = Chunk(CHUNK_ALPHA, True, b"png")
    assert C.read(C.write(VqcFile(make_header(), (b"",), (chunk,)))).chunks == (chunk,)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(name=b""), "model name length 0"),
        (dict(name=b"x" * 33), "model name length 33"),
        (dict(name=b"a b"), "printable ASCII"),
        (dict(name=b"\xe9t\xe9"), "printable ASCII"),
        (dict(width=0), "width"),
        (dict(height=0), "height"),
        (dict(width=2**32), "above the maximum"),
        (dict(mode=4), "unknown image mode 4"),
        (dict(grid=(0, 1)), "latent grid"),
        (dict(grid=(9, 1)), "latent grid"),  # more rows than pixels
        (dict(width=2**20, height=2**20, grid=(2**14, 2**14 + 1)), "more than"),
        (dict(tile=(0, 1)), "both or neither"),
        (dict(chunks=b"\x41"), "chunk count is 65"),
        (dict(chunks=b"\x01\x00\x00"), "type 0 is reserved"),
        (dict(chunks=b"\x02\x02\x00\x02\x00"), "duplicate alpha chunk"),
        (dict(chunks=b"\x01\x02\xff\xff\xff\xff\x10"), "above the maximum"),
        (dict(payloads=(b"abc",)), "not a whole number of 32-bit words"),
        (dict(payloads=(b"", b"")), "CRC mismatch"),
        (dict(payloads=()), None),  # the CRC is misread as a payload length
    ],
)
def test_invalid_fields_are_format_errors(kw: dict, message: str | None) -> None:
    with pytest.raises(VqcFormatError, match=message):
        C.read(raw_file(**kw))


def test_overlong_and_too_long_varints() -> None:
    good = raw_file()
    i = 4 + 2 + 1 + 1 + 8  # offset of width (= 8, one byte)
    overlong = good[:i] + b"\x88\x00" + good[i + 1 : -4]
    with pytest.raises(VqcFormatError, match="over-long"):
        C.read(with_crc(overlong))
    too_long = good[:i] + b"\x80" * 10 + b"\x01" + good[i + 1 : -4]
    with pytest.raises(VqcFormatError, match="longer than 10 bytes"):
        C.read(with_crc(too_long))


def test_many_tiles_with_few_bytes_is_truncated_not_allocated() -> None:
    data = raw_file(width=2**14, height=2**14, grid=(2**14, 2**14), tile=(1, 1), payloads=())
    with pytest.raises(VqcFormatError, match=r"truncated: 268435456 tiles"):
        C.read(data)


# ------------------------------------------------------------------------------ writer errors


@pytest.mark.parametrize(
    "f",
    [
        VqcFile(make_header(), ()),
        VqcFile(make_header(), (b"", b"")),
        VqcFile(make_header(), (b"abc",)),
        VqcFile(make_header(model_name=""), (b"",)),
        VqcFile(make_header(model_name="x" * 33), (b"",)),
        VqcFile(make_header(model_name="naïve"), (b"",)),
        VqcFile(make_header(model_hash=b"short"), (b"",)),
        VqcFile(make_header(width=0), (b"",)),
        VqcFile(make_header(width=2**32), (b"",)),
        VqcFile(make_header(mode=2), (b"",)),
        VqcFile(make_header(grid_h=513), (b"",)),
        VqcFile(make_header(tile_h=0, tile_w=8), (b"",)),
        VqcFile(make_header(version_minor=256), (b"",)),
        VqcFile(make_header(), (b"",), (Chunk(0, False, b""),)),
        VqcFile(make_header(), (b"",), (Chunk(CHUNK_EXIF, False, b""), Chunk(CHUNK_EXIF, False, b""))),
        VqcFile(make_header(), (b"",), tuple(Chunk(100, False, b"") for _ in range(65))),
    ],
)
def test_writer_rejects_invalid_files(f: VqcFile) -> None:
    with pytest.raises(ValueError):
        C.write(f)


def test_error_classes_are_the_shared_ones() -> None:
    import vqcodec.errors as errors

    assert C.VqcFormatError is errors.VqcFormatError
    assert C.VqcLimitError is errors.VqcLimitError
