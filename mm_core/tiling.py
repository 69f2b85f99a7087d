"""Overlapping tiles and their blending weights: the one tiler of the package.

Used wherever an image (or a working grid) is processed window by window: the LDM
engine's tiled matching (:mod:`mm_core.engines.ldm.tiling`) and the learned heads'
tiled inference (:meth:`mm_core.heads.learned.base.LearnedHead.predict_dense`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["blend_window", "tile_starts"]


def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Evenly spread starts of ``tile``-long windows covering ``length``.

    Parameters
    ----------
    length : int
        Size of the axis to cover.
    tile : int
        Window size.
    overlap : int
        Smallest overlap between neighbouring windows.
    align : int
        Starts are multiples of ``align`` (``length - tile`` should be one too).

    Returns
    -------
    list of int
        Sorted starts; ``[0]`` when one window covers the axis. The last window
        ends exactly at ``length``.
    """
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = int(np.ceil((length - tile) / step)) + 1
    return sorted({round(i * (length - tile) / (n - 1) / align) * align for i in range(n)})


def blend_window(shape: tuple[int, int], overlap: int) -> np.ndarray:
    """Weights for blending overlapping tiles, ramping linearly over ``overlap`` pixels.

    Parameters
    ----------
    shape : tuple of int
        ``(h, w)`` of one tile.
    overlap : int
        Ramp length at each edge (capped at half the tile side).

    Returns
    -------
    ndarray, (h, w) float32
        Outer product of two 1-D ramps; > 0 everywhere, 1 in the tile's interior.
    """
    ramps = []
    for n in shape:
        ov = min(int(overlap), n // 2)
        ramp = np.ones(n, np.float32)
        if ov > 0:
            edge = (np.arange(ov, dtype=np.float32) + 0.5) / ov
            ramp[:ov] = np.minimum(ramp[:ov], edge)
            ramp[-ov:] = np.minimum(ramp[-ov:], edge[::-1])
        ramps.append(ramp)
    return np.outer(ramps[0], ramps[1])
