"""Issue 21's default rule and the docs tables of ``benchmarks/cellmatch_eval.py``.

:func:`rule` and :func:`pick_defaults` decide, from the ``dev`` and ``baseline`` JSON files, which
(task, mode) the new model becomes the default of; :func:`tables` prints the markdown tables of
``docs/quality.md`` from the JSON files of a tables folder. Both were fixed before any dev number
was seen. No measuring happens here (``cellmatch_eval`` measures).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from generalist_eval import BOX_ERRORS

SEG_SETS = ("dsb2018_stage1_test", "stardist_dsb2018_example", "usiigaci_phase_contrast", "isbi2012_em_cells")
#: Leave-one-source-out (issue 21): the train/ source left out, and the dev sets of its kind.
LOO_FOLDS = {"dsb2018_stage1_train": ("dsb2018_stage1_test", "stardist_dsb2018_example"),
             "usiigaci_phase_contrast_train": ("usiigaci_phase_contrast",),
             "drosophila_vnc_em_cells": ("isbi2012_em_cells",)}


# ---------------------------------------------------------------- issue 21's rule, fixed before measuring
AP50_SLACK = 0.03  #: the new model may lose at most this much AP50 on any segmentation set
MAE_SLACK = 0.10  #: ... and at most this share of MAE on any counting set
BOX_SLACK = 0.02  #: exemplar mode may lose at most this much AP50 against automatic mode


def rule(new: dict, base: dict, decoder: str = "flows") -> dict:
    """Which (task, mode) the new model becomes the default for.

    ``new``: :func:`cmd_dev` output; ``base``: :func:`cmd_baseline` output. A (task, mode) passes when no set is
    worse than the baseline default (the defaults before it) by more than :data:`AP50_SLACK` AP50
    (segmentation) or :data:`MAE_SLACK` of its MAE (counting: the points of the segmentation sets
    and VGG), and the mean over the sets (AP50; relative count error) is better.
    """
    out = {}
    for mode in ("automatic", "exemplar"):
        seg = [(new[f"{decoder}/{s}"][mode]["ap50"], base[s][mode]["ap50"]) for s in SEG_SETS if s in base]
        ok = all(n >= b - AP50_SLACK for n, b in seg) and np.mean([n for n, _ in seg]) > np.mean([b for _, b in seg])
        out[("segment", mode)] = {"passes": bool(ok), "sets": seg}
        cnt = [(new[f"{decoder}/{s}"][mode]["count_mae"], base[s][mode]["count_mae"],
                new[f"{decoder}/{s}"][mode]["count_rel"], base[s][mode]["count_rel"]) for s in SEG_SETS if s in base]
        if "vgg_cells" in base:
            v, b = new[f"{decoder}/vgg_cells"][mode], base["vgg_cells"][mode]
            cnt.append((v["mae"], b["mae"], v["count_rel"], b["count_rel"]))
        ok = all(n <= b * (1 + MAE_SLACK) for n, b, _, _ in cnt) and \
            np.mean([r for _, _, r, _ in cnt]) < np.mean([rb for _, _, _, rb in cnt])
        out[("count", mode)] = {"passes": bool(ok), "sets": cnt}
    worst = min(new[f"{decoder}/{s}"]["exemplar"]["ap50"] - new[f"{decoder}/{s}"]["automatic"]["ap50"]
                for s in SEG_SETS if f"{decoder}/{s}" in new)
    out["box_never_worse"] = {"passes": bool(worst >= -BOX_SLACK), "worst_exemplar_minus_automatic": float(worst)}
    return out


def _box_gap(auto: dict, ex: dict) -> float:
    """Worst exemplar-minus-automatic AP50 over the segmentation sets (``{set: ap50}`` per mode)."""
    return float(min(ex[s] - auto[s] for s in auto))


def pick_defaults(new: dict, base: dict, decoder: str = "flows") -> dict:
    """Which model each (task, mode) defaults to, and why.

    :func:`rule` per (task, mode) first. Then the box condition on what a user gets: if the
    new model becomes the automatic-mode segmentation default but exemplar mode keeps the baseline
    default, and that pair lets a box lose more than :data:`BOX_SLACK` AP50 against no box on
    some set, exemplar mode follows automatic mode (the new model, whose own box condition
    passes): a box must never make the result worse.
    """
    r = rule(new, base, decoder)
    out = {k: {"model": "new" if v["passes"] else "baseline", "why": "rule " + ("passes" if v["passes"] else "fails")}
           for k, v in r.items() if isinstance(k, tuple)}
    sets = [s for s in SEG_SETS if s in base and f"{decoder}/{s}" in new]
    ap = {(who, m): {s: (new[f"{decoder}/{s}"] if who == "new" else base[s])[m]["ap50"] for s in sets}
          for who in ("new", "baseline") for m in ("automatic", "exemplar")}
    auto, ex = out[("segment", "automatic")]["model"], out[("segment", "exemplar")]["model"]
    gap = _box_gap(ap[(auto, "automatic")], ap[(ex, "exemplar")])
    if gap < -BOX_SLACK and auto == "new" and ex == "baseline" and r["box_never_worse"]["passes"]:
        out[("segment", "exemplar")] = {"model": "new", "why": (
            f"rule fails, but with the baseline exemplar default a box would lose {-gap:.3f} AP50 against "
            "the new automatic default; the new model in both modes keeps a box never worse")}
        gap = _box_gap(ap[("new", "automatic")], ap[("new", "exemplar")])
    out["box_gap"] = gap
    return out


def tables(folder: Path) -> str:
    """Markdown tables of the JSON files in ``folder`` (dev.json, baseline.json, boxes.json, speed.json)."""
    def load(name):
        f = folder / f"{name}.json"
        return json.loads(f.read_text()) if f.is_file() else None

    dev, base, boxes, speed = load("dev"), load("baseline"), load("boxes"), load("speed")
    lines = []
    if dev and base:
        decs = sorted({k.split("/")[0] for k in dev})
        lines += ["| data set | mode | default before AP50 | " + " | ".join(f"CellMatch ({d}) AP50" for d in decs)
                  + " | count before: MAE (rel.) | " + " | ".join(f"CellMatch ({d}) count: MAE (rel.)" for d in decs)
                  + " |", "|---|---|---|" + "---|" * len(decs) + "---|" + "---|" * len(decs)]
        for name in (*SEG_SETS, "vgg_cells"):
            if name not in base:
                continue
            for mode in ("automatic", "exemplar"):
                b = base[name][mode]
                row = [name, mode, "-" if name == "vgg_cells" else f"{b['ap50']:.3f}"]
                row += ["-" if name == "vgg_cells" else f"{dev[f'{d}/{name}'][mode]['ap50']:.3f}" for d in decs]
                key = "mae" if name == "vgg_cells" else "count_mae"
                row.append(f"{b[key]:.1f} ({b['count_rel']:.2f})")
                row += [f"{dev[f'{d}/{name}'][mode][key]:.1f} ({dev[f'{d}/{name}'][mode]['count_rel']:.2f})"
                        for d in decs]
                lines.append("| " + " | ".join(row) + " |")
        for d in decs:
            r = rule(dev, base, d)
            lines.append("")
            lines.append(f"Rule ({d} decoder): " + "; ".join(
                f"{t} {m}: {'passes' if v['passes'] else 'fails'}" for (t, m), v in
                ((k, v) for k, v in r.items() if isinstance(k, tuple)))
                + f"; box never worse than automatic by > {BOX_SLACK}: "
                + f"{'yes' if r['box_never_worse']['passes'] else 'no'} "
                + f"(worst {r['box_never_worse']['worst_exemplar_minus_automatic']:+.3f})")
            pick = pick_defaults(dev, base, d)
            lines.append(f"Defaults ({d} decoder): " + "; ".join(
                f"{t} {m}: {'CellMatch' if v['model'] == 'new' else 'unchanged'} ({v['why']})"
                for (t, m), v in ((k, v) for k, v in pick.items() if isinstance(k, tuple)))
                + f"; worst box minus no box with these defaults: {pick['box_gap']:+.3f}")
    lines += loo_table(folder, dev)
    lines += loo_table(folder, load("abl_nomaps"), prefix="loo_nomaps", title="without the engine's maps")
    lines += loo_table(folder, load("abl_synth"), prefix="loo_synth", title="with synthetic images")
    lines += ablation_table(folder, dev)
    if boxes:
        lines += ["", "| dsb2018_stage1_test | AP50 | share of the precise box's AP50 |", "|---|---|---|",
                  f"| automatic mode (no box) | {boxes['automatic']['ap50']:.3f} | |"]
        lines += [f"| box {k} | {boxes[k]['ap50']:.3f} | {boxes[k]['kept_of_precise']:.0%} |" for k in BOX_ERRORS]
    if speed:
        lines += ["", "| image | whole segment call, s | peak RSS, MB |", "|---|---|---|"]
        lines += [f"| {k}² | {v['seconds']:.2f} | {v['peak_rss_mb']:.0f} |" for k, v in speed.items()]
    return "\n".join(lines)


def loo_table(folder: Path, dev: dict | None, prefix: str = "loo", title: str = "") -> list[str]:
    """Markdown rows: each ``<prefix>_<source>.json`` (:data:`LOO_FOLDS`) beside ``dev``, the same
    recipe trained on every source (``title`` names the recipe in the header)."""
    rows = []
    for src, sets in LOO_FOLDS.items():
        f = folder / f"{prefix}_{src}.json"
        if not f.is_file():
            continue
        loo = json.loads(f.read_text())
        for name in sets:
            for mode in ("automatic", "exemplar"):
                n = loo[f"flows/{name}"][mode]
                a = dev[f"flows/{name}"][mode] if dev and f"flows/{name}" in dev else None
                rows.append(f"| {src} | {name} | {mode} | {_fmt(a, 'ap50', 3)} | {n['ap50']:.3f} | "
                            f"{_fmt(a, 'count_mae', 1)} | {n['count_mae']:.1f} |")
    if not rows:
        return []
    t = f" ({title})" if title else ""
    head = (f"| left out{t} | dev set | mode | AP50, all sources | AP50, source left out | count MAE, all sources "
            "| count MAE, source left out |")
    return ["", head, "|---|---|---|---|---|---|---|", *rows]


#: Ablations of the shipped recipe (issue 21): ``abl_<key>.json`` in the tables folder, and their column title.
ABLATIONS = {"nomaps": "without the engine's maps", "synth": "without the engine's maps, with synthetic images"}


def ablation_table(folder: Path, dev: dict | None) -> list[str]:
    """Markdown rows: AP50 and count MAE of the shipped model beside each ablation (:data:`ABLATIONS`) found."""
    runs = {k: json.loads((folder / f"abl_{k}.json").read_text())
            for k in ABLATIONS if (folder / f"abl_{k}.json").is_file()}
    if not runs:
        return []
    rows = []
    for name in (*SEG_SETS, "vgg_cells"):
        key = f"flows/{name}"
        if not any(key in r for r in runs.values()):
            continue
        count = "mae" if name == "vgg_cells" else "count_mae"
        for mode in ("automatic", "exemplar"):
            cells = [dev[key][mode] if dev and key in dev else None] + [r[key][mode] if key in r else None
                                                                         for r in runs.values()]
            ap = ["-" if name == "vgg_cells" or c is None else f"{c['ap50']:.3f}" for c in cells]
            mae = [_fmt(c, count, 1) for c in cells]
            rows.append("| " + " | ".join([name, mode, *ap, *mae]) + " |")
    titles = ["shipped", *(ABLATIONS[k] for k in runs)]
    head = ("| data set | mode | " + " | ".join(f"AP50, {t}" for t in titles) + " | "
            + " | ".join(f"count MAE, {t}" for t in titles) + " |")
    return ["", head, "|---|---|" + "---|" * (2 * len(titles)), *rows]


def _fmt(d: dict | None, key: str, digits: int) -> str:
    return "-" if d is None else f"{d[key]:.{digits}f}"
