"""Measure segmentation and counting quality on the dev data (../shared/data).

Runs every dataset under ``seg/`` and ``count/`` in automatic mode, in exemplar
mode and with a simple classical pipeline (one parameter set for all data), then
prints a markdown table and optionally writes JSON.

Exemplar choice (fixed seed, as the paper picks exemplars): per dataset one
``numpy.random.default_rng(0)`` walks the images in sorted order; for each image
it picks one ground-truth object among those whose area lies between the 25th and
75th percentile of that image's object areas, and the exemplar box is that
object's bounding box. VGG cells have dot annotations only: the box is a
12x12-pixel square (the typical VGG cell diameter, measured on the images) centred
on a randomly chosen dot at least 6 px inside the image.

Classical pipeline (the issue's baseline): grey = channel mean of the normalised
image, Gaussian sigma 1, Otsu threshold (objects = brighter class), distance
transform, markers = its local maxima 5 px apart, watershed; counting = number
of ``skimage.feature.blob_log`` blobs (sigma 2-10, threshold 0.1).

Usage::

    python benchmarks/evaluate.py [--datasets dsb2018_stage1_test vgg_cells]
        [--limit 5] [--mode auto exemplar classical] [--out results.json]

Tracking is measured by the tracking benchmark, not here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import imageio.v3 as iio
import pandas as pd
import tifffile
from scipy import ndimage as ndi
from skimage.feature import blob_log, peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

import mm_core
from mm_core.engines.classic import ClassicEngine
from mm_core.evaluation.metrics import average_precision
from mm_core.transforms import normalize, to_gray

DATA = Path(os.environ.get("MM_SHARED_DATA", REPO.parent / "shared" / "data"))
MODES = ("classical", "auto", "exemplar")
VGG_BOX = 12


# ---------------------------------------------------------------- data
def seg_items(name: str, limit: int | None):
    root = DATA / "seg" / name
    files = sorted((root / "images").glob("*.tif"))[:limit]
    for f in files:
        yield f.stem, tifffile.imread(f), tifffile.imread(root / "masks" / f.name).astype(np.int32)


def count_items(name: str, limit: int | None):
    root = DATA / "count" / name
    files = sorted((root / "images").glob("*.png"))[:limit]
    for f in files:
        pts = pd.read_csv(root / "points" / f"{f.stem}.csv")[["y", "x"]].to_numpy(float)
        yield f.stem, iio.imread(f), pts


def seg_exemplar(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bounding box (x0, y0, x1, y1) of one GT object of median-ish area."""
    ids, areas = np.unique(gt[gt > 0], return_counts=True)
    lo, hi = np.percentile(areas, [25, 75])
    cand = ids[(areas >= lo) & (areas <= hi)]
    oid = rng.choice(cand if len(cand) else ids)
    rr, cc = np.nonzero(gt == oid)
    return np.array([[cc.min(), rr.min(), cc.max() + 1, rr.max() + 1]], float)


def count_exemplar(pts: np.ndarray, shape, rng: np.random.Generator) -> np.ndarray:
    h, w = shape[:2]
    half = VGG_BOX / 2
    ok = (pts[:, 0] >= half) & (pts[:, 0] < h - half) & (pts[:, 1] >= half) & (pts[:, 1] < w - half)
    y, x = pts[rng.choice(np.nonzero(ok)[0])]
    return np.array([[x - half + 0.5, y - half + 0.5, x + half + 0.5, y + half + 0.5]], float)


# ---------------------------------------------------------------- classical baseline
def classical_segment(image: np.ndarray) -> np.ndarray:
    g = ndi.gaussian_filter(to_gray(normalize(image)), 1.0)
    if np.ptp(g) <= 0:
        return np.zeros(g.shape, np.int32)
    fg = g > threshold_otsu(g)
    dt = ndi.distance_transform_edt(fg)
    pk = peak_local_max(dt, min_distance=5, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(g.shape, np.int32)
    markers[pk[:, 0], pk[:, 1]] = np.arange(1, len(pk) + 1)
    return watershed(-dt, markers, mask=fg).astype(np.int32)


def classical_count(image: np.ndarray) -> float:
    g = np.clip(to_gray(normalize(image)), 0, 1)
    return float(len(blob_log(g, min_sigma=2, max_sigma=10, num_sigma=9, threshold=0.1)))


# ---------------------------------------------------------------- runners
def _timed(items, modes, exemplar, classical, ours, score):
    """Run every mode on every item; returns ``{mode: (scores, seconds)}``.

    ``exemplar(truth, image, rng)`` gives the item's box (fixed seed), ``classical(image)``
    and ``ours(image, boxes)`` the predictions, ``score(truth, prediction)`` one score.
    """
    rng = np.random.default_rng(0)
    out = {m: ([], []) for m in modes}
    for _stem, img, truth in items:
        box = exemplar(truth, img, rng)
        for m in modes:
            t = time.perf_counter()
            pred = classical(img) if m == "classical" else ours(img, box if m == "exemplar" else None)
            out[m][1].append(time.perf_counter() - t)
            out[m][0].append(score(truth, pred))
    return out


def run_seg(name, modes, limit, engine):
    runs = _timed(seg_items(name, limit), modes, lambda gt, img, rng: seg_exemplar(gt, rng), classical_segment,
                  lambda img, box: mm_core.segment(img, boxes=box, engine=engine).labels,
                  lambda gt, pred: average_precision(gt, pred)["ap"])
    out = {}
    for m, (aps, times) in runs.items():
        ap = np.mean(aps, axis=0)
        out[m] = {"ap50": float(ap[0]), "ap": float(ap.mean()), "n": len(aps),
                  "sec_per_image": float(np.mean(times)), "per_image_ap50": [float(a[0]) for a in aps]}
    return out


def run_count(name, modes, limit, engine):
    runs = _timed(count_items(name, limit), modes, lambda pts, img, rng: count_exemplar(pts, img.shape, rng),
                  classical_count, lambda img, box: mm_core.count(img, boxes=box, engine=engine).count,
                  lambda pts, c: c - len(pts))
    out = {}
    for m, (err, times) in runs.items():
        e = np.asarray(err)
        out[m] = {"mae": float(np.abs(e).mean()), "rmse": float(np.sqrt((e ** 2).mean())), "bias": float(e.mean()),
                  "n": len(e), "sec_per_image": float(np.mean(times))}
    return out


def fmt(task, r):
    if r is None:
        return "-"
    if task == "seg":
        return f"AP50 {r['ap50']:.3f}, AP {r['ap']:.3f}"
    return f"MAE {r['mae']:.1f} (bias {r['bias']:+.1f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="*", default=None, help="dataset names (default: all under seg/ and count/)")
    p.add_argument("--limit", type=int, default=None, help="images per dataset (first N in sorted order)")
    p.add_argument("--mode", nargs="*", default=list(MODES), choices=MODES)
    p.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    a = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"no dev data at {DATA}", file=sys.stderr)
        return 1
    sets = [("seg", d.name) for d in sorted((DATA / "seg").iterdir()) if d.is_dir()]
    sets += [("count", d.name) for d in sorted((DATA / "count").iterdir()) if d.is_dir()]
    if a.datasets:
        sets = [s for s in sets if s[1] in a.datasets]
    engine = ClassicEngine()
    results = {}
    for task, name in sets:
        t = time.perf_counter()
        results[f"{task}/{name}"] = (run_seg if task == "seg" else run_count)(name, a.mode, a.limit, engine)
        print(f"{task}/{name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
    print("| dataset | " + " | ".join(a.mode) + " |")
    print("|---" * (len(a.mode) + 1) + "|")
    for key, r in results.items():
        task = key.split("/")[0]
        n = next(iter(r.values()))["n"]
        print(f"| {key} (n={n}) | " + " | ".join(fmt(task, r.get(m)) for m in a.mode) + " |")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"machine": os.uname().nodename, "limit": a.limit, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
