"""benchmarks/scale_rd.py: the quality scale derived from (model, scale, lambda) curves, on synthetic
curves (the real measurement needs the training crops and takes minutes)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import scale_rd
from vqcodec import rdo


def curve(model, scale, b_top, db_top, lambdas=(0.0, 0.1, 0.3, 1.0)):
    """A curve that loses bits and PSNR as lambda grows: (bpp, dB) = top * (1 - x), top - 6 x."""
    return [{"model": model, "scale": scale, "lam": lam, "bpp": b_top * (1 - 0.5 * lam / (1 + lam)),
             "psnr": db_top - 6 * lam / (1 + lam)} for lam in lambdas]


def test_upper_hull_drops_points_below_a_chord():
    pts = [{"bpp": 0.1, "psnr": 20.0}, {"bpp": 0.2, "psnr": 22.0}, {"bpp": 0.3, "psnr": 25.0},
           {"bpp": 0.4, "psnr": 24.0}, {"bpp": 0.5, "psnr": 26.0}]
    hull = scale_rd.upper_hull(pts)
    assert [p["bpp"] for p in hull] == [0.1, 0.3, 0.5]  # 0.2 is under the chord, 0.4 dominated


def test_derived_scale_is_monotone_without_sag_and_the_small_model_first():
    settings = (curve("small", 0.5, 0.05, 22.0) + curve("small", 1.0, 0.09, 23.5)
                + curve("big", 0.5, 0.12, 24.5) + curve("big", 0.75, 0.2, 26.0)
                + curve("big", 1.0, 0.3, 27.5) + curve("small", 0.75, 0.25, 23.0))  # never on top
    scale = scale_rd.derive_scale(settings, ("small", 0.5, 1.0), ("small", "big"), margin_db=0.05)
    assert scale[0]["q_lo"] == 0 and scale[-1]["q_hi"] == pytest.approx(100)
    assert all(a["q_hi"] == pytest.approx(b["q_lo"]) for a, b in zip(scale, scale[1:]))
    kinds = [(s["model"], s["scale"]) for s in scale]
    assert kinds == [("small", 0.5), ("small", 1.0), ("big", 0.5), ("big", 0.75), ("big", 1.0)]
    for a, b in zip(scale, scale[1:]):  # PSNR and rate never fall from one stretch to the next
        assert b["psnr_lo"] >= a["psnr_hi"] + 0.05 - 0.01 and b["bpp_lo"] >= a["bpp_hi"]
    for s in scale:
        assert s["lam_lo"] >= s["lam_hi"] >= 0 and s["slope"] > 0
    assert scale[-1]["lam_hi"] == 0.0  # the top: the big model's nearest-neighbour grid
    rows = scale_rd.segment_rows(scale)
    segs = [eval("rdo." + r.strip().rstrip(","), {"rdo": rdo}) for r in rows]  # valid Segment source
    assert segs[0].q_lo == 0 and segs[-1].q_hi == 100 and all(s.scale in (0.5, 0.75, 1.0) for s in segs)


def test_the_released_scale_is_the_measurement_derived():
    """rdo.QUALITY_SEGMENTS is what scale_rd derives from the committed measurement."""
    import json

    report = json.loads(scale_rd.DEFAULT_OUT.read_text())
    rows = scale_rd.segment_rows(scale_rd.derive_scale(report["settings"], scale_rd.BOTTOM,
                                                       tuple(report["quality_scale"]["models"]),
                                                       scale_rd.MARGIN_DB))
    segs = tuple(eval("rdo." + r.strip().rstrip(","), {"rdo": rdo}) for r in rows)
    assert segs == rdo.QUALITY_SEGMENTS
    assert not any(math.isnan(s.lam_lo) for s in segs) and np.all(np.diff([s.q_lo for s in segs]) > 0)
