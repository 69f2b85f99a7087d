"""Metrics: Cellpose AP on hand-computed cases, count errors, CTC measures, evaluate()."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import tifffile
from conftest import shared_path

from mm_core.errors import InputError
from mm_core.evaluation import evaluate
from mm_core.export import write_counts, write_ctc, write_labels
from mm_core.io import read_ctc
from mm_core.io.limits import natural_key
from mm_core.evaluation.metrics import (
    IOU_THRESHOLDS,
    ap50,
    average_precision,
    count_errors,
    ctc_scores,
    f1_score,
    iou_matrix,
    mean_ap,
    true_positives,
)

SEG_DATASETS = ["dsb2018_stage1_test", "stardist_dsb2018_example", "isbi2012_em_cells",
                "usiigaci_phase_contrast"]
SIM = ("track", "Fluo-N2DH-SIM+")


# --------------------------------------------------------------------------- average precision
def _hand_case():
    """2 true squares, 3 predictions with IoU 0.8, 2/3 and one without overlap."""
    gt = np.zeros((50, 50), np.uint16)
    gt[0:10, 0:10] = 1
    gt[20:30, 20:30] = 2
    pred = np.zeros((50, 50), np.uint16)
    pred[0:10, 0:8] = 5         # inside true 1: IoU 80/100 = 0.8
    pred[20:30, 22:32] = 9      # true 2 shifted by 2 columns: IoU 80/120 = 2/3
    pred[40:45, 40:45] = 11     # false positive
    return gt, pred


def test_iou_matrix_by_hand():
    gt, pred = _hand_case()
    np.testing.assert_allclose(iou_matrix(gt, pred), [[0.8, 0, 0], [0, 2 / 3, 0]])


def test_average_precision_by_hand():
    gt, pred = _hand_case()
    res = average_precision(gt, pred, [0.5, 0.75, 0.85])
    # IoU 0.5: TP 2, FP 1, FN 0 -> 2/3; 0.75: TP 1, FP 2, FN 1 -> 1/4; 0.85: TP 0 -> 0
    assert res["tp"].tolist() == [2, 1, 0]
    assert res["fp"].tolist() == [1, 2, 3]
    assert res["fn"].tolist() == [0, 1, 2]
    np.testing.assert_allclose(res["ap"], [2 / 3, 1 / 4, 0.0])
    np.testing.assert_allclose(f1_score(gt, pred, [0.5, 0.75]), [4 / 5, 2 / 5])
    assert ap50(gt, pred) == pytest.approx(2 / 3)
    # default thresholds 0.5..0.95: TP 2 at 0.5..0.65, TP 1 at 0.7..0.8, 0 above
    expected = [2 / 3] * 4 + [1 / 4] * 3 + [0.0] * 3
    np.testing.assert_allclose(average_precision(gt, pred)["ap"], expected)
    assert mean_ap(gt, pred) == pytest.approx(np.mean(expected))
    assert IOU_THRESHOLDS.tolist() == [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def test_matching_is_optimal_not_greedy():
    # greedy on the best IoU pairs true 0 with pred 0 and leaves true 1 unmatched;
    # the optimal one-to-one matching finds 2 pairs above 0.5
    iou = np.array([[0.6, 0.55], [0.52, 0.0]])
    assert true_positives(iou, 0.5) == 2
    assert true_positives(iou, 0.56) == 1
    assert true_positives(np.zeros((0, 3)), 0.5) == 0


def test_average_precision_edge_cases():
    gt, pred = _hand_case()
    renumbered = np.where(pred > 0, pred.astype(np.int64) * 1000 + 70000, 0)  # ids need not be consecutive
    np.testing.assert_allclose(average_precision(gt, renumbered)["ap"], average_precision(gt, pred)["ap"])
    empty = np.zeros_like(gt)
    assert average_precision(empty, empty)["ap"].tolist() == [1.0] * 10
    miss = average_precision(gt, empty, [0.5])
    assert miss["ap"].tolist() == [0.0] and miss["fn"].tolist() == [2]
    with pytest.raises(InputError, match="prediction"):
        average_precision(gt, pred[:40])


@pytest.mark.parametrize("name", SEG_DATASETS)
def test_ground_truth_against_itself_gives_ap_1(shared_data, name):
    masks = sorted((shared_data / "seg" / name / "masks").glob("*.tif"))[:2]
    if not masks:
        pytest.skip(f"seg/{name} not present")
    for path in masks:
        lab = tifffile.imread(path)
        res = average_precision(lab, lab)
        assert res["ap"].tolist() == [1.0] * 10 and res["n_true"] == len(np.unique(lab)) - 1
        shifted = np.roll(lab, 3, axis=1)  # a slightly wrong prediction scores below 1
        assert ap50(lab, shifted) <= 1.0 and mean_ap(lab, shifted) < 1.0


# --------------------------------------------------------------------------- counts
def test_count_errors_by_hand():
    res = count_errors([10, 20, 30], [12, 17, 30])  # errors 2, -3, 0
    assert res["mae"] == pytest.approx(5 / 3)
    assert res["rmse"] == pytest.approx(np.sqrt(13 / 3))
    assert count_errors([4], [4]) == {"mae": 0.0, "rmse": 0.0, "n": 1}
    with pytest.raises(InputError):
        count_errors([1, 2], [1])


# --------------------------------------------------------------------------- Cell Tracking Challenge
def _truncated_gt(src, dst, n_frames):
    """Copy the first ``n_frames`` of a CTC ground-truth folder (TRA and SEG)."""
    masks, tracks = read_ctc(src)
    tracks = tracks[tracks["begin"] < n_frames].copy()
    tracks["end"] = tracks["end"].clip(upper=n_frames - 1)
    (dst / "TRA").mkdir(parents=True)
    for t in range(n_frames):
        tifffile.imwrite(dst / "TRA" / f"man_track{t:03d}.tif", masks[t])
    (dst / "TRA" / "man_track.txt").write_text(
        "".join(f"{r.label} {r.begin} {r.end} {r.parent}\n" for r in tracks.itertuples()))
    if (src / "SEG").is_dir():
        (dst / "SEG").mkdir()
        for t in range(n_frames):
            seg = src / "SEG" / f"man_seg{t:03d}.tif"
            if seg.is_file():
                shutil.copy(seg, dst / "SEG" / seg.name)
    return dst


@pytest.fixture(scope="module")
def sim_gt(tmp_path_factory):
    src = shared_path(*SIM, "01_GT")
    if not src.is_dir():
        pytest.skip("track/Fluo-N2DH-SIM+ not present")
    return src


@pytest.mark.slow  # about 20 s on 2 cores (py-ctcmetrics matches every frame twice)
def test_ctc_gt_against_itself_full_sequence(sim_gt, tmp_path):
    masks, tracks = read_ctc(sim_gt)
    res = write_ctc(tmp_path / "01_RES", masks, tracks)
    scores = ctc_scores(sim_gt, res)  # all 65 frames
    assert scores == {"SEG": 1.0, "TRA": 1.0, "DET": 1.0, "LNK": 1.0, "valid": 1}


def test_ctc_gt_against_itself_first_frames(sim_gt, tmp_path):
    gt = _truncated_gt(sim_gt, tmp_path / "01_GT", 16)  # 16 frames, with divisions
    masks, tracks = read_ctc(gt)
    assert (tracks["parent"] > 0).sum() >= 2
    scores = ctc_scores(gt, write_ctc(tmp_path / "01_RES", masks, tracks), metrics=("TRA", "DET", "LNK"))
    assert scores == {"SEG": None, "TRA": 1.0, "DET": 1.0, "LNK": 1.0, "valid": 1}


def test_ctc_scores_see_errors(sim_gt, tmp_path):
    gt = _truncated_gt(sim_gt, tmp_path / "01_GT", 8)
    masks, tracks = read_ctc(gt)
    perfect = ctc_scores(gt, write_ctc(tmp_path / "ok", masks, tracks))
    assert perfect == {"SEG": 1.0, "TRA": 1.0, "DET": 1.0, "LNK": 1.0, "valid": 1}
    # break one track in two: frames 4.. of track 1 become a new track without parent
    broken = masks.copy()
    new = int(masks.max()) + 1
    broken[4:][broken[4:] == 1] = new
    b_tracks = tracks.copy()
    end1 = int(b_tracks.loc[b_tracks.label == 1, "end"].iloc[0])
    b_tracks.loc[b_tracks.label == 1, "end"] = 3
    b_tracks = pd.concat([b_tracks, pd.DataFrame([[new, 4, end1, 0]], columns=b_tracks.columns)])
    scores = ctc_scores(gt, write_ctc(tmp_path / "broken", broken, b_tracks))
    assert scores["valid"] == 1 and scores["SEG"] == 1.0 and scores["DET"] == 1.0
    assert scores["TRA"] < 1.0 and scores["LNK"] < 1.0
    # an inconsistent result (track file says label 1 lives on, masks do not) is invalid
    bad = ctc_scores(gt, write_ctc(tmp_path / "bad", broken, tracks))
    assert bad["valid"] == 0 and bad["TRA"] is None and bad["problems"]


# --------------------------------------------------------------------------- evaluate()
@pytest.mark.parametrize("name", SEG_DATASETS)
def test_evaluate_seg_ground_truth_as_prediction(shared_data, tmp_path, name):
    root = shared_data / "seg" / name
    if not root.is_dir():
        pytest.skip(f"seg/{name} not present")
    masks = sorted((root / "masks").glob("*.tif"), key=lambda p: natural_key(p.name))[:3]
    for p in masks[:2]:  # written as the CLI does: <base>.tif; the third is missing
        write_labels(tmp_path / p.name, tifffile.imread(p))
    res = evaluate(tmp_path, root, max_images=3)
    json.dumps(res)
    n_missing = max(0, len(masks) - 2)
    assert res["task"] == "segment" and res["n_images"] == len(masks) and res["n_missing"] == n_missing
    expected = (len(masks) - n_missing) / len(masks)
    assert res["AP50"] == pytest.approx(expected) and res["AP"] == pytest.approx(expected)
    assert res["F1@0.5"] == pytest.approx(expected)
    whole = evaluate(root, root / "masks", task="segment", max_images=3)  # GT folder itself as predictions
    assert (whole["AP50"], whole["AP"], whole["F1@0.5"], whole["n_missing"]) == (1.0, 1.0, 1.0, 0)


def test_evaluate_count(shared_data, tmp_path):
    root = shared_data / "count" / "vgg_cells"
    if not root.is_dir():
        pytest.skip("count/vgg_cells not present")
    points = sorted((root / "points").glob("*.csv"))[:4]
    true = [len(pd.read_csv(p)) for p in points]
    write_counts(tmp_path / "counts.csv", [(p.stem + ".png", n) for p, n in zip(points, true)])
    res = evaluate(tmp_path, root, max_images=4)
    assert (res["task"], res["n_images"], res["n_missing"]) == ("count", 4, 0)
    assert (res["MAE"], res["RMSE"]) == (0.0, 0.0)
    write_counts(tmp_path / "counts.csv", [(p.stem, n + d) for p, n, d in zip(points[:3], true, [1, -1, 2])])
    res = evaluate(tmp_path, root, max_images=4)  # last image missing -> counted as 0
    errs = np.array([1, 1, 2, true[3]])
    assert res["n_missing"] == 1 and res["missing"] == [points[3].stem]
    assert res["MAE"] == pytest.approx(errs.mean())
    assert res["RMSE"] == pytest.approx(np.sqrt((errs ** 2).mean()))
    assert evaluate(root, root, max_images=4)["MAE"] == 0.0  # GT points as predictions


def test_evaluate_track(sim_gt, tmp_path):
    gt_root = tmp_path / "Fluo-N2DH-SIM+"
    gt = _truncated_gt(sim_gt, gt_root / "01_GT", 6)
    masks, tracks = read_ctc(gt)
    write_ctc(tmp_path / "pred" / "01_RES", masks, tracks)
    for pred in (tmp_path / "pred", tmp_path / "pred" / "01_RES", gt_root):  # GT itself too
        res = evaluate(pred, gt_root)
        json.dumps(res)
        assert res["task"] == "track" and res["n_missing"] == 0
        assert [res[k] for k in ("SEG", "TRA", "DET", "LNK", "valid")] == [1.0, 1.0, 1.0, 1.0, 1]
    missing = evaluate(tmp_path / "pred" / "01_RES", gt_root / "01_GT" / "TRA", task="track")
    assert missing["TRA"] == 1.0
    none = evaluate(tmp_path, gt_root)
    assert none["n_missing"] == 1 and none["TRA"] == 0.0 and none["valid"] == 0


def test_evaluate_refuses_unknown_layouts(tmp_path):
    with pytest.raises(InputError, match="cannot tell the task"):
        evaluate(tmp_path, tmp_path)
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match="not count"):
        evaluate(tmp_path, tmp_path, task="count")
    with pytest.raises(InputError, match="no ground-truth masks"):
        evaluate(tmp_path, tmp_path)
