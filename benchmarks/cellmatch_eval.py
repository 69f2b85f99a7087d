"""The CellMatch model on the dev data: the issue-21 tables in docs/quality.md.

The model is trained on ``../shared/data/train/`` (+ synthetic images) only; the dev sets are
only measured here. Exemplar boxes are those of ``benchmarks/evaluate.py`` (fixed seed).

Subcommands::

    python benchmarks/cellmatch_eval.py dev   --head PATH [--decoders flows distance] [--limit N] [--out F.json]
    python benchmarks/cellmatch_eval.py baseline [--out F.json]         # the defaults before, same measures
    python benchmarks/cellmatch_eval.py boxes --head PATH [--limit N] [--out F.json]
    python benchmarks/cellmatch_eval.py speed --head PATH
    python benchmarks/cellmatch_eval.py scale --head PATH [--out F.json]  # pick the second pass (train/ val slice)
    python benchmarks/cellmatch_eval.py val --head PATH [--out F.json]    # pick the recipe (train/ val slice)
    python benchmarks/cellmatch_eval.py tables --out runs/eval            # the docs tables from the JSON files

The default rule of issue 21 and the tables live in ``benchmarks/cellmatch_report.py``.

    # leave-one-source-out: a model trained without one train/ source, on the dev sets of its kind
    python -m mm_core.train cellmatch ... --exclude dsb2018_stage1_train --out runs/loo_dsb2018_stage1_train
    python benchmarks/cellmatch_eval.py dev --head runs/loo_dsb2018_stage1_train \
        --sets dsb2018_stage1_test stardist_dsb2018_example --out runs/eval/loo_dsb2018_stage1_train.json

``dev``: per segmentation dev set, AP50 / AP in automatic and exemplar mode, and the count
(objects found) against the set's ``points/`` (MAE, mean relative error); VGG cells MAE.
``boxes``: AP50 on dsb2018_stage1_test with the precise box and with the imprecise boxes of
issue 21 (shifted 60 % of its width, 2x per side, 2x wide and 0.5x tall), and the share of the
precise box's AP50 each keeps. ``speed``: the whole ``mm_core.segment`` call per 512² and
1024² image (2 torch threads) and the peak RSS of a 2048² call, in a fresh process each.
``scale``: automatic-mode AP50 per source on the training's validation slice of ``train/`` (the
same seeded split; never the dev sets) for each ``second_pass`` setting; the rule, fixed before
the run: the highest mean AP50 over the sources (equal weight) wins, and within 0.005 of it the
one with fewer passes ("none", then "zoom_out", then "both").
``val``: on the same validation slice, AP50 in automatic and exemplar mode (one ground-truth
object's box per image, seeded as ``dev``) and the relative count error, per source; ``score`` is
the mean over the sources (equal weight) of the two modes' AP50. The rule that picks between two
training recipes, fixed before the run: the higher ``score`` ships; within 0.01 of each other, the
lower best validation loss of the training (``log.csv``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

# the rule and the tables, re-exported: ``cellmatch_eval.rule`` etc. are what the tests and docs name
from cellmatch_report import (  # noqa: F401
    ABLATIONS,
    AP50_SLACK,
    BOX_SLACK,
    LOO_FOLDS,
    MAE_SLACK,
    SEG_SETS,
    pick_defaults,
    rule,
    tables,
)
from evaluate import DATA, count_exemplar, count_items, seg_exemplar, seg_items
from generalist_eval import BOX_ERRORS


def _head(path, decoder=None):
    from mm_core.heads.learned import load_head

    head = load_head(path)
    if decoder:
        head.config["decoder"] = decoder
    return head


def _boxes(box, shape):
    from mm_core.transforms import prepare_boxes

    return prepare_boxes(box, shape)


def _points(name: str, stem: str) -> int | None:
    f = DATA / "seg" / name / "points" / f"{stem}.csv"
    return len(pd.read_csv(f)) if f.is_file() else None


def _score(items, run, modes=("automatic", "exemplar"), box_error=None) -> dict:
    """AP50 / AP and count errors per group of ``items``, in each mode.

    ``items`` yields ``(group, image, labels, true_count)``; ``run(image, boxes)`` returns
    ``(labels, count)``. One ground-truth object's box per image (seeded; drawn in item order).
    """
    from mm_core.evaluation.metrics import average_precision

    rng = np.random.default_rng(0)
    res: dict = {}
    for group, img, gt, true in items:
        box = seg_exemplar(gt, rng)
        for m in modes:
            bx = None if m == "automatic" else _boxes(box if box_error is None else box_error(box), img.shape[:2])
            t = time.perf_counter()
            lab, count = run(img, bx)
            r = res.setdefault(group, {}).setdefault(m, {"ap": [], "count": [], "true": [], "sec": 0.0})
            r["sec"] += time.perf_counter() - t
            r["ap"].append(average_precision(gt, lab)["ap"])
            r["count"].append(count)
            r["true"].append(true)
    return {g: {m: _stats(r) for m, r in per.items()} for g, per in res.items()}


def _stats(r: dict) -> dict:
    c, t = np.array(r["count"], float), np.array(r["true"], float)
    return {"ap50": float(np.mean([a[0] for a in r["ap"]])), "ap": float(np.mean([a.mean() for a in r["ap"]])),
            "count_mae": float(np.mean(np.abs(c - t))), "count_rel": float(np.mean(np.abs(c - t) / t)),
            "n": len(r["ap"]), "sec_per_image": r["sec"] / max(len(r["ap"]), 1)}


def _dev_items(name: str, limit):
    """``(name, image, labels, true count)`` of a segmentation dev set; the count from its ``points/``."""
    from mm_core.transforms import normalize

    for stem, raw, gt in seg_items(name, limit):
        n = _points(name, stem)
        yield name, normalize(np.asarray(raw, np.float32)), gt, len(np.unique(gt[gt > 0])) if n is None else n


def _head_run(head):
    def run(img, boxes):
        lab = head.segment_image(img, boxes)["labels"]
        return lab, len(np.unique(lab[lab > 0]))
    return run


def seg_scores(name: str, head, limit, box_error=None, modes=("automatic", "exemplar")) -> dict:
    """AP50 / AP and count errors of ``head`` on dev set ``name``."""
    return _score(_dev_items(name, limit), _head_run(head), modes, box_error)[name]


def count_scores(count, limit) -> dict:
    """VGG cells MAE in both modes; ``count(image, boxes)`` returns the count."""
    from mm_core.transforms import normalize

    rng = np.random.default_rng(0)
    true, pred = [], {"automatic": [], "exemplar": []}
    for _stem, raw, pts in count_items("vgg_cells", limit):
        img = normalize(np.asarray(raw, np.float32))
        box = count_exemplar(pts, raw.shape, rng)
        true.append(len(pts))
        pred["automatic"].append(count(img, None))
        pred["exemplar"].append(count(img, _boxes(box, img.shape[:2])))
    t = np.array(true, float)
    return {m: {"mae": float(np.mean(np.abs(np.array(p, float) - t))),
                "count_rel": float(np.mean(np.abs(np.array(p, float) - t) / t)), "n": len(t)}
            for m, p in pred.items()}


def vgg_scores(head, limit) -> dict:
    """VGG cells MAE in both modes (count = objects found)."""
    return count_scores(lambda img, boxes: head.segment_image(img, boxes)["labels"].max(), limit)


def cmd_dev(a) -> dict:
    out = {}
    for dec in a.decoders:
        head = _head(a.head, dec)
        for name in SEG_SETS:
            if a.sets and name not in a.sets:
                continue
            t = time.perf_counter()
            out[f"{dec}/{name}"] = seg_scores(name, head, a.limit)
            print(dec, name, f"{time.perf_counter() - t:.0f} s", json.dumps(out[f"{dec}/{name}"]), flush=True)
        if not a.sets or "vgg_cells" in a.sets:
            out[f"{dec}/vgg_cells"] = vgg_scores(head, a.limit)
            print(dec, "vgg_cells", json.dumps(out[f"{dec}/vgg_cells"]), flush=True)
    return out


def cmd_baseline(a) -> dict:
    """The defaults before CellMatch (issue 21's baseline): the generalist head segments in automatic
    mode, the analytic heads do the rest. AP50 / AP and the count on the points, both modes."""
    import mm_core

    m = mm_core.Matcher("classic", head="analytic")
    auto = mm_core.Matcher("classic", head={"segment": "generalist-classic", "count": "analytic"})

    def run(img, boxes):
        seg = m if boxes is not None else auto
        return seg.segment(img, boxes=boxes).labels, m.count(img, boxes=boxes).count

    out = {}
    for name in SEG_SETS:
        if not a.sets or name in a.sets:
            out[name] = _score(_dev_items(name, a.limit), run)[name]
            print(name, json.dumps(out[name]), flush=True)
    if not a.sets or "vgg_cells" in a.sets:
        out["vgg_cells"] = count_scores(lambda img, boxes: m.count(img, boxes=boxes).count, a.limit)
        print("vgg_cells", json.dumps(out["vgg_cells"]), flush=True)
    return out


SECOND_PASS = ("none", "zoom_out", "both")  #: fewest passes first (the tie-break order)


def val_items(limit: int | None = None):
    """``(source, image, labels)`` of the training's validation slice of ``train/`` (the same seeded
    10 % of each source as ``python -m mm_core.train cellmatch --val-fraction 0.1 --seed 0``)."""
    from mm_core.train.cli import _find
    from mm_core.train.data import load_image, load_labels
    from mm_core.train.generalist import split_by_dataset
    from mm_core.transforms import normalize

    _train, val = split_by_dataset(_find("cellmatch", [str(DATA / "train" / "seg")], []), 0.1, 0)
    for s in val[:limit]:
        labels = load_labels(s.target).astype(np.int32)
        if labels.max() > 0:
            yield s.dataset, normalize(np.asarray(load_image(s.image), np.float32)), labels


def cmd_scale(a) -> dict:
    """Automatic-mode AP50 per ``train/`` source on the validation slice, per ``second_pass`` setting."""
    from mm_core.evaluation.metrics import average_precision

    head = _head(a.head)
    per: dict = {k: {} for k in SECOND_PASS}
    for source, img, labels in val_items(a.limit):
        for k in SECOND_PASS:
            head.config["second_pass"] = k
            ap50 = float(average_precision(labels, head.segment_image(img)["labels"])["ap"][0])
            per[k].setdefault(source, []).append(ap50)
    out = {k: {d: float(np.mean(v)) for d, v in srcs.items()} for k, srcs in per.items()}
    for k in SECOND_PASS:
        out[k]["mean over sources"] = float(np.mean(list(out[k].values())))
        print(k, json.dumps(out[k]), flush=True)
    best = max(out[k]["mean over sources"] for k in SECOND_PASS)
    out["picked"] = next(k for k in SECOND_PASS if out[k]["mean over sources"] >= best - 0.005)
    out["images"] = {d: len(v) for d, v in per["none"].items()}
    print("picked", out["picked"], out["images"], flush=True)
    return out


def cmd_val(a) -> dict:
    """AP50 in both modes and the relative count error, per ``train/`` source, on the validation slice."""
    items = ((src, img, lab, len(np.unique(lab[lab > 0]))) for src, img, lab in val_items(a.limit))
    out = _score(items, _head_run(_head(a.head)))
    srcs = list(out)
    out["mean over sources"] = {m: {k: float(np.mean([out[s][m][k] for s in srcs])) for k in ("ap50", "count_rel")}
                                for m in ("automatic", "exemplar")}
    out["score"] = float(np.mean([out["mean over sources"][m]["ap50"] for m in ("automatic", "exemplar")]))
    for k, v in out.items():
        print(k, json.dumps(v), flush=True)
    return out


def cmd_boxes(a) -> dict:
    head = _head(a.head)
    out = {"automatic": seg_scores("dsb2018_stage1_test", head, a.limit, modes=("automatic",))["automatic"]}
    for k, fn in BOX_ERRORS.items():
        out[k] = seg_scores("dsb2018_stage1_test", head, a.limit, box_error=fn, modes=("exemplar",))["exemplar"]
        print(k, json.dumps(out[k]), flush=True)
    for k in BOX_ERRORS:
        out[k]["kept_of_precise"] = out[k]["ap50"] / max(out["precise"]["ap50"], 1e-9)
    return out


_SPEED = """
import resource, sys, time, numpy as np, torch
torch.set_num_threads(2)
import mm_core
size, head = int(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
yy, xx = np.mgrid[:size, :size]
img = np.zeros((size, size), np.float32)
for y, x in rng.uniform(0, size, (int(size * size / 900), 2)):
    img[(yy - y) ** 2 + (xx - x) ** 2 <= 64] = 1.0
img += rng.normal(0, 0.05, img.shape).astype(np.float32)
m = mm_core.Matcher("classic", head=head)
m.segment(img[:64, :64])
t = time.perf_counter(); r = m.segment(img); dt = time.perf_counter() - t
print(dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, int(r.labels.max()))
"""


def cmd_speed(a) -> dict:
    out = {}
    for size in (512, 1024, 2048):
        got = subprocess.run([sys.executable, "-c", _SPEED, str(size), str(a.head)], capture_output=True, text=True,
                             cwd=REPO, check=True).stdout.split()
        out[f"{size}"] = {"seconds": float(got[0]), "peak_rss_mb": float(got[1]), "objects": int(got[2])}
        print(size, out[f"{size}"], flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=("dev", "baseline", "boxes", "speed", "scale", "val", "tables"))
    p.add_argument("--head", default="cellmatch")
    p.add_argument("--decoders", nargs="*", default=["flows"])
    p.add_argument("--sets", nargs="*", default=None)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    if a.cmd == "tables":
        print(tables(a.out or Path("runs/eval")))
        return 0
    res = {"dev": cmd_dev, "baseline": cmd_baseline, "boxes": cmd_boxes, "speed": cmd_speed, "scale": cmd_scale,
           "val": cmd_val}[a.cmd](a)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
