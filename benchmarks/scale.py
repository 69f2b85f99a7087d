"""Scale: many images on Dask workers, one whole slide in bounded memory, tiled vs untiled.

Three measurements, printed as Markdown rows (classic engine, analytic heads):

1. ``slide``: a synthetic 16,000 x 16,000 nuclei image (seeded disks of diameter 12 px
   plus noise, written tile by tile as a zlib BigTIFF) segmented by
   ``python -m mm_core segment`` in a child process: wall time and the child's peak RSS
   (target: <= 4 GB), objects found against objects drawn.
2. ``tiled``: a synthetic 2,048 x 2,048 nuclei image segmented whole and in 1,024-pixel
   tiles; the share of objects matched one-to-one at IoU >= 0.5 (F1, target >= 0.98),
   once with each run measuring the object scale itself (the default) and once with the
   untiled run given the tiled run's scale. The tiled run fits the engine once (on a
   window of ``mm_core.batching.tiled.FIT_SIDE`` = 2,048 pixels, here the whole image) and applies
   it to every tile; for contrast, a 1,024^2 crop matched with its own fit against the
   same pixels inside the whole image.
3. ``workers``: images per second on the 200 dev images of ``count/vgg_cells`` with
   1 and 2 worker processes (:func:`mm_core.batch`), and their ratio.

Usage::

    python benchmarks/scale.py [--slide 16000] [--skip slide,tiled,workers]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("MM_SHARED_DATA", REPO.parent / "shared" / "data"))
DIAMETER = 12.0


def nuclei_centres(size: int, seed: int = 0, diameter: float = DIAMETER, coverage: float = 0.25) -> np.ndarray:
    """Seeded disk centres covering about ``coverage`` of a ``size`` x ``size`` image."""
    rng = np.random.default_rng(seed)
    n = int(coverage * size * size / (np.pi * diameter ** 2 / 4))
    return rng.uniform(0, size, (n, 2))


def nuclei_tile(y0: int, x0: int, h: int, w: int, centres: np.ndarray, seed: int,
                diameter: float = DIAMETER) -> np.ndarray:
    """The window ``[y0:y0+h, x0:x0+w]`` of the synthetic image (uint16; noise seeded per window)."""
    r = diameter / 2
    sel = centres[(centres[:, 0] > y0 - r) & (centres[:, 0] < y0 + h + r)
                  & (centres[:, 1] > x0 - r) & (centres[:, 1] < x0 + w + r)]
    img = np.full((h, w), 100.0, np.float32)
    yy, xx = np.ogrid[:h, :w]
    for cy, cx in sel - [y0, x0]:
        r0, r1 = int(max(0, cy - r - 1)), int(min(h, cy + r + 2))
        c0, c1 = int(max(0, cx - r - 1)), int(min(w, cx + r + 2))
        sub = (yy[r0:r1] - cy) ** 2 + (xx[:, c0:c1] - cx) ** 2 <= r * r
        img[r0:r1, c0:c1][sub] = 1000.0
    rng = np.random.default_rng([seed, y0, x0])
    return np.clip(img + rng.normal(0, 100, img.shape), 0, 65535).astype(np.uint16)


def write_slide(path: Path, size: int, seed: int = 0, tile: int = 512) -> int:
    centres = nuclei_centres(size, seed)

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                t = nuclei_tile(y, x, tile, tile, centres, seed)
                yield t
    tifffile.imwrite(path, tiles(), shape=(size, size), dtype=np.uint16, tile=(tile, tile),
                     compression="zlib", bigtiff=True)
    return len(centres)


def matched_f1(a: np.ndarray, b: np.ndarray, thr: float = 0.5) -> tuple[float, int, int, int]:
    """F1 of one-to-one matches at IoU > ``thr`` (> 0.5 makes matches unique), sparse."""
    a, b = a.astype(np.int64).ravel(), b.astype(np.int64).ravel()
    m = (a > 0) & (b > 0)
    pairs, inter = np.unique(np.stack([a[m], b[m]]), axis=1, return_counts=True)
    na, nb = np.bincount(a), np.bincount(b)
    iou = inter / (na[pairs[0]] + nb[pairs[1]] - inter)
    tp = int((iou > thr).sum())
    n1, n2 = int((na[1:] > 0).sum()), int((nb[1:] > 0).sum())
    return 2 * tp / max(1, n1 + n2), tp, n1, n2


def bench_slide(size: int, tmp: Path) -> None:
    path = tmp / "slide.tif"
    t0 = time.perf_counter()
    n = write_slide(path, size)
    print(f"slide: wrote {size}x{size} synthetic nuclei ({n:,} disks) in {time.perf_counter() - t0:.0f} s",
          flush=True)
    out = tmp / "slide_out"
    cmd = [sys.executable, "-m", "mm_core", "segment", str(path), "--out", str(out), "--engine", "classic",
           "--head", "analytic"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9
    if proc.returncode != 0:
        print(proc.stderr[-2000:])
        raise SystemExit("slide run failed")
    import pandas as pd

    row = pd.read_csv(out / "manifest.csv").iloc[0]
    print("| measurement | value | target |\n|---|---|---|")
    print(f"| {size:,}^2 slide, wall time (s) | {wall:.0f} | |")
    print(f"| {size:,}^2 slide, peak RSS (GB) | {peak_gb:.2f} | <= 4 {'ok' if peak_gb <= 4 else 'MISSED'} |")
    print(f"| {size:,}^2 slide, objects found ({n:,} disks drawn, many touching) | {int(row['objects']):,} | |",
          flush=True)


def bench_tiled(size: int = 2048, tile: int = 1024, coverage: float = 0.25) -> None:
    from mm_core import Matcher
    from mm_core.batching.tiled import segment_large
    from mm_core.transforms import normalize

    centres = nuclei_centres(size, seed=1, coverage=coverage)
    raw = nuclei_tile(0, 0, size, size, centres, seed=1).astype(np.float32)
    matcher = Matcher(engine="classic", head="analytic")
    eng, head = matcher.engine, matcher.head("segment")
    t0 = time.perf_counter()
    tiled, summary = segment_large(raw, matcher, tile=tile)
    t_tiled = time.perf_counter() - t0
    img = normalize(raw)
    t0 = time.perf_counter()
    maps = eng.match(img, None)
    whole = head.predict(maps, img)
    t_whole = time.perf_counter() - t0
    same = head.predict(eng.match(img, None, diameter=summary.scale), img)
    f1, tp, n1, n2 = matched_f1(whole, tiled)
    f1s, tps, n1s, n2s = matched_f1(same, tiled)
    print(f"| {size}^2 ({coverage:.0%} covered), {tile}-px tiles ({summary.tiles}, overlap {summary.overlap}) "
          "vs whole: F1 at IoU 0.5, "
          f"each run its own scale ({maps.scale:.1f} vs {summary.scale:.1f} px) | {f1:.3f} ({tp}/{n1} vs {n2}) "
          f"| >= 0.98 {'ok' if f1 >= 0.98 else 'MISSED'} |")
    print(f"| same, whole image given the tiled run's scale | {f1s:.3f} ({tps}/{n1s} vs {n2s}) "
          f"| >= 0.98 {'ok' if f1s >= 0.98 else 'MISSED'} |")
    print(f"| {size}^2 wall time whole / tiled (s) | {t_whole:.1f} / {t_tiled:.1f} | |", flush=True)
    crop = img[:tile, :tile]  # the engine alone: the same pixels matched with and without their surroundings
    part = head.predict(eng.match(crop, None, diameter=summary.scale), crop)
    inner = slice(tile // 8, tile - tile // 8)

    def interior(lab):
        lab = lab.copy()
        edge = np.ones(lab.shape, bool)
        edge[inner, inner] = False
        lab[np.isin(lab, np.unique(lab[edge]))] = 0
        return lab

    f1c, tpc, n1c, n2c = matched_f1(interior(same[:tile, :tile]), interior(part))
    print(f"| for contrast: a {tile}^2 crop matched with its own fit vs inside the whole image (same scale, "
          f"interior objects) | {f1c:.3f} ({tpc}/{n1c} vs {n2c}) | |", flush=True)


def bench_workers(tmp: Path) -> None:
    from mm_core import batch  # the function

    files = sorted((DATA / "count" / "vgg_cells" / "images").glob("*.png"))
    if len(files) < 200:
        print(f"workers: skipped, {DATA}/count/vgg_cells has {len(files)} images")
        return
    rates = {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        table = batch(files[:200], "segment", tmp / f"w{workers}", workers=workers, engine="classic",
                      head="analytic", progress=False)
        wall = time.perf_counter() - t0
        assert (table["status"] == "done").all()
        rates[workers] = 200 / wall
        print(f"| 200 vgg_cells images, {workers} worker(s): images/s (wall {wall:.0f} s, incl. start-up) "
              f"| {rates[workers]:.2f} | |", flush=True)
    print(f"| 2 workers / 1 worker | {rates[2] / rates[1]:.2f} | |", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", type=int, default=16000, help="side of the synthetic slide")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: slide,tiled,workers")
    a = p.parse_args(argv)
    skip = set(filter(None, a.skip.split(",")))
    print(f"machine: {os.uname().nodename}, {os.cpu_count()} CPUs visible, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "slide" not in skip:  # first: RUSAGE_CHILDREN is the peak over all children so far
            bench_slide(a.slide, tmp)
        if "tiled" not in skip:
            for coverage in (0.25, 0.10):
                bench_tiled(coverage=coverage)
        if "workers" not in skip:
            bench_workers(tmp)
    return 0


if __name__ == "__main__":
    if __package__ is None and "" not in sys.path:
        sys.path.insert(0, "")
    raise SystemExit(main())
