"""Pack training crops into a git-ignored folder that travels with the checkout to a GPU lease:
`python -m vqcodec.train.pack_crops [--src ../shared/data/train] [--out .carry/crops]`.

A lease carries at most 64 MiB (the repository's tracked files included), so the crops must be
stored densely and losslessly (`pack_one`):

- a JPEG (or WebP) source keeps its own bytes, copied: lossless with respect to the data set
  (the lease decodes exactly the pixels the CPU runs see);
- any other image (PNG, ...) becomes lossless WebP of its decoded RGB pixels (Pillow,
  `lossless=True, quality=100, method=4`), verified by decoding it again.

Measured on ../shared/data/train (1,039 JPEG crops 256x256, 43.4 MB): lossless WebP of the
decoded pixels is 2.17x the JPEG bytes and PNG 2.98x (first 20 files), so every JPEG is copied;
PNG sources would become WebP.  Files are taken in a fixed pseudo-random order (SHA-256 of the
name, so the subset mixes the source data sets) until `--max-bytes` is reached.  The default
budget is 64 MiB minus the tracked files of this checkout (`tracked_bytes`) minus `--reserve`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image

from vqcodec.train.common import list_images

#: Bytes a lease carries in all (repository included).
LEASE_BYTES = 64 * 2 ** 20
#: Source suffixes whose own bytes are kept when smaller (already lossy-coded: copying is exact).
KEEP_SUFFIXES = {".jpg", ".jpeg", ".webp"}


def webp_lossless(rgb: np.ndarray) -> bytes:
    """Lossless WebP bytes of an RGB image.

    Args:
        rgb: uint8 [H, W, 3].

    Returns:
        WebP file bytes.

    Raises:
        ValueError: the decoded WebP differs from rgb (never expected; a guard on Pillow/libwebp).
    """
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "WEBP", lossless=True, quality=100, method=4)
    data = buf.getvalue()
    with Image.open(io.BytesIO(data)) as im:
        if not np.array_equal(np.asarray(im.convert("RGB")), rgb):
            raise ValueError("lossless WebP round trip differs")
    return data


def pack_one(src: Path) -> tuple[str, bytes]:
    """The lossless form of one image kept in the pack (module docstring): a JPEG or WebP
    source's own bytes (exact, and smaller than lossless WebP of its pixels: 2.17x larger on
    the training JPEGs), any other image as lossless WebP of its RGB pixels.

    Args:
        src: an image file.

    Returns:
        (file name to write, its bytes).
    """
    raw = src.read_bytes()
    if src.suffix.lower() in KEEP_SUFFIXES:
        return src.name, raw
    with Image.open(io.BytesIO(raw)) as im:
        rgb = np.asarray(im.convert("RGB"))
    return src.stem + ".webp", webp_lossless(rgb)


def tracked_bytes(repo: Path) -> int:
    """Total size of the files git tracks in a checkout (what a lease carries besides `carry`).

    Args:
        repo: the checkout's root.

    Returns:
        Bytes (0 when git is unavailable).
    """
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True,
                               check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return 0
    return sum((repo / n.decode()).stat().st_size for n in names if n and (repo / n.decode()).is_file())


def pack(src: Path, out: Path, max_bytes: int) -> dict:
    """Pack images from src into out (emptied first) until max_bytes.

    Args:
        src: folder of images (`list_images`).
        out: output folder.
        max_bytes: most bytes written in all.

    Returns:
        {"files": written, "bytes": their total, "source_files", "source_bytes" (of all images
        in src), "webp": files converted to WebP}.
    """
    files = sorted(list_images(src), key=lambda p: hashlib.sha256(p.name.encode()).hexdigest())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    total = n = webp = 0
    for path in files:
        name, data = pack_one(path)
        if total + len(data) > max_bytes:
            continue  # a smaller later file may still fit
        (out / name).write_bytes(data)
        total, n, webp = total + len(data), n + 1, webp + (name != path.name)
    return {"files": n, "bytes": total, "source_files": len(files),
            "source_bytes": sum(p.stat().st_size for p in files), "webp": int(webp)}


def main(argv=None) -> None:
    """Command line: pack the crops and print what was written (JSON).

    Args:
        argv: command-line arguments (default: sys.argv[1:]).
    """
    import json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", type=Path, default=Path("../shared/data/train"))
    p.add_argument("--out", type=Path, default=Path(".carry/crops"))
    p.add_argument("--repo", type=Path, default=Path("."))
    p.add_argument("--reserve", type=int, default=2 * 2 ** 20,
                   help="bytes kept free for untracked files and other carried paths")
    p.add_argument("--max-bytes", type=int, default=None, help="default: 64 MiB - tracked - reserve")
    args = p.parse_args(argv)
    repo = tracked_bytes(args.repo)
    budget = args.max_bytes if args.max_bytes is not None else LEASE_BYTES - repo - args.reserve
    print(json.dumps({"tracked_bytes": repo, "budget": budget, **pack(args.src, args.out, budget)}))


if __name__ == "__main__":
    main()
