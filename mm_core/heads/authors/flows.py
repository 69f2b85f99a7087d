"""Flow fields to instance masks (our own implementation of the idea of Stringer et al. 2021).

The segmentation regressor predicts, per pixel, a flow vector ``(dy, dx)`` that points
towards the centre of the object the pixel belongs to, and a cell probability (a logit).
Masks come out of three steps:

1. :func:`follow_flows`: every pixel with probability above the threshold moves along the
   (bilinearly interpolated) flow for ``niter`` Euler steps; pixels of one object end up
   in one small sink.
2. :func:`masks_from_sinks`: the end points are counted in a histogram; connected
   patches of well-visited bins (after a 3x3 dilation) are the sinks, each pixel takes the
   label of the sink it reached.
3. :func:`remove_bad_flow_masks`: the flows each mask *should* have
   (:func:`masks_to_flows`, the normalised gradient of a heat-diffusion field from the
   mask's centre) are compared with the predicted ones; masks whose mean squared
   difference exceeds ``flow_threshold`` are dropped, as are masks smaller than
   ``min_size`` or larger than ``max_size_fraction`` of the image.

Reference: C. Stringer, T. Wang, M. Michaelos, M. Pachitariu, "Cellpose: a generalist
algorithm for cellular segmentation", Nature Methods 18, 100-106 (2021). Nothing here is
copied from the cellpose code; the defaults follow the values the authors' path uses
(200 steps, probability threshold 0, flow threshold 0.4, minimum size 15 pixels, maximum
size 40 % of the image).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["compute_masks", "follow_flows", "masks_from_sinks", "masks_to_flows", "remove_bad_flow_masks"]


def _bilinear(field: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``field`` ``(C, H, W)`` sampled at float positions (clipped to the image): ``(C, N)``."""
    _, h, w = field.shape
    y = np.clip(y, 0, h - 1)
    x = np.clip(x, 0, w - 1)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros_like(y, np.int64)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros_like(x, np.int64)
    fy, fx = y - y0, x - x0
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    return (field[:, y0, x0] * (1 - fy) * (1 - fx) + field[:, y0, x1] * (1 - fy) * fx
            + field[:, y1, x0] * fy * (1 - fx) + field[:, y1, x1] * fy * fx)


def follow_flows(dp: np.ndarray, mask: np.ndarray, niter: int = 200) -> np.ndarray:
    """End points of the pixels of ``mask`` after ``niter`` Euler steps along ``dp``.

    Parameters
    ----------
    dp : ndarray, (2, H, W)
        Flow ``(dy, dx)`` per pixel, in pixels per step.
    mask : ndarray, (H, W) bool
        Pixels to move.
    niter : int

    Returns
    -------
    ndarray, (2, N) float32
        Final ``(y, x)`` of the ``N`` pixels of ``mask`` (in ``np.nonzero`` order).
    """
    dp = np.asarray(dp, np.float32)
    ys, xs = np.nonzero(mask)
    p = np.stack([ys, xs]).astype(np.float32)
    h, w = mask.shape
    for _ in range(int(niter)):
        step = _bilinear(dp, p[0], p[1])
        p[0] = np.clip(p[0] + step[0], 0, h - 1)
        p[1] = np.clip(p[1] + step[1], 0, w - 1)
    return p


def masks_from_sinks(points: np.ndarray, mask: np.ndarray, min_visits: int = 3) -> np.ndarray:
    """Label each pixel of ``mask`` by the sink its end point fell into.

    Parameters
    ----------
    points : ndarray, (2, N)
        End points from :func:`follow_flows` (same order as ``np.nonzero(mask)``).
    mask : ndarray, (H, W) bool
    min_visits : int
        Histogram bins visited fewer times are not sinks (strays join no object).

    Returns
    -------
    ndarray, (H, W) int32
    """
    h, w = mask.shape
    out = np.zeros((h, w), np.int32)
    if points.shape[1] == 0:
        return out
    iy = np.clip(np.round(points[0]).astype(np.int64), 0, h - 1)
    ix = np.clip(np.round(points[1]).astype(np.int64), 0, w - 1)
    hist = np.bincount(iy * w + ix, minlength=h * w).reshape(h, w)
    sinks, _ = ndi.label(ndi.binary_dilation(hist >= min_visits, np.ones((3, 3), bool)))
    ys, xs = np.nonzero(mask)
    out[ys, xs] = sinks[iy, ix]
    return out


def masks_to_flows(labels: np.ndarray, niter: int | None = None) -> np.ndarray:
    """Flows each object of ``labels`` would have: unit gradient of a diffusion from its centre.

    Heat is injected at each object's centre pixel (the object pixel nearest its
    centroid) and spread by repeated 3x3 averaging confined to the object; the flow is
    the normalised gradient of ``log(1 + heat)``, pointing to the centre.

    Parameters
    ----------
    labels : ndarray, (H, W) int
    niter : int, optional
        Diffusion steps (default: twice the largest object's bounding-box side).

    Returns
    -------
    ndarray, (2, H, W) float32, zero outside objects.
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    flows = np.zeros((2, h, w), np.float32)
    objs = ndi.find_objects(labels)
    if not any(s is not None for s in objs):
        return flows
    inside = labels > 0
    heat = np.zeros((h, w), np.float64)
    centres = []
    side = 1
    for i, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        yy, xx = np.nonzero(labels[sl] == i)
        yy, xx = yy + sl[0].start, xx + sl[1].start
        k = int(np.argmin((yy - yy.mean()) ** 2 + (xx - xx.mean()) ** 2))
        centres.append((yy[k], xx[k]))
        side = max(side, sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
    cy, cx = np.array(centres).T
    padded = np.pad(labels, 1)
    same = [(padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == labels) & inside
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    count = np.sum(same, axis=0).clip(1)
    for _ in range(int(niter or 2 * side)):
        heat[cy, cx] += 1.0
        hp = np.pad(heat, 1)
        acc = np.zeros_like(heat)
        for (dy, dx), ok in zip(shifts, same):
            acc += np.where(ok, hp[1 + dy:1 + dy + h, 1 + dx:1 + dx + w], 0.0)
        heat = np.where(inside, acc / count, 0.0)
    t = np.log1p(heat)
    tp = np.pad(t, 1, mode="edge")
    lp = np.pad(labels, 1)

    def neighbour(dy, dx):  # values of the same object only (else the pixel's own value)
        ok = lp[1 + dy:1 + dy + h, 1 + dx:1 + dx + w] == labels
        return np.where(ok, tp[1 + dy:1 + dy + h, 1 + dx:1 + dx + w], t)

    gy = (neighbour(1, 0) - neighbour(-1, 0)) / 2
    gx = (neighbour(0, 1) - neighbour(0, -1)) / 2
    norm = np.sqrt(gy ** 2 + gx ** 2) + 1e-20
    flows[0] = np.where(inside, gy / norm, 0)
    flows[1] = np.where(inside, gx / norm, 0)
    return flows


def remove_bad_flow_masks(labels: np.ndarray, dp: np.ndarray, flow_threshold: float = 0.4) -> np.ndarray:
    """Drop masks whose predicted flows (``dp / 5``) disagree with their own (mean squared error)."""
    if labels.max() == 0 or flow_threshold is None or flow_threshold <= 0:
        return labels
    own = masks_to_flows(labels)
    err = ((own - np.asarray(dp, np.float32) / 5.0) ** 2).sum(0)
    idx = np.arange(1, labels.max() + 1)
    mean_err = np.asarray(ndi.mean(err, labels, idx))
    bad = np.concatenate([[False], mean_err > flow_threshold])
    return np.where(bad[labels], 0, labels).astype(np.int32)


def compute_masks(dp: np.ndarray, cellprob: np.ndarray, *, niter: int = 200, cellprob_threshold: float = 0.0,
                  flow_threshold: float = 0.4, min_size: int = 15, max_size_fraction: float = 0.4) -> np.ndarray:
    """Instance labels from predicted flows and cell probability (the whole recipe above).

    Parameters
    ----------
    dp : ndarray, (2, H, W)
        Predicted flows ``(dy, dx)`` as the network gives them (about 5 x a unit vector).
    cellprob : ndarray, (H, W)
        Cell-probability logits.
    niter, cellprob_threshold, flow_threshold, min_size, max_size_fraction
        See the module docstring.

    Returns
    -------
    ndarray, (H, W) int32, labels ``1..N`` without gaps.
    """
    from skimage.segmentation import relabel_sequential

    dp = np.nan_to_num(np.asarray(dp, np.float32))
    fg = np.nan_to_num(np.asarray(cellprob, np.float32), nan=-np.inf) > cellprob_threshold
    if not fg.any():
        return np.zeros(fg.shape, np.int32)
    pts = follow_flows(dp * fg / 5.0, fg, niter)
    labels = masks_from_sinks(pts, fg)
    labels = remove_bad_flow_masks(labels, dp, flow_threshold)
    areas = np.bincount(labels.ravel())
    drop = (areas < min_size) | (areas > max_size_fraction * labels.size)
    drop[0] = False
    labels = np.where(drop[labels], 0, labels)
    return relabel_sequential(labels)[0].astype(np.int32)
