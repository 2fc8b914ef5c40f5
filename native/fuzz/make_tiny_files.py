"""Write .vqc files coded with the tiny fuzz models (fuzz/seed-models/tiny-int8.safetensors, and
tiny-rvq.safetensors of arch rvq with S_max = 3: files tiny-rvq-*) into fuzz/seed-files/: valid files the decode fuzzer decodes in microseconds, so its mutations reach
the prior, the range decoder, the pixel decoder and the upsampler often.  The payloads are made
with the reference decoder's prior and range encoder (format/reference/), random indices.

    python3 native/fuzz/make_tiny_files.py
"""

import hashlib
import random
import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "format" / "reference"))
from network import Model  # noqa: E402
from rangecoder import RangeEncoder, cdf_from_pmf  # noqa: E402

MODEL = HERE / "seed-models" / "tiny-int8.safetensors"
model = Model(MODEL)
model_name = "tiny-int8"
model_id = hashlib.sha256(MODEL.read_bytes()).digest()[:8]
rng = random.Random(5)


def varint(v: int) -> bytes:
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def payload(h: int, w: int, stages: int = 0) -> bytes:
    enc = RangeEncoder()

    def code(pmfs):
        ks = []
        for p in pmfs:
            k = rng.randrange(len(p))
            cdf = cdf_from_pmf(p)
            enc.encode(cdf[k], cdf[k + 1] - cdf[k])
            ks.append(k)
        return ks

    if stages:  # arch rvq: S stages per position (SPEC "Coding order", with stages)
        model.prior.decode_tile(h, w, code, stages=stages)
    else:
        model.prior.decode_tile(h, w, code)
    words = enc.finish()
    return b"".join(x.to_bytes(4, "little") for x in words)


def vqc(width, height, mode, tile, coded=None, chunks=(), stages=0):
    f = model.f
    cw, ch = coded or (width, height)
    gh, gw = -(-ch // f), -(-cw // f)
    th, tw = tile
    chunk_bytes = list(chunks)
    if coded:
        chunk_bytes.append(varint(5 * 2 + 1) + varint(len(varint(cw) + varint(ch))) + varint(cw) + varint(ch))
    if stages > 1:
        chunk_bytes.append(varint(6 * 2 + 1) + varint(1) + bytes([stages]))
    minor = 3 if stages > 1 else 2 if coded else 0
    name = model_name.encode()
    body = (b"\x89VQC\x01" + bytes([minor, len(name)]) + name + model_id + varint(width)
            + varint(height) + bytes([mode]) + varint(gh) + varint(gw) + varint(th) + varint(tw)
            + varint(len(chunk_bytes)) + b"".join(chunk_bytes))
    rows = [(r, min(r + th, gh)) for r in range(0, gh, th)] if th else [(0, gh)]
    cols = [(c, min(c + tw, gw)) for c in range(0, gw, tw)] if tw else [(0, gw)]
    for r0, r1 in rows:
        for c0, c1 in cols:
            p = payload(r1 - r0, c1 - c0, stages)
            body += varint(len(p)) + p
    return body + zlib.crc32(body).to_bytes(4, "little")


files = {
    "tiny-rgb-20x16.vqc": vqc(20, 16, 3, (0, 0)),
    "tiny-gray-13x9-tiles.vqc": vqc(13, 9, 1, (2, 2)),
    "tiny-rgb-30x22-tiles.vqc": vqc(30, 22, 3, (3, 4)),
    "tiny-rgb-40x24-coded-23x14.vqc": vqc(40, 24, 3, (2, 3), coded=(23, 14)),
    "tiny-gray-17x33-coded-9x5.vqc": vqc(17, 33, 1, (0, 0), coded=(9, 5)),
    "tiny-rgb-12x8-icc-exif.vqc": vqc(12, 8, 3, (0, 0), chunks=(varint(2 * 2) + varint(4) + b"icc!",
                                                                varint(3 * 2) + varint(4) + b"MM\x00*")),
}


def alpha_png(w, h):
    import io

    import numpy as np
    from PIL import Image

    b = io.BytesIO()
    Image.fromarray((np.arange(w * h).reshape(h, w) * 37 % 256).astype(np.uint8), "L").save(b, "PNG")
    return b.getvalue()


for name, (w, h, mode) in {"tiny-rgba-14x10.vqc": (14, 10, 3), "tiny-la-9x11-tiles.vqc": (9, 11, 1)}.items():
    png = alpha_png(w, h)
    files[name] = vqc(w, h, mode, (2, 2) if mode == 1 else (0, 0), chunks=(varint(1 * 2 + 1) + varint(len(png)) + png,))
# arch rvq (format 1.3): the model of S_max = 3 with S = 1, 2, 3 stages (after the files above,
# so that their random indices stay those they always had)
MODEL = HERE / "seed-models" / "tiny-rvq.safetensors"
model = Model(MODEL)
model_name = "tiny-rvq"
model_id = hashlib.sha256(MODEL.read_bytes()).digest()[:8]
files.update({
    "tiny-rvq-rgb-20x16-s1.vqc": vqc(20, 16, 3, (0, 0), stages=1),
    "tiny-rvq-rgb-30x22-tiles-s3.vqc": vqc(30, 22, 3, (3, 4), stages=3),
    "tiny-rvq-gray-13x9-tiles-s2.vqc": vqc(13, 9, 1, (2, 2), stages=2),
    "tiny-rvq-rgb-40x24-coded-23x14-s3.vqc": vqc(40, 24, 3, (2, 3), coded=(23, 14), stages=3),
})
out = HERE / "seed-files"
out.mkdir(exist_ok=True)
for name, data in files.items():
    (out / name).write_bytes(data)
    print(name, len(data))
