"""What the writers of :mod:`mm_core.export` share: object outlines."""

from __future__ import annotations


import numpy as np

from mm_core.errors import InputError

__all__ = ["object_contour"]


def object_contour(mask: np.ndarray) -> np.ndarray:
    """Outline of a binary object as an ``(N, 2)`` float array of ImageJ ``x, y``.

    :func:`skimage.measure.find_contours` at level 0.5 on the mask padded by one
    pixel (so objects touching the border are closed); the longest contour (the
    outer boundary of the largest fragment) is kept. ImageJ puts pixel ``(col,
    row)`` in the square ``[col, col+1) x [row, row+1)``, so coordinates are
    shifted by +0.5 from skimage's pixel-centre convention.
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        raise InputError("cannot outline an empty object")
    rc = max(contours, key=len)[:-1]  # closed contour: last point repeats the first
    return np.stack([rc[:, 1] - 0.5, rc[:, 0] - 0.5], axis=1)
