"""Regenerate the conformance suite: `python format/vectors/generate.py [--rvq-model NAME]`.

`--rvq-model NAME` (format 1.3): also make the vectors of a multi-stage model of arch rvq
(`rvq_vectors`: S = 1, S = S_max, and S = S_max with a coded-size chunk) and the broken file that
needs one (S_max + 1 stages), when the model NAME is installed (models/NAME.safetensors).  The
broken files of the stages chunk that need no rvq model are always made.  Every `.vqc` file
already in this directory stays in `vectors.json`, whichever options made it.

Released `.vqc` vectors are never rewritten: a vector file that exists is kept byte for byte
(the float VQ-VAE encoder may pick other indices on another machine), and only a missing one is
made with the released models.  The script then (re)writes, from those files:

- `vectors.json`: for each vector its SHA-256 and the SHA-256 of its decoded pixels (Pillow
  image bytes, mode and size given);
- `pmf-vector.json`: the integer PMFs of the default model's prior for a fixed context grid;
- `intermediate.json`: values to debug a new decoder against (see format/README.md): each
  vector's decoded index grid; for one vector the logits, PMF, decoded index and range-coder
  state of the first positions in coding order (`first_positions`; `first_positions_int8` for a
  vector of a profile int8 model, once one is released); each model's integer weights (profile
  exact: the fp16-to-integer conversion, shift and SHA-256 of the integer weights and biases
  per layer; profile int8: the SHA-256 of every `int8.*` tensor's values); each model's
  decoder output for a small fixed index grid; and `upsampling`: the normative upsampler's
  output for a small fixed input, and the SHA-256 of the coded-size pixels (before upsampling)
  of each vector with a coded-size chunk;
- `broken/*.vqc` and `broken/broken.json`: malformed files, each with one fault, and the error
  class a decoder must report for it ("format", "model" or "limit").
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import zlib
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from safetensors.torch import load as st_load

from vqcodec import codec, container, registry, upsample, zoo
from vqcodec.intops import IntConv
from vqcodec.pmf import pmf_from_logits
from vqcodec.vqvae import ResBlock

HERE = Path(__file__).resolve().parent
PMF_VECTOR_MODEL = "vqc-f4k512-v1"  # the model of pmf-vector.json (pinned: v1's default model)
SAMPLE = HERE.parent.parent / "tests" / "data" / "sample.png"
BROKEN = HERE / "broken"


def _reference_module(name: str):
    """A module of the reference decoder (format/reference/), for the range-coder state."""
    spec = importlib.util.spec_from_file_location(name, HERE.parent / "reference" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images() -> dict[str, tuple[Image.Image, int]]:
    base = Image.open(SAMPLE).convert("RGB")
    rgba = base.crop((10, 20, 50, 50)).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (30, 1))
    rgba.putalpha(Image.fromarray(alpha))
    return {
        "gray-33x17.q1": (base.crop((100, 60, 133, 77)).convert("L"), 1),
        "rgb-64x48.q2": (base.crop((120, 80, 184, 128)), 2),
        "rgba-40x30.q2": (rgba, 2),
        "rgb-100x75.q1": (base.crop((0, 0, 100, 75)), 1),
    }


# Vectors of the profile int8 models (SPEC.md "Profile int8"): stem -> (crop of the sample,
# model); made (nearest-neighbour encoder, effort 0) only once the model is released.
INT8_VECTORS = {
    "rgb-64x48.f4k512-v2": ((120, 80, 184, 128), "RGB", "vqc-f4k512-v2"),
    "gray-33x17.f8k1024-v2": ((100, 60, 133, 77), "L", "vqc-f8k1024-v2"),
}


# Vectors coded at a smaller size than they display (SPEC.md 1.2, the coded-size chunk, and
# "Upsampling"): stem -> (crop of the sample, mode, model, scale); the stem names the display
# size and the coded size (`rdo.coded_size`), made at effort 0 like the int8 vectors.
SCALED_VECTORS = {
    "rgb-64x48.coded-48x36.f4k512-v2": ((120, 80, 184, 128), "RGB", "vqc-f4k512-v2", 0.75),
    "gray-45x31.coded-27x19.f8k1024-v2": ((60, 40, 105, 71), "L", "vqc-f8k1024-v2", 0.6),
}


def rvq_vectors(model: str, stages_max: int) -> dict[str, tuple[tuple, str, int, float]]:
    """Vectors of a multi-stage model (SPEC.md 1.3, "Architecture rvq"): stem -> (crop of the
    sample, mode, stages, scale); the stem names the model, the stages and any coded size. Made
    at effort 0 (greedy residual codes), like the int8 vectors."""
    short = model.removeprefix("vqc-")
    return {
        f"rgb-64x48.s1.{short}": ((120, 80, 184, 128), "RGB", 1, 1.0),
        f"rgb-64x48.s{stages_max}.{short}": ((120, 80, 184, 128), "RGB", stages_max, 1.0),
        f"gray-45x31.coded-27x19.s{stages_max}.{short}": ((60, 40, 105, 71), "L", stages_max, 0.6),
    }


def _rvq_makers(model: str) -> dict:
    """stem -> maker of the `rvq_vectors` of `model` (codec.compress, effort 0, its stages)."""
    m = zoo.load(model, device="cpu")
    base = Image.open(SAMPLE).convert("RGB")
    return {stem: partial(codec.compress, base.crop(box).convert(mode), device="cpu", model=model,
                          effort=0, stages=stages, scale=None if scale == 1.0 else scale)
            for stem, (box, mode, stages, scale) in rvq_vectors(model, codec.model_stages(m)).items()}


def _scaled_images() -> dict[str, tuple[Image.Image, str, float]]:
    base = Image.open(SAMPLE).convert("RGB")
    return {stem: (base.crop(box).convert(mode), model, scale)
            for stem, (box, mode, model, scale) in SCALED_VECTORS.items() if model in zoo.RELEASES}


def _int8_images() -> dict[str, tuple[Image.Image, str]]:
    base = Image.open(SAMPLE).convert("RGB")
    return {stem: (base.crop(box).convert(mode), model) for stem, (box, mode, model) in INT8_VECTORS.items()
            if model in zoo.RELEASES}


def _sha(a: np.ndarray) -> str:
    """SHA-256 of an integer array as little-endian int64, in C (row-major) order."""
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<i8").tobytes()).hexdigest()


def pmf_vector(name: str) -> dict:
    """PMFs (int64, little-endian) of the prior of model `name` for a seeded 6x7 context grid."""
    model = zoo.load(name, device="cpu")
    grid = np.random.default_rng(2026).integers(0, model.K, size=(6, 7))
    logits = model.prior.logits(torch.from_numpy(grid)[None]).numpy().astype(np.int64)[0]
    pmfs = pmf_from_logits(logits.reshape(-1, model.K))
    return {"model": name, "context": grid.tolist(),
            "pmfs_sha256": hashlib.sha256(pmfs.astype("<i8").tobytes()).hexdigest(),
            "last_position_pmf": pmfs[-1].tolist()}


def first_positions(vector: str, count: int = 4) -> dict:
    """Tile 0 of `vector`: the first `count` positions in coding order with their integer
    logits (SHA-256), PMF, index and the range decoder's state after decoding them."""
    data = (HERE / vector).read_bytes()
    f = container.read(data)
    grid = codec.decompress_with_grid(data, device="cpu")[1]
    m = zoo.load(f.header.model_name, f.header.model_hash, device="cpu")
    rows, cols = f.header.tile_slices()[0]
    tile = grid[rows, cols]
    logits = m.prior.logits(torch.from_numpy(tile)[None]).numpy().astype(np.int64)[0]
    order = [(int(i), int(j)) for r, c in m.prior.schedule(*tile.shape) for i, j in zip(r, c)]
    rc = _reference_module("rangecoder")
    dec = rc.RangeDecoder(np.frombuffer(f.payloads[0], "<u4").tolist())
    out = []
    for i, j in order[:count]:
        pmf = pmf_from_logits(logits[i, j][None])[0]
        index = dec.decode(rc.cdf_from_pmf(pmf))
        assert index == tile[i, j]
        out.append({"row": i, "col": j, "logits_sha256": _sha(logits[i, j]),
                    "logits_first8": logits[i, j, :8].tolist(), "pmf": pmf.tolist(), "index": index,
                    "coder_after": {"low": dec.low, "range": dec.range, "point": dec.point,
                                    "words_read": dec.pos}})
    return {"file": vector, "tile": 0, "positions": out}


def profile(data: bytes) -> str:
    """The arithmetic profile of a model file (metadata "profile"; absent = "exact")."""
    meta = json.loads(data[8:8 + int.from_bytes(data[:8], "little")]).get("__metadata__", {})
    return meta.get("profile", "exact")


def int8_integer_weights(data: bytes) -> dict:
    """Profile int8: SHA-256 of the values (as little-endian int64, row-major) of every
    `int8.*` tensor of a model file, by name."""
    return {k: {"sha256": _sha(v.numpy())} for k, v in sorted(st_load(data).items()) if k.startswith("int8.")}


def integer_weights(name: str) -> dict:
    """Per layer of model `name`: shift s and SHA-256 of the integer weight [O, I, kh, kw] and
    bias [O]; SHA-256 of the integer embedding and codebook tables (profile exact), or
    `int8_integer_weights` (profile int8)."""
    data = registry.weights(name)
    if profile(data) == "int8":
        return int8_integer_weights(data)
    m = zoo.load(name, device="cpu")
    out = {"prior.embed.weight": {"table_sha256": _sha(m.prior.embed.numpy())},
           "vqvae.quantizer.codebook": {"table_sha256": _sha(m.decoder.codebook.numpy())}}

    def add(tensor_name, conv):
        out[tensor_name] = {"shift": conv.shift, "weight_sha256": _sha(conv.weight.numpy()),
                            "bias_sha256": _sha(conv.bias.numpy())}

    for l, convs in enumerate(m.prior.layers):
        for part, conv in zip(("v", "v2h", "h", "res"), convs):
            add(f"prior.layers.{l}.{part}", conv)
    add("prior.out1", m.prior.out1)
    add("prior.out2", m.prior.out2)
    for slot, module in enumerate(m.vqvae.decoder.net):  # vqvae.decoder.net.{slot}
        if isinstance(module, torch.nn.Conv2d):
            add(f"vqvae.decoder.net.{slot}", IntConv.from_float(module))
        elif isinstance(module, ResBlock):
            add(f"vqvae.decoder.net.{slot}.conv3", IntConv.from_float(module.conv3))
            add(f"vqvae.decoder.net.{slot}.conv1", IntConv.from_float(module.conv1))
    return out


def decoder_output(name: str) -> dict:
    """The integer VQ-VAE decoder's pixels for a fixed 2x3 index grid (for a multi-stage model,
    codes [S_max, 2, 3]: stage s is that grid plus 31 s, modulo K)."""
    m = zoo.load(name, device="cpu")
    grid = (np.arange(6).reshape(2, 3) * 97 + 5) % m.K
    if codec.is_multistage(m):
        grid = np.stack([(grid + 31 * s) % m.K for s in range(codec.model_stages(m))])
    pix = m.decoder(torch.from_numpy(grid)[None])[0].permute(1, 2, 0).numpy()
    return {"grid": grid.tolist(), "pixels_shape": list(pix.shape), "pixels_sha256": _sha(pix),
            "pixels": pix.reshape(-1).tolist()}


def upsampling(vectors: list[str]) -> dict:
    """The upsampler's output for a seeded 3x4 input of 0s and 255s (clamping at both ends)
    upsampled to 5x9, and, for each vector with a coded-size chunk, the SHA-256 of its pixels
    at the coded size (after the grey conversion, before upsampling; uint8, row-major)."""
    src = np.random.default_rng(19).choice(np.array([0, 255], dtype=np.uint8), size=(3, 4))
    out = upsample.upsample(src[..., None], 5, 9)[..., 0]
    coded = {}
    for name in vectors:
        data = (HERE / name).read_bytes()
        f, grid = codec.decompress_grid(data, device="cpu")
        ch, cw = container.coded_size(f.header, f.chunks)
        if (ch, cw) == (f.header.height, f.header.width):
            continue
        m = zoo.load(f.header.model_name, f.header.model_hash, device="cpu")
        gray = f.header.mode == container.Mode.L
        pix = codec.decode_pixels(m, grid, np.empty((ch, cw, 1 if gray else 3), np.uint8), gray=gray)
        coded[name] = {"coded_width": cw, "coded_height": ch,
                       "coded_pixels_sha256": hashlib.sha256(pix.tobytes()).hexdigest()}
    return {"example": {"src": src.tolist(), "height": 5, "width": 9, "out": out.tolist()},
            "coded_pixels": coded}


# ------------------------------------------------------------------------------ broken files


def _with_crc(body: bytes) -> bytes:
    return body + zlib.crc32(body).to_bytes(4, "little")


def _rewrite(data: bytes, **changes) -> bytes:
    """The file with header fields / payloads / chunks replaced (valid CRC)."""
    f = container.read(data)
    header = replace(f.header, **changes.pop("header", {}))
    return container.write(container.VqcFile(header, changes.get("payloads", f.payloads),
                                             changes.get("chunks", f.chunks)))


def broken_files(base: bytes) -> dict[str, tuple[bytes, str, str]]:
    """name -> (bytes, error class, fault), each made from the valid vector `base` (one tile,
    model vqc-f4k512-v1, 64x48)."""
    f = container.read(base)
    name_len = len(f.header.model_name)
    width_at = 15 + name_len  # offset of the width varint (one byte in `base`)
    payload = f.payloads[0]
    alpha = container.Chunk(container.CHUNK_ALPHA, False, b"not a PNG")
    icc = bytes(100)
    return {
        "bad-magic": (b"\x89VQD" + base[4:], "format", "magic is not \\x89VQC"),
        "version-2": (_with_crc(base[:4] + b"\x02" + base[5:-4]), "format", "major version 2"),
        "truncated": (base[:60], "format", "file cut after 60 bytes"),
        "crc-mismatch": (base[:-10] + bytes([base[-10] ^ 1]) + base[-9:], "format",
                         "one payload bit flipped, CRC not updated"),
        "trailing-garbage": (base + b"\0", "format", "one byte after the CRC"),
        "bad-mode": (_with_crc(base[:width_at + 2] + b"\x02" + base[width_at + 3:-4]), "format",
                     "image mode 2"),
        "overlong-varint": (_with_crc(base[:width_at] + bytes([base[width_at] | 0x80, 0])
                                      + base[width_at + 1:-4]), "format",
                            "width written as a 2-byte varint ending in 0x00"),
        "unknown-critical-chunk": (_rewrite(base, chunks=(container.Chunk(99, True, b"x"),)),
                                   "format", "chunk of unknown type 99 with the critical bit"),
        "reserved-chunk-type": (_raw_chunks(base, [(0, b"")]), "format", "chunk of the reserved type 0"),
        "duplicate-icc": (_raw_chunks(base, [(4, icc), (4, icc)]), "format", "two ICC chunks"),
        "alpha-not-png": (_rewrite(base, chunks=(alpha,)), "format", "alpha chunk is not a PNG"),
        "grid-mismatch": (_rewrite(base, header={"grid_w": f.header.grid_w + 1}), "format",
                          "grid_w is not ceil(width / f)"),
        "unknown-model": (_rewrite(base, header={"model_name": "vqc-unknown-v1"}), "model",
                          "model name not in the registry"),
        "wrong-model-hash": (_rewrite(base, header={"model_hash": bytes(8)}), "model",
                             "model hash does not match the released weights"),
        "too-many-pixels": (_rewrite(base, header={"width": 20000, "height": 20000}), "limit",
                            "20000x20000 pixels, above the default cap of 2^28"),
        "tile-too-large": (_rewrite(base, header={"height": 1028, "grid_h": 257, "tile_h": 0,
                                                  "tile_w": 0}), "limit",
                           "one prior tile of 257x16 positions (more than 256 a side)"),
        "payload-not-range-coded": (_rewrite(base, payloads=(b"\xff" * len(payload),)), "format",
                                    "payload of all-ones words: value outside the coding interval"),
        "payload-empty": (_rewrite(base, payloads=(b"",)), "format", "empty payload for a tile"),
        "payload-extra-words": (_rewrite(base, payloads=(payload + bytes(8),)), "format",
                                "two zero words appended: words left over after the last index"),
        "payload-short": (_rewrite(base, payloads=(payload[:-8],)), "format",
                          "last two words removed: the decoder needs more than one word past the end"),
        **coded_size_broken_files(base),
        **stages_broken_files(base),
    }


def stages_broken_files(base: bytes) -> dict[str, tuple[bytes, str, str]]:
    """Faults of the stages chunk (SPEC.md "Chunks", type 6) in `base` (a file of a single-stage
    model, arch vq), each spliced in by hand with the critical bit set."""
    key = container.CHUNK_STAGES * 2 + 1
    return {
        "stages-empty": (_raw_chunks(base, [(key, b"")]), "format", "stages chunk of 0 bytes"),
        "stages-two-bytes": (_raw_chunks(base, [(key, b"\x02\x00")]), "format",
                             "stages chunk of 2 bytes"),
        "stages-zero": (_raw_chunks(base, [(key, b"\x00")]), "format", "S = 0"),
        "stages-17": (_raw_chunks(base, [(key, b"\x11")]), "format", "S = 17, above 16"),
        "stages-duplicate": (_raw_chunks(base, [(key, b"\x02"), (key, b"\x02")]), "format",
                             "two stages chunks"),
        "stages-on-vq-model": (_raw_chunks(base, [(key, b"\x02")]), "format",
                               "S = 2 in a file of a single-stage (arch vq) model: S above the "
                               "model's stages"),
    }


def rvq_broken_files(vector: bytes) -> dict[str, tuple[bytes, str, str]]:
    """Faults that need a multi-stage model: `vector` (a file of S_max stages of an rvq model,
    one tile) with its stages chunk set to S_max + 1."""
    f = container.read(vector)
    s = f.header.stages + 1
    chunks = tuple(c for c in f.chunks if c.type != container.CHUNK_STAGES) + (container.stages_chunk(s),)
    data = container.write(container.VqcFile(replace(f.header, stages=s), f.payloads, chunks))
    return {"stages-above-model": (data, "format", f"S = {s}, one more than the stages of model "
                                                    f"{f.header.model_name}")}


def coded_size_broken_files(base: bytes) -> dict[str, tuple[bytes, str, str]]:
    """Faults of the coded-size chunk (SPEC.md "Chunks", type 5) in `base` (64x48, f = 4, grid
    12x16), each spliced in by hand with the critical bit set."""
    key = container.CHUNK_CODED_SIZE * 2 + 1
    ok = bytes([48, 36])  # a valid coded size for a 64x48 image
    return {
        "coded-size-larger": (_raw_chunks(base, [(key, bytes([65, 36]))]), "format",
                              "coded width 65 above the display width 64"),
        "coded-size-zero": (_raw_chunks(base, [(key, bytes([48, 0]))]), "format", "coded height 0"),
        "coded-size-over-8x": (_raw_chunks(base, [(key, bytes([7, 36]))]), "format",
                               "coded width 7: the display width 64 is more than 8 times it"),
        "coded-size-extra-byte": (_raw_chunks(base, [(key, ok + b"\0")]), "format",
                                  "a byte after the two varints"),
        "coded-size-overlong": (_raw_chunks(base, [(key, bytes([0xB0, 0x00, 36]))]), "format",
                                "coded width 48 written as a 2-byte varint ending in 0x00"),
        "coded-size-truncated": (_raw_chunks(base, [(key, bytes([48]))]), "format",
                                 "coded height missing"),
        "coded-size-duplicate": (_raw_chunks(base, [(key, ok), (key, ok)]), "format",
                                 "two coded-size chunks"),
        "coded-size-grid-mismatch": (_raw_chunks(base, [(key, ok)]), "format",
                                     "coded size 48x36 but the grid (12x16) is that of the "
                                     "64x48 display size, not ceil(36 / 4) x ceil(48 / 4)"),
    }


def _raw_chunks(base: bytes, chunks: list[tuple[int, bytes]]) -> bytes:
    """`base` with the given (key, data) chunks spliced in by hand (the writer refuses to make
    these), CRC updated.  key = type * 2 + critical."""
    f = container.read(base)
    plain = container.write(container.VqcFile(f.header, f.payloads, ()))
    at = len(plain) - 4 - sum(1 + len(p) for p in f.payloads)  # just after the chunk count
    assert plain[at - 1] == 0 and all(len(p) < 128 for p in f.payloads)
    body = b"".join(bytes([key, len(data)]) + data for key, data in chunks)
    return _with_crc(plain[:at - 1] + bytes([len(chunks)]) + body + plain[at:-4])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Regenerate format/vectors (see the module doc).")
    ap.add_argument("--rvq-model", metavar="NAME",
                    help="also make the vectors of this multi-stage (arch rvq) model, if installed")
    args = ap.parse_args(argv)
    manifest, grids = {}, {}
    # a missing v1 vector is made as vqc 0.1 made it: the model of its quality level,
    # nearest-neighbour encoder (effort 0)
    makers = {stem: partial(codec.compress, image, quality=100, device="cpu", model=zoo.for_quality(level),
                            effort=0)
              for stem, (image, level) in _images().items()}
    makers.update({stem: partial(codec.compress, image, quality=100, device="cpu", model=model, effort=0)
                   for stem, (image, model) in _int8_images().items()})
    makers.update({stem: partial(codec.compress, image, quality=100, device="cpu", model=model, effort=0,
                                 scale=scale)
                   for stem, (image, model, scale) in _scaled_images().items()})
    rvq_stems = []
    if args.rvq_model:
        rvq = _rvq_makers(args.rvq_model)  # VqcModelError when the model is not installed
        makers.update(rvq)
        rvq_stems = list(rvq)
    for path in sorted(HERE.glob("*.vqc")):  # vectors made earlier (e.g. with --rvq-model) stay
        makers.setdefault(path.stem, None)
    for stem, make in makers.items():
        path = HERE / f"{stem}.vqc"
        if not path.exists():  # released vectors are never rewritten
            path.write_bytes(make())
        data = path.read_bytes()
        out, grid = codec.decompress_with_grid(data, device="cpu")
        manifest[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "mode": out.mode,
                               "size": list(out.size),
                               "pixels_sha256": hashlib.sha256(out.tobytes()).hexdigest()}
        grids[path.name] = grid.tolist()
        print(stem, len(data), "bytes", out.mode, out.size)
    (HERE / "vectors.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (HERE / "pmf-vector.json").write_text(
        json.dumps(pmf_vector(PMF_VECTOR_MODEL)) + "\n")
    names = sorted(zoo.RELEASES)
    intermediate = {"grids": grids, "first_positions": first_positions("rgb-64x48.q2.vqc"),
                    "integer_weights": {n: integer_weights(n) for n in names},
                    "decoder_output": {n: decoder_output(n) for n in names}}
    if (HERE / "rgb-64x48.f4k512-v2.vqc").exists():
        intermediate["first_positions_int8"] = first_positions("rgb-64x48.f4k512-v2.vqc")
    intermediate["upsampling"] = upsampling(list(manifest))
    (HERE / "intermediate.json").write_text(json.dumps(intermediate) + "\n")
    BROKEN.mkdir(exist_ok=True)
    table = {}
    broken = broken_files((HERE / "rgb-64x48.q2.vqc").read_bytes())
    if rvq_stems:
        broken.update(rvq_broken_files((HERE / f"{rvq_stems[1]}.vqc").read_bytes()))
    elif (BROKEN / "stages-above-model.vqc").exists():  # made with --rvq-model earlier: kept
        broken["stages-above-model"] = ((BROKEN / "stages-above-model.vqc").read_bytes(), "format",
                                        json.loads((BROKEN / "broken.json").read_text())
                                        ["stages-above-model.vqc"]["fault"])
    for stem, (data, error, fault) in broken.items():
        (BROKEN / f"{stem}.vqc").write_bytes(data)
        table[f"{stem}.vqc"] = {"error": error, "fault": fault}
    (BROKEN / "broken.json").write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()
