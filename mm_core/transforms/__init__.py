"""Numpy-in, numpy-out image transforms below the engines and heads.

- :mod:`.image`: intensity normalisation, grey projection, resampling, boxes, hole filling;
- :mod:`.tiles`: overlapping tiles, blending weights and label stitching (the one tiler).
"""

from mm_core.transforms.image import (
    DEFAULT_PERCENTILES,
    HOLE_AREA_FRAC,
    WHOLE_IMAGE_FRAC,
    box_diameters,
    boxes_cut_by_edge,
    fill_holes,
    normalize,
    percentile_bounds,
    prepare_boxes,
    rescale,
    resize_map,
    scale_boxes,
    to_gray,
)

__all__ = [
    "DEFAULT_PERCENTILES", "HOLE_AREA_FRAC", "WHOLE_IMAGE_FRAC", "box_diameters", "boxes_cut_by_edge", "fill_holes", "normalize",
    "percentile_bounds", "prepare_boxes", "rescale", "resize_map", "scale_boxes", "to_gray",
]
