"""Per-object geometry and descriptors of a label image, shared by tracking's pipeline and linkers.

Area, centroid, equivalent diameter, which objects touch, the mean engine
descriptor inside each object, and bounding boxes (the exemplars the tracking
loop passes from one frame to the next).
"""

from __future__ import annotations

import numpy as np
from skimage.measure import regionprops_table

__all__ = ["boxes_from_labels", "frame_objects", "object_features", "touching_pairs"]


def touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Index pairs ``(a, b)``, ``a < b``, of objects that share a boundary (8-connected)."""
    pairs = set()
    for a, b in ((labels[1:, :], labels[:-1, :]), (labels[:, 1:], labels[:, :-1]),
                 (labels[1:, 1:], labels[:-1, :-1]), (labels[1:, :-1], labels[:-1, 1:])):
        hit = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[hit], b[hit]), np.maximum(a[hit], b[hit])
        pairs.update(zip((lo - 1).tolist(), (hi - 1).tolist()))
    return pairs


def frame_objects(labels: np.ndarray, features: np.ndarray | None = None) -> dict:
    """Per-object area, centroid, diameter, touching pairs (and mean descriptor) of sequential ``labels``."""
    n = int(labels.max())
    if n == 0:
        return {"n": 0, "area": np.zeros(0), "yx": np.zeros((0, 2)), "diam": np.zeros(0), "feat": None,
                "touch": set()}
    props = regionprops_table(labels, properties=("label", "area", "centroid"))
    area = np.asarray(props["area"], float)
    yx = np.stack([props["centroid-0"], props["centroid-1"]], axis=1)
    feat = None if features is None else np.asarray(features, np.float32)[np.asarray(props["label"]) - 1]
    return {"n": n, "area": area, "yx": yx, "diam": 2.0 * np.sqrt(area / np.pi), "feat": feat,
            "touch": touching_pairs(labels)}


def object_features(labels: np.ndarray, features: np.ndarray | None) -> np.ndarray | None:
    """Mean descriptor inside each object.

    Parameters
    ----------
    labels : ndarray (H, W) int
        Sequential labels ``1..N`` (0 = background).
    features : ndarray (C, h, w) or None
        Per-pixel descriptors at any resolution (``MatchMaps.features``).

    Returns
    -------
    ndarray (N, C) float32 or None
        Row ``k`` is the mean descriptor of label ``k + 1``.
    """
    if features is None:
        return None
    feats = np.asarray(features, np.float32)
    n = int(labels.max())
    rr, cc = np.nonzero(labels)
    if n == 0 or feats.ndim != 3:
        return np.zeros((n, feats.shape[0] if feats.ndim == 3 else 0), np.float32)
    h, w = feats.shape[1:]
    fr = np.minimum((rr * h) // labels.shape[0], h - 1)
    fc = np.minimum((cc * w) // labels.shape[1], w - 1)
    lab = labels[rr, cc]
    counts = np.bincount(lab, minlength=n + 1)[1:].astype(np.float32)
    out = np.stack([np.bincount(lab, weights=feats[c, fr, fc], minlength=n + 1)[1:]
                    for c in range(feats.shape[0])], axis=1)
    return (out / np.maximum(counts, 1)[:, None]).astype(np.float32)


def object_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of the objects in ``labels`` (0 when there are none)."""
    areas = np.bincount(np.asarray(labels).ravel())[1:]
    areas = areas[areas > 0]
    return float(2.0 * np.sqrt(np.median(areas) / np.pi)) if len(areas) else 0.0


def boxes_from_labels(labels: np.ndarray, max_boxes: int | None = None, pad: float = 0.0) -> np.ndarray | None:
    """Bounding boxes ``(N, 4)`` as ``x0, y0, x1, y1`` (exclusive), or None without objects.

    With ``max_boxes``, keep the ``max_boxes`` objects whose area is closest to the
    median area (deterministic), in label order. ``pad`` widens every box by that
    fraction of its size on each side (clipped to the image), as a user's box would be.
    """
    if labels.max() == 0:
        return None
    props = regionprops_table(labels, properties=("bbox", "area"))
    boxes = np.stack([props["bbox-1"], props["bbox-0"], props["bbox-3"], props["bbox-2"]],
                     axis=1).astype(np.float32)
    if max_boxes is not None and len(boxes) > max_boxes:
        area = np.asarray(props["area"], float)
        off = np.abs(np.log(area / np.median(area)))
        boxes = boxes[np.sort(np.argsort(off, kind="stable")[:max_boxes])]
    if pad:
        size = np.concatenate([boxes[:, 2:] - boxes[:, :2]] * 2, axis=1)
        boxes = boxes + pad * size * np.array([-1, -1, 1, 1], np.float32)
        h, w = labels.shape
        boxes = np.clip(boxes, 0, np.array([w, h, w, h], np.float32))
    return boxes
