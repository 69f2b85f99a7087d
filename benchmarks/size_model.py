"""How far off is the object size? The engine's estimate vs the learned size model, per source.

Error = |log(estimate / true median equivalent diameter)|; the table gives its median per
source and the share of images within 0.67-1.5x of the truth. Three sets of images:

- ``val``: the size model's validation slice of ``train/`` (a seeded 10 % of each source,
  as ``python -m mm_core.train size`` splits it): where the model was picked;
- ``loo``: for each leave-one-source-out model (``<loo-dir>/without_<source>``), every
  image of the source it never saw;
- ``dev``: the dev segmentation sets (measured only, never used to pick anything).

    python benchmarks/size_model.py --model size-classic --sets val dev [--loo-dir runs/loo_size]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
TRAIN = REPO.parent / "shared" / "data" / "train" / "seg"
DEV = REPO.parent / "shared" / "data" / "seg"


def errors(model, samples) -> dict:
    """Per dataset: log errors of the engine's scale and of ``model`` (engine: automatic mode)."""
    from mm_core.train.data import load_image, load_labels
    from mm_core.engines.classic import scale as sc
    from mm_core.engines.classic.engine import gray_of
    from mm_core.heads.objects import object_diameter
    from mm_core.transforms import normalize

    out = {}
    for s in samples:
        img = normalize(load_image(s.image))
        d = object_diameter(load_labels(s.target))
        if d <= 0:
            continue
        gray = gray_of(img)
        e = sc.estimate_scale(gray, sc.estimate_polarity(gray))  # the engine's, automatic mode
        m = model.estimate(gray)
        out.setdefault(s.dataset, []).append((float(np.log(e / d)), float(np.log(m / d))))
    return out


def summarise(errs: dict) -> dict:
    rows = {}
    for ds, v in sorted(errs.items()):
        a = np.abs(np.asarray(v))
        rows[ds] = {"images": len(a), "engine median |log err|": float(np.median(a[:, 0])),
                    "model median |log err|": float(np.median(a[:, 1])),
                    "engine within 0.67-1.5x": float((a[:, 0] < np.log(1.5)).mean()),
                    "model within 0.67-1.5x": float((a[:, 1] < np.log(1.5)).mean())}
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="size-classic")
    p.add_argument("--sets", nargs="+", default=["val", "dev"], choices=("val", "loo", "dev"))
    p.add_argument("--loo-dir", default="runs/loo_size")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    from mm_core.heads.learned import load_head
    from mm_core.train.cli import _find
    from mm_core.train.generalist import split_by_dataset

    model, res = load_head(a.model), {}
    if "val" in a.sets:
        res["val"] = summarise(errors(model, split_by_dataset(_find("size", [str(TRAIN)], []), a.val_fraction,
                                                              a.seed)[1]))
    if "loo" in a.sets:
        res["loo"] = {}
        for folder in sorted(f for f in Path(a.loo_dir).glob("without_*") if f.is_dir()):
            src = folder.name.removeprefix("without_")
            left = [s for s in _find("size", [str(TRAIN)], []) if s.dataset == src]
            res["loo"].update({f"{k} (model without it)": v for k, v in summarise(errors(load_head(folder), left)).items()})
    if "dev" in a.sets:
        res["dev"] = summarise(errors(model, [s for d in sorted(DEV.iterdir()) for s in _find("size", [str(d)], [])]))
    for part, rows in res.items():
        print(f"\n{part}: | source | images | engine: median |log err|, within 0.67-1.5x | size model: same |")
        for ds, r in rows.items():
            print(f"| {ds} | {r['images']} | {r['engine median |log err|']:.2f}, {r['engine within 0.67-1.5x']:.0%} | "
                  f"{r['model median |log err|']:.2f}, {r['model within 0.67-1.5x']:.0%} |")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
