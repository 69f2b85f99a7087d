"""One whole-number count shared out over the centres a counting head found.

:func:`count_from_density` is what every count (whole image or tile) reports: the density
map's integral, rounded, split over the centres so that the per-centre numbers add up to it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def count_from_density(density: np.ndarray, centres: np.ndarray, scale: float,
                       count: int | None = None) -> tuple[int, pd.DataFrame]:
    """One whole-number count that agrees with the centres and the density map.

    The count is the density's integral rounded to a whole number. Every pixel's
    density goes to its nearest centre; density lying farther than one object
    diameter (``scale``) from every centre, in a patch holding at least half an
    object, first gets a centre of its own (at the patch's density-weighted centre).
    Each centre then counts its share, rounded so that the shares sum to the count
    (largest remainders): a clump the head could not split counts more than one
    (``n`` > 1); a centre whose share rounds to zero is not reported.

    Parameters
    ----------
    density : ndarray, (H, W)
    centres : ndarray, (N, 2)
        ``(row, col)`` from the head.
    scale : float
        Object diameter in pixels.
    count : int, optional
        The whole number to share out (default: the density's integral, rounded); the
        tiles of a large image pass their part of the image's rounded total.

    Returns
    -------
    count : int
    points : DataFrame
        Columns ``x``, ``y`` (x = column) and ``n``; ``points["n"].sum() == count``.
    """
    from scipy import ndimage as ndi

    dens = np.clip(np.nan_to_num(np.asarray(density, np.float64)), 0, None)
    count = int(np.floor(dens.sum() + 0.5)) if count is None else int(count)
    pts = np.asarray(centres, float).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    pts = np.clip(np.round(pts), 0, np.array(dens.shape) - 1).astype(int)
    empty = pd.DataFrame({"x": pd.Series(dtype=float), "y": pd.Series(dtype=float), "n": pd.Series(dtype=int)})
    if count == 0 or dens.size == 0:
        return 0, empty
    seeds = np.zeros(dens.shape, bool)
    seeds[pts[:, 0], pts[:, 1]] = True
    far = ndi.distance_transform_edt(~seeds) > max(float(scale), 1.0) if seeds.any() else np.ones_like(seeds)
    patches, n_patch = ndi.label(far & (dens > 1e-6))
    if n_patch:
        idx = np.arange(1, n_patch + 1)
        mass = ndi.sum(dens, patches, idx)
        extra = [ndi.center_of_mass(dens, patches, i) for i, m in zip(idx, mass) if m >= 0.5]
        if extra:
            pts = np.vstack([pts, np.round(extra).astype(int)])
    if len(pts) == 0:
        pts = np.array([np.unravel_index(int(np.argmax(dens)), dens.shape)])
    pts = np.unique(pts, axis=0)
    seeds[:] = False
    seeds[pts[:, 0], pts[:, 1]] = True
    _, (ri, ci) = ndi.distance_transform_edt(~seeds, return_indices=True)
    owner = np.full(dens.shape, -1, np.int64)
    owner[pts[:, 0], pts[:, 1]] = np.arange(len(pts))
    share = np.bincount(owner[ri, ci].ravel(), weights=dens.ravel(), minlength=len(pts))
    share *= count / max(share.sum(), 1e-12)
    n = np.floor(share).astype(int)
    rest = count - int(n.sum())
    if rest > 0:
        n[np.argsort(-(share - n), kind="stable")[:rest]] += 1
    keep = n > 0
    return count, pd.DataFrame({"x": pts[keep, 1].astype(float), "y": pts[keep, 0].astype(float), "n": n[keep]})
