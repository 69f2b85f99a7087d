"""Tracking head: segment every frame by matching, then link objects between frames.

The scheme (as in the paper): frame 0 is matched against the user's boxes (or in
automatic mode); every later frame ``t`` is matched using frame ``t-1``'s objects as
exemplars (at most ``MAX_EXEMPLARS``) and segmented with
:func:`mm_core.heads.segmentation.instances_from_maps`.
Objects are then linked by :func:`mm_core.heads.linking.link_labels`.
"""

from __future__ import annotations

import numpy as np
from skimage.segmentation import relabel_sequential

from mm_core.heads.linking import (
    TRACK_COLUMNS,
    LinkParams,
    boxes_from_labels,
    link_labels,
    link_pair,
    object_features,
    touching_pairs,
)

#: Exemplars passed on from one frame to the next: every object of the previous frame,
#: up to this many (those closest to the median size: fragments and merges make poor
#: exemplars). Bounds the engine's cost on crowded frames; on Fluo-N2DH-SIM+ passing
#: only 8 or 16 objects lowered TRA from 0.98 to 0.91-0.92 (classic engine).
MAX_EXEMPLARS = 64
#: Chaining exemplars can drift: on the bundled time-lapse the estimated object scale
#: shrank from 18.5 to 11.4 px in 5 frames, then frames over-segmented. When a frame's
#: scale leaves [scale0 / SCALE_DRIFT, scale0 * SCALE_DRIFT] of frame 0's, the frame is
#: matched again with the seed (the user's boxes, or automatic mode). Widening the chained
#: boxes instead (10% a side) lowered SEG on Fluo-N2DH-SIM+ from 0.81 to 0.58.
SCALE_DRIFT = 1.3

__all__ = ["MAX_EXEMPLARS", "SCALE_DRIFT", "TRACK_COLUMNS", "LinkParams", "boxes_from_labels", "link_labels", "link_pair",
           "object_features", "touching_pairs", "track_frames"]


def track_frames(frames, engine, boxes, progress=None, keep_maps: bool = False, segmenter=None):
    """Segment every frame by matching and link the objects into tracks.

    Parameters
    ----------
    frames : list of ndarray
        Normalised frames (see :func:`mm_core.transforms.normalize`), all one size.
    engine : Engine
        Any engine (``.match(image, boxes)`` -> :class:`~mm_core.engines.base.MatchMaps`).
    boxes : ndarray (N, 4) or None
        Exemplar boxes on frame 0 (``None`` = automatic mode). Later frames use the
        previous frame's objects as exemplars.
    progress : callable, optional
        ``progress(fraction, description)``.
    keep_maps : bool
        Return every frame's match maps.
    segmenter : callable, optional
        ``segmenter(maps, frame) -> labels`` (a learned head's ``predict``); default
        :func:`mm_core.heads.segmentation.instances_from_maps`.

    Returns
    -------
    masks : ndarray (T, H, W) int32
    tracks : pandas.DataFrame
        ``label, begin, end, parent`` (CTC).
    maps : list of MatchMaps or None
    """
    from mm_core.heads.segmentation import instances_from_maps

    segmenter = instances_from_maps if segmenter is None else segmenter
    labels, feats, kept = [], [], []
    exemplars = boxes
    T = len(frames)
    for t, frame in enumerate(frames):
        if progress is not None:
            progress(0.05 + 0.85 * t / T, f"frame {t + 1}/{T}")
        maps = engine.match(frame, exemplars)
        if t == 0:
            scale0 = maps.scale
        elif not scale0 / SCALE_DRIFT <= maps.scale <= scale0 * SCALE_DRIFT:
            maps = engine.match(frame, boxes)  # the chain drifted: back to the seed
        lab = relabel_sequential(np.asarray(segmenter(maps, frame)))[0]
        labels.append(lab)
        feats.append(object_features(lab, maps.features))
        if keep_maps:
            kept.append(maps)
        prev = boxes_from_labels(lab, MAX_EXEMPLARS)
        exemplars = prev if prev is not None else boxes  # lost everything: back to the seed
    if progress is not None:
        progress(0.92, "linking")
    masks, tracks = link_labels(labels, feats)
    return masks, tracks, (kept if keep_maps else None)
