"""Tracking quality and speed on a Cell Tracking Challenge sequence (py-ctcmetrics).

Prints TRA / DET / LNK / SEG (and validity) for:

- ``baseline``: Otsu threshold + distance-transform watershed + nearest-neighbour linking;
- ``auto``: :func:`mm_core.track` in automatic mode;
- ``exemplar``: :func:`mm_core.track` with one ground-truth object's box on frame 0
  (picked with a fixed seed); ``exemplar-small``, ``exemplar-median`` and ``exemplar-large``:
  the box of the smallest, the median-sized or the largest object on frame 0 (boxes of several
  sizes; ``exemplar-small-inner``: the smallest one the image's edge does not cut);
- ``gt-link``: :func:`mm_core.heads.tracking.link_labels` on the ground-truth masks with
  labels scrambled in every frame (linking quality alone);

plus seconds per frame (wall clock, and CPU seconds of this process over all its
threads, scaled to a 512x512 frame; on a shared machine the CPU figure is the fair one).
Usage::

    python benchmarks/track_eval.py [--data ../shared/data/track/Fluo-N2DH-SIM+] [--seq 01]
        [--frames N] [--engine classic] [--modes baseline,auto,exemplar,gt-link] [--head analytic|PATH]

    # boxes of several sizes on frame 0
    python benchmarks/track_eval.py --modes auto,exemplar-small,exemplar-small-inner,exemplar-median,exemplar-large
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.measure import regionprops_table
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mm_core.export import write_ctc
from mm_core.heads.linking import TRACK_COLUMNS, link_labels
from mm_core.evaluation.metrics import ctc_scores
from mm_core.transforms import normalize

DEFAULT_DATA = REPO.parent / "shared" / "data" / "track" / "Fluo-N2DH-SIM+"
SEED = 0


# ----------------------------------------------------------------------------- CTC files
def gt_subset(gt_dir: Path, n_frames: int, dst: Path) -> Path:
    """A CTC ground-truth folder restricted to the first ``n_frames`` frames (symlinks)."""
    (dst / "TRA").mkdir(parents=True)
    (dst / "SEG").mkdir()
    tr = pd.read_csv(gt_dir / "TRA" / "man_track.txt", sep=r"\s+", header=None, names=TRACK_COLUMNS)
    tr = tr[tr.begin < n_frames].copy()
    tr["end"] = tr["end"].clip(upper=n_frames - 1)
    tr.loc[~tr.parent.isin(tr.label), "parent"] = 0
    tr.to_csv(dst / "TRA" / "man_track.txt", sep=" ", header=False, index=False)
    for t in range(n_frames):
        os.symlink(gt_dir / "TRA" / f"man_track{t:03d}.tif", dst / "TRA" / f"man_track{t:03d}.tif")
        seg = gt_dir / "SEG" / f"man_seg{t:03d}.tif"
        if seg.exists():
            os.symlink(seg, dst / "SEG" / f"man_seg{t:03d}.tif")
    return dst


# ----------------------------------------------------------------------------- baseline
def baseline_segment(image: np.ndarray) -> np.ndarray:
    """Otsu threshold + distance-transform watershed, one fixed parameter set."""
    sm = ndi.gaussian_filter(image, 2)
    fg = ndi.binary_fill_holes(sm > threshold_otsu(sm))
    fg = remove_small_objects(fg, max_size=63)  # drop blobs under 64 px
    dist = ndi.distance_transform_edt(fg)
    peaks = peak_local_max(dist, min_distance=12, labels=ndi.label(fg)[0], exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    return watershed(-dist, markers, mask=fg).astype(np.int32)


def nearest_neighbour_link(labels: list[np.ndarray]) -> tuple[np.ndarray, pd.DataFrame]:
    """Greedy one-to-one nearest-centroid linking (no divisions, no gaps)."""
    rows, prev, out, n = [], None, [], 0
    for t, lab in enumerate(labels):
        p = regionprops_table(lab, properties=("label", "centroid", "equivalent_diameter_area"))
        yx = np.stack([p["centroid-0"], p["centroid-1"]], 1) if len(p["label"]) else np.zeros((0, 2))
        ids = np.zeros(len(p["label"]), int)
        if prev is not None and len(yx) and len(prev[0]):
            d = np.linalg.norm(yx[:, None] - prev[0][None], axis=2)
            used = set()
            for j, i in sorted(zip(*np.nonzero(d < p["equivalent_diameter_area"][:, None])),
                               key=lambda ji: d[ji]):
                if ids[j] == 0 and i not in used:
                    ids[j] = prev[1][i]
                    used.add(i)
                    rows[ids[j] - 1][2] = t
        for j in np.flatnonzero(ids == 0):
            n += 1
            ids[j] = n
            rows.append([n, t, t, 0])
        lut = np.zeros(int(lab.max()) + 1, np.int32)
        lut[p["label"]] = ids
        out.append(lut[lab])
        prev = (yx, ids)
    return np.stack(out), pd.DataFrame(rows, columns=TRACK_COLUMNS)


# ----------------------------------------------------------------------------- runs
def load(data: Path, seq: str, n_frames: int | None):
    files = sorted((data / seq).glob("t*.tif"))[:n_frames]
    frames = [tifffile.imread(f).astype(np.float32) for f in files]
    gt_files = sorted((data / f"{seq}_GT" / "TRA").glob("man_track*.tif"))[:len(frames)]
    return frames, [tifffile.imread(f) for f in gt_files]


#: Which ground-truth object gives the exemplar box, by mode.
BOX_PICKS = ("exemplar", "exemplar-small", "exemplar-small-inner", "exemplar-median", "exemplar-large")


def exemplar_box(gt0: np.ndarray, pick: str = "exemplar") -> np.ndarray:
    """One ground-truth object's box on frame 0: seeded random, or the smallest (``-inner``: of those
    the image's edge does not cut), median or largest."""
    p = regionprops_table(gt0, properties=("label", "bbox", "area"))
    order = np.argsort(p["area"], kind="stable")
    h, w = gt0.shape
    inner = [i for i in order if p["bbox-0"][i] > 0 and p["bbox-1"][i] > 0 and p["bbox-2"][i] < h
             and p["bbox-3"][i] < w]
    k = {"exemplar": int(np.random.default_rng(SEED).integers(len(p["label"]))), "exemplar-small": order[0],
         "exemplar-small-inner": inner[0] if inner else order[0],
         "exemplar-median": order[len(order) // 2], "exemplar-large": order[-1]}[pick]
    return np.array([[p["bbox-1"][k], p["bbox-0"][k], p["bbox-3"][k], p["bbox-2"][k]]], np.float32)


def run_mode(mode: str, frames, gts, engine: str, head=None):
    """Masks, tracks, wall seconds per frame and CPU seconds per frame (all threads)."""
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "baseline":
        masks, tracks = nearest_neighbour_link([baseline_segment(normalize(f)) for f in frames])
    elif mode == "gt-link":
        rng = np.random.default_rng(SEED)
        scrambled = []
        for g in gts:
            ids = np.unique(g[g > 0])
            lut = np.zeros(int(g.max()) + 1, np.int32)
            lut[ids] = rng.permutation(len(ids)) + 1
            scrambled.append(lut[g])
        t0, c0 = time.perf_counter(), time.process_time()
        masks, tracks = link_labels(scrambled)
    else:
        import mm_core

        if mode != "auto" and mode not in BOX_PICKS:
            raise SystemExit(f"unknown mode {mode!r}: baseline, auto, gt-link or one of {', '.join(BOX_PICKS)}")
        boxes = exemplar_box(gts[0], mode) if mode in BOX_PICKS else None
        if boxes is not None:
            x0, y0, x1, y1 = boxes[0]
            print(f"{mode}: box {x1 - x0:.0f}x{y1 - y0:.0f} px at ({x0:.0f}, {y0:.0f})", flush=True)
        res = mm_core.track(frames, boxes=boxes, engine=engine, head=head)
        print(f"{mode}: {res.head_note}", flush=True)
        masks, tracks = res.masks, res.tracks
    n = len(frames)
    return masks, tracks, (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seq", default="01")
    ap.add_argument("--frames", type=int, default=None, help="first N frames only")
    ap.add_argument("--engine", default="classic")
    ap.add_argument("--modes", default="baseline,auto,exemplar,gt-link")
    ap.add_argument("--head", default=None, help="per-frame segmentation head for auto/exemplar "
                    "('analytic', a checkpoint folder or registered name; default: the shipped default)")
    args = ap.parse_args(argv)
    if not (args.data / args.seq).is_dir():
        print(f"no data at {args.data / args.seq}")
        return 1
    frames, gts = load(args.data, args.seq, args.frames)
    h, w = frames[0].shape
    print(f"{args.data.name} {args.seq}: {len(frames)} frames {w}x{h}, engine {args.engine}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir = gt_subset(args.data / f"{args.seq}_GT", len(frames), Path(tmp) / "gt")
        for mode in args.modes.split(","):
            masks, tracks, spf, cpf = run_mode(mode, frames, gts, args.engine, args.head)
            res_dir = write_ctc(Path(tmp) / f"res_{mode}", masks, tracks)
            s = ctc_scores(gt_dir, res_dir)
            n_div = int((tracks.loc[tracks.parent > 0, "parent"].value_counts() >= 2).sum())
            rows.append({"mode": mode, "TRA": s["TRA"], "DET": s["DET"], "LNK": s["LNK"], "SEG": s["SEG"],
                         "valid": s["valid"], "tracks": len(tracks), "divisions": n_div,
                         "wall_s_frame": spf, "cpu_s_frame": cpf, "cpu_s_512sq": cpf * 512 * 512 / (h * w)})
            print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format="%.3f"), flush=True)
    print("\n" + pd.DataFrame(rows).to_string(index=False, float_format="%.3f"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
