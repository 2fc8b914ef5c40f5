"""Rate-distortion of (model, scale, lambda) on training crops: the data behind `vqcodec.rdo`'s
quality scale (issue 19, "code at a lower resolution, upsample with the normative filter").

    python -m benchmarks.scale_rd [--images ../shared/data/train] [--limit 48]
                                  [--out benchmarks/results/scale_rd_train.json]
    python -m benchmarks.scale_rd --derive     # only the quality scale, from the JSON in --out
    python -m benchmarks.scale_rd --compare-efforts 7,9 [--first 100 --limit 16]
                                  # the per-image scale choice: real files, other crops

Never run on Kodak to choose anything: Kodak is the benchmark; the quality scale is read from this
measurement on the training crops (the first ``--limit`` of the sorted ``t*.jpg``; their numbers
are shuffled, so these are a random sample).

For every released model, every scale in ``SCALES`` and every lambda in ``LAMBDAS[model]``, at the
default effort (6: every code competes, no guard), each crop goes through what the codec does:

1. downscale to ``rdo.coded_size`` with Pillow's Lanczos filter (the encoder's choice),
2. the float encoder, then the entropy-constrained choice of the index grid in the prior's
   wavefront pass (`rdo._code_tiles`, the very code of `rdo.choose_grid`, with the same
   per-image lambda scaling lam * D_nn / positions), range-coded: the real payload bytes,
3. the whole file's size: `container.write` of the header, the quality chunk and the payload,
   plus the coded-size chunk (type and length bytes, then varint width and height) when the
   coded size differs from the display size,
4. the integer decoder at the coded size, crop, `vqcodec.upsample.upsample` to the display size,
   PSNR (RGB, 8-bit, dB) against the original crop.

Crops of one (model, scale) have equal grids that fit one prior tile (a 256x256 crop at f >= 4),
so they are chosen in lock-step, several per wavefront pass; each crop's result is what
`choose_grid` gives for it alone.

Writes one JSON: per (model, scale, lambda) the mean bpp, mean PSNR (dB) and mean bits per crop,
the per-crop points, the upper convex hull of the mean (bpp, PSNR) points, and the quality scale
derived from them (`derive_scale`), printed as the `vqcodec.rdo.QUALITY_SEGMENTS` table.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGES = (REPO_ROOT / ".." / "shared" / "data" / "train").resolve()
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "scale_rd_train.json"

#: coded / display size along each axis.
SCALES = (1.0, 0.9375, 0.875, 0.8125, 0.75, 0.6875, 0.625, 0.5625, 0.5)
#: lambdas (relative distortion per bit, `vqcodec.rdo`) measured per model.
LAMBDAS = {
    "vqc-f8k1024-v2": (0.0, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0),
    "vqc-f4k512-v2": (0.0, 0.03, 0.08, 0.15, 0.25, 0.4, 0.6, 0.9, 1.2),
}
#: crops chosen in lock-step in one wavefront pass.
BATCH = 8
#: the quality scale's bottom, Q 0: (model, scale, lambda) of about 20 dB on the crops.
BOTTOM = ("vqc-f8k1024-v2", 0.5, 1.0)
#: dB a stretch starts above the previous stretch's top.  Per crop, the PSNR step at a break has a
#: standard deviation of about 0.21 dB (the per-crop points of scale_rd_train.json, `break_spread`),
#: so the mean over a set of 24 images has a standard error of about 0.043 dB; a margin of two
#: standard errors keeps such a set's mean curve from sagging at a break.
MARGIN_DB = 0.085


def downscale(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow Lanczos resize of uint8 RGB [H, W, 3] to [height, width, 3] (identity at equal size)."""
    if pixels.shape[:2] == (height, width):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))


def file_bytes(model, display: tuple[int, int], grid_shape: tuple[int, int], payload: bytes,
               coded: tuple[int, int], quality_effort: tuple[float, int] = (50.0, 6)) -> int:
    """Size in bytes of the whole `.vqc` file of one single-tile payload.

    Args:
        model: the `vqcodec.zoo.CodecModel` (name, hash, tile size).
        display: (height, width) of the displayed image, pixels.
        grid_shape: (rows, columns) of the index grid.
        payload: the range-coded tile.
        coded: (height, width) of the coded image; a coded-size chunk is counted when it
            differs from `display`.
        quality_effort: what the quality chunk records (its size does not depend on it).

    Returns:
        Bytes: header + chunk count + quality chunk + payload + CRC (+ coded-size chunk).
    """
    from vqcodec import container

    header = container.Header(
        model_name=model.name, model_hash=model.model_hash, width=display[1], height=display[0],
        mode=container.Mode.RGB, grid_h=grid_shape[0], grid_w=grid_shape[1],
        tile_h=model.tile, tile_w=model.tile, version_minor=1)
    chunks = (container.Chunk(container.CHUNK_QUALITY, False, container.pack_quality(*quality_effort)),)
    n = len(container.write(container.VqcFile(header, (payload,), chunks)))
    if coded != display:  # type byte, length byte, varint width, varint height
        n += 2 + len(container._varint(coded[1])) + len(container._varint(coded[0]))
    return n


def measure_batch(model, crops: list[np.ndarray], scale: float, lambdas: tuple[float, ...]) -> list[list[dict]]:
    """(bytes, bpp, PSNR) of each crop at each lambda, for one model and scale.

    Args:
        model: a `vqcodec.zoo.CodecModel` on the CPU.
        crops: uint8 [H, W, 3] images of one size (display size).
        scale: coded / display size per axis.
        lambdas: relative distortion per bit, each >= 0.

    Returns:
        result[i][j]: {"bytes", "bpp", "psnr"} of crop j at lambdas[i].
    """
    from vqcodec import codec, images, metrics, rdo
    from vqcodec.upsample import upsample

    h, w = crops[0].shape[:2]
    ch, cw = rdo.coded_size(h, w, scale)
    zs = [rdo.latents(model, images.pad_to_multiple(downscale(c, ch, cw), model.f)) for c in crops]
    gh, gw = zs[0].shape[:2]
    assert gh <= model.tile and gw <= model.tile, "one prior tile per crop"
    d2 = np.stack([rdo.distances(model, z) for z in zs])
    d_nn = d2.min(-1).reshape(len(crops), -1).mean(1)  # mean nearest-neighbour distance per crop
    out = []
    for lam in lambdas:
        lam_b = (lam * np.maximum(d_nn, 1e-12))[:, None, None]
        grids, payloads, _, _ = rdo._code_tiles(model.prior, d2, lam_b, None, None)
        row = []
        for j, crop in enumerate(crops):
            px = codec.decode_pixels(model, grids[j])[:ch, :cw]
            shown = upsample(np.ascontiguousarray(px), h, w)
            n = file_bytes(model, (h, w), (gh, gw), payloads[j], (ch, cw))
            row.append({"bytes": n, "bpp": 8 * n / (h * w), "psnr": metrics.psnr(crop, shown)})
        out.append(row)
    return out


def upper_hull(points: list[dict]) -> list[dict]:
    """The upper-left convex hull of (bpp, PSNR) points: the best PSNR reachable at each rate by
    time-sharing, low rate first (points below a chord between two others are dropped).

    Args:
        points: dicts with "bpp" and "psnr".

    Returns:
        The hull's points, sorted by bpp, PSNR rising.
    """
    pts = sorted(points, key=lambda p: (p["bpp"], -p["psnr"]))
    hull: list[dict] = []
    for p in pts:
        if hull and p["psnr"] <= hull[-1]["psnr"]:
            continue  # dominated: more bits, no more PSNR
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (b["bpp"] - a["bpp"]) * (p["psnr"] - a["psnr"]) - (b["psnr"] - a["psnr"]) * (p["bpp"] - a["bpp"])
            if cross >= 0:  # b lies on or below the chord a-p
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _curves(settings: list[dict]) -> dict[tuple[str, float], list[dict]]:
    """Each (model, scale)'s mean points, low rate first, keeping only those that gain PSNR."""
    curves: dict[tuple[str, float], list[dict]] = {}
    for p in sorted(settings, key=lambda p: p["bpp"]):
        c = curves.setdefault((p["model"], p["scale"]), [])
        if not c or p["psnr"] > c[-1]["psnr"]:
            c.append(p)
    return curves


def _lam_at(curve: list[dict], bpp: float) -> float:
    """Lambda that reaches `bpp` on a curve: log-linear between measured lambdas (linear next to
    lambda 0)."""
    for a, b in zip(curve, curve[1:]):
        if a["bpp"] <= bpp <= b["bpp"]:
            t = (bpp - a["bpp"]) / (b["bpp"] - a["bpp"])
            if a["lam"] > 0 and b["lam"] > 0:
                return float(math.exp((1 - t) * math.log(a["lam"]) + t * math.log(b["lam"])))
            return float((1 - t) * a["lam"] + t * b["lam"])
    return float(curve[0]["lam"] if bpp < curve[0]["bpp"] else curve[-1]["lam"])


def _psnr_at(curve: list[dict], bpp: float) -> float | None:
    """Mean PSNR of a curve at a rate (linear between its points), None outside its range."""
    if not curve[0]["bpp"] <= bpp <= curve[-1]["bpp"]:
        return None
    return float(np.interp(bpp, [p["bpp"] for p in curve], [p["psnr"] for p in curve]))


def derive_scale(settings: list[dict], bottom: tuple[str, float, float], models: tuple[str, ...],
                 margin_db: float = 0.0, steps: int = 4000) -> list[dict]:
    """The quality scale from the measurement: stretches of the sag-free upper envelope.

    Along a fine bpp grid from the rate of `bottom` (model, scale, lambda: Q 0) to the top of the
    curves (Q 100), the (model, scale) whose curve gives the most mean PSNR wins, with two rules:
    a model earlier in `models` never wins again once a later one has (the small model first);
    and PSNR never falls: where the current curve ends (at its nearest-neighbour grid) and the
    next one starts lower, the rate jumps to where a curve gives `margin_db` more than the PSNR
    already reached (a margin, so that the mean over another set of images does not sag either).  Q is linear in the rate: Q = 100 (bpp - bpp_0) /
    (bpp_100 - bpp_0); a stretch runs from the previous stretch's last rate (Q of a jump belongs
    to the stretch after it) to its own last rate.  In each stretch lambda follows the winner's
    curve (`_lam_at`) from its first to its last rate, and the steepness of
    `vqcodec.rdo.Segment.lam` is fitted to it (least squares in log lambda); `slope` is the
    stretch's dB per bpp.

    Args:
        settings: the measured points ("model", "scale", "lam", "bpp", "psnr").
        bottom: the (model, scale, lambda) point whose rate is Q 0.
        models: the models in the order the scale uses them.
        margin_db: PSNR a stretch must start above the last one's top, dB (`MARGIN_DB`).
        steps: grid points along the rate.

    Returns:
        One dict per stretch: model, scale, q_lo, q_hi, lam_lo, lam_hi, steep, slope, bpp_lo,
        bpp_hi (its first and last rate), psnr_lo, psnr_hi.
    """
    curves = _curves(settings)
    b0 = next(p["bpp"] for p in settings if (p["model"], p["scale"], p["lam"]) == bottom)
    b1 = max(c[-1]["bpp"] for c in curves.values())
    grid = np.linspace(b0, b1, steps)
    keys = list(curves)
    rank = [models.index(k[0]) for k in keys]
    runs: list[list[int]] = []  # [winner, first grid index, last grid index]
    best, floor, cur = -math.inf, 0, None
    for j, b in enumerate(grid):
        vals = [(v, i) for i, k in enumerate(keys) if rank[i] >= floor
                for v in [_psnr_at(curves[k], b)] if v is not None]
        if not vals:
            continue  # no curve here: a jump in rate
        v, w = max(vals)
        here = None if cur is None else _psnr_at(curves[keys[cur]], b)
        if here is not None and v < here + margin_db:
            v, w = here, cur  # another curve takes over only once it gives margin_db more
        elif here is None and cur is not None and v < best + margin_db:
            continue  # the current curve ended: jump to where another gives margin_db more
        best, floor, cur = v, rank[w], w
        if runs and runs[-1][0] == w:
            runs[-1][2] = j
        else:
            runs.append([w, j, j])
    out = []
    q_of = lambda b: 100 * (b - b0) / (b1 - b0)  # noqa: E731
    for n, (w, j0, j1) in enumerate(runs):
        curve = curves[keys[w]]
        lo, hi = grid[j0], grid[j1]
        q_lo = 0.0 if n == 0 else q_of(grid[runs[n - 1][2]])
        lam_lo, lam_hi = _lam_at(curve, lo), _lam_at(curve, hi)
        if curve[-1]["bpp"] - hi <= 2 * (grid[1] - grid[0]):
            lam_hi = curve[-1]["lam"]  # ran to the curve's top: its nearest-neighbour grid
        bs = np.linspace(lo, hi, 21)
        want = np.log([_lam_at(curve, b) + 1e-3 for b in bs])
        t = (hi - bs) / max(hi - lo, 1e-12)

        def err(s: float) -> float:
            lam = lam_hi + (lam_lo - lam_hi) * (2.0 ** (s * t) - 1) / (2.0 ** s - 1)
            return float(np.sum((np.log(lam + 1e-3) - want) ** 2))

        steep = min(np.arange(0.25, 12.01, 0.25), key=err)
        p_lo, p_hi = _psnr_at(curve, lo), _psnr_at(curve, hi)
        out.append({"model": keys[w][0], "scale": keys[w][1], "q_lo": q_lo, "q_hi": q_of(hi),
                    "lam_lo": lam_lo, "lam_hi": lam_hi, "steep": float(steep),
                    "slope": (p_hi - p_lo) / max(hi - lo, 1e-12), "bpp_lo": lo, "bpp_hi": hi,
                    "psnr_lo": p_lo, "psnr_hi": p_hi})
    return out


def compare_efforts(paths: list[Path], efforts: tuple[int, ...], qualities: tuple[float, ...]) -> dict:
    """Real `vqcodec.codec` files of each crop at each quality and effort: mean bpp, mean PSNR
    (dB, display size, decoded by `codec.decompress`), the score PSNR - `rdo.rd_slope(Q)` * bpp
    (the rule of the per-image scale choice) and how often each coded scale was used.

    Args:
        paths: crop files.
        efforts: effort levels to compare (e.g. 7: no scale choice, 9: with it).
        qualities: Q values.

    Returns:
        {"rows": [{"quality", "effort", "bpp", "psnr", "score", "scales"}], "crops": [names]}.
    """
    from vqcodec import codec, metrics, rdo

    crops = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    rows = []
    for q in qualities:
        for e in efforts:
            bpp, db, scales = [], [], []
            for px in crops:
                r = codec.compress_report(px, q, device="cpu", effort=e)
                out = np.asarray(codec.decompress(r.data, device="cpu").convert("RGB"))
                bpp.append(8 * len(r.data) / (px.shape[0] * px.shape[1]))
                db.append(metrics.psnr(px, out))
                scales.append(r.coded_size[0] / px.shape[0])
            row = {"quality": q, "effort": e, "bpp": float(np.mean(bpp)), "psnr": float(np.mean(db)),
                   "score": float(np.mean(db) - rdo.rd_slope(q) * np.mean(bpp)),
                   "scales": {f"{s:g}": scales.count(s) for s in sorted(set(scales))}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"crops": [p.name for p in paths], "rows": rows}


def main(argv=None) -> dict:
    """Measure every (model, scale, lambda) on the crops; write and return the report."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale_rd", description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--limit", type=int, default=48)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--models", default=",".join(LAMBDAS))
    ap.add_argument("--scales", default=",".join(map(str, SCALES)))
    ap.add_argument("--derive", action="store_true", help="only derive the scale from --out's JSON")
    ap.add_argument("--compare-efforts", default=None, help="e.g. 7,9: real files at these efforts")
    ap.add_argument("--qualities", default="30,50,70,95", help="Q values of --compare-efforts")
    ap.add_argument("--first", type=int, default=0, help="skip this many sorted crops first")
    args = ap.parse_args(argv)
    if args.compare_efforts:
        paths = sorted(args.images.glob("t*.jpg"))[args.first:args.first + args.limit]
        report = compare_efforts(paths, tuple(int(e) for e in args.compare_efforts.split(",")),
                                 tuple(float(q) for q in args.qualities.split(",")))
        report["meta"] = {"images": str(args.images), "generated": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        out = args.out.parent / "scale_effort_train.json"
        out.write_text(json.dumps(report, indent=1))
        return report
    if args.derive:
        report = json.loads(args.out.read_text())
        return write_scale(report, args.out)
    if "kodak" in str(args.images.resolve()).lower():
        raise SystemExit("scale_rd chooses the quality scale: never on Kodak")

    import torch

    from vqcodec import zoo

    torch.set_grad_enabled(False)
    paths = sorted(args.images.glob("t*.jpg"))[:args.limit]
    crops = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    scales = tuple(float(s) for s in args.scales.split(","))
    settings = []
    t0 = time.perf_counter()
    for name in args.models.split(","):
        model = zoo.load(name, device="cpu")
        lambdas = LAMBDAS[name]
        for scale in scales:
            per = [[] for _ in lambdas]
            for b in range(0, len(crops), BATCH):
                for i, row in enumerate(measure_batch(model, crops[b:b + BATCH], scale, lambdas)):
                    per[i].extend(row)
            for lam, rows in zip(lambdas, per):
                s = {"model": name, "scale": scale, "lam": lam,
                     "bpp": float(np.mean([r["bpp"] for r in rows])),
                     "psnr": float(np.mean([r["psnr"] for r in rows])),
                     "bits": float(np.mean([8 * r["bytes"] for r in rows])),
                     "per_crop": [[round(r["bpp"], 5), round(r["psnr"], 4)] for r in rows]}
                settings.append(s)
                print(f"{name} scale {scale:g} lam {lam:g}: {s['bpp']:.4f} bpp {s['psnr']:.3f} dB "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    hull = [{k: p[k] for k in ("model", "scale", "lam", "bpp", "psnr")} for p in upper_hull(settings)]
    report = {"meta": {"images": str(args.images), "crops": [p.name for p in paths], "effort": 6,
                       "scales": scales, "lambdas": LAMBDAS, "seconds": time.perf_counter() - t0,
                       "generated": time.strftime("%Y-%m-%d %H:%M:%S %z")},
              "settings": settings, "hull": hull}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for p in hull:
        print(f"hull: {p['model']} scale {p['scale']:g} lam {p['lam']:g}: {p['bpp']:.4f} bpp {p['psnr']:.3f} dB")
    return write_scale(report, args.out)


def segment_rows(scale: list[dict]) -> list[str]:
    """The stretches as `vqcodec.rdo.Segment(...)` source lines: Q to 2 decimals (each stretch
    starts where the last ended), lambdas to 4 significant digits, slope to 0.1 dB per bpp."""
    rows, q_lo = [], 0.0
    for n, s in enumerate(scale):
        q_hi = 100.0 if n == len(scale) - 1 else round(s["q_hi"], 2)
        lam_lo, lam_hi = float(f"{s['lam_lo']:.4g}"), float(f"{s['lam_hi']:.4g}")
        rows.append(f'    Segment("{s["model"]}", {q_lo:.2f}, {q_hi:.2f}, {lam_lo!r}, {s["steep"]:g}, '
                    f'scale={s["scale"]!r}, lam_hi={lam_hi!r}, slope={s["slope"]:.1f}),')
        q_lo = q_hi
    return rows


def write_scale(report: dict, out: Path) -> dict:
    """Derive the quality scale from a report, store it in the report and write it to `out`."""
    models = tuple(dict.fromkeys(p["model"] for p in report["settings"]))
    scale = derive_scale(report["settings"], BOTTOM, models, MARGIN_DB)
    report["quality_scale"] = {"bottom": list(BOTTOM), "models": list(models), "margin_db": MARGIN_DB,
                               "stretches": scale,
                               "segments": segment_rows(scale)}
    out.write_text(json.dumps(report, indent=1))
    print("\n".join(report["quality_scale"]["segments"]))
    return report


if __name__ == "__main__":
    main()
