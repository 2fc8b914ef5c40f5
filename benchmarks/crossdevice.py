"""Cross-device bit-exactness check: files encoded on one device decode identically on another.

    python -m benchmarks.crossdevice encode --device cpu  --out DIR_A   # .vqc files + manifest
    python -m benchmarks.crossdevice decode --device cuda --files DIR_A # compare with manifest
    python -m benchmarks.crossdevice encode --device cuda --out DIR_B
    python -m benchmarks.crossdevice decode --device cpu  --files DIR_B

`encode` compresses every image of --images with every released model (one per quality level;
`--model NAME`, repeatable, picks others) on --device, decodes each file there too, and writes
the files `<image>.<model>.vqc` and a manifest (SHA-256 of each file, of its decoded index grid
and of its decoded pixel bytes). `decode` decodes the files on --device and compares both
hashes; it prints one line per file and exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

from vqcodec import codec, registry

DEFAULT_IMAGES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "kodak"


def _sha(b: bytes) -> str:
    """SHA-256 of `b`, hex."""
    return hashlib.sha256(b).hexdigest()


def _decode_hashes(data: bytes, device: str) -> tuple[str, str]:
    """SHA-256 (hex) of the decoded index grid (int64 little-endian) and of the decoded image's
    pixel bytes, from one decode of `.vqc` bytes on `device`."""
    image, idx = codec.decompress_with_grid(data, device=device)
    return _sha(idx.astype("<i8").tobytes()), _sha(image.tobytes())


def machine(device: str) -> str:
    """Human-readable name of the machine and device (GPU name, or CPU and torch threads)."""
    if device.startswith("cuda"):
        return f"{platform.node()} {torch.cuda.get_device_name()}"
    return f"{platform.node()} {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def encode(images: Path, out: Path, device: str, limit: int | None,
           models: list[str] | None = None) -> None:
    """Compress and decode every PNG of `images` with every model on `device`; write the files
    and manifest.json to `out`.

    Args:
        images: folder of PNG images (sorted by name, the first `limit` if given).
        out: output folder (created).
        device: "cpu", "cuda" or "auto".
        limit: number of images, or None for all.
        models: model names; default: the released model of every quality level.

    Raises:
        VqcError: an image cannot be read or a model cannot be loaded.
    """
    models = models or [registry.for_quality(q) for q in registry.QUALITY_LEVELS]
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"device": machine(device), "files": {}}
    for path in sorted(images.glob("*.png"))[:limit]:
        for model in models:
            t0 = time.perf_counter()
            data = codec.compress(path, model=model, device=device)
            grid_sha, pix_sha = _decode_hashes(data, device)
            name = f"{path.stem}.{model}.vqc"
            (out / name).write_bytes(data)
            manifest["files"][name] = {"vqc_sha256": _sha(data), "grid_sha256": grid_sha,
                                       "pixels_sha256": pix_sha}
            print(f"{name}: {len(data)} bytes, encoded+decoded in {time.perf_counter() - t0:.2f} s", flush=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))


def decode(files: Path, device: str) -> int:
    """Decode every file of a folder written by `encode` on `device` and compare the index-grid
    and pixel hashes with its manifest.

    Returns:
        0 when every file decodes identically, 1 otherwise (a line per file says which differ).
    """
    manifest = json.loads((files / "manifest.json").read_text())
    bad = 0
    for name, want in manifest["files"].items():
        grid_sha, pix_sha = _decode_hashes((files / name).read_bytes(), device)
        ok = grid_sha == want["grid_sha256"] and pix_sha == want["pixels_sha256"]
        bad += not ok
        print(f"{name}: grid {'same' if grid_sha == want['grid_sha256'] else 'DIFFERENT'}, "
              f"pixels {'same' if pix_sha == want['pixels_sha256'] else 'DIFFERENT'}", flush=True)
    n = len(manifest["files"])
    print(f"encoded on: {manifest['device']}\ndecoded on: {machine(device)}\n"
          f"{n - bad} of {n} files decode to identical index grids and pixels")
    return 1 if bad else 0


def main(argv=None) -> int:
    """Command line (see the module docstring); returns the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["encode", "decode"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    p.add_argument("--out", type=Path, help="encode: folder for files + manifest")
    p.add_argument("--files", type=Path, help="decode: folder written by encode")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--model", action="append", default=None,
                   help="encode: model name (repeatable; default: every released model)")
    args = p.parse_args(argv)
    if args.action == "encode":
        encode(args.images, args.out, args.device, args.limit, args.model)
        return 0
    return decode(args.files, args.device)


if __name__ == "__main__":
    sys.exit(main())
