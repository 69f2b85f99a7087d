"""Leave-one-dataset-out comparison of the analytic and the learned heads (weight-free engine).

Segmentation: for each group of dev datasets, train a segmentation head on the
other groups (``python -m mm_core.train segment``) and compare AP50 / AP (Cellpose
definition, mean over images) of the analytic head and the learned head on the
left-out group. DSB2018 stage-1 test and the StarDist DSB example are one group
(the StarDist image is a DSB crop).

Counting: only one counting dataset (vgg_cells). The head trains on vgg_cells
001-100 plus the object centroids of two segmentation sets (ISBI EM, Usiigaci;
a seeded 20 % of all validate); both heads are tested on vgg_cells 101-200 (held-out
images) and on DSB2018 (a dataset the counting head never saw; count = number of
ground-truth objects). MAE.

Tracking (linking only, on ground-truth masks): the linking head trains on
Fluo-N2DH-SIM+ 01 with the last 20 % of frame pairs held out (they also select the
best epoch); both linkers are scored by the share of objects whose parent (or "new
track") is right on those pairs.

Usage::

    python benchmarks/loo_heads.py seg --out runs/loo [--epochs 20 --steps 25 --max-eval 20]
    python benchmarks/loo_heads.py count --out runs/loo
    python benchmarks/loo_heads.py track --out runs/loo

Prints a markdown table and writes ``<out>/<task>_results.json``. Automatic mode
(no exemplar boxes) throughout. All numbers are from the machine it runs on.
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
DATA = Path(os.environ.get("MM_SHARED_DATA", REPO.parent / "shared" / "data"))

#: Segmentation datasets whose object centroids also train the counting head ...
COUNT_EXTRA = ("isbi2012_em_cells", "usiigaci_phase_contrast")
#: ... and the one left out to test it on data it never saw.
TRANSFER_COUNT = ("dsb2018_stage1_test",)

SEG_GROUPS = {
    "dsb2018 (+stardist example)": ["dsb2018_stage1_test", "stardist_dsb2018_example"],
    "usiigaci_phase_contrast": ["usiigaci_phase_contrast"],
    "isbi2012_em_cells": ["isbi2012_em_cells"],
}


def _train(task: str, data: list[str], out: Path, args, extra: list[str] | None = None) -> None:
    from mm_core.train.cli import run

    argv = [task, "--data", *data, "--out", str(out), "--engine", "classic", "--epochs", str(args.epochs),
            "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--crop", str(args.crop),
            "--cache-dir", args.cache_dir, "--seed", "0", "--threads", str(args.threads)] + (extra or [])
    if args.cache_version:
        argv += ["--cache-version", args.cache_version]
    if args.resume:
        argv.append("--resume")
    if args.no_progress:
        argv.append("--no-progress")
    if args.set:
        argv += ["--set", *args.set]
    print("$ python -m mm_core.train " + " ".join(argv), flush=True)
    if args.skip_trained and (out / "model.safetensors").is_file():
        print(f"  (kept existing {out})")
        return
    run(argv)


def seg_eval(samples, head, cache, max_eval: int | None) -> dict:
    """Mean AP50 / AP over ``samples`` for the analytic head and ``head``."""
    from mm_core.train.data import load_image, load_labels
    from mm_core.heads.segmentation import instances_from_maps
    from mm_core.evaluation.metrics import average_precision

    res = {"analytic": [], "learned": []}
    secs = {"analytic": 0.0, "learned": 0.0}
    for s in samples[:max_eval]:
        img, gt = load_image(s.image), load_labels(s.target)
        maps = cache.match(img, None)
        for name in ("analytic", "learned"):
            t0 = time.perf_counter()
            pred = instances_from_maps(maps, img) if name == "analytic" else head.predict(maps, img)
            secs[name] += time.perf_counter() - t0
            res[name].append(average_precision(gt, pred)["ap"])
    n = len(res["analytic"])
    return {k: {"ap50": float(np.mean([a[0] for a in v])), "ap": float(np.mean([a.mean() for a in v])),
                "n": n, "sec_per_image": secs[k] / max(n, 1)} for k, v in res.items()}


def run_seg(args) -> dict:
    from mm_core.train.data import find_segmentation
    from mm_core.engines.classic import ClassicEngine
    from mm_core.heads.learned import load_head
    from mm_core.train.cache import EngineCache

    cache = EngineCache(ClassicEngine(), args.cache_dir, args.cache_version)
    out = {}
    if args.in_domain:  # one head on every dataset but the last N images of each; test on those
        names = [n for ns in SEG_GROUPS.values() for n in ns]
        folder = Path(args.out) / "seg_all_but_last"
        _train("segment", [str(DATA / "seg" / n) for n in names], folder, args,
               ["--subset", f":-{args.in_domain}"])
        head = load_head(folder, engine="classic")
        for n in names:
            test = sorted(find_segmentation(DATA / "seg" / n), key=lambda x: x.name)[-args.in_domain:]
            if n == "stardist_dsb2018_example":  # a single image: it is in the training set
                continue
            out[f"{n} (last {len(test)} images)"] = seg_eval(test, head, cache, None)
            print(n, json.dumps(out[f"{n} (last {len(test)} images)"]), flush=True)
        return out
    for group, names in SEG_GROUPS.items():
        if args.only and not any(o in group for o in args.only):
            continue
        train = [str(DATA / "seg" / n) for g, ns in SEG_GROUPS.items() if g != group for n in ns]
        folder = Path(args.out) / f"seg_without_{names[0]}"
        _train("segment", train, folder, args)
        head = load_head(folder, engine="classic")
        test = [s for n in names for s in find_segmentation(DATA / "seg" / n)]
        out[group] = seg_eval(test, head, cache, args.max_eval)
        print(group, json.dumps(out[group]), flush=True)
    return out


def run_count(args) -> dict:
    from mm_core.train.data import find_counting, load_image, load_points
    from mm_core.engines.classic import ClassicEngine
    from mm_core.heads.counting import density_from_maps
    from mm_core.heads.learned import load_head
    from mm_core.evaluation.metrics import count_errors
    from mm_core.train.cache import EngineCache

    src = DATA / "count" / "vgg_cells"
    folder = Path(args.out) / "count_vgg001-100_isbi_usiigaci"
    _train("count", [str(src), *(str(DATA / "seg" / n) for n in COUNT_EXTRA)], folder, args, ["--subset", "0:100"])
    head = load_head(folder, engine="classic")
    cache = EngineCache(ClassicEngine(), args.cache_dir, args.cache_version)
    true, pred = [], {"analytic": [], "learned": []}
    for s in sorted(find_counting(src), key=lambda x: x.name)[100:][: args.max_eval]:
        img = load_image(s.image)
        maps = cache.match(img, None)
        true.append(len(load_points(s.target)))
        pred["analytic"].append(float(density_from_maps(maps, img)[0].sum()))
        pred["learned"].append(float(head.predict(maps, img)[0].sum()))
    res = {k: {**count_errors(true, v), "n": len(true)} for k, v in pred.items()}
    print("vgg_cells 101-200", json.dumps(res), flush=True)
    out = {"vgg_cells (test 101-200)": res}
    # transfer: counting objects of segmentation datasets never seen in training (count = GT instances)
    from mm_core.train.data import find_segmentation, load_labels

    for name in TRANSFER_COUNT:
        true, pred = [], {"analytic": [], "learned": []}
        for s in find_segmentation(DATA / "seg" / name)[: args.max_eval]:
            img = load_image(s.image)
            maps = cache.match(img, None)
            true.append(len(np.unique(load_labels(s.target))) - 1)
            pred["analytic"].append(float(density_from_maps(maps, img)[0].sum()))
            pred["learned"].append(float(head.predict(maps, img)[0].sum()))
        out[f"{name} (unseen; count = GT objects)"] = {k: {**count_errors(true, v), "n": len(true)}
                                                      for k, v in pred.items()}
        print(name, json.dumps(out[f"{name} (unseen; count = GT objects)"]), flush=True)
    return out


def _parents_from_tracks(la: np.ndarray, lb: np.ndarray, masks: np.ndarray, table) -> np.ndarray:
    """Parent index (into ``la``'s objects 1..N) of every object of ``lb``, from a 2-frame CTC result."""
    def track_ids(lab, m):
        idx = np.flatnonzero(lab.ravel())
        ids = np.zeros(int(lab.max()) + 1, np.int64)
        ids[lab.ravel()[idx]] = m.ravel()[idx]
        return ids[1:]

    ids0, ids1 = track_ids(la, masks[0]), track_ids(lb, masks[1])
    parent_of = dict(zip(table["label"].astype(int), table["parent"].astype(int)))
    where0 = {int(t): i for i, t in enumerate(ids0)}
    out = np.full(len(ids1), len(ids0), np.int64)
    for j, tid in enumerate(ids1):
        src = int(tid) if int(tid) in where0 else parent_of.get(int(tid), 0)
        if src in where0:
            out[j] = where0[src]
    return out


def run_track(args) -> dict:
    """Linking accuracy on the last ``--val-fraction`` frame pairs of Fluo-N2DH-SIM+ 01 (GT masks)."""
    from skimage.segmentation import relabel_sequential

    from mm_core.train.data import find_tracking, load_ctc
    from mm_core.engines.classic import ClassicEngine
    from mm_core.heads.learned import load_head
    from mm_core.heads.linking import link_labels, object_features
    from mm_core.train.cache import EngineCache
    from mm_core.train.track import parent_targets

    data = DATA / "track" / "Fluo-N2DH-SIM+"
    folder = Path(args.out) / "track_sim"
    _train("track", [str(data)], folder, args, ["--val-fraction", "0.2"])
    head = load_head(folder, engine="classic")
    cache = EngineCache(ClassicEngine(), args.cache_dir, args.cache_version)
    (seq,) = find_tracking(data)
    frames, masks, tracks = load_ctc(seq.image, seq.target)
    parents = dict(zip(tracks["label"].astype(int), tracks["parent"].astype(int)))
    n_pairs = len(frames) - 1
    first_test = n_pairs - max(1, int(round(0.2 * n_pairs))) + 1
    hits = {"analytic": 0, "learned": 0}
    n = 0
    for t in range(first_test, len(frames)):
        (la, _, ia), (lb, _, ib) = (relabel_sequential(np.asarray(m).astype(np.int64)) for m in masks[t - 1:t + 1])
        gt = parent_targets(la, lb, np.asarray(ia), np.asarray(ib), parents)
        ma, mb = cache.match(frames[t - 1], None), cache.match(frames[t], None)
        feats = [object_features(la, ma.features), object_features(lb, mb.features)]
        pred_a = _parents_from_tracks(la, lb, *link_labels([la, lb], feats))
        pred_l = _parents_from_tracks(la, lb, *head.link([la, lb], [ma, mb], frames[t - 1:t + 1]))
        hits["analytic"] += int((pred_a == gt).sum())
        hits["learned"] += int((pred_l == gt).sum())
        n += len(gt)
    res = {k: {"link_accuracy": v / max(n, 1), "n_objects": n, "n_pairs": len(frames) - first_test}
           for k, v in hits.items()}
    print("Fluo-N2DH-SIM+ 01 last pairs", json.dumps(res), flush=True)
    return {"Fluo-N2DH-SIM+ 01 (last 20 % of frame pairs, GT masks)": res}


def table(task: str, res: dict) -> str:
    if task == "track":
        rows = ["| test pairs | objects | analytic link accuracy | learned link accuracy |", "|---|---|---|---|"]
        rows += [f"| {g} | {r['analytic']['n_objects']} | {r['analytic']['link_accuracy']:.3f} | "
                 f"{r['learned']['link_accuracy']:.3f} |" for g, r in res.items()]
    elif task == "seg":
        rows = ["| test set | n | analytic AP50 | learned AP50 | analytic AP | learned AP |", "|---|---|---|---|---|---|"]
        rows += [f"| {g} | {r['analytic']['n']} | {r['analytic']['ap50']:.3f} | {r['learned']['ap50']:.3f} | "
                 f"{r['analytic']['ap']:.3f} | {r['learned']['ap']:.3f} |" for g, r in res.items()]
    else:
        rows = ["| test set | n | analytic MAE | learned MAE | analytic RMSE | learned RMSE |", "|---|---|---|---|---|---|"]
        rows += [f"| {g} | {r['analytic']['n']} | {r['analytic']['mae']:.1f} | {r['learned']['mae']:.1f} | "
                 f"{r['analytic']['rmse']:.1f} | {r['learned']['rmse']:.1f} |" for g, r in res.items()]
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=("seg", "count", "track"))
    p.add_argument("--out", default="runs/loo")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=".cache/mm_heads")
    p.add_argument("--cache-version", default=None, help="pin the engine version in cache keys")
    p.add_argument("--max-eval", type=int, default=None, help="evaluate at most this many images per group")
    p.add_argument("--in-domain", type=int, default=0, metavar="N",
                   help="seg: instead of leave-one-out, train on all datasets minus their last N images, test on those")
    p.add_argument("--only", nargs="*", default=None, help="run only groups whose name contains one of these")
    p.add_argument("--set", nargs="*", default=None, help="head settings passed to --set")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--skip-trained", action="store_true", help="reuse heads already in --out")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.cache_version is None:  # pin the engine version once, so edits made while this runs don't matter
        from mm_core.engines.classic import ClassicEngine
        from mm_core.train.cache import engine_version

        args.cache_version = engine_version(ClassicEngine())
        print(f"engine version (cache key): {args.cache_version}")
    res = {"seg": run_seg, "count": run_count, "track": run_track}[args.task](args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tag = f"{args.task}_indomain" if args.in_domain else args.task
    (Path(args.out) / f"{tag}_results.json").write_text(json.dumps(res, indent=2))
    print(table(args.task, res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
