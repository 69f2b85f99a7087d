"""Quality measures: instance average precision (Cellpose), CTC measures, count errors.

* :func:`average_precision` and :func:`f1_score` follow ``cellpose.metrics``:
  IoU between every true and predicted object, an optimal one-to-one matching
  (:func:`scipy.optimize.linear_sum_assignment`) at each IoU threshold, a match
  counted as a true positive when its IoU is >= the threshold, and
  ``AP = TP / (TP + FP + FN)``.
* :func:`ctc_scores` wraps py-ctcmetrics (``ctc_metrics.evaluate_sequence``) for
  the Cell Tracking Challenge measures SEG, TRA, DET and LNK; nothing of them is
  re-implemented here.
* :func:`count_errors`: mean absolute and root-mean-square count error.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.segmentation import relabel_sequential

from mm_core.errors import InputError

#: IoU thresholds 0.5, 0.55, ..., 0.95 (as in Cellpose and StarDist papers).
IOU_THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)


def _label_image(arr, what: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.kind == "f" and np.isfinite(arr).all() and np.array_equal(arr, np.round(arr)):
        arr = arr.astype(np.int64)  # labels saved as float by some tools
    if arr.ndim != 2 or arr.dtype.kind not in "iub":
        raise InputError(f"the {what} must be a 2-D integer label image, got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"the {what} has negative labels")
    # ids 1..n without gaps, so that the object count is the largest id (as Cellpose assumes)
    return relabel_sequential(arr.astype(np.int64))[0]


def iou_matrix(gt_labels, pred_labels) -> np.ndarray:
    """IoU of every true object (rows) with every predicted object (columns).

    Labels are renumbered ``1..n`` in increasing order of their ids first, so row
    ``i`` is the ``i``-th smallest true id (background excluded).

    Returns
    -------
    ndarray
        ``(n_true, n_pred)`` float64 array.
    """
    gt = _label_image(gt_labels, "ground-truth label image")
    pred = _label_image(pred_labels, "predicted label image")
    if gt.shape != pred.shape:
        raise InputError(f"ground truth is {gt.shape[1]}x{gt.shape[0]} but the prediction is "
                         f"{pred.shape[1]}x{pred.shape[0]} pixels")
    n_true, n_pred = int(gt.max()), int(pred.max())
    overlap = np.bincount(gt.ravel() * (n_pred + 1) + pred.ravel(),
                          minlength=(n_true + 1) * (n_pred + 1)).reshape(n_true + 1, n_pred + 1)
    area_true = overlap.sum(axis=1, keepdims=True)
    area_pred = overlap.sum(axis=0, keepdims=True)
    union = area_true + area_pred - overlap
    iou = overlap / np.maximum(union, 1)
    return iou[1:, 1:]


def true_positives(iou: np.ndarray, threshold: float) -> int:
    """Matches with IoU >= ``threshold`` in an optimal one-to-one assignment.

    Same cost as ``cellpose.metrics._true_positive``: first maximise the number of
    pairs above the threshold, then their summed IoU.
    """
    if iou.size == 0:
        return 0
    n_min = min(iou.shape)
    costs = -(iou >= threshold).astype(float) - iou / (2 * n_min)
    rows, cols = linear_sum_assignment(costs)
    return int((iou[rows, cols] >= threshold).sum())


def matching_counts(gt_labels, pred_labels, thresholds=IOU_THRESHOLDS) -> dict:
    """TP, FP and FN at each IoU threshold.

    Returns
    -------
    dict
        ``thresholds``, ``tp``, ``fp``, ``fn`` (int arrays, one entry per
        threshold), ``n_true``, ``n_pred``.
    """
    th = np.atleast_1d(np.asarray(thresholds, dtype=float))
    iou = iou_matrix(gt_labels, pred_labels)
    n_true, n_pred = iou.shape
    tp = np.array([true_positives(iou, t) for t in th], dtype=np.int64)
    return {"thresholds": th, "tp": tp, "fp": n_pred - tp, "fn": n_true - tp,
            "n_true": int(n_true), "n_pred": int(n_pred)}


def average_precision(gt_labels, pred_labels, thresholds=IOU_THRESHOLDS) -> dict:
    """Average precision of an instance segmentation, as Cellpose defines it.

    Parameters
    ----------
    gt_labels, pred_labels : ndarray
        ``(H, W)`` integer labels of the same shape, 0 = background.
    thresholds : array-like of float
        IoU thresholds; default 0.5, 0.55, ..., 0.95.

    Returns
    -------
    dict
        ``ap`` (float array, ``TP / (TP + FP + FN)`` per threshold), ``tp``,
        ``fp``, ``fn`` (int arrays), ``thresholds``, ``n_true``, ``n_pred``.
        With no object in either image, AP is 1.0 (nothing to find, nothing
        found), where Cellpose would give NaN.
    """
    c = matching_counts(gt_labels, pred_labels, thresholds)
    denom = c["tp"] + c["fp"] + c["fn"]
    c["ap"] = np.where(denom > 0, c["tp"] / np.maximum(denom, 1), 1.0)
    return c


def f1_score(gt_labels, pred_labels, thresholds=IOU_THRESHOLDS) -> np.ndarray:
    """F1 = ``2 TP / (2 TP + FP + FN)`` at each IoU threshold.

    Same matching as :func:`average_precision`; 1.0 when both images are empty.
    """
    c = matching_counts(gt_labels, pred_labels, thresholds)
    denom = 2 * c["tp"] + c["fp"] + c["fn"]
    return np.where(denom > 0, 2 * c["tp"] / np.maximum(denom, 1), 1.0)


def ap50(gt_labels, pred_labels) -> float:
    """AP at IoU 0.5."""
    return float(average_precision(gt_labels, pred_labels, [0.5])["ap"][0])


def mean_ap(gt_labels, pred_labels, thresholds=IOU_THRESHOLDS) -> float:
    """AP averaged over the IoU thresholds (0.5:0.05:0.95 by default)."""
    return float(np.mean(average_precision(gt_labels, pred_labels, thresholds)["ap"]))


def count_errors(true_counts, pred_counts) -> dict:
    """Mean absolute error and root-mean-square error of object counts.

    Returns
    -------
    dict
        ``mae``, ``rmse`` and ``n`` (number of images), plain Python numbers.
    """
    t = np.asarray(true_counts, dtype=float).ravel()
    p = np.asarray(pred_counts, dtype=float).ravel()
    if t.shape != p.shape:
        raise InputError(f"{t.size} true counts but {p.size} predicted counts")
    if t.size == 0:
        raise InputError("no counts to compare")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise InputError("a count is missing or not a finite number")
    err = p - t
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())), "n": int(t.size)}


# --------------------------------------------------------------------------- Cell Tracking Challenge
def _has_tifs(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix == ".tif" for p in folder.iterdir())


def ctc_scores(gt_dir, res_dir, metrics=("SEG", "TRA", "DET", "LNK"), threads: int = 1) -> dict:
    """Cell Tracking Challenge measures of a result folder, by py-ctcmetrics.

    Calls ``ctc_metrics.evaluate_sequence(res, gt, ["Valid", *metrics], threads)``;
    its progress printing is swallowed so stdout stays clean. Validity (the
    format checks of ``ctc_metrics.validate_sequence``) is part of that call.

    Parameters
    ----------
    gt_dir : str or Path
        The ``<SEQ>_GT`` folder (with ``TRA/`` and optionally ``SEG/``), or its ``TRA`` folder.
    res_dir : str or Path
        A result folder: ``maskTTT.tif`` (one per ground-truth frame) + ``res_track.txt``.
    metrics : sequence of str
        Measures to compute; SEG is left out (``None``) when there is no ``SEG`` folder.
    threads : int
        Worker processes of py-ctcmetrics for the per-frame matching (its slow
        part, about 0.15 s per 690x628 frame and measure); 0 = every CPU.

    Returns
    -------
    dict
        ``SEG``, ``TRA``, ``DET``, ``LNK`` (float in [0, 1], or ``None`` when not
        computed or the result is invalid), ``valid`` (1 or 0) and, when invalid,
        ``problems``: the validation messages of py-ctcmetrics.
    """
    from ctc_metrics import evaluate_sequence

    gt, res = Path(gt_dir), Path(res_dir)
    if gt.name == "TRA":
        gt = gt.parent
    if not (gt / "TRA" / "man_track.txt").is_file():
        raise InputError(f"{gt_dir} is not a CTC ground-truth folder (no TRA/man_track.txt)")
    if not (res / "res_track.txt").is_file():
        raise InputError(f"{res_dir} is not a CTC result folder (no res_track.txt)")
    n_gt = sum(p.suffix == ".tif" for p in (gt / "TRA").iterdir())
    n_res = sum(p.suffix == ".tif" for p in res.iterdir())
    if n_gt != n_res:
        raise InputError(f"the result folder has {n_res} mask files but the ground truth has {n_gt} frames")
    wanted = [m for m in metrics if m != "SEG" or _has_tifs(gt / "SEG")]
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("always")
        try:
            raw = evaluate_sequence(str(res), str(gt), ["Valid", *wanted], threads=threads)
        except (AssertionError, ValueError, IndexError) as err:
            raise InputError(f"py-ctcmetrics could not score {res_dir}: {err}") from None
    out: dict = {m: None for m in ("SEG", "TRA", "DET", "LNK")}
    for m in wanted:
        out[m] = None if raw.get(m) is None else float(raw[m])
    out["valid"] = int(raw.get("Valid") or 0)
    if not out["valid"]:
        out["problems"] = sorted({str(w.message) for w in caught})[:20]
    return out
