"""Large images in the app: segmentation tile by tile (the library's tiling), progress per tile.

An image larger than :data:`mm_core.batching.tiled.DEFAULT_TILE` pixels on a side is
segmented with :func:`mm_core.batching.tiled.segment_large` (the same tiling the CLI uses)
and wrapped as a :class:`mm_core.pipelines.SegmentationResult`, so the downloads, the table
and the picture (shown subsampled, :mod:`mm_core.app.zoom`) work as for a small image.
"""

from __future__ import annotations

import numpy as np

from mm_core.batching.tiled import needs_tiling, segment_large
from mm_core.engines.base import MatchMaps
from mm_core.io.calibration import resolve_pixel_size
from mm_core.models import mode_of
from mm_core.pipelines import SegmentationResult


def is_large(shape: tuple[int, ...]) -> bool:
    """Whether the app segments an image of ``shape`` tile by tile."""
    return needs_tiling(tuple(shape[:2]))


def segment_tiled(matcher, frame: np.ndarray, boxes, progress, pixel_size=None) -> SegmentationResult:
    """Tiled segmentation of ``frame`` as a result the app shows like any other.

    The match maps of a tiled run are not kept (the "show match map" box then shows nothing);
    ``progress(fraction, "tile i/n ...")`` is called per tile.
    """
    arr = np.asarray(frame, np.float32)
    labels, summary = segment_large(arr, matcher, progress=progress, boxes=boxes)
    mode = mode_of(boxes)
    blank = np.zeros((1, 1), np.float32)
    maps = MatchMaps(foreground=blank, centers=blank, scale=float(summary.scale), image_shape=labels.shape,
                     engine=getattr(matcher.engine, "name", ""), mode=mode,
                     conditioning=f"tiled: {summary.tiles} tiles, overlap {summary.overlap} px")
    size, source = resolve_pixel_size(pixel_size)
    note = f"{matcher.engine_note}; tiled ({summary.tiles} tiles of up to 2048 px, overlap {summary.overlap} px)"
    return SegmentationResult(labels=labels, image=arr, maps=maps, engine_note=note,
                              head_note=matcher.head_notes().get("segment", ""), warnings=[],
                              pixel_size=size, pixel_size_source=source)
