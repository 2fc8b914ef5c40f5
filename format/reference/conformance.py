"""Run the reference decoder over the conformance suite and print what it computes, as JSON.

    python format/reference/conformance.py > computed.json

For every vector: decoded mode, size, pixel SHA-256 and index grid; for every broken file: the
error class reported ("format", "model", "limit", or null when it decoded); and the
intermediate values of format/vectors/intermediate.json, computed here: the first positions of
a file (logits, PMF, index, range-coder state), the integer weights of each model, the
decoder output for a small grid, and the upsampler's output for a small input and the pixels of
each coded-size vector before upsampling.  tests/test_reference.py compares this output with the
expected values, in a process where torch, constriction and vqcodec cannot be imported.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decode  # noqa: E402
from network import Model, ModelError  # noqa: E402
from rangecoder import RangeDecoder, cdf_from_pmf  # noqa: E402

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype="<i8").tobytes()).hexdigest()


def vectors() -> dict:
    out = {}
    for path in sorted(VECTORS.glob("*.vqc")):
        image, grid = decode.decode(path.read_bytes(), decode.MODELS_DIR)
        out[path.name] = {"mode": image.mode, "size": list(image.size),
                          "pixels_sha256": hashlib.sha256(image.tobytes()).hexdigest(),
                          "grid": grid.tolist()}
    return out


def broken() -> dict:
    out = {}
    for path in sorted((VECTORS / "broken").glob("*.vqc")):
        try:
            decode.decode(path.read_bytes(), decode.MODELS_DIR)
            out[path.name] = None
        except (decode.FormatError, decode.LimitError, ModelError) as exc:
            out[path.name] = {3: "format", 5: "model", 6: "limit"}[exc.exit_code]
    return out


def first_positions(name: str, count: int = 4) -> dict:
    """Trace tile 0 of vector `name`: logits, PMF, index and coder state per position."""
    f = decode.parse((VECTORS / name).read_bytes(), decode.DEFAULT_MAX_PIXELS)
    model = Model(decode.MODELS_DIR / f"{f['model_name']}.safetensors")
    tile_h = min(f["tile_h"], f["grid_h"]) if f["tile_h"] else f["grid_h"]
    tile_w = min(f["tile_w"], f["grid_w"]) if f["tile_w"] else f["grid_w"]
    coder = RangeDecoder(np.frombuffer(f["payloads"][0], "<u4").tolist())
    prior, trace = model.prior, []
    logits_of = prior._logits

    def traced_logits(rows, cols, *maps):
        logits = logits_of(rows, cols, *maps)
        trace.extend({"row": int(i), "col": int(j), "logits": lg} for i, j, lg in zip(rows, cols, logits))
        return logits

    def decode_symbols(pmfs):
        indices = []
        for pmf in pmfs:
            entry = trace[len(indices) - len(pmfs)]
            indices.append(coder.decode(cdf_from_pmf(pmf)))
            entry.update(pmf=pmf.tolist(), index=indices[-1], coder_after={
                "low": coder.low, "range": coder.range, "point": coder.point, "words_read": coder.pos})
        return indices

    prior._logits = traced_logits
    prior.decode_tile(tile_h, tile_w, decode_symbols)
    out = []
    for entry in trace[:count]:
        lg = entry.pop("logits")
        out.append({"row": entry["row"], "col": entry["col"], "logits_sha256": _sha(lg),
                    "logits_first8": lg[:8].tolist(), "pmf": entry["pmf"], "index": entry["index"],
                    "coder_after": entry["coder_after"]})
    return {"file": name, "tile": 0, "positions": out}


def int8_integer_weights(model: Model) -> dict:
    """Profile int8: SHA-256 of every int8.* tensor, rebuilt from the parsed layers."""
    out = {"int8.prior.embed": {"sha256": _sha(model.prior.embed)},
           "int8.decoder.codebook": {"sha256": _sha(model.decoder.codebook)}}

    def add(layer):
        for (name, shape), matrix in zip(layer.parts, layer.matrices):
            o, i, kh, kw = shape
            out[f"{name}.weight"] = {"sha256": _sha(matrix.reshape(kh, kw, i, o).transpose(3, 2, 0, 1))}
        values = {"bias": layer.bias, "mult": layer.mult, "shift": np.array([layer.shift]),
                  "resid": layer.resid}
        out.update({f"{layer.name}.{k}": {"sha256": _sha(v)} for k, v in values.items() if v is not None})

    for l, layer in enumerate(model.prior.layers):
        for part in ("v", "h", "res"):
            add(layer[part])
        out[f"int8.prior.layers.{l}.v_gate"] = {"sha256": _sha(np.array([layer["tv"]]))}
        out[f"int8.prior.layers.{l}.h_gate"] = {"sha256": _sha(np.array([layer["th"]]))}
    if model.arch == "rvq":  # per-stage heads (SPEC.md "Model file, arch rvq")
        for h, (out1, out2, cond, cond_mult) in enumerate(model.prior.heads):
            add(out1)
            add(out2)
            if cond is not None:
                out[f"int8.prior.heads.{h}.cond"] = {"sha256": _sha(cond)}
                out[f"int8.prior.heads.{h}.cond_mult"] = {"sha256": _sha(cond_mult)}
    else:
        add(model.prior.out1)
        add(model.prior.out2)
    for op in model.decoder.ops:
        for layer in op[1:] if op[0] in ("conv", "res") else ():
            add(layer)
    return dict(sorted(out.items()))


def integer_weights(model: Model) -> dict:
    if model.profile == "int8":
        return int8_integer_weights(model)
    out = {"prior.embed.weight": {"table_sha256": _sha(model.prior.embed)},
           "vqvae.quantizer.codebook": {"table_sha256": _sha(model.decoder.codebook)}}

    def add(name, conv):
        kh, kw = conv.kernel
        o = conv.matrix.shape[1]
        w = conv.matrix.reshape(kh, kw, -1, o).transpose(3, 2, 0, 1)  # back to [O, I, kh, kw]
        out[name] = {"shift": conv.shift, "weight_sha256": _sha(w), "bias_sha256": _sha(conv.bias)}

    for l, layer in enumerate(model.prior.layers):
        for part in ("v", "v2h", "h", "res"):
            add(f"prior.layers.{l}.{part}", layer[part])
    add("prior.out1", model.prior.out1)
    add("prior.out2", model.prior.out2)
    for slot, op in enumerate(model.decoder.ops):
        if op[0] == "conv":
            add(f"vqvae.decoder.net.{slot}", op[1])
        elif op[0] == "res":
            add(f"vqvae.decoder.net.{slot}.conv3", op[1])
            add(f"vqvae.decoder.net.{slot}.conv1", op[2])
    return out


def decoder_output(model: Model, grid: list) -> dict:
    pix = model.decoder(np.array(grid, dtype=np.int64))
    return {"grid": grid, "pixels_shape": list(pix.shape), "pixels_sha256": _sha(pix),
            "pixels": pix.reshape(-1).tolist()}


def upsampling(expected: dict) -> dict:
    """The `upsampling` values of intermediate.json, computed here: the example's output, and
    the pixels each vector with a coded-size chunk has at its coded size (traced as they go into
    `decode.upsample`)."""
    ex = expected["example"]
    out = decode.upsample(np.array(ex["src"], dtype=np.int64), ex["height"], ex["width"], decode.read_taps())
    coded, planes, upsample = {}, [], decode.upsample

    def traced(plane, height, width, taps):
        planes.append(plane.astype(np.uint8))
        return upsample(plane, height, width, taps)

    decode.upsample = traced
    try:
        for path in sorted(VECTORS.glob("*.vqc")):
            planes.clear()
            decode.decode(path.read_bytes(), decode.MODELS_DIR)
            if planes:
                pix = np.stack(planes, 2)
                coded[path.name] = {"coded_width": pix.shape[1], "coded_height": pix.shape[0],
                                    "coded_pixels_sha256": hashlib.sha256(pix.tobytes()).hexdigest()}
    finally:
        decode.upsample = upsample
    return {"example": {**ex, "out": out.tolist()}, "coded_pixels": coded}


def main() -> None:
    expected = json.loads((VECTORS / "intermediate.json").read_text())
    models = {name: Model(decode.MODELS_DIR / f"{name}.safetensors") for name in expected["integer_weights"]}
    report = {
        "vectors": vectors(),
        "broken": broken(),
        "first_positions": first_positions(expected["first_positions"]["file"]),
        "integer_weights": {n: integer_weights(m) for n, m in models.items()},
        "decoder_output": {n: decoder_output(m, expected["decoder_output"][n]["grid"])
                           for n, m in models.items()},
    }
    if "upsampling" in expected:
        report["upsampling"] = upsampling(expected["upsampling"])
    if "first_positions_int8" in expected:
        report["first_positions_int8"] = first_positions(expected["first_positions_int8"]["file"])
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
