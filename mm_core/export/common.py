"""What the writers of :mod:`mm_core.export` share: the output path check and object outlines."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mm_core.errors import InputError

__all__ = ["object_contour", "out_path"]


def out_path(path) -> Path:
    """Return ``path`` as a Path, creating its missing parent folders."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise InputError(f"cannot write the file {p}: a folder of that name exists")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


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
