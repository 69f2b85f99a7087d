"""Analytic vs generalist head on the dev data: the tables in docs/quality.md and docs/performance.md.

The generalist head is trained on ``../shared/data/train/`` only (see
``python -m mm_core.train generalist``); the dev sets (``seg/``, ``count/``) are only
measured here. Engine maps are computed once per image and mode and both heads read
the same maps. Exemplars are those of ``benchmarks/evaluate.py`` (fixed seed).

Subcommands::

    python benchmarks/generalist_eval.py maps                             # engine maps only (cached)
    python benchmarks/generalist_eval.py dev   --head PATH [--out runs/eval/dev.json] [--limit N]
    python benchmarks/generalist_eval.py boxes --head PATH [--out ...]   # exemplar robustness, DSB2018 test
    python benchmarks/generalist_eval.py loo   --head-dir runs/loo [--out ...]
    python benchmarks/generalist_eval.py speed --head PATH                # seconds per 512^2 image
    python benchmarks/generalist_eval.py range --head PATH [--out ...]   # automatic-mode object counts
    python benchmarks/generalist_eval.py tables --out runs/eval           # the docs tables from the JSON files

``dev``: AP50 / AP per segmentation set, automatic and exemplar mode; VGG MAE / RMSE
(count = sum of the density; the generalist's centres carry shares of that sum).
``boxes``: AP50 on dsb2018_stage1_test with the precise exemplar box, the same box
shifted right by 60 % of its width, enlarged 2x per side (about its centre) and
stretched 2x wide and 0.5x tall; automatic mode for reference.
``loo``: heads trained without one source (``<head-dir>/without_<source>``), tested on
the dev set of that kind (automatic and exemplar AP50 / AP).
``range``: automatic mode, objects found vs true objects on the H&E-type (RGB) images of
dsb2018_stage1_test and on usiigaci_phase_contrast (is a new user's count in the right range?).
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
sys.path.insert(0, str(REPO / "benchmarks"))

from evaluate import DATA, count_exemplar, count_items, seg_exemplar, seg_items

SEG_SETS = ("dsb2018_stage1_test", "stardist_dsb2018_example", "usiigaci_phase_contrast", "isbi2012_em_cells")
#: leave-one-source-out: training source left out -> dev set of that kind
LOO = {"dsb2018_stage1_train": "dsb2018_stage1_test", "usiigaci_phase_contrast_train": "usiigaci_phase_contrast",
       "drosophila_vnc_em_cells": "isbi2012_em_cells"}


def _heads(path):
    from mm_core.heads.learned import load_head

    return load_head(path, engine="classic")


def _cache(folder, version=None):
    from mm_core.engines.classic import ClassicEngine
    from mm_core.train.cache import EngineCache

    return EngineCache(ClassicEngine(), folder, version, features=False)


def _img(raw):
    from mm_core.transforms import normalize

    return normalize(raw)


def seg_scores(name, head, cache, limit, boxes_fn=None, modes=("automatic", "exemplar")) -> dict:
    """Mean AP50 / AP of both heads on dev set ``name`` in ``modes``."""
    from mm_core.heads.segmentation import instances_from_maps
    from mm_core.evaluation.metrics import average_precision
    from mm_core.transforms import prepare_boxes

    rng = np.random.default_rng(0)
    res = {(m, h): [] for m in modes for h in ("analytic", "learned")}
    secs = {k: 0.0 for k in res}
    for _stem, raw, gt in seg_items(name, limit):
        img = _img(raw)
        box = seg_exemplar(gt, rng)
        for m in modes:
            bx = None if m == "automatic" else prepare_boxes(box if boxes_fn is None else boxes_fn(box), img.shape[:2])
            maps = cache.match(img, bx)
            if head is None:  # engine maps only (filling the cache)
                continue
            for h in ("analytic", "learned"):
                t = time.perf_counter()
                pred = instances_from_maps(maps, img) if h == "analytic" else head.predict(maps, img)
                secs[(m, h)] += time.perf_counter() - t
                res[(m, h)].append(average_precision(gt, pred)["ap"])
    return {f"{m}/{h}": {"ap50": float(np.mean([a[0] for a in v])), "ap": float(np.mean([a.mean() for a in v])),
                         "n": len(v), "head_sec": secs[(m, h)] / max(len(v), 1)} for (m, h), v in res.items()}


def count_scores(head, cache, limit) -> dict:
    """VGG cells MAE / RMSE of both heads, automatic and exemplar."""
    from mm_core.heads.counting import density_from_maps
    from mm_core.pipelines import count_from_density
    from mm_core.evaluation.metrics import count_errors
    from mm_core.transforms import prepare_boxes

    counter = head.counter()
    rng = np.random.default_rng(0)
    true, pred = [], {(m, h): [] for m in ("automatic", "exemplar") for h in ("analytic", "learned")}
    consistent = []
    for _stem, raw, pts in count_items("vgg_cells", limit):
        img = _img(raw)
        box = count_exemplar(pts, raw.shape, rng)
        true.append(len(pts))
        for m in ("automatic", "exemplar"):
            maps = cache.match(img, None if m == "automatic" else prepare_boxes(box, img.shape[:2]))
            pred[(m, "analytic")].append(float(density_from_maps(maps, img)[0].sum()))
            dens, centres = counter.predict(maps, img)
            pred[(m, "learned")].append(float(dens.sum()))
            if len(centres):
                n, pts = count_from_density(dens, centres, maps.scale)
                consistent.append(abs(float(pts['n'].sum()) - n))
    out = {f"{m}/{h}": {**count_errors(true, v), "n": len(true)} for (m, h), v in pred.items()}
    out["max |sum of centre n - count|"] = float(max(consistent, default=0.0))
    return out


def cmd_dev(a) -> dict:
    head, cache = _heads(a.head), _cache(a.cache_dir, a.cache_version)
    out = {}
    for name in SEG_SETS:
        if a.sets and name not in a.sets:
            continue
        t = time.perf_counter()
        out[name] = seg_scores(name, head, cache, a.limit)
        print(name, f"{time.perf_counter() - t:.0f} s", json.dumps(out[name]), flush=True)
    if a.sets and "vgg_cells" not in a.sets:
        return out
    t = time.perf_counter()
    out["vgg_cells"] = count_scores(head, cache, a.limit)
    print("vgg_cells", f"{time.perf_counter() - t:.0f} s", json.dumps(out["vgg_cells"]), flush=True)
    return out


BOX_ERRORS = {
    "precise": lambda b: b,
    "shifted 60% of width": lambda b: b + np.array([[0.6, 0, 0.6, 0]]) * (b[:, 2:3] - b[:, 0:1]),
    "enlarged 2x per side": lambda b: _resize(b, 2.0, 2.0),
    "stretched 2x wide, 0.5x tall": lambda b: _resize(b, 2.0, 0.5),
}


def _resize(b: np.ndarray, sx: float, sy: float) -> np.ndarray:
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    w, h = (b[:, 2] - b[:, 0]) * sx, (b[:, 3] - b[:, 1]) * sy
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def cmd_boxes(a) -> dict:
    head, cache = _heads(a.head), _cache(a.cache_dir, a.cache_version)
    out = {"automatic": seg_scores("dsb2018_stage1_test", head, cache, a.limit, modes=("automatic",))}
    for kind, fn in BOX_ERRORS.items():
        out[kind] = seg_scores("dsb2018_stage1_test", head, cache, a.limit, boxes_fn=fn, modes=("exemplar",))
        print(kind, json.dumps(out[kind]), flush=True)
    return out


def cmd_maps(a) -> dict:
    """Compute (cache) the engine maps every other subcommand reads; no head runs."""
    cache = _cache(a.cache_dir, a.cache_version)
    for name in SEG_SETS:
        seg_scores(name, None, cache, a.limit)
    for fn in BOX_ERRORS.values():
        seg_scores("dsb2018_stage1_test", None, cache, a.limit, boxes_fn=fn, modes=("exemplar",))
    from mm_core.transforms import prepare_boxes

    rng = np.random.default_rng(0)
    for _stem, raw, pts in count_items("vgg_cells", a.limit):
        img = _img(raw)
        box = count_exemplar(pts, raw.shape, rng)
        cache.match(img, None)
        cache.match(img, prepare_boxes(box, img.shape[:2]))
    print(f"engine maps: {cache.misses} computed, {cache.hits} cached")
    return {}


def cmd_loo(a) -> dict:
    cache, out = _cache(a.cache_dir, a.cache_version), {}
    for src, dev in LOO.items():
        folder = Path(a.head_dir) / f"without_{src}"
        if not (folder / "config.json").is_file():
            print(f"skip {src}: no head at {folder}", flush=True)
            continue
        out[f"without {src} -> {dev}"] = seg_scores(dev, _heads(folder), cache, a.limit)
        print(src, json.dumps(out[f"without {src} -> {dev}"]), flush=True)
    return out


def cmd_speed(a) -> dict:
    """Median seconds of segment() and of the head alone on 512x512 dev images."""
    import mm_core
    from mm_core.engines.classic import ClassicEngine

    head, eng = _heads(a.head), ClassicEngine()
    out = {}
    for name in ("stardist_dsb2018_example", "isbi2012_em_cells", "usiigaci_phase_contrast"):
        _stem, raw, _gt = next(seg_items(name, 1))
        img = _img(raw)[:512, :512]
        whole, alone, analytic = [], [], []
        for _ in range(a.repeat):
            t = time.perf_counter()
            mm_core.segment(img, engine=eng, head=a.head)
            whole.append(time.perf_counter() - t)
            maps = eng.match(img)
            t = time.perf_counter()
            head.predict(maps, img)
            alone.append(time.perf_counter() - t)
            t = time.perf_counter()
            mm_core.segment(img, engine=eng, head="analytic")
            analytic.append(time.perf_counter() - t)
        out[name] = {"segment_learned_s": float(np.median(whole)), "head_only_s": float(np.median(alone)),
                     "segment_analytic_s": float(np.median(analytic))}
        print(name, json.dumps(out[name]), flush=True)
    return out


def cmd_range(a) -> dict:
    """Automatic mode: objects found by each head vs the true number, per image and in sum."""
    from mm_core.heads.segmentation import instances_from_maps

    head, cache = _heads(a.head), _cache(a.cache_dir, a.cache_version)
    out = {}
    for label, name, rgb_only in (("dsb2018_stage1_test, H&E-type (RGB) images", "dsb2018_stage1_test", True),
                                  ("usiigaci_phase_contrast", "usiigaci_phase_contrast", False)):
        rows = []
        for stem, raw, gt in seg_items(name, a.limit):
            if rgb_only and raw.ndim != 3:
                continue
            img = _img(raw)
            maps = cache.match(img, None)
            rows.append({"image": stem, "true": int(len(np.unique(gt[gt > 0]))),
                         "analytic": int(instances_from_maps(maps, img).max()), "learned": int(head.predict(maps, img).max())})
        r = {k: int(sum(x[k] for x in rows)) for k in ("true", "analytic", "learned")}
        for h in ("analytic", "learned"):
            ratio = np.array([x[h] / max(x["true"], 1) for x in rows])
            r[f"{h} median ratio"] = float(np.median(ratio))
            r[f"{h} images within 0.5-2x"] = int(((ratio >= 0.5) & (ratio <= 2.0)).sum())
        out[label] = {**r, "images": len(rows), "per_image": rows}
        print(label, json.dumps({k: v for k, v in out[label].items() if k != "per_image"}), flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("cmd", choices=("maps", "dev", "boxes", "loo", "speed", "range", "tables"))
    p.add_argument("--head", default="generalist-classic")
    p.add_argument("--head-dir", default="runs/loo")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--sets", nargs="*", default=None, help="dev: only these data sets (JSON files can be merged)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cache-dir", default=".cache/dev_maps", help="engine maps of the dev images (measurement only)")
    p.add_argument("--cache-version", default=None,
                   help="engine version of the cached maps (default: a hash of the engine's sources)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    if not DATA.is_dir():
        print(f"no dev data at {DATA}", file=sys.stderr)
        return 1
    if a.cmd == "tables":  # markdown from the JSON files in --out (a folder)
        print(tables(a.out))
        return 0
    import torch

    torch.set_num_threads(a.threads)
    res = {"maps": cmd_maps, "dev": cmd_dev, "boxes": cmd_boxes, "loo": cmd_loo, "speed": cmd_speed,
           "range": cmd_range}[a.cmd](a)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"machine": f"{os.uname().nodename}, {os.cpu_count()} CPUs, torch threads "
                                                f"{a.threads}", "results": res}, indent=1))
    return 0



def rule(dev: dict) -> dict:
    """Issue 11's default rule, per mode and task: ``{(task, mode): passes}``.

    Segmentation passes in a mode when the learned head beats the analytic one in AP50
    *and* AP on at least 3 of the 4 dev segmentation sets and loses nowhere by more than
    0.05 AP50; counting passes when segmentation passes and its VGG MAE is lower too.
    """
    out = {}
    for m in ("automatic", "exemplar"):
        wins = [n for n in SEG_SETS if dev[n][f"{m}/learned"]["ap50"] > dev[n][f"{m}/analytic"]["ap50"]
                and dev[n][f"{m}/learned"]["ap"] > dev[n][f"{m}/analytic"]["ap"]]
        worst = min(dev[n][f"{m}/learned"]["ap50"] - dev[n][f"{m}/analytic"]["ap50"] for n in SEG_SETS)
        seg_ok = len(wins) >= 3 and worst >= -0.05
        v = dev["vgg_cells"]
        mae_ok = v[f"{m}/learned"]["mae"] < v[f"{m}/analytic"]["mae"]
        out[("segment", m)] = {"passes": seg_ok, "wins": wins, "worst_ap50_diff": worst}
        out[("count", m)] = {"passes": seg_ok and mae_ok, "mae_better": mae_ok,
                             "mae": (v[f"{m}/learned"]["mae"], v[f"{m}/analytic"]["mae"])}
    return out


def verdict(dev: dict) -> list[str]:
    """The rule's verdict in words, one line per mode (see :func:`rule`)."""
    r, out = rule(dev), []
    for m in ("automatic", "exemplar"):
        s, c = r[("segment", m)], r[("count", m)]
        out.append(f"- {m} mode: segmentation {'PASSES' if s['passes'] else 'fails'} (beats analytic in AP50 and AP "
                   f"on {len(s['wins'])} of 4 sets: {', '.join(s['wins']) or 'none'}; worst AP50 difference "
                   f"{s['worst_ap50_diff']:+.3f}); counting {'PASSES' if c['passes'] else 'fails'} (VGG MAE "
                   f"{c['mae'][0]:.1f} vs {c['mae'][1]:.1f}{'' if s['passes'] else '; needs the segmentation part too'})")
    return out


def tables(folder: Path) -> str:
    """Markdown tables from the JSON files ``dev/boxes/loo/speed.json`` in ``folder``."""
    def load(name):
        res = {}
        for p in sorted(folder.glob(f"{name}*.json")):  # dev.json, dev_part2.json, ...
            res.update(json.loads(p.read_text())["results"])
        return res or None

    lines = []
    dev = load("dev")
    if dev:
        lines += ["| data set | mode | analytic AP50 | learned AP50 | analytic AP | learned AP |", "|---|---|---|---|---|---|"]
        for name in [n for n in SEG_SETS if n in dev]:
            for m in ("automatic", "exemplar"):
                a, b = dev[name][f"{m}/analytic"], dev[name][f"{m}/learned"]
                lines.append(f"| {name} (n={a['n']}) | {m} | {a['ap50']:.3f} | {b['ap50']:.3f} | {a['ap']:.3f} | {b['ap']:.3f} |")
    if dev and "vgg_cells" in dev:
        v = dev["vgg_cells"]
        lines += ["", "| data set | mode | analytic MAE | learned MAE | analytic RMSE | learned RMSE |", "|---|---|---|---|---|---|"]
        for m in ("automatic", "exemplar"):
            a, b = v[f"{m}/analytic"], v[f"{m}/learned"]
            lines.append(f"| vgg_cells (n={a['n']}) | {m} | {a['mae']:.1f} | {b['mae']:.1f} | {a['rmse']:.1f} | {b['rmse']:.1f} |")
        lines.append(f"\nLargest gap between the learned count and the sum of its centres' shares: "
                     f"{v['max |sum of centre n - count|']:.2g}.")
    if dev and all(n in dev for n in (*SEG_SETS, "vgg_cells")):
        lines += ["", *verdict(dev)]
    boxes = load("boxes")
    if boxes:
        a = boxes["automatic"]
        lines += ["", f"| dsb2018_stage1_test (first {a['automatic/analytic']['n']} images) | analytic AP50 | "
                  "learned AP50 |", "|---|---|---|"]
        lines.append(f"| automatic mode (no box) | {a['automatic/analytic']['ap50']:.3f} | {a['automatic/learned']['ap50']:.3f} |")
        for kind in BOX_ERRORS:
            r = boxes[kind]
            lines.append(f"| box {kind} | {r['exemplar/analytic']['ap50']:.3f} | {r['exemplar/learned']['ap50']:.3f} |")
    loo = load("loo")
    if loo:
        lines += ["", "| left out of training -> tested on | mode | analytic AP50 | learned AP50 | analytic AP | learned AP |",
                  "|---|---|---|---|---|---|"]
        for key, r in loo.items():
            for m in ("automatic", "exemplar"):
                a, b = r[f"{m}/analytic"], r[f"{m}/learned"]
                lines.append(f"| {key} | {m} | {a['ap50']:.3f} | {b['ap50']:.3f} | {a['ap']:.3f} | {b['ap']:.3f} |")
    rng = load("range")
    if rng:
        lines += ["", "| automatic mode | images | true objects | analytic: found | learned: found | "
                  "analytic median ratio | learned median ratio | images within 0.5-2x (analytic / learned) |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, r in rng.items():
            lines.append(f"| {key} | {r['images']} | {r['true']} | {r['analytic']} | {r['learned']} | "
                         f"{r['analytic median ratio']:.2f} | {r['learned median ratio']:.2f} | "
                         f"{r['analytic images within 0.5-2x']} / {r['learned images within 0.5-2x']} |")
    speed = load("speed")
    if speed:
        lines += ["", "| 512 x 512 image | segment(), learned head | the learned head alone | segment(), analytic head |",
                  "|---|---|---|---|"]
        for name, r in speed.items():
            lines.append(f"| {name} | {r['segment_learned_s']:.2f} s | {r['head_only_s']:.2f} s | "
                         f"{r['segment_analytic_s']:.2f} s |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
