"""Score a folder of predictions against a ground-truth folder (``python -m mm_core evaluate``).

Ground truth is in the layout of the development data (``../shared/data``):

* ``segment``: ``<dataset>/masks/<base>.tif`` instance labels. Predictions: ``<base>.tif``
  label images in the predictions folder (what the CLI writes), or a folder with
  the same ``masks/`` layout.
* ``count``: ``<dataset>/points/<base>.csv`` with header ``x,y``, one row per
  object. Predictions: ``counts.csv`` (header ``image,count``; ``image`` is the
  base name, with or without extension), or else point tables ``points/<base>.csv``
  or ``<base>_points.csv`` (one row per object).
* ``track``: ``<dataset>/<SEQ>_GT/TRA`` (+ ``SEG``) in the Cell Tracking Challenge
  layout. Predictions: a CTC result folder (``maskTTT.tif`` + ``res_track.txt``),
  or a folder holding ``<SEQ>_RES`` folders, or a CTC ground-truth folder (scored
  through a temporary result folder that is removed afterwards).

A ground-truth image or sequence without a prediction is scored as an empty
prediction and listed under ``missing``. The result is one JSON-serialisable dict.
"""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from mm_core.errors import InputError
from mm_core.export import write_ctc
from mm_core.io import natural_key, read_ctc, read_labels
from mm_core.evaluation.metrics import IOU_THRESHOLDS, average_precision, count_errors, ctc_scores

TASKS = ("segment", "count", "track")
_MAX_LISTED = 20  # missing names listed in the result


def _sorted_files(folder: Path, suffix: str) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix
             and not p.name.startswith(".")]
    return sorted(files, key=lambda p: natural_key(p.name))


def _is_ctc_gt(folder: Path) -> bool:
    return (folder / "TRA" / "man_track.txt").is_file()


def detect_task(gt_dir) -> tuple[str, Path]:
    """Tell the task from a ground-truth folder's layout.

    Returns
    -------
    task : str
        ``"segment"``, ``"count"`` or ``"track"``.
    root : Path
        The dataset folder (holding ``masks/`` or ``points/``), or for tracking the
        ``<SEQ>_GT`` folder or the dataset folder holding several of them.
    """
    gt = Path(gt_dir)
    if not gt.is_dir():
        raise InputError(f"the ground-truth folder {gt_dir} does not exist")
    if gt.name in ("masks", "points", "TRA"):
        gt = gt.parent
    if (gt / "masks").is_dir():
        return "segment", gt
    if (gt / "points").is_dir():
        return "count", gt
    if _is_ctc_gt(gt) or any(_is_ctc_gt(p) for p in gt.iterdir() if p.is_dir()):
        return "track", gt
    raise InputError(f"cannot tell the task from {gt_dir}: expected masks/ (segmentation), points/ "
                     "(counting) or <SEQ>_GT/TRA (tracking)")


def _summary(task: str, root: Path, n: int, missing: list[str]) -> dict:
    return {"task": task, "dataset": root.name, "n_images": n, "n_missing": len(missing),
            "missing": missing[:_MAX_LISTED]}


# --------------------------------------------------------------------------- segmentation
def _pred_label_file(pred: Path, base: str) -> Path | None:
    for cand in (pred / f"{base}.tif", pred / f"{base}.tiff", pred / "masks" / f"{base}.tif"):
        if cand.is_file():
            return cand
    return None


def evaluate_segmentation(pred_dir, gt_root, max_images: int | None = None) -> dict:
    """AP (Cellpose definition) of label images against ``gt_root/masks``.

    Returns
    -------
    dict
        ``AP50``, ``AP75``, ``AP`` (mean over IoU 0.5:0.05:0.95) and ``F1@0.5``,
        each the mean over images, plus ``n_true`` / ``n_pred`` object totals.
    """
    gt_root, pred = Path(gt_root), Path(pred_dir)
    gt_files = _sorted_files(gt_root / "masks", ".tif")[:max_images]
    if not gt_files:
        raise InputError(f"no ground-truth masks (*.tif) in {gt_root / 'masks'}")
    aps, f1s, missing, n_true, n_pred = [], [], [], 0, 0
    for gt_file in gt_files:
        gt = read_labels(gt_file)
        pf = _pred_label_file(pred, gt_file.stem)
        if pf is None:
            missing.append(gt_file.stem)
            pl = np.zeros(gt.shape, np.uint8)
        else:
            pl = read_labels(pf, gt.shape)
        res = average_precision(gt, pl, IOU_THRESHOLDS)
        aps.append(res["ap"])
        tp, fp, fn = res["tp"][0], res["fp"][0], res["fn"][0]
        f1s.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
        n_true += res["n_true"]
        n_pred += res["n_pred"]
    ap = np.mean(aps, axis=0)  # per threshold, mean over images
    out = _summary("segment", gt_root, len(gt_files), missing)
    out.update({"AP50": float(ap[0]), "AP75": float(ap[5]), "AP": float(ap.mean()),
                "F1@0.5": float(np.mean(f1s)), "n_true": int(n_true), "n_pred": int(n_pred)})
    return out


# --------------------------------------------------------------------------- counting
def _n_rows(csv_path: Path) -> int:
    try:
        return len(pd.read_csv(csv_path))
    except pd.errors.EmptyDataError:
        return 0
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the point table {csv_path.name}: {err}") from None


def _read_counts(path: Path) -> dict[str, float]:
    counts: dict[str, float] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"{path.name} is not a UTF-8 text table (byte {err.start}: "
                         f"{err.object[err.start:err.start + 1]!r}); save it as UTF-8 CSV") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or not {"image", "count"} <= set(reader.fieldnames):
        raise InputError(f"{path.name} needs the header image,count")
    for row in reader:
        try:
            value = float(row["count"])
        except (TypeError, ValueError):
            raise InputError(f"{path.name}: the count of {row['image']} is not a number") from None
        counts[row["image"]] = value
        counts.setdefault(Path(row["image"]).stem, value)
    return counts


def evaluate_counting(pred_dir, gt_root, max_images: int | None = None) -> dict:
    """MAE and RMSE of predicted counts against the rows of ``gt_root/points/*.csv``."""
    gt_root, pred = Path(gt_root), Path(pred_dir)
    gt_files = _sorted_files(gt_root / "points", ".csv")[:max_images]
    if not gt_files:
        raise InputError(f"no ground-truth point tables (*.csv) in {gt_root / 'points'}")
    table = _read_counts(pred / "counts.csv") if (pred / "counts.csv").is_file() else None
    true, predicted, missing = [], [], []
    for gt_file in gt_files:
        base = gt_file.stem
        true.append(_n_rows(gt_file))
        value = None
        if table is not None:
            value = table.get(base)
        else:
            pf = next((p for p in (pred / "points" / f"{base}.csv", pred / f"{base}_points.csv")
                       if p.is_file()), None)
            value = None if pf is None else _n_rows(pf)
        if value is None:
            missing.append(base)
            value = 0.0
        predicted.append(value)
    err = count_errors(true, predicted)
    out = _summary("count", gt_root, len(gt_files), missing)
    out.update({"MAE": err["mae"], "RMSE": err["rmse"], "mean_true_count": float(np.mean(true)),
                "mean_pred_count": float(np.mean(predicted))})
    return out


# --------------------------------------------------------------------------- tracking
_CTC_KEYS = ("SEG", "TRA", "DET", "LNK")


def _gt_sequences(root: Path, sequence: str | None) -> list[tuple[str, Path]]:
    if _is_ctc_gt(root):
        seqs = [(root.name.removesuffix("_GT"), root)]
    else:
        seqs = sorted(((p.name[:-3], p) for p in root.iterdir() if p.is_dir() and p.name.endswith("_GT")
                       and _is_ctc_gt(p)), key=lambda s: natural_key(s[0]))
    if sequence is not None:
        seqs = [s for s in seqs if s[0] == str(sequence)]
        if not seqs:
            raise InputError(f"no ground truth for sequence {sequence} in {root}")
    return seqs


def _pred_sequence(pred: Path, seq: str, n_seqs: int) -> Path | None:
    """A result folder (res_track.txt) or a CTC ground-truth folder for ``seq``."""
    for cand in (pred / f"{seq}_RES", pred / seq, pred / f"{seq}_GT"):
        if (cand / "res_track.txt").is_file() or _is_ctc_gt(cand):
            return cand
    if n_seqs == 1:
        if pred.name == "TRA" and (pred / "man_track.txt").is_file():
            return pred.parent
        if (pred / "res_track.txt").is_file() or _is_ctc_gt(pred):
            return pred
    return None


def _score_sequence(res: Path, gt: Path, threads: int) -> dict:
    if (res / "res_track.txt").is_file():
        return ctc_scores(gt, res, threads=threads)
    with tempfile.TemporaryDirectory(prefix="mm_ctc_") as tmp:  # GT used as a prediction
        masks, tracks = read_ctc(res)
        return ctc_scores(gt, write_ctc(Path(tmp) / "RES", masks, tracks), threads=threads)


def evaluate_tracking(pred_dir, gt_root, sequence: str | None = None, threads: int = 1) -> dict:
    """CTC measures (py-ctcmetrics) of every ground-truth sequence with a prediction.

    Returns
    -------
    dict
        ``SEG``, ``TRA``, ``DET``, ``LNK`` (mean over sequences; a missing
        sequence counts 0), ``valid`` (1 only if every result is valid) and, with
        several sequences, ``sequences``: the scores of each.
    """
    gt_root, pred = Path(gt_root), Path(pred_dir)
    seqs = _gt_sequences(gt_root, sequence)
    if not seqs:
        raise InputError(f"no <SEQ>_GT/TRA folder in {gt_root}")
    per_seq, missing = {}, []
    for seq, gt in seqs:
        res = _pred_sequence(pred, seq, len(seqs))
        if res is None:
            missing.append(seq)
            per_seq[seq] = {**{k: 0.0 for k in _CTC_KEYS}, "valid": 0}
        else:
            per_seq[seq] = _score_sequence(res, gt, threads)
    dataset = gt_root.parent if _is_ctc_gt(gt_root) else gt_root
    out = {"task": "track", "dataset": dataset.name, "n_sequences": len(seqs), "n_missing": len(missing),
           "missing": missing}
    for k in _CTC_KEYS:
        vals = [s[k] for s in per_seq.values()]
        out[k] = None if any(v is None for v in vals) else float(np.mean(vals))
    out["valid"] = int(all(s["valid"] for s in per_seq.values()))
    if len(per_seq) > 1:
        out["sequences"] = per_seq
    elif not out["valid"] and "problems" in next(iter(per_seq.values())):
        out["problems"] = next(iter(per_seq.values()))["problems"]
    return out


# --------------------------------------------------------------------------- entry point
def evaluate(pred_dir, gt_dir, task: str | None = None, *, max_images: int | None = None,
             sequence: str | None = None, threads: int = 1) -> dict:
    """Score a predictions folder against a ground-truth folder.

    Parameters
    ----------
    pred_dir : str or Path
        Predictions (see the module docstring for each task's layout).
    gt_dir : str or Path
        Ground truth: a dataset folder of ``../shared/data`` (``seg/<name>``,
        ``count/<name>``, ``track/<name>``), its ``masks``/``points`` folder, or a
        ``<SEQ>_GT`` folder.
    task : {"segment", "count", "track"}, optional
        Inferred from the ground-truth layout when ``None``.
    max_images : int, optional
        Score only the first images (natural order) of a segmentation or counting dataset.
    sequence : str, optional
        Score only this tracking sequence (e.g. ``"01"``).
    threads : int
        Processes py-ctcmetrics may use (tracking); 0 = every CPU.

    Returns
    -------
    dict
        Plain Python numbers and strings (``json.dumps`` works): ``task``,
        ``dataset``, ``n_images`` (or ``n_sequences``), ``n_missing``,
        ``missing`` and ``AP50``/``AP75``/``AP``/``F1@0.5`` (segment),
        ``MAE``/``RMSE`` (count) or ``SEG``/``TRA``/``DET``/``LNK``/``valid`` (track).
    """
    if not Path(pred_dir).is_dir():
        raise InputError(f"the predictions folder {pred_dir} does not exist")
    found, root = detect_task(gt_dir)
    if task is not None and task not in TASKS:
        raise InputError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    if task is not None and task != found:
        raise InputError(f"{gt_dir} holds {found} ground truth, not {task}")
    if found == "segment":
        return evaluate_segmentation(pred_dir, root, max_images)
    if found == "count":
        return evaluate_counting(pred_dir, root, max_images)
    return evaluate_tracking(pred_dir, root, sequence, threads)
