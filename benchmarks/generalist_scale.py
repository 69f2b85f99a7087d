"""Which object-size search the generalist head uses: compared on the VALIDATION slice of train/.

The slice is the one ``python -m mm_core.train generalist`` validates on (a seeded
``--val-fraction`` of each train/ dataset, same ``--seed``), matched by the engine in
automatic mode and with the same imprecise ground-truth box as in training. The dev
sets are not read here: the strategy is picked on these numbers, then measured once
on dev by ``benchmarks/generalist_eval.py``.

Strategies (``GeneralistHead`` config ``scale_search`` / ``scale_passes``):

- ``engine``: the engine's scale, no probe;
- ``refine-N``: probe at the engine's scale, then at the size read, up to N probes;
- ``trials-N``: N trial scales over 1/3..3x the engine's, keep the working-size crossing;
- ``size``, ``size+refine-N``: the same, starting at the object-size model's estimate
  (``size_model``, automatic mode; exemplar mode starts at the boxes' size either way);
- ``true size`` (reference only, not a strategy): the ground truth's median diameter.

The pick (:func:`pick`, fixed before the numbers were seen): the highest score, the
mean over both modes of (AP50 + AP) / 2, each averaged over the train/ sources with
equal weight; any strategy within 0.005 of the best that is faster wins.

Probes are shared between strategies (the same trial scale is probed once per image),
and the final pass is run once per distinct scale, rounded to 1 % (log scale).

    python benchmarks/generalist_scale.py --head runs/generalist [--out runs/eval/scale.json] [--limit N]
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

#: name -> (scale_search, scale_passes, where the search starts: the engine's scale or the size model's)
STRATEGIES = {"engine": ("none", 1, "engine"), "refine-1": ("refine", 1, "engine"),
              "refine-2": ("refine", 2, "engine"), "refine-3": ("refine", 3, "engine"),
              "trials-3": ("trials", 3, "engine"), "trials-7": ("trials", 7, "engine"),
              "size": ("none", 1, "size"), "size+refine-1": ("refine", 1, "size"),
              "size+refine-2": ("refine", 2, "size")}


def validation_items(data: list[str], fraction: float, seed: int, cache_version: str | None, limit: int | None):
    """The training's validation slice: ``(GItem, maps)`` per image and mode."""
    import zlib

    from mm_core.train.data import load_image, load_labels
    from mm_core.engines.classic import ClassicEngine
    from mm_core.train import generalist_data as gd
    from mm_core.train.cache import EngineCache
    from mm_core.train.cli import _find
    from mm_core.train.generalist import split_by_dataset
    from mm_core.transforms import prepare_boxes

    cache = EngineCache(ClassicEngine(), ".cache/mm_heads", cache_version, features=False)
    _train, val = split_by_dataset(_find("generalist", data, []), fraction, seed)
    for s in val[:limit]:
        rng = np.random.default_rng([seed, zlib.crc32(f"{s.dataset}/{s.name}".encode())])  # as gd.prepare
        img = load_image(s.image)
        labels = load_labels(s.target).astype(np.int32)
        if labels.max() == 0:
            continue
        box = prepare_boxes(gd.imprecise_box(gd.gt_box(labels, rng), rng)[None], img.shape[:2])
        for mode, boxes in (("automatic", None), ("exemplar", box)):
            yield s, mode, img, labels, cache.match(img, boxes)


def evaluate(head, items) -> dict:
    """Per strategy: AP50 / AP per (dataset, mode), probes and seconds per image."""
    from mm_core.heads.objects import object_diameter
    from mm_core.evaluation.metrics import average_precision

    rows = []
    for s, mode, img, labels, maps in items:
        probes, secs = {}, []
        orig = type(head)._probe

        def probe(inp, t, _orig=orig, _probes=probes):
            key = round(float(t), 6)
            if key not in _probes:
                t0 = time.perf_counter()
                _probes[key] = _orig(head, inp, t)
                secs.append(time.perf_counter() - t0)
            return _probes[key]

        head._probe = probe
        inp = head.inputs(maps, img)
        t0 = time.perf_counter()
        start = {"engine": float(maps.scale), "size": head.start_scale(maps, img)}
        t_size = time.perf_counter() - t0 if mode == "automatic" else 0.0
        scales = {}
        for name, (how, n, begin) in STRATEGIES.items():
            head.config.update(scale_search=how, scale_passes=n, scale_range=3.0)
            inp.scale = start[begin]
            scale, tried = head.estimate_scale(inp)
            scales[name] = (scale, len(tried), t_size if begin == "size" else 0.0)
        scales["true size"] = (object_diameter(labels), 0, 0.0)
        del head._probe
        finals, res = {}, {}
        for name, (scale, n_probes, t_start) in scales.items():
            key = round(float(np.log(max(scale, 1e-3))), 2)
            if key not in finals:
                t0 = time.perf_counter()
                pred = head.labels_from(head.predict_maps(maps, img, scale=scale))
                finals[key] = (average_precision(labels, pred)["ap"], time.perf_counter() - t0)
            ap, t_final = finals[key]
            res[name] = {"ap50": float(ap[0]), "ap": float(ap.mean()), "scale": float(scale), "probes": n_probes,
                         "seconds": float(t_start + n_probes * np.mean(secs or [0.0]) + t_final)}
        rows.append({"dataset": s.dataset, "image": s.name, "mode": mode, "engine_scale": float(maps.scale),
                     "true_diameter": object_diameter(labels), "results": res})
        print(s.dataset, s.name, mode, " ".join(f"{k}={v['ap50']:.2f}" for k, v in res.items()), flush=True)
    return rows


def summary(rows: list[dict]) -> dict:
    """Mean AP50 / AP per dataset and mode, the unweighted mean over datasets, seconds per image."""
    out = {}
    for mode in ("automatic", "exemplar"):
        sub = [r for r in rows if r["mode"] == mode]
        for name in [*STRATEGIES, "true size"]:
            per = {}
            for ds in sorted({r["dataset"] for r in sub}):
                v = [r["results"][name] for r in sub if r["dataset"] == ds]
                per[ds] = {"ap50": float(np.mean([x["ap50"] for x in v])), "ap": float(np.mean([x["ap"] for x in v])),
                           "n": len(v)}
            out[f"{mode}/{name}"] = {
                "per_dataset": per,
                "mean_ap50": float(np.mean([p["ap50"] for p in per.values()])),
                "mean_ap": float(np.mean([p["ap"] for p in per.values()])),
                "seconds": float(np.mean([r["results"][name]["seconds"] for r in sub])),
                "log_error": float(np.median([abs(np.log(r["results"][name]["scale"] / r["true_diameter"]))
                                              for r in sub])),
            }
    return out


def pick(summ: dict, tol: float = 0.005) -> tuple[str, dict]:
    """The strategy kept (see the module docstring) and every strategy's score and seconds."""
    score = {name: {"score": float(np.mean([(summ[f"{m}/{name}"]["mean_ap50"] + summ[f"{m}/{name}"]["mean_ap"]) / 2
                                             for m in ("automatic", "exemplar")])),
                    "seconds": float(np.mean([summ[f"{m}/{name}"]["seconds"] for m in ("automatic", "exemplar")]))}
             for name in STRATEGIES}
    best = max(v["score"] for v in score.values())
    near = [n for n, v in score.items() if v["score"] >= best - tol]
    return min(near, key=lambda n: score[n]["seconds"]), score


def table(summ: dict) -> str:
    datasets = sorted(next(iter(summ.values()))["per_dataset"])
    lines = ["| mode | strategy | " + " | ".join(f"{d} AP50 / AP" for d in datasets)
             + " | mean over sources AP50 / AP | median abs log size error | s per image (1 thread) |",
             "|---" * (len(datasets) + 5) + "|"]
    for key, v in summ.items():
        mode, name = key.split("/")
        cells = [f"{v['per_dataset'][d]['ap50']:.3f} / {v['per_dataset'][d]['ap']:.3f}" for d in datasets]
        lines.append(f"| {mode} | {name} | " + " | ".join(cells)
                     + f" | {v['mean_ap50']:.3f} / {v['mean_ap']:.3f} | {v['log_error']:.2f} | {v['seconds']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--head", default="runs/generalist")
    p.add_argument("--data", nargs="+", default=[str(REPO.parent / "shared" / "data" / "train" / "seg")])
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-version", default=None, help="engine version of the cached maps (see mm_core.train)")
    p.add_argument("--size-model", default=None, help="object-size model checkpoint (default: the head's config)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    import torch

    from mm_core.heads.learned import load_head

    torch.set_num_threads(a.threads)
    head = load_head(a.head, engine="classic")
    if a.size_model:
        head.config["size_model"] = a.size_model
    rows = evaluate(head, validation_items(a.data, a.val_fraction, a.seed, a.cache_version, a.limit))
    summ = summary(rows)
    print(table(summ))
    kept, scores = pick(summ)
    print("scores:", json.dumps(scores))
    print(f"kept: {kept}")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"machine": f"{os.uname().nodename}, {os.cpu_count()} CPUs, torch threads "
                                                f"{a.threads}", "head": str(a.head), "summary": summ, "scores": scores,
                                    "kept": kept, "rows": rows},
                                    indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
