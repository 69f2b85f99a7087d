"""Self-checks of results: signs that the match failed, each with what to try.

The pipelines (:mod:`mm_core.pipelines`) call :func:`check_segmentation`,
:func:`check_count` and :func:`check_tracks` on every result and store the returned
sentences in ``result.warnings``; the CLI prints them and the app shows them next to
the number. A check never changes a result.

What is checked (thresholds below, fixed a priori, never fitted on the dev sets; how
often each fires on them is measured by ``benchmarks/warnings.py``):

- objects far smaller or larger than the engine's estimated object size;
- most objects tiny fragments of the estimated object size;
- more objects than fit in the image at that size, or objects covering most of it;
- objects with ragged outlines (low solidity: pieces of texture, not whole objects);
- objects lying where the match map is weak (the output does not follow the match);
- a count that rests mostly on clump areas rather than on centres found;
- most tracks lasting one frame, far more tracks than objects per frame, many divisions;
- new tracks or divisions where the frames do not change (:func:`frame_change`);
- with exemplar boxes: no object found inside a box (the box sits on background and the
  matches resemble nothing in it), objects far smaller or larger than the boxes (the
  matches do not resemble the box), and a count far from the objects the matched area holds
  at the boxes' size.

Each warning ends with a suggestion that depends on the mode: in automatic mode "draw
a box around one typical object"; with one box "draw it tightly around one whole
object, or add a second box around a different-looking one".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Objects cover more than this fraction of the image: background taken for objects.
MAX_COVERAGE = 0.6
#: Median object diameter below / above these multiples of the estimated size.
SIZE_RANGE = (0.4, 2.5)
#: An object smaller than this fraction of the typical area is a fragment ...
FRAGMENT_AREA_FRAC = 0.25
#: ... and more than this fraction of fragments is "mostly fragments".
MAX_FRAGMENTS = 0.5
#: Objects times the typical area exceeding this multiple of the image area: too many.
MAX_PACKING = 1.0
#: Fraction of object pixels where the match map (foreground) is above 0.5, below which
#: the objects do not follow the match.
MIN_ON_MATCH = 0.5
#: Median solidity (area / convex-hull area) below which outlines are ragged: pieces of
#: texture or background rather than whole objects (whole nuclei are near 0.95).
MIN_SOLIDITY = 0.88
#: Solidity is measured on at most this many objects (a fixed-seed sample).
SOLIDITY_SAMPLE = 200
#: Count over centres found: above this ratio (and ``MIN_EXTRA`` more) the count rests
#: on clump areas.
MAX_COUNT_PER_CENTRE = 1.5
MIN_EXTRA = 5
#: Tracks lasting one frame: above this fraction (with at least ``MIN_TRACKS`` tracks).
MAX_SHORT_TRACKS = 0.3
MIN_TRACKS = 5
#: Tracks over the median objects per frame, above which identities are probably lost.
MAX_TRACKS_PER_OBJECT = 3.0
#: Divisions over the median objects per frame, above which fragments are taken for divisions.
MAX_DIVISIONS_PER_OBJECT = 0.5
#: A frame whose mean absolute difference from the previous one is below this fraction of
#: the previous frame's intensity range (1st to 99th percentile) "does not change": new
#: tracks or divisions starting there are signs of unstable segmentation, not of biology.
STILL_CHANGE = 0.01
#: Below this (a copy, or only rounding noise), tracking reuses the previous frame's objects.
SAME_CHANGE = 1e-3
#: Fraction of a box's pixels inside objects below which nothing was found in the box.
MIN_BOX_COVER = 0.15
#: Difference between the middle of a box and a ring around it, as a fraction of the image's
#: 1st-99th percentile range, below which the box looks like its surroundings (background).
MIN_BOX_CONTRAST = 0.08
#: Median object diameter over the box's (sqrt(width x height)) outside this range: the
#: matches do not resemble the box.
BOX_SIZE_RANGE = (0.5, 2.0)
#: A count over (or under) the objects the matched area holds at the boxes' size by more than
#: this factor (and by ``MIN_EXTRA`` objects) is far from the objects seen. Overlapping cells
#: share area: on the first 8 VGG cells images (one 12-px box each) good counts (10-20 % under
#: the truth) ran 1.2-1.4x the area's estimate, so 1.35 warned on half of them.
MAX_COUNT_VS_AREA = 1.6


def suggestion(mode: str, n_boxes: int = 0) -> str:
    """What to try next, in words, for a result made in ``mode`` with ``n_boxes`` boxes."""
    if mode != "exemplar" or n_boxes == 0:
        return "Try: draw a box around one typical object."
    if n_boxes == 1:
        return ("Try: draw the box tightly around one whole object, or add a second box around a "
                "different-looking one.")
    return "Try: check that each box holds one whole, typical object, or remove the odd one out."


@dataclass
class SegmentationStats:
    """What the segmentation checks look at (also reported by ``benchmarks/warnings.py``)."""

    n_objects: int
    scale: float  #: the engine's estimated object diameter (pixels)
    median_diameter: float  #: equivalent diameter of the median object (pixels)
    coverage: float  #: fraction of the image inside objects
    fragments: float  #: fraction of objects under ``FRAGMENT_AREA_FRAC`` of the typical area
    packing: float  #: objects x typical area / image area
    on_match: float  #: fraction of object pixels where the foreground map is above 0.5
    solidity: float  #: median object solidity (area / convex-hull area)


def segmentation_stats(labels: np.ndarray, maps) -> SegmentationStats:
    """Measure what :func:`check_segmentation` judges.

    Parameters
    ----------
    labels : ndarray, (H, W) int
    maps : MatchMaps
        The maps the labels were made from (``scale``, ``foreground``).

    Returns
    -------
    SegmentationStats
    """
    labels = np.asarray(labels)
    fg = labels > 0
    areas = np.bincount(labels[fg].ravel().astype(np.int64))
    areas = areas[areas > 0].astype(float)
    scale = float(maps.scale or 0.0)
    unit = float(np.pi * (scale / 2.0) ** 2) if scale > 0 else float("nan")
    n, size = len(areas), labels.size
    med = float(2.0 * np.sqrt(np.median(areas) / np.pi)) if n else 0.0
    on = float((maps.at_input("foreground")[fg] > 0.5).mean()) if n else 1.0
    return SegmentationStats(solidity=_median_solidity(labels),
        n_objects=n, scale=scale, median_diameter=med, coverage=float(fg.sum()) / max(size, 1),
        fragments=float((areas < FRAGMENT_AREA_FRAC * unit).mean()) if n and scale > 0 else 0.0,
        packing=n * unit / max(size, 1) if scale > 0 else 0.0, on_match=on)


def _median_solidity(labels: np.ndarray) -> float:
    from skimage.measure import regionprops

    props = regionprops(labels.astype(np.int32))
    if not props:
        return 1.0
    if len(props) > SOLIDITY_SAMPLE:
        pick = np.random.default_rng(0).choice(len(props), SOLIDITY_SAMPLE, replace=False)
        props = [props[i] for i in sorted(pick)]
    return float(np.median([p.solidity for p in props if p.area >= 5] or [1.0]))


def _n_boxes(maps) -> int:
    return int(getattr(maps, "info", {}).get("n_boxes", 0) or 0)


def _box_sides(boxes) -> np.ndarray:
    b = np.asarray(boxes, float).reshape(-1, 4)
    return np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1).clip(1, None)


def box_contrast(image: np.ndarray, box) -> float:
    """How much the middle of a box differs from a ring around it (fraction of the image's range).

    The middle half of the box against the ring of half a box side around it: the difference of
    their medians over the image's 1st-99th percentile range (gray: mean of the channels).
    """
    g = np.asarray(image, np.float32)
    g = g.mean(axis=-1) if g.ndim == 3 else g
    x0, y0, x1, y1 = (round(float(v)) for v in box)
    w, h = max(x1 - x0, 1), max(y1 - y0, 1)
    inner = g[y0 + h // 4:max(y1 - h // 4, y0 + h // 4 + 1), x0 + w // 4:max(x1 - w // 4, x0 + w // 4 + 1)]
    ring = np.zeros(g.shape, bool)
    ring[max(0, y0 - h // 2):y1 + h // 2, max(0, x0 - w // 2):x1 + w // 2] = True
    ring[max(y0, 0):y1, max(x0, 0):x1] = False
    lo, hi = np.percentile(g, [1, 99])
    if not ring.any() or not inner.size or hi <= lo:
        return 1.0
    return float(abs(np.median(inner) - np.median(g[ring])) / (hi - lo))


def background_boxes(found: np.ndarray, boxes, try_: str, image: np.ndarray | None = None) -> list[str]:
    """One warning when a box holds nothing found (``found``: a mask) or looks like its surroundings."""
    b = np.asarray(boxes, float).reshape(-1, 4).round().astype(int)
    bad = [float(found[max(y0, 0):y1, max(x0, 0):x1].mean()) < MIN_BOX_COVER if x1 > x0 and y1 > y0 else True
           for x0, y0, x1, y1 in b]
    if image is not None:
        bad = [k or box_contrast(image, box) < MIN_BOX_CONTRAST for k, box in zip(bad, b)]
    if not any(bad):
        return []
    which = "the box" if len(b) == 1 else f"{sum(bad)} of the {len(b)} boxes"
    return [(f"The box matched nothing like itself: {which} holds no object found, or looks like its "
             f"surroundings, so it probably sits on background and the objects found do not resemble it. {try_}")]


def box_warnings(labels: np.ndarray, boxes, try_: str, image: np.ndarray | None = None) -> list[str]:
    """Warnings comparing the objects found with the exemplar boxes (none without boxes).

    Parameters
    ----------
    labels : ndarray, (H, W) int
    boxes : array-like (N, 4) or None
        ``x0, y0, x1, y1`` in pixels (x1/y1 exclusive).
    try_ : str
        The suggestion ending every warning.
    image : ndarray, optional
        The (normalised) image: a box whose middle looks like its surroundings
        (:func:`box_contrast` under :data:`MIN_BOX_CONTRAST`) sits on background.

    Returns
    -------
    list of str
    """
    if boxes is None or not len(boxes) or not np.asarray(labels).any():
        return []
    labels = np.asarray(labels)
    b = np.asarray(boxes, float).reshape(-1, 4).round().astype(int)
    out = background_boxes(labels > 0, b, try_, image)
    areas = np.bincount(labels[labels > 0].ravel().astype(np.int64))
    med = float(2.0 * np.sqrt(np.median(areas[areas > 0]) / np.pi))
    box_d = float(np.median(np.sqrt(_box_sides(b).prod(axis=1))))
    if not BOX_SIZE_RANGE[0] * box_d <= med <= BOX_SIZE_RANGE[1] * box_d:
        what = "smaller" if med < box_d else "larger"
        out.append(f"The objects found ({med:.0f} px across) are far {what} than the box ({box_d:.0f} px): "
                   f"the matches do not resemble the box. {try_}")
    return out


def check_segmentation(labels: np.ndarray, maps, n_boxes: int | None = None, boxes=None,
                       image: np.ndarray | None = None) -> list[str]:
    """Warnings for an instance segmentation (empty list: nothing suspicious).

    Parameters
    ----------
    labels : ndarray, (H, W) int
    maps : MatchMaps
    n_boxes : int, optional
        Exemplar boxes used (for the suggestion); default from ``maps.info`` or ``boxes``.
    boxes : array-like (N, 4), optional
        The exemplar boxes: adds :func:`box_warnings`.
    image : ndarray, optional
        The normalised image (for the boxes' contrast with their surroundings).

    Returns
    -------
    list of str
    """
    s = segmentation_stats(labels, maps)
    if n_boxes is None:
        n_boxes = len(boxes) if boxes is not None else _n_boxes(maps)
    try_ = suggestion(maps.mode, n_boxes)
    if s.n_objects == 0:
        return [f"No objects were found. {try_}"]
    out = box_warnings(labels, boxes, try_, image)
    if s.coverage > MAX_COVERAGE:
        out.append(f"Objects cover {s.coverage:.0%} of the image: the background was probably taken "
                   f"for objects. {try_}")
    if s.scale > 0 and s.median_diameter < SIZE_RANGE[0] * s.scale:
        out.append(f"Objects are far smaller ({s.median_diameter:.0f} px across) than the estimated "
                   f"object size ({s.scale:.0f} px): objects are probably cut into pieces. {try_}")
    elif s.scale > 0 and s.median_diameter > SIZE_RANGE[1] * s.scale:
        out.append(f"Objects are far larger ({s.median_diameter:.0f} px across) than the estimated "
                   f"object size ({s.scale:.0f} px): neighbours are probably merged. {try_}")
    if s.fragments > MAX_FRAGMENTS and s.n_objects >= MIN_TRACKS:
        out.append(f"{s.fragments:.0%} of the objects are small fragments of the estimated object "
                   f"size. {try_}")
    if s.packing > MAX_PACKING:
        out.append(f"{s.n_objects:,} objects are more than fit in the image at the estimated object "
                   f"size ({s.scale:.0f} px): the image is probably tiled into pieces. {try_}")
    if s.solidity < MIN_SOLIDITY and s.n_objects >= MIN_TRACKS:
        out.append(f"The objects have ragged outlines (median solidity {s.solidity:.2f}; whole nuclei are "
                   f"near 0.95): they are probably pieces of texture or background, not whole objects. "
                   f"{try_}")
    if s.on_match < MIN_ON_MATCH:
        out.append(f"Most of the objects ({1 - s.on_match:.0%} of their area) lie where the match map "
                   f"is weak: the result does not follow the match (tick 'Show match map' to see it). "
                   f"{try_}")
    return out


def _count_vs_area(count: int, fg: np.ndarray, boxes, try_: str) -> list[str]:
    """A count far from what the matched area holds at the boxes' object size."""
    if boxes is None or not len(boxes):
        return []
    unit = float(np.median(np.pi / 4.0 * _box_sides(boxes).prod(axis=1)))  # an ellipse filling its box
    seen = float(fg.sum()) / max(unit, 1.0)
    if abs(count - seen) >= MIN_EXTRA and not seen / MAX_COUNT_VS_AREA <= count <= seen * MAX_COUNT_VS_AREA:
        what = "more" if count > seen else "fewer"
        return [(f"The count ({count:,}) is far from the objects seen: at the box's size the matched area "
                 f"holds about {seen:,.0f} objects, so either {what} were counted than the image shows or the "
                 f"box is not the size of one object. {try_}")]
    return []


def check_count(count: int, n_centres_found: int, maps, n_boxes: int | None = None, boxes=None,
                image: np.ndarray | None = None) -> list[str]:
    """Warnings for a count.

    Parameters
    ----------
    count : int
        The reported count.
    n_centres_found : int
        Object centres reported (the rows of the result's centres table).
    maps : MatchMaps
    n_boxes : int, optional
        Exemplar boxes used (for the suggestion); default from ``maps.info`` or ``boxes``.
    boxes : array-like (N, 4), optional
        The exemplar boxes: the count is compared with the matched area at their size.
    image : ndarray, optional
        The normalised image: a box that looks like its surroundings sits on background.

    Returns
    -------
    list of str
    """
    if n_boxes is None:
        n_boxes = len(boxes) if boxes is not None else _n_boxes(maps)
    try_ = suggestion(maps.mode, n_boxes)
    if count == 0:
        return [f"Nothing was counted. {try_}"]
    out = []
    fg = maps.at_input("foreground") > 0.5
    if image is not None and boxes is not None and len(boxes):
        out += background_boxes(fg, boxes, try_, image)
    out += _count_vs_area(count, fg, boxes, try_)
    cover = float(fg.mean()) if fg.size else 0.0
    if cover > MAX_COVERAGE:
        out.append(f"The match covers {cover:.0%} of the image: the background is probably counted. {try_}")
    scale = float(maps.scale or 0.0)
    if scale > 0 and count * np.pi * (scale / 2.0) ** 2 > MAX_PACKING * fg.size:
        out.append(f"{count:,} objects are more than fit in the image at the estimated object size "
                   f"({scale:.0f} px). {try_}")
    if count > MAX_COUNT_PER_CENTRE * n_centres_found and count - n_centres_found >= MIN_EXTRA:
        out.append(f"Only {n_centres_found:,} object centres were found for a count of {count:,}: most of "
                   f"the count comes from the area of clumps (the centres table says how many each "
                   f"clump counts). {try_}")
    return out


def frame_change(previous: np.ndarray, frame: np.ndarray) -> float:
    """How much ``frame`` differs from ``previous``: mean absolute difference over the
    previous frame's intensity range (1st to 99th percentile); 0 for a copy."""
    a = np.asarray(previous, np.float32)
    b = np.asarray(frame, np.float32)
    if a.shape != b.shape:
        return float("inf")
    lo, hi = np.percentile(a, [1, 99])
    return float(np.mean(np.abs(b - a)) / max(float(hi - lo), 1e-6))


def _still_births(tracks: pd.DataFrame, still: list[bool]) -> tuple[int, int]:
    """New tracks and divisions that begin at a frame that hardly differs from the one before."""
    frames = [t for t, s in enumerate(still) if s and t > 0]
    born = tracks[tracks["begin"].isin(frames)]
    parents = born.loc[born["parent"] > 0, "parent"]
    return int((born["parent"] == 0).sum()), int((parents.value_counts() >= 2).sum())


def check_tracks(masks: np.ndarray, tracks: pd.DataFrame, seed_mode: str = "automatic",
                 n_boxes: int = 0, still: list[bool] | None = None) -> list[str]:
    """Warnings for a tracking result.

    Parameters
    ----------
    masks : ndarray, (T, H, W) int
    tracks : DataFrame
        ``label, begin, end, parent``.
    seed_mode : str
        Mode of the first frame (``automatic`` or ``exemplar``).
    n_boxes : int
        Exemplar boxes on the first frame.
    still : list of bool, optional
        Per frame: it hardly differs from the previous one (``frame_change < STILL_CHANGE``).

    Returns
    -------
    list of str
    """
    try_ = suggestion(seed_mode, n_boxes)
    n = len(tracks)
    if n == 0:
        return [f"No objects were tracked. {try_}"]
    per_frame = [len(np.unique(m[m > 0])) for m in np.asarray(masks)]
    med = float(np.median(per_frame)) if per_frame else 0.0
    out = []
    short = float(((tracks["end"] - tracks["begin"]) == 0).mean())
    if n >= MIN_TRACKS and short > MAX_SHORT_TRACKS and len(per_frame) > 2:
        out.append(f"{short:.0%} of the {n:,} tracks last a single frame: objects flicker in and out "
                   f"between frames. {try_}")
    if med > 0 and n > MAX_TRACKS_PER_OBJECT * med and n >= MIN_TRACKS:
        out.append(f"{n:,} tracks for about {med:.0f} objects per frame: identities are probably lost "
                   f"between frames. {try_}")
    parents = tracks.loc[tracks["parent"] > 0, "parent"]
    n_div = int((parents.value_counts() >= 2).sum())
    if med > 0 and n_div > MAX_DIVISIONS_PER_OBJECT * med and n_div >= 3:
        out.append(f"{n_div:,} divisions for about {med:.0f} objects per frame: pieces of objects are "
                   f"probably taken for daughters. {try_}")
    new, divided = _still_births(tracks, list(still or []))
    if new + divided:
        out.append(f"{new:,} new tracks and {divided:,} divisions begin at frames that hardly differ from "
                   f"the frame before: the objects are found differently in the same picture, so tracks "
                   f"break. {try_}")
    return out


__all__ = ["SegmentationStats", "box_contrast", "box_warnings", "check_count", "check_segmentation",
           "check_tracks", "frame_change", "segmentation_stats", "suggestion"]
