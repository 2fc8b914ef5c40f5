"""Rate-distortion benchmark: vqc against JPEG, WebP, AVIF and JPEG XL on a folder of images.

    python -m benchmarks.rd [--images DIR] [--out benchmarks/results] [--limit N]
                            [--codecs vqc,jpeg420,jpeg444,webp,avif,jxl]

For every image in DIR (sorted by name; ``--limit N`` keeps the first N) and every codec setting
(each vqc quality level, a quality sweep for each classic codec) the image is encoded, decoded
and scored. The rate is the size of the whole file (container and headers included) in bits
("bits per image") and in bits per pixel (bpp); the quality is PSNR (RGB, 8-bit, peak 255, dB)
and MS-SSIM (``pytorch_msssim.ms_ssim``, data_range=255, also reported as -10*log10(1-MS-SSIM)
dB); encode and decode wall-clock seconds are recorded too.

Outputs, named after the image folder (``kodak`` for the default folder), under ``--out``:

* ``<set>.json``: every point (codec, setting, image, bytes, bpp, psnr, msssim, enc_s, dec_s),
  the set-averaged curves, vqc's savings against JPEG/WebP at equal PSNR and the BD-rates;
* ``<set>.md``: the same as markdown tables;
* ``rd_<set>.png``: bpp vs PSNR and bpp vs MS-SSIM (dB), all codecs, 0..1.5 bpp;
* ``visual_<set>.png``: 192x192 crops of kodim04, kodim15, kodim23: vqc against JPEG 4:2:0 and
  WebP at the quality whose file size is closest to vqc's.

Averaging over the set (CompressAI's convention): at each codec setting, mean bpp, mean bits,
mean PSNR (dB) and mean MS-SSIM index over the images; the MS-SSIM dB value of the average curve
is -10*log10(1 - mean MS-SSIM). A setting enters the averaged curve only when every image has it.

Each (codec, setting, image) result is cached as one JSON line in ``<out>/cache/<codec>.jsonl``,
keyed by codec, setting, image name, the image file's sha256 and a codec fingerprint (library
versions for the classic codecs; for vqc the package version and each level's model name and
pinned SHA-256), so an interrupted run resumes where it stopped and a changed model is measured
again.

vqc runs through ``vqcodec.codec`` at every level of ``vqcodec.registry.QUALITY_LEVELS``; if
vqcodec cannot be imported the vqc part is skipped with a note and the classic codecs still run.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, features

from benchmarks import metrics

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = (REPO_ROOT / ".." / "shared" / "data" / "kodak").resolve()
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results"
DEFAULT_CODECS = ("vqc", "vqc-nn", "jpeg420", "jpeg444", "webp", "avif", "jxl")
IMAGE_SUFFIXES = (".png", ".ppm", ".bmp", ".tif", ".tiff")

# --- sweeps -------------------------------------------------------------------------------------
# Dense at low rates (about 0.05-1 bpp on Kodak), where vqc operates (about 0.1-0.4 bpp), sparser
# above. libjpeg clamps every quantiser at 255 for quality <= 2, so JPEG quality 1 == 2.
JPEG_QUALITIES = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 14, 16, 18, 20, 25, 30, 35, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (0, 2, 4, 6, 8, 10, 13, 16, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)
AVIF_QUALITIES = (0, 4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 45, 50, 55, 60, 70, 80, 90)
JXL_QUALITIES = (0, 3, 6, 10, 15, 20, 25, 30, 35, 40, 45, 50, 60, 70, 80, 90, 95)
#: libavif speed (0 slowest/best .. 10 fastest). 4 is close to libavif's best compression at a
#: cost that keeps the whole Kodak sweep within the time budget on 2 cores (see benchmarks/README).
AVIF_SPEED = 4
#: WebP encoder method (0 fast .. 6 slowest/best).
WEBP_METHOD = 6
#: libjxl effort (1 fastest .. 9; 7 is libjxl's default).
JXL_EFFORT = 7

#: vqc's continuous quality scale (`vqcodec.rdo.plan`), at the default effort: every 4 Q. Q is
#: about linear in the rate (`vqcodec.rdo`, "Quality scale": about 0.0026 bpp per Q on the
#: training crops), so adjacent points are about 0.01 bpp apart on Kodak.
VQC_QUALITIES = tuple(range(0, 101, 4))
#: The nearest-neighbour encoder (effort 0) at the plan's model and scale of two qualities: Q 40
#: (vqc-f4k512-v2 at 11/16 of the size) and Q 100 (full size: the old --quality 2).
VQC_NN_QUALITIES = (40, 100)

#: Published Kodak results (PSNR RGB, set averages) of state-of-the-art codecs, as given in
#: CompressAI's results/image/kodak/{vtm,av1}.json and for mbt2018 (Minnen, Balle, Toderici,
#: NeurIPS 2018) as reported there; NOT measured here: (bpp, PSNR dB) pairs.
PUBLISHED = {
    "vtm (published)": ("VTM (published)", [(0.1125, 28.49), (0.2458, 31.20), (0.4905, 34.26), (0.8748, 37.42)]),
    "av1 (published)": ("AV1 (published)", [(0.1100, 27.56), (0.1700, 29.02), (0.2456, 30.44), (0.3524, 31.99),
                                            (0.4987, 33.65)]),
    "mbt2018 (published)": ("mbt2018 (published)", [(0.153, 28.88), (0.264, 30.93), (0.429, 33.03)]),
}

#: Crops (left, top) of 192x192 pixels for the visual comparison figure.
VISUAL_CROPS = {"kodim04": (180, 300), "kodim15": (430, 60), "kodim23": (60, 150)}
VISUAL_CROP_SIZE = 192
#: vqc quality levels shown in the visual figure, one row each: the ones whose set-averaged bpp is
#: closest to these (0.15 bpp: a downscaled point of the quality scale, in the former rate hole).
VISUAL_TARGET_BPPS = (0.15, 0.25)
VISUAL_TARGET_BPP = VISUAL_TARGET_BPPS[-1]
PLOT_MAX_BPP = 1.5


# --- codecs -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Codec:
    """One codec under test: its settings sweep and encode/decode callables.

    ``encode(pixels_uint8_HxWx3, setting) -> bytes`` and ``decode(bytes) -> uint8 HxWx3``.
    """

    name: str
    label: str
    settings: tuple[int, ...]
    encode: Callable[[np.ndarray, int], bytes]
    decode: Callable[[bytes], np.ndarray]
    fingerprint: str
    description: str


def _pil_decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _pil_encoder(fmt: str, **options: Any) -> Callable[[np.ndarray, int], bytes]:
    def encode(pixels: np.ndarray, quality: int) -> bytes:
        buf = io.BytesIO()
        # A fresh image from the raw pixels: no ICC profile, EXIF or other metadata in the file.
        Image.fromarray(pixels, "RGB").save(buf, format=fmt, quality=quality, **options)
        return buf.getvalue()

    return encode


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 - metadata may be missing for a source checkout
        return "unknown"


def classic_codecs() -> dict[str, Codec]:
    """The classic codecs by name: jpeg420, jpeg444, webp, avif, jxl (Pillow and pillow_jxl)."""
    pil = f"Pillow {Image.__version__}"
    codecs = {
        "jpeg420": Codec(
            "jpeg420", "JPEG 4:2:0", JPEG_QUALITIES,
            _pil_encoder("JPEG", subsampling=2, optimize=True), _pil_decode,
            f"{pil}; libjpeg {features.version('jpg')}",
            f"Pillow JPEG, 4:2:0, optimize=True, quality {_span(JPEG_QUALITIES)}",
        ),
        "jpeg444": Codec(
            "jpeg444", "JPEG 4:4:4", JPEG_QUALITIES,
            _pil_encoder("JPEG", subsampling=0, optimize=True), _pil_decode,
            f"{pil}; libjpeg {features.version('jpg')}",
            f"Pillow JPEG, 4:4:4, optimize=True, quality {_span(JPEG_QUALITIES)}",
        ),
        "webp": Codec(
            "webp", "WebP", WEBP_QUALITIES,
            _pil_encoder("WEBP", method=WEBP_METHOD), _pil_decode,
            f"{pil}; libwebp {features.version('webp')}",
            f"Pillow WebP (lossy), method={WEBP_METHOD}, quality {_span(WEBP_QUALITIES)}",
        ),
        "avif": Codec(
            "avif", "AVIF", AVIF_QUALITIES,
            _pil_encoder("AVIF", speed=AVIF_SPEED), _pil_decode,
            f"{pil}; libavif {features.version('avif')}; speed {AVIF_SPEED}",
            f"Pillow AVIF (built-in plugin, 4:2:0), speed={AVIF_SPEED}, quality {_span(AVIF_QUALITIES)}",
        ),
    }
    try:
        import pillow_jxl  # noqa: F401 - registers the JXL plugin with Pillow

        codecs["jxl"] = Codec(
            "jxl", "JPEG XL", JXL_QUALITIES,
            _pil_encoder("JXL", effort=JXL_EFFORT), _pil_decode,
            f"{pil}; pillow-jxl-plugin {_dist_version('pillow-jxl-plugin')}; effort {JXL_EFFORT}",
            f"pillow_jxl JPEG XL, effort={JXL_EFFORT}, quality {_span(JXL_QUALITIES)}",
        )
    except ImportError:
        pass
    return codecs


def _span(values: Sequence[int]) -> str:
    return f"{values[0]}..{values[-1]} ({len(values)} points: {', '.join(map(str, values))})"


def vqc_codec(effort: int | None = None, name: str = "vqc",
              settings: Sequence[float] | None = None) -> tuple[Codec | None, str]:
    """vqc (``vqcodec.codec``) on its continuous quality scale, or ``(None, reason)`` when
    vqcodec cannot be imported.

    Each setting is a quality Q (0..100); the file is a real ``codec.compress`` at that Q and
    ``effort`` (default: vqc's default effort). PSNR is measured on the pixels of the index grid
    the encoder chose and range-coded (captured from the encoder, so the sweep does not
    range-decode again: entropy coding is lossless and tested; the encoder's latents of an image
    are computed once for all its settings), decoded by the model's integer decoder and, for a
    downscaled file, upsampled with the normative filter (the pixels `vqc decompress` outputs;
    efforts 8-9, which code several scales per file, decode the file itself).

    The cache fingerprint names the package version, the effort, the quality scale and each
    model's pinned SHA-256: a new model or a new mapping is measured again.
    """
    try:
        from vqcodec import __version__, codec, container, rdo, registry, upsample
        from vqcodec.constants import DEFAULT_EFFORT
    except Exception as exc:  # noqa: BLE001 - any failure means: skip vqc, say why
        return None, f"vqc skipped: `import vqcodec` failed ({type(exc).__name__}: {exc})"
    effort = DEFAULT_EFFORT if effort is None else effort
    settings = VQC_QUALITIES if settings is None else settings
    models = [seg.model for seg in rdo.QUALITY_SEGMENTS]
    scale = "; ".join(f"{seg.model} Q{seg.q_lo:g}-{seg.q_hi:g} lam {seg.lam_lo:g}-{seg.lam_hi:g} "
                      f"s{seg.steep:g} x{seg.scale:g}" for seg in rdo.QUALITY_SEGMENTS)
    fingerprint = (f"vqc {__version__}; effort {effort}; {scale}; "
                   + ", ".join(f"{m}:{registry.RELEASES[m].sha256[:16]}" for m in models))
    grids: dict[bytes, Any] = {}
    memo: dict[tuple, np.ndarray] = {}  # latents of the image being swept (deterministic)

    def encode(pixels: np.ndarray, quality: float) -> bytes:
        seen: list = []
        choose, nearest, latents = rdo.choose_grid, codec.encode_indices, rdo.latents

        def memo_latents(model, padded):
            key = (model.name, padded.shape, hashlib.sha1(padded.tobytes()).hexdigest())
            if key not in memo:
                memo.clear()
                memo[key] = latents(model, padded)
            return memo[key]

        def capture_rdo(model, *a, **k):
            r = choose(model, *a, **k)
            seen.append((model, r.grid))
            return r

        def capture_nn(model, *a, **k):
            g = nearest(model, *a, **k)
            seen.append((model, g))
            return g

        rdo.choose_grid, codec.encode_indices, rdo.latents = capture_rdo, capture_nn, memo_latents
        try:
            data = codec.compress(pixels, quality=quality, effort=effort, device="cpu")
        finally:
            rdo.choose_grid, codec.encode_indices, rdo.latents = choose, nearest, latents
        grids.clear()
        grids[data] = (seen[-1], pixels.shape)
        return data

    def decode(data: bytes) -> np.ndarray:
        if rdo.effort(effort).scales:  # several candidate grids per file: decode the file itself
            return np.asarray(codec.decompress(data, device="cpu").convert("RGB"))
        (model, grid), shape = grids[data]
        f = container.read(data)
        coded = container.coded_size(f.header, f.chunks)  # the display size unless downscaled
        small = np.ascontiguousarray(codec.decode_pixels(model, grid)[:coded[0], :coded[1]])
        return small if coded == shape[:2] else upsample.upsample(small, shape[0], shape[1])

    label = "vqc" if effort else "vqc NN (effort 0)"
    description = (f"vqc, quality {_span(settings)}, effort {effort}; models: {scale}")
    return Codec(name, label, tuple(settings), encode, decode, fingerprint, description), ""


# --- running ------------------------------------------------------------------------------------
def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """Image files in ``folder`` (png/ppm/bmp/tif), sorted by name, the first ``limit`` if given."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return paths[:limit] if limit else paths


def load_rgb(path: Path) -> np.ndarray:
    """An image file as a uint8 HxWx3 RGB array."""
    with Image.open(path) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Cache:
    """JSON-lines result cache, one file per codec, keyed by (codec, setting, image, sha, fp)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.entries: dict[str, dict] = {}
        for path in sorted(folder.glob("*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    self.entries[rec["key"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by an interrupted run

    @staticmethod
    def key(codec: str, setting: int, image: str, sha: str, fingerprint: str) -> str:
        """The cache key string of one (codec, setting, image) measurement."""
        return json.dumps([codec, setting, image, sha, fingerprint])

    def get(self, key: str) -> dict | None:
        """The cached record for ``key``, or None."""
        return self.entries.get(key)

    def put(self, rec: dict) -> None:
        """Store ``rec`` (which has a ``key``) and append it to its codec's file at once."""
        self.entries[rec["key"]] = rec
        with (self.folder / f"{rec['codec']}.jsonl").open("a") as f:
            f.write(json.dumps(rec, allow_nan=True) + "\n")
            f.flush()


def measure(codec: Codec, setting: int, pixels: np.ndarray) -> dict:
    """Encode, decode and score one image at one setting.

    Returns bytes, bits (whole file), bpp, psnr (dB), msssim (index), enc_s and dec_s (seconds).
    """
    t0 = time.perf_counter()
    data = codec.encode(pixels, setting)
    t1 = time.perf_counter()
    out = codec.decode(data)
    t2 = time.perf_counter()
    if out.shape != pixels.shape:
        raise ValueError(f"decoded shape {out.shape} != input shape {pixels.shape}")
    h, w = pixels.shape[:2]
    return {
        "bytes": len(data),
        "bits": 8 * len(data),
        "bpp": metrics.bpp(len(data), w, h),
        "psnr": metrics.psnr(pixels, out),
        "msssim": metrics.msssim(pixels, out),
        "enc_s": t1 - t0,
        "dec_s": t2 - t1,
    }


def run_jobs(codecs: list[Codec], images: list[Path], cache: Cache, quiet: bool = False) -> tuple[list[dict], dict]:
    """Measure every (codec, setting, image), using and filling the cache.

    Returns the list of point records and run statistics (jobs, cached, computed, errors,
    seconds spent per codec in this run).
    """
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    total = sum(len(c.settings) for c in codecs) * len(images)
    stats: dict[str, Any] = {"jobs": total, "cached": 0, "computed": 0, "errors": [],
                             "seconds_by_codec": {c.name: 0.0 for c in codecs},
                             "computed_by_codec": {c.name: 0 for c in codecs}}
    points: list[dict] = []
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), disable=quiet,
                  transient=False) as progress:
        task = progress.add_task("rd", total=total)
        for path in images:
            name = path.stem
            sha = sha256_file(path)
            pixels: np.ndarray | None = None
            for codec in codecs:
                for setting in codec.settings:
                    key = Cache.key(codec.name, setting, name, sha, codec.fingerprint)
                    rec = cache.get(key)
                    if rec is None:
                        progress.update(task, description=f"{codec.name} q={setting} {name}")
                        if pixels is None:
                            pixels = load_rgb(path)
                        t0 = time.perf_counter()
                        try:
                            result = measure(codec, setting, pixels)
                        except Exception as exc:  # noqa: BLE001 - report, keep going
                            msg = f"{codec.name} setting {setting} on {name}: {type(exc).__name__}: {exc}"
                            stats["errors"].append(msg)
                            progress.console.print(f"[red]error[/red] {msg}")
                            progress.advance(task)
                            continue
                        stats["seconds_by_codec"][codec.name] += time.perf_counter() - t0
                        stats["computed_by_codec"][codec.name] += 1
                        stats["computed"] += 1
                        h, w = pixels.shape[:2]
                        rec = {"key": key, "codec": codec.name, "setting": setting, "image": name,
                               "sha256": sha, "fingerprint": codec.fingerprint,
                               "width": w, "height": h, **result}
                        cache.put(rec)
                    else:
                        stats["cached"] += 1
                    points.append(rec)
                    progress.advance(task)
    return points, stats


def reuse_points(cache: Cache, report_path: Path, codecs: list[Codec], images: list[Path]) -> int:
    """Seed the cache with the points of a previous report whose codec fingerprint, setting and
    image sha256 match this run (vqc's are never reused: its fingerprint changes with it).
    Returns the number of points added."""
    old = json.loads(Path(report_path).read_text())
    fps = {k: v.get("fingerprint") for k, v in old.get("meta", {}).get("codecs", {}).items()}
    shas = {p.stem: sha256_file(p) for p in images}
    n = 0
    for c in codecs:
        if c.name.startswith("vqc") or fps.get(c.name) != c.fingerprint:
            continue
        for p in old.get("points", []):
            if p["codec"] != c.name or shas.get(p["image"]) != p.get("sha256"):
                continue
            key = Cache.key(c.name, p["setting"], p["image"], p["sha256"], c.fingerprint)
            if cache.get(key) is None:
                cache.put({"key": key, "fingerprint": c.fingerprint, **p})
                n += 1
    return n


# --- analysis -----------------------------------------------------------------------------------
def average_curves(points: list[dict], codecs: list[Codec], images: list[str]) -> dict[str, list[dict]]:
    """Set-averaged RD points per codec: one entry per setting that every image has.

    Each entry: setting, n, bits, bytes, bpp, psnr (mean dB), msssim (mean index), msssim_db
    (dB of the mean index), enc_s, dec_s (mean seconds).
    """
    by: dict[tuple[str, int], list[dict]] = {}
    for p in points:
        by.setdefault((p["codec"], p["setting"]), []).append(p)
    curves: dict[str, list[dict]] = {}
    for codec in codecs:
        rows = []
        for s in codec.settings:
            ps = by.get((codec.name, s), [])
            if not ps or {p["image"] for p in ps} != set(images):
                continue
            ms = [p["msssim"] for p in ps]
            mean_ms = float(np.mean(ms)) if all(m is not None and math.isfinite(m) for m in ms) else math.nan
            rows.append({
                "setting": s, "n": len(ps),
                "bits": float(np.mean([p["bits"] for p in ps])),
                "bytes": float(np.mean([p["bytes"] for p in ps])),
                "bpp": float(np.mean([p["bpp"] for p in ps])),
                "psnr": float(np.mean([p["psnr"] for p in ps])),
                "msssim": mean_ms,
                "msssim_db": metrics.msssim_db(mean_ms),
                "enc_s": float(np.mean([p["enc_s"] for p in ps])),
                "dec_s": float(np.mean([p["dec_s"] for p in ps])),
            })
        curves[codec.name] = rows
    return curves


def max_gap(curve: list[dict]) -> dict | None:
    """The widest step in rate between adjacent points of a set-averaged curve.

    Args:
        curve: points with "setting" and "bpp" (any order).

    Returns:
        {"bpp": width of the widest step in bpp, "between": [setting, setting]}, or None for
        fewer than two points.
    """
    pts = sorted(curve, key=lambda p: p["bpp"])
    if len(pts) < 2:
        return None
    a, b = max(zip(pts, pts[1:]), key=lambda ab: ab[1]["bpp"] - ab[0]["bpp"])
    return {"bpp": b["bpp"] - a["bpp"], "between": [a["setting"], b["setting"]]}


def savings_at_equal_psnr(points: list[dict], test: str, anchor: str, images: list[str]) -> list[dict]:
    """Per test setting: % bits saved against ``anchor`` at the same PSNR on the same image.

    For each image the anchor's bits at the test point's PSNR are interpolated (log bits vs PSNR
    on that image's anchor sweep, see ``metrics.rate_at_quality``); images where the PSNR lies
    outside the anchor sweep are counted as out of range, never extrapolated. Entries: setting,
    mean_saved_pct (over images where defined), n_defined, n_images, out_of_range (image names),
    per_image ({image: pct or None}).
    """
    sweep: dict[str, tuple[list[float], list[float]]] = {}
    for p in points:
        if p["codec"] == anchor:
            r, q = sweep.setdefault(p["image"], ([], []))
            r.append(p["bits"])
            q.append(p["psnr"])
    settings = sorted({p["setting"] for p in points if p["codec"] == test})
    out = []
    for s in settings:
        per_image: dict[str, float | None] = {}
        for p in points:
            if p["codec"] != test or p["setting"] != s or p["image"] not in images:
                continue
            if p["image"] not in sweep:
                per_image[p["image"]] = None
                continue
            rate = metrics.rate_at_quality(*sweep[p["image"]], p["psnr"])
            per_image[p["image"]] = metrics.bits_saved(p["bits"], rate)
        defined = [v for v in per_image.values() if v is not None]
        out.append({
            "setting": s,
            "mean_saved_pct": float(np.mean(defined)) if defined else None,
            "n_defined": len(defined),
            "n_images": len(per_image),
            "out_of_range": sorted(k for k, v in per_image.items() if v is None),
            "per_image": per_image,
        })
    return out


def _overlap(a_q: Sequence[float], b_q: Sequence[float]) -> list[float] | None:
    fa = [q for q in a_q if math.isfinite(q)]
    fb = [q for q in b_q if math.isfinite(q)]
    if not fa or not fb:
        return None
    lo, hi = max(min(fa), min(fb)), min(max(fa), max(fb))
    return [lo, hi] if hi > lo else None


def bd_table(curves: dict[str, list[dict]], test: str) -> list[dict]:
    """BD-rate (%) of ``test`` against every other codec, on PSNR and on MS-SSIM (dB).

    Uses the set-averaged curves (mean bpp vs mean PSNR / MS-SSIM dB of the mean index). Method
    per ``metrics.bd_method_for``: cubic fit when both curves have >= 4 points, else
    piecewise-linear interpolation of log-rate. Entries: anchor, psnr_bd_pct, msssim_bd_pct,
    method, psnr_range_db, msssim_range_db (overlapping quality ranges integrated over).
    """
    rows = []
    t = curves.get(test, [])
    if len(t) < 2:
        return rows
    for anchor, a in curves.items():
        if anchor == test or len(a) < 2:
            continue
        method = metrics.bd_method_for(len(a), len(t))
        row = {"anchor": anchor, "method": method}
        for qname in ("psnr", "msssim_db"):
            key = "psnr" if qname == "psnr" else "msssim"
            ar = [p["bpp"] for p in a]
            aq = [p[qname] for p in a]
            tr = [p["bpp"] for p in t]
            tq = [p[qname] for p in t]
            row[f"{key}_bd_pct"] = metrics.bd_rate(ar, aq, tr, tq, method=method)
            row[f"{key}_range_db"] = _overlap(aq, tq)
        rows.append(row)
    return rows


# --- reporting ----------------------------------------------------------------------------------
def _f(v: Any, fmt: str = ".2f", none: str = "n/a") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return none
    return format(v, fmt)


def _sanitize(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _sanitize(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v) for v in obj]
    if isinstance(obj, np.generic):
        return _sanitize(obj.item())
    return obj


def machine_info() -> dict:
    """CPU model (from /proc/cpuinfo), logical cores usable, platform and Python version."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return {"cpu": cpu, "cores": cores, "platform": platform.platform(),
            "python": platform.python_version()}


def write_markdown(path: Path, report: dict, codecs: list[Codec]) -> None:
    """Write the markdown report (set-averaged RD tables, vqc savings and BD-rates) to ``path``."""
    meta = report["meta"]
    L: list[str] = []
    L.append(f"# Rate-distortion on {meta['dataset']} ({meta['n_images']} images)\n")
    L.append(f"Generated {meta['generated']} by `python -m benchmarks.rd` on {meta['machine']['cpu']} "
             f"({meta['machine']['cores']} cores). Images: `{meta['images_dir']}`.\n")
    L.append("Rate = whole file in bits; bpp = bits / (width x height). PSNR: RGB, 8-bit, peak 255, "
             "mean of per-image dB. MS-SSIM: `pytorch_msssim.ms_ssim` (data_range=255), mean of "
             "per-image index; dB = -10 log10(1 - mean MS-SSIM). Times: mean wall-clock seconds "
             "per image (encode includes container, decode includes conversion to RGB).\n")
    for note in meta["notes"]:
        L.append(f"> {note}\n")
    L.append("## Codecs\n")
    for c in codecs:
        L.append(f"- **{c.label}** (`{c.name}`): {c.description}. Library: {c.fingerprint}.")
    L.append("")

    L.append("## Set-averaged RD points\n")
    for c in codecs:
        rows = report["averages"].get(c.name, [])
        L.append(f"### {c.label}\n")
        if not rows:
            L.append("_no complete settings_\n")
            continue
        L.append("| setting | bpp | bits/image | PSNR dB | MS-SSIM | MS-SSIM dB | enc s | dec s |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            L.append(f"| {r['setting']} | {r['bpp']:.4f} | {r['bits']:.0f} | {r['psnr']:.2f} | "
                     f"{_f(r['msssim'], '.4f')} | {_f(r['msssim_db'])} | {r['enc_s']:.3f} | {r['dec_s']:.3f} |")
        L.append("")

    vqc = report.get("vqc")
    L.append("## vqc\n")
    if not vqc:
        L.append(f"_{meta.get('vqc_note') or 'vqc not run'}_\n")
    else:
        L.append("Bits saved at equal PSNR: per image, the anchor's bits at vqc's PSNR are "
                 "interpolated (log bits vs PSNR) on that image's anchor sweep; mean over images "
                 "where vqc's PSNR lies inside the sweep (count shown), no extrapolation. "
                 "Positive = vqc smaller.\n")
        L.append("| quality | bpp | bits/image | PSNR dB | MS-SSIM | MS-SSIM dB | saved vs JPEG 4:2:0 | saved vs WebP |")
        L.append("|---:|---:|---:|---:|---:|---:|---:|---:|")
        sav_j = {r["setting"]: r for r in vqc["saved_vs_jpeg420"]}
        sav_w = {r["setting"]: r for r in vqc["saved_vs_webp"]}

        def sav(d: dict, s: int) -> str:
            r = d.get(s)
            if r is None:
                return "n/a"
            pct = _f(r["mean_saved_pct"], "+.1f", "out of range")
            pct = pct + " %" if r["mean_saved_pct"] is not None else pct
            return f"{pct} ({r['n_defined']}/{r['n_images']})"

        for r in report["averages"].get("vqc", []):
            s = r["setting"]
            L.append(f"| {s} | {r['bpp']:.4f} | {r['bits']:.0f} | {r['psnr']:.2f} | {_f(r['msssim'], '.4f')} | "
                     f"{_f(r['msssim_db'])} | {sav(sav_j, s)} | {sav(sav_w, s)} |")
        L.append("")
        if vqc.get("max_gap_bpp"):
            g = vqc["max_gap_bpp"]
            L.append(f"Widest step between adjacent vqc points: {g['bpp']:.4f} bpp "
                     f"(Q {g['between'][0]} to Q {g['between'][1]}).\n")
        L.append("BD-rate of vqc against each codec (set-averaged curves; negative = vqc needs fewer "
                 "bits). Quality range = overlap of the two curves that is integrated over.\n")
        L.append(_bd_md(vqc["bd_rates"]))
        if any(r["method"] == "linear" for r in vqc["bd_rates"]):
            L.append("\n> vqc has fewer than 4 quality levels, so its BD-rates use piecewise-linear "
                     "interpolation of log-rate vs quality instead of the cubic Bjontegaard fit.\n")
        if vqc.get("bd_vs_published"):
            L.append("\nBD-rate (PSNR) of vqc against PUBLISHED Kodak results (CompressAI's vtm.json / "
                     "av1.json, mbt2018 as reported; not measured here):\n")
            L.append("| anchor | BD-rate PSNR | PSNR range dB | fit |")
            L.append("|---|---:|---:|---|")
            for r in vqc["bd_vs_published"]:
                L.append(f"| {r['anchor']} | {_f(r['psnr_bd_pct'], '+.1f')} % | {_rng(r['psnr_range_db'])} | "
                         f"{r['method']} |")
            L.append("")
    L.append("## BD-rate of each codec against JPEG 4:2:0\n")
    if report["bd_vs_jpeg420"]:
        L.append("| codec | BD-rate PSNR | PSNR range dB | BD-rate MS-SSIM | MS-SSIM range dB | fit |")
        L.append("|---|---:|---:|---:|---:|---|")
        for r in report["bd_vs_jpeg420"]:
            L.append(f"| {r['codec']} | {_f(r['psnr_bd_pct'], '+.1f')} % | {_rng(r['psnr_range_db'])} | "
                     f"{_f(r['msssim_bd_pct'], '+.1f')} % | {_rng(r['msssim_range_db'])} | {r['method']} |")
    else:
        L.append("_JPEG 4:2:0 not run_")
    L.append("")
    if report["errors"]:
        L.append("## Errors\n")
        L.extend(f"- {e}" for e in report["errors"])
        L.append("")
    L.append(f"Plots: `rd_{meta['dataset']}.png`, `visual_{meta['dataset']}.png`.\n")
    path.write_text("\n".join(L))


def _rng(r: list[float] | None) -> str:
    return "n/a" if not r else f"{r[0]:.2f}–{r[1]:.2f}"


def _bd_md(rows: list[dict]) -> str:
    out = ["| against | BD-rate PSNR | PSNR range dB | BD-rate MS-SSIM | MS-SSIM range dB | fit |",
           "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['anchor']} | {_f(r['psnr_bd_pct'], '+.1f')} % | {_rng(r['psnr_range_db'])} | "
                   f"{_f(r['msssim_bd_pct'], '+.1f')} % | {_rng(r['msssim_range_db'])} | {r['method']} |")
    return "\n".join(out)


_STYLE = {"vqc": ("black", "o", 2.4), "jpeg420": ("tab:red", "s", 1.2), "jpeg444": ("tab:orange", "s", 1.2),
          "webp": ("tab:green", "^", 1.2), "avif": ("tab:blue", "D", 1.2), "jxl": ("tab:purple", "v", 1.2)}


def plot_rd(path: Path, curves: dict[str, list[dict]], codecs: list[Codec], title: str) -> None:
    """Two panels, bpp vs PSNR (dB) and bpp vs MS-SSIM (dB), all codecs, x in 0..1.5 bpp."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, key, ylabel in ((axes[0], "psnr", "PSNR (RGB) [dB]"),
                            (axes[1], "msssim_db", "MS-SSIM [dB]  (-10 log10(1 - MS-SSIM))")):
        ys_in_range: list[float] = []
        for c in codecs:
            rows = [r for r in curves.get(c.name, []) if r[key] is not None and math.isfinite(r[key])]
            if not rows:
                continue
            color, marker, lw = _STYLE.get(c.name, ("gray", ".", 1.0))
            x = [r["bpp"] for r in rows]
            y = [r[key] for r in rows]
            if c.name == "vqc-nn":
                ax.plot(x, y, ls="none", marker="s", color="black", ms=6, label=c.label)
            else:
                ax.plot(x, y, marker=marker, color=color, lw=lw, ms=4 if c.name != "vqc" else 3,
                        label=c.label)
            ys_in_range += [yy for xx, yy in zip(x, y) if xx <= PLOT_MAX_BPP]
        if key == "psnr":
            for _, (label, pts) in PUBLISHED.items():
                ax.plot([r for r, _ in pts], [q for _, q in pts], ls="--", marker="x", ms=4, lw=1.0,
                        label=label + ", not measured here")
        ax.set_xlim(0, PLOT_MAX_BPP)
        if ys_in_range:
            ax.set_ylim(min(ys_in_range) - 0.5, max(ys_in_range) + 0.5)
        ax.set_xlabel("bits per pixel")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _closest_setting(codec: Codec, pixels: np.ndarray, target_bytes: int) -> tuple[int, bytes]:
    best: tuple[int, bytes] | None = None
    for s in codec.settings:
        data = codec.encode(pixels, s)
        if best is None or abs(len(data) - target_bytes) < abs(len(best[1]) - target_bytes):
            best = (s, data)
    assert best is not None
    return best


def plot_visual(path: Path, images_dir: Path, codecs: dict[str, Codec],
                vqc_quality: int | Sequence[int] | None, note: str = "") -> list[dict]:
    """Crops of kodim04/15/23: original, vqc, and JPEG 4:2:0 / WebP / AVIF at the closest file size.

    One row per image and vqc quality (``vqc_quality``: one or several). The JPEG, WebP and AVIF
    settings are those whose whole-file size is closest to vqc's file for the same image (or to
    ``VISUAL_TARGET_BPP`` when vqc is not available). Each panel is labelled with the codec,
    setting, bytes of the whole file and PSNR of the whole image (dB). Returns the panels'
    metadata; writes nothing when none of the three images is in ``images_dir``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    qualities = [vqc_quality] if vqc_quality is None or np.isscalar(vqc_quality) else list(vqc_quality)
    for (name, (left, top)), vqc_quality in ((c, q) for c in VISUAL_CROPS.items() for q in qualities):
        src = next((p for p in (images_dir / f"{name}{s}" for s in IMAGE_SUFFIXES) if p.exists()), None)
        if src is None:
            continue
        pixels = load_rgb(src)
        h, w = pixels.shape[:2]
        panels = [{"label": f"{name} original", "pixels": pixels, "bytes": None, "psnr": None}]
        vqc = codecs.get("vqc")
        if vqc is not None and vqc_quality is not None:
            data = vqc.encode(pixels, vqc_quality)
            target = len(data)
            out = vqc.decode(data)
            panels.append({"label": f"vqc q={vqc_quality}", "pixels": out, "bytes": len(data),
                           "psnr": metrics.psnr(pixels, out)})
        else:
            target = int(round(VISUAL_TARGET_BPP * w * h / 8))
        for cname in ("jpeg420", "webp", "avif"):
            c = codecs.get(cname)
            if c is None:
                continue
            s, data = _closest_setting(c, pixels, target)
            out = c.decode(data)
            panels.append({"label": f"{c.label} q={s}", "pixels": out, "bytes": len(data),
                           "psnr": metrics.psnr(pixels, out)})
        rows.append((name, left, top, panels))
    if not rows:
        return []
    ncol = max(len(r[3]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(2.6 * ncol, 3.15 * len(rows)), squeeze=False)
    meta = []
    cs = VISUAL_CROP_SIZE
    for i, (name, left, top, panels) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i][j]
            ax.axis("off")
            if j >= len(panels):
                continue
            p = panels[j]
            ph, pw = p["pixels"].shape[:2]
            l0, t0 = min(left, max(pw - cs, 0)), min(top, max(ph - cs, 0))
            ax.imshow(p["pixels"][t0:t0 + cs, l0:l0 + cs], interpolation="nearest")
            label = p["label"]
            if p["bytes"] is not None:
                bpp = metrics.bpp(p["bytes"], pw, ph)
                label += f"\n{p['bytes']:,} B ({bpp:.3f} bpp), {p['psnr']:.2f} dB"
            else:
                label += f"\ncrop {cs}x{cs} at ({l0},{t0})"
            ax.set_title(label, fontsize=8)
            meta.append({"image": name, "panel": p["label"], "bytes": p["bytes"], "psnr": p["psnr"],
                         "crop": [l0, t0, cs, cs]})
    title = "vqc vs JPEG 4:2:0, WebP and AVIF at about the same file size (sizes/PSNR of the whole image)"
    if note:
        title += f"\n{note}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return meta


# --- main ---------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options of ``python -m benchmarks.rd``."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.rd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                    help=f"folder of images (default: {DEFAULT_IMAGES})")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/results)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N images (sorted by name)")
    ap.add_argument("--codecs", default=",".join(DEFAULT_CODECS),
                    help=f"comma-separated subset of {','.join(DEFAULT_CODECS)}")
    ap.add_argument("--no-visual", action="store_true", help="skip visual_<set>.png")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--reuse", type=Path, default=None,
                    help="a previous <set>.json: its points of codecs whose fingerprint still "
                         "matches seed the cache (classic codecs are not run again)")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns the report dict that is also written to ``<set>.json``."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    images_dir = args.images.resolve()
    if not images_dir.is_dir():
        raise SystemExit(f"image folder not found: {images_dir}")
    dataset = images_dir.name.lower()
    names = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = [n for n in names if n not in DEFAULT_CODECS]
    if unknown:
        raise SystemExit(f"unknown codec(s) {unknown}; choose from {','.join(DEFAULT_CODECS)}")

    notes: list[str] = []
    vqc_note = ""
    available = classic_codecs()
    if "vqc" in names or "vqc-nn" in names:
        vqc, vqc_note = vqc_codec()
        if vqc is None:
            print(vqc_note, file=sys.stderr)
            notes.append(vqc_note)
        else:
            available["vqc"] = vqc
            available["vqc-nn"] = vqc_codec(0, "vqc-nn", VQC_NN_QUALITIES)[0]
    if "jxl" in names and "jxl" not in available:
        notes.append("jxl skipped: `import pillow_jxl` failed")
        print(notes[-1], file=sys.stderr)
    codecs = [available[n] for n in names if n in available]

    images = list_images(images_dir, args.limit)
    if not images:
        raise SystemExit(f"no images in {images_dir}")
    image_names = [p.stem for p in images]
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache(out / "cache")
    if args.reuse:
        n = reuse_points(cache, args.reuse, codecs, images)
        notes.append(f"The classic codecs' points come from {args.reuse.name} of an earlier run with "
                     f"the same library versions (cache fingerprints match; {n} added to the cache "
                     "by this run, the rest already there): they were not encoded again.")

    points, stats = run_jobs(codecs, images, cache, quiet=args.quiet)
    curves = average_curves(points, codecs, image_names)

    report: dict[str, Any] = {
        "meta": {
            "dataset": dataset, "images_dir": str(images_dir), "n_images": len(images),
            "images": image_names, "generated": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": machine_info(), "notes": notes, "vqc_note": vqc_note,
            "codecs": {c.name: {"label": c.label, "settings": list(c.settings), "description": c.description,
                                "fingerprint": c.fingerprint} for c in codecs},
            "averaging": "mean bpp, bits, PSNR (dB) and MS-SSIM index over images per setting; "
                         "msssim_db = -10 log10(1 - mean MS-SSIM)",
            "run": {k: v for k, v in stats.items() if k != "errors"},
        },
        "points": [{k: v for k, v in p.items() if k not in ("key", "fingerprint")} for p in points],
        "averages": curves,
        "errors": stats["errors"],
    }
    if "vqc" in available and "vqc" in names:
        bd = bd_table(curves, "vqc")
        report["vqc"] = {
            "saved_vs_jpeg420": savings_at_equal_psnr(points, "vqc", "jpeg420", image_names)
            if "jpeg420" in names else [],
            "saved_vs_webp": savings_at_equal_psnr(points, "vqc", "webp", image_names) if "webp" in names else [],
            "bd_rates": bd,
            "max_gap_bpp": max_gap(curves.get("vqc", [])),
        }
        if any(r["method"] == "linear" for r in bd):
            notes.append("vqc has fewer than 4 quality levels: its BD-rates use piecewise-linear "
                         "interpolation of log-rate vs quality instead of the cubic fit.")
    if "vqc" in available and "vqc" in names and curves.get("vqc"):
        t = curves["vqc"]
        report["vqc"]["bd_vs_published"] = [
            {"anchor": key, "psnr_bd_pct": metrics.bd_rate([r for r, _ in pts], [q for _, q in pts],
                                                          [p["bpp"] for p in t], [p["psnr"] for p in t],
                                                          method=metrics.bd_method_for(len(pts), len(t))),
             "method": metrics.bd_method_for(len(pts), len(t)),
             "psnr_range_db": _overlap([q for _, q in pts], [p["psnr"] for p in t])}
            for key, (_, pts) in PUBLISHED.items()]
    report["bd_vs_jpeg420"] = []
    if len(curves.get("jpeg420", [])) >= 2:
        for r in bd_table(curves, "jpeg420"):
            # bd_table gives JPEG against X; recompute as X against JPEG (the anchor).
            j, a = curves["jpeg420"], curves[r["anchor"]]
            row = {"codec": r["anchor"], "method": r["method"]}
            for qname, key in (("psnr", "psnr"), ("msssim_db", "msssim")):
                row[f"{key}_bd_pct"] = metrics.bd_rate(
                    [p["bpp"] for p in j], [p[qname] for p in j],
                    [p["bpp"] for p in a], [p[qname] for p in a], method=r["method"])
                row[f"{key}_range_db"] = r[f"{key}_range_db"]
            report["bd_vs_jpeg420"].append(row)

    plot_rd(out / f"rd_{dataset}.png", curves, codecs,
            f"{dataset}: {len(images)} images, set-averaged" + (" (vqc not available)" if vqc_note else ""))
    if not args.no_visual:
        vq = None
        if curves.get("vqc"):
            vq = sorted({min(curves["vqc"], key=lambda r: abs(r["bpp"] - b))["setting"]
                         for b in VISUAL_TARGET_BPPS})
        note = "" if vq is not None else f"vqc not available: JPEG/WebP at about {VISUAL_TARGET_BPP} bpp"
        try:
            report["visual"] = plot_visual(out / f"visual_{dataset}.png", images_dir, available, vq, note)
        except Exception as exc:  # noqa: BLE001 - the figure must not cost the measured results
            msg = f"visual figure failed: {type(exc).__name__}: {exc}"
            print(msg, file=sys.stderr)
            report["errors"].append(msg)
    report["meta"]["wall_s"] = time.perf_counter() - t_start
    write_markdown(out / f"{dataset}.md", report, codecs)
    (out / f"{dataset}.json").write_text(json.dumps(_sanitize(report), indent=1))

    secs = stats["seconds_by_codec"]
    n_comp = stats["computed_by_codec"]
    print(f"{stats['jobs']} jobs: {stats['computed']} computed, {stats['cached']} from cache, "
          f"{len(stats['errors'])} errors; wall {report['meta']['wall_s']:.1f} s")
    for c in codecs:
        if n_comp[c.name]:
            per_img = secs[c.name] / n_comp[c.name] * len(c.settings)
            print(f"  {c.name:8s} {n_comp[c.name]:4d} jobs {secs[c.name]:7.1f} s "
                  f"({per_img:.2f} s per image for the sweep)")
    print(f"wrote {out / (dataset + '.json')}, {dataset}.md, rd_{dataset}.png"
          + ("" if args.no_visual else f", visual_{dataset}.png"))
    if vqc_note:
        print(vqc_note)
    return report


if __name__ == "__main__":
    main()
