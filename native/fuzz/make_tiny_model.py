"""Write fuzz/seed-models/tiny-int8.safetensors: a valid profile-int8 model of minimal size (K=4, C=4,
L=2, f=4, D=4, c_lo=c_hi=4, n_res=1, random small integers), the seed of fuzz_model.c.

    python3 native/fuzz/make_tiny_model.py native/fuzz/seed-models/tiny-int8.safetensors

With --rvq: fuzz/seed-models/tiny-rvq.safetensors, the same sizes with architecture rvq (format 1.3)
and S_max = 3 stages (stage embeddings, heads with conditioning tables, stage codebooks):

    python3 native/fuzz/make_tiny_model.py native/fuzz/seed-models/tiny-rvq.safetensors --rvq
"""

import json
import struct
import sys

import numpy as np

RVQ = "--rvq" in sys.argv[2:]
S = 3  # S_max of the rvq model
rng = np.random.default_rng(21 if RVQ else 20)
K, C, L, D, CLO, CHI, NRES, F = 4, 4, 2, 4, 4, 4, 1, 4
tensors = {}


def layer(name, o, i, kh, kw, resid=False, weight_only=False):
    tensors[f"{name}.weight"] = rng.integers(-63, 64, (o, i, kh, kw)).astype(np.int8)
    if weight_only:
        return
    tensors[f"{name}.bias"] = rng.integers(-1000, 1000, (o,)).astype(np.int32)
    tensors[f"{name}.mult"] = rng.integers(0, 1 << 16, (o,)).astype(np.int32)
    tensors[f"{name}.shift"] = np.array([20], dtype=np.int32)
    if resid:
        tensors[f"{name}.resid"] = rng.integers(-100, 100, (o,)).astype(np.int32)


tensors["int8.prior.embed"] = rng.integers(-127, 128, (S, K, C) if RVQ else (K, C)).astype(np.int8)
for l in range(L):
    k = 1 if l == 0 else 2
    p = f"int8.prior.layers.{l}"
    layer(f"{p}.v", 2 * C, C, k, 3)
    tensors[f"{p}.v_gate"] = np.array([50], dtype=np.int32)
    layer(f"{p}.h", 2 * C, C, 1, k)
    layer(f"{p}.v2h", 2 * C, 2 * C, 1, 1, weight_only=True)
    tensors[f"{p}.h_gate"] = np.array([60], dtype=np.int32)
    layer(f"{p}.res", C, C, 1, 1, resid=l > 0)
if RVQ:
    for s in range(S):
        layer(f"int8.prior.heads.{s}.out1", C, C, 1, 1)
        layer(f"int8.prior.heads.{s}.out2", K, C, 1, 1)
        if s:
            tensors[f"int8.prior.heads.{s}.cond"] = rng.integers(-127, 128, (s, K, C)).astype(np.int8)
            tensors[f"int8.prior.heads.{s}.cond_mult"] = rng.integers(0, 1000, (s, C)).astype(np.int32)
else:
    layer("int8.prior.out1", C, C, 1, 1)
    layer("int8.prior.out2", K, C, 1, 1)
tensors["int8.decoder.codebook"] = rng.integers(-127, 128, (S, K, D) if RVQ else (K, D)).astype(np.int8)
layer("int8.decoder.net.0", CHI, D, 3, 3)
layer("int8.decoder.net.1.conv3", CHI, CHI, 3, 3)
layer("int8.decoder.net.1.conv1", CHI, CHI, 1, 1, resid=True)
layer("int8.decoder.net.2", 4 * CLO, CHI, 1, 1)
layer("int8.decoder.net.4.conv3", CLO, CLO, 3, 3)
layer("int8.decoder.net.4.conv1", CLO, CLO, 1, 1, resid=True)
layer("int8.decoder.net.6", 12, CLO, 3, 3)

stages = {"stages": S} if RVQ else {}
header = {"__metadata__": {
    "name": "tiny-rvq" if RVQ else "tiny-int8", "profile": "int8",
    "vqvae_config": json.dumps({"f": F, "K": K, "D": D, "c_lo": CLO, "c_hi": CHI, "n_res": NRES, **stages}),
    "prior_config": json.dumps({"K": K, "channels": C, "layers": L, **stages})}}
if RVQ:
    header["__metadata__"]["arch"] = "rvq"
data, off = b"", 0
dtypes = {np.dtype(np.int8): "I8", np.dtype(np.int32): "I32"}
for name, t in tensors.items():
    raw = t.astype(t.dtype.newbyteorder("<")).tobytes()
    header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
    data += raw
    off += len(raw)
h = json.dumps(header).encode()
with open(sys.argv[1], "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + data)
