"""One image of any size: matched whole when it fits a tile, else tile by tile; one result either way.

:func:`run_image` is what the batch runs for an in-memory image and what the app calls for a
large image: the same :class:`~mm_core.pipelines.SegmentationResult` or
:class:`~mm_core.pipelines.CountResult` as :class:`mm_core.Matcher` gives, with a
``progress(fraction, "tile i/n ...")`` callback over the tiles when tiled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mm_core.batching.tiled import DEFAULT_TILE, ProgressFn, count_tiled, needs_tiling, segment_tiled, tile_fn
from mm_core.errors import InputError
from mm_core.io.lazy import LazyImage

__all__ = ["exemplar_boxes", "run_image"]


def exemplar_boxes(boxes, shape: tuple[int, int]) -> np.ndarray | None:
    """Exemplar boxes validated against the whole image (None: automatic mode)."""
    from mm_core.io.limits import Limits
    from mm_core.transforms import prepare_boxes

    return prepare_boxes(boxes, shape, max_boxes=Limits.resolve().max_boxes) if boxes is not None and len(boxes) else None


def run_image(matcher, task: str, image, boxes=None, progress: ProgressFn | None = None, pixel_size=None,
              tile: int = DEFAULT_TILE, overlap: int | None = None):
    """Segment or count one image, in tiles when it is larger than ``tile`` on a side.

    Parameters
    ----------
    matcher : Matcher
    task : {"segment", "count"}
    image : ndarray, path or ImageData
        Raw intensities ``(H, W)`` or ``(H, W, 3)``; a file is read (with its calibration).
    boxes : array-like (N, 4), optional
        Exemplar boxes in image pixels (for a tiled image, those within the fitting window
        around their middle are used: :func:`mm_core.batching.tiled.segment_tiled`).
    progress : callable, optional
        ``progress(fraction, description)``; tiled: one call per tile (``"tile 3/12 segmenting"``).
    pixel_size : float, optional
        µm per pixel, overriding the file's.
    tile, overlap : int
        Tile side and overlap (pixels; overlap default from the object size).

    Returns
    -------
    SegmentationResult or CountResult
        A tiled result has ``maps=None`` and no self-check warnings of the match maps.
    """
    from mm_core.models import mode_of
    from mm_core.pipelines import CountResult, SegmentationResult, calibrated

    if task not in ("segment", "count"):
        raise InputError(f"unknown task {task!r}; choose segment or count")
    data, size, source = calibrated(image, pixel_size)
    data = np.asarray(data)
    if not needs_tiling(data.shape, tile):
        res = getattr(matcher, task)(data, boxes=boxes, progress=progress, pixel_size=size)
        res.pixel_size_source = source
        return res
    bx = exemplar_boxes(boxes, data.shape[:2])
    name = Path(image).name if isinstance(image, (str, Path)) else getattr(image, "source", "the image")
    img = LazyImage(data.astype(np.float32, copy=False), "YX" if data.ndim == 2 else "YXC", name)
    head = matcher.head(task, mode_of(bx))
    notes = {"engine_note": matcher.engine_note, "head_note": matcher.head_notes()[task],
             "pixel_size": size, "pixel_size_source": source}
    runner = tile_fn(matcher.engine, head, task)
    if task == "segment":
        labels = np.zeros(data.shape[:2], np.uint32)
        segment_tiled(img, labels, runner, tile, overlap, progress, bx)
        return SegmentationResult(labels=labels, image=data, maps=None, **notes)
    density = np.zeros(data.shape[:2], np.float32)
    summary = count_tiled(img, density, runner, tile, overlap, progress, bx)
    return CountResult(count=summary.count, density=density, points=summary.points, image=data, maps=None,
                       **notes)
