"""Pictures of tracking results: per-track colours, trails, track numbers, divisions.

Numpy in, ``uint8`` RGB numpy out, like :mod:`mm_core.viz` (whose overlays and colours
it uses). Frames are enlarged by a whole factor before trails and numbers are drawn, so
both stay legible on small time-lapses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from skimage.measure import regionprops_table

from mm_core.viz.images import colors_for_ids, overlay_labels, zoom_xy

__all__ = ["render_track_frame", "render_tracks", "track_centroids"]


def track_centroids(masks: np.ndarray) -> dict[int, np.ndarray]:
    """Centroid path of every track: ``{label: array (k, 3) of (t, row, col)}``."""
    paths: dict[int, list] = {}
    for t, frame in enumerate(np.asarray(masks)):
        if not frame.any():
            continue
        props = regionprops_table(frame.astype(np.int32), properties=("label", "centroid"))
        for lab, r, c in zip(props["label"], props["centroid-0"], props["centroid-1"]):
            paths.setdefault(int(lab), []).append((t, r, c))
    return {k: np.asarray(v, np.float32) for k, v in paths.items()}


def render_track_frame(
    image: np.ndarray,
    masks_t: np.ndarray,
    t: int,
    paths: dict[int, np.ndarray],
    tail: int = 6,
    opacity: float = 0.4,
    zoom: int = 1,
    numbers: bool = False,
    divisions: dict[int, list] | None = None,
) -> np.ndarray:
    """One frame of a tracking result: per-track colours, outlines, trails, numbers, divisions.

    Parameters
    ----------
    image : ndarray
        Frame ``t``, normalised, ``(H, W)`` or ``(H, W, 3)``.
    masks_t : ndarray
        ``(H, W)`` track labels of frame ``t``.
    t : int
        Frame index.
    paths : dict
        ``{track: (k, 3) array of (t, row, col)}``, as :func:`track_centroids` (a daughter's
        path may start with its parent's last position, so its trail continues the parent's).
    tail : int
        Number of past frames drawn as a trail.
    opacity : float
        Fill opacity of the objects.
    zoom : int
        Whole enlargement factor (pixel replication) before trails and numbers are drawn.
    numbers : bool
        Write each track's number on its object.
    divisions : dict, optional
        ``{frame: [(row, col), ...]}``: daughters just born, circled in white.

    Returns
    -------
    ndarray
        ``(H * zoom, W * zoom, 3)`` uint8.
    """
    from PIL import Image, ImageDraw, ImageFont

    masks_t = np.asarray(masks_t)
    top = int(max(masks_t.max(initial=0), max(paths, default=0)))
    lut = np.zeros((top + 1, 3), np.uint8)
    lut[1:] = colors_for_ids(np.arange(1, top + 1))
    out = overlay_labels(image, masks_t, opacity=opacity, colors=lut)
    zoom = max(1, int(zoom))
    if zoom > 1:
        out = np.repeat(np.repeat(out, zoom, axis=0), zoom, axis=1)
    pic = Image.fromarray(out)
    draw = ImageDraw.Draw(pic)
    width = max(1, round(zoom * 0.75))
    for lab, path in paths.items():
        seg = path[(path[:, 0] <= t) & (path[:, 0] >= t - tail)]
        if len(seg) < 2 or seg[-1, 0] != t:
            continue
        draw.line([zoom_xy(r, c, zoom) for _, r, c in seg], fill=tuple(int(v) for v in lut[lab]), width=width)
    for r, c in (divisions or {}).get(t, []):
        x, y = zoom_xy(r, c, zoom)
        rad = 5 * zoom + 3
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], outline=(255, 255, 255), width=max(2, width))
    if numbers:
        size = int(np.clip(0.04 * max(pic.size), 12, 22))
        font = ImageFont.load_default(size=size)
        for lab, path in paths.items():
            here = path[path[:, 0] == t]
            if len(here):
                x, y = zoom_xy(here[-1, 1], here[-1, 2], zoom)
                draw.text((x, y), str(lab), fill=(255, 255, 255), font=font, anchor="mm",
                          stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(pic)


def _lineage(paths: dict[int, np.ndarray], tracks) -> tuple[dict[int, np.ndarray], dict[int, list]]:
    """Daughters' paths prefixed by the parent's last position; daughters' birth places by frame."""
    if tracks is None or len(tracks) == 0:
        return paths, {}
    out, births = dict(paths), {}
    parents = tracks.loc[tracks["parent"] > 0]
    n_children = parents["parent"].value_counts()
    for lab, par in zip(parents["label"].astype(int), parents["parent"].astype(int)):
        if lab not in paths or par not in paths:
            continue
        out[lab] = np.vstack([paths[par][-1:], paths[lab]])
        if n_children.get(par, 0) >= 2:
            t0, r, c = paths[lab][0]
            births.setdefault(int(t0), []).append((float(r), float(c)))
    return out, births


def render_tracks(
    frames: Sequence[np.ndarray],
    masks: np.ndarray,
    tail: int = 6,
    opacity: float = 0.4,
    tracks=None,
    numbers: bool = False,
    min_side: int | None = None,
) -> list[np.ndarray]:
    """All frames of a tracking result drawn with :func:`render_track_frame`.

    Parameters
    ----------
    frames : sequence of ndarray
        Normalised frames.
    masks : ndarray, (T, H, W)
        Track labels.
    tail, opacity
        As :func:`render_track_frame`.
    tracks : DataFrame, optional
        ``label, begin, end, parent``: trails continue from parent to daughters and
        divisions are circled for 3 frames.
    numbers : bool
        Write track numbers.
    min_side : int, optional
        Enlarge small frames by a whole factor until the longest side reaches this.
    """
    masks = np.asarray(masks)
    side = max(masks.shape[1:], default=0)
    zoom = int(np.ceil(min_side / side)) if min_side and 0 < side < min_side else 1
    paths, births = _lineage(track_centroids(masks), tracks)
    marks = {t: [p for t0 in range(t - 2, t + 1) for p in births.get(t0, [])] for t in range(len(masks))}
    return [
        render_track_frame(f, m, t, paths, tail=tail, opacity=opacity, zoom=zoom, numbers=numbers, divisions=marks)
        for t, (f, m) in enumerate(zip(frames, masks))
    ]
