"""How often the result self-checks (``mm_core.checks``) fire on good and on bad results.

Segments every image of the segmentation sets in automatic mode and in exemplar mode
(one ground-truth object's box per image, picked as ``benchmarks/evaluate.py`` does,
fixed seed), scores it (AP50) and records whether ``result.warnings`` is non-empty.
Prints, per data set and mode, how many images scored AP50 < 0.2 and how many of those
got a warning, and the same for AP50 > 0.5 (ideal: all of the first, none of the second).

Usage::

    python benchmarks/warnings.py                       # the dev sets (../shared/data/seg)
    python benchmarks/warnings.py --split train --limit 10   # a look at train/ (thresholds)
    python benchmarks/warnings.py --out warnings.json

The thresholds in ``mm_core/checks.py`` are fixed a priori; this script measures them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import tifffile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from evaluate import seg_exemplar

from mm_core.evaluation.metrics import ap50
from mm_core.models import Matcher

DATA = Path(os.environ.get("MM_SHARED_DATA", REPO.parent / "shared" / "data"))
DEV_SETS = ("dsb2018_stage1_test", "stardist_dsb2018_example", "usiigaci_phase_contrast", "isbi2012_em_cells")


def _kind(warning: str) -> str:
    """A short name for a warning (its first words)."""
    for key in ("cover", "smaller", "larger", "fragments", "more than fit", "ragged", "match map is weak",
                "No objects"):
        if key in warning:
            return key
    return warning[:20]


def run_set(matcher: Matcher, root: Path, limit: int | None, modes) -> dict:
    files = sorted((root / "images").glob("*.tif"))
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    rng = np.random.default_rng(0)
    rows = []
    for f in files:
        img, gt = tifffile.imread(f), tifffile.imread(root / "masks" / f.name).astype(np.int32)
        box = seg_exemplar(gt, rng)
        for mode in modes:
            res = matcher.segment(img, boxes=box if mode == "exemplar" else None)
            rows.append({"image": f.stem, "mode": mode, "ap50": float(ap50(gt, res.labels)),
                         "warned": bool(res.warnings), "kinds": sorted({_kind(w) for w in res.warnings})})
    return rows


def table(rows_by_set: dict) -> str:
    lines = ["| data set | mode | images | AP50 < 0.2: warned | 0.2-0.5: warned | AP50 > 0.5: warned |",
             "| --- | --- | --- | --- | --- | --- |"]
    tot: dict = {}
    for name, rows in rows_by_set.items():
        for mode in dict.fromkeys(r["mode"] for r in rows):
            rs = [r for r in rows if r["mode"] == mode]
            cells = []
            for lo, hi in ((-1, 0.2), (0.2, 0.5 + 1e-9), (0.5 + 1e-9, 2)):
                sel = [r for r in rs if lo <= r["ap50"] < hi] if lo >= 0 else [r for r in rs if r["ap50"] < hi]
                w = sum(r["warned"] for r in sel)
                cells.append(f"{w} of {len(sel)}" if sel else "-")
                t = tot.setdefault((mode, lo), [0, 0])
                t[0], t[1] = t[0] + w, t[1] + len(sel)
            lines.append(f"| {name} | {mode} | {len(rs)} | " + " | ".join(cells) + " |")
    for mode in dict.fromkeys(m for m, _ in tot):
        cells = [f"{tot[(mode, lo)][0]} of {tot[(mode, lo)][1]}" for lo in (-1, 0.2, 0.5 + 1e-9)]
        lines.append(f"| **all** | {mode} | | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", choices=("dev", "train"), default="dev")
    ap.add_argument("--datasets", nargs="*", default=None)
    ap.add_argument("--limit", type=int, default=None, help="at most this many images per set (evenly spaced)")
    ap.add_argument("--modes", nargs="+", default=["automatic", "exemplar"], choices=("automatic", "exemplar"))
    ap.add_argument("--engine", default="classic")
    ap.add_argument("--out", default=None, help="write per-image rows as JSON")
    args = ap.parse_args(argv)
    base = DATA / "seg" if args.split == "dev" else DATA / "train" / "seg"
    names = args.datasets or (DEV_SETS if args.split == "dev" else sorted(p.name for p in base.iterdir()))
    matcher = Matcher(engine=args.engine)
    t0, rows_by_set = time.time(), {}
    for name in names:
        if not (base / name / "images").is_dir():
            print(f"skipped {name}: not found under {base}", file=sys.stderr)
            continue
        rows_by_set[name] = run_set(matcher, base / name, args.limit, args.modes)
        kinds = Counter(k for r in rows_by_set[name] for k in r["kinds"])
        print(f"{name}: {len(rows_by_set[name])} runs, {time.time() - t0:.0f} s; warnings by kind: "
              f"{dict(kinds)}", file=sys.stderr, flush=True)
    print(table(rows_by_set))
    if args.out:
        Path(args.out).write_text(json.dumps(rows_by_set, indent=1))


if __name__ == "__main__":
    main()
