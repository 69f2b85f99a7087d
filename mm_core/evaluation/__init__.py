"""Scoring results against ground truth: the metrics (:mod:`.metrics`) and whole result folders (:mod:`.score`)."""

from mm_core.evaluation.metrics import (
    IOU_THRESHOLDS,
    ap50,
    average_precision,
    count_errors,
    ctc_scores,
    f1_score,
    iou_matrix,
    mean_ap,
)
from mm_core.evaluation.score import (
    TASKS,
    detect_task,
    evaluate,
    evaluate_counting,
    evaluate_segmentation,
    evaluate_tracking,
)

__all__ = [
    "IOU_THRESHOLDS", "TASKS", "ap50", "average_precision", "count_errors", "ctc_scores", "detect_task",
    "evaluate", "evaluate_counting", "evaluate_segmentation", "evaluate_tracking", "f1_score", "iou_matrix",
    "mean_ap",
]
