"""Pictures of results: numpy in, ``uint8`` RGB numpy out.

Everything the app (and anyone else) shows is drawn here: instance overlays with
outlines, density and match-map heat-maps, centre dots, exemplar boxes, per-track
colours with trajectory tails, and the GIF writer for time-lapses. No function
here changes a result; they only draw it.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.draw import disk, line_aa
from skimage.measure import regionprops_table
from skimage.segmentation import find_boundaries

#: Anchor colours of the heat-map (black -> purple -> orange -> pale yellow,
#: the shape of matplotlib's "inferno", sampled at 0, .25, .5, .75, 1).
_HEAT_ANCHORS = np.array(
    [
        [0, 0, 4],
        [87, 16, 110],
        [188, 55, 84],
        [249, 142, 9],
        [252, 255, 164],
    ],
    dtype=np.float32,
)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Return a displayable ``(H, W, 3)`` uint8 image.

    ``image`` is expected normalised (0 -> black, 1 -> white, as made by
    :func:`mm_core.transforms.normalize`); values outside [0, 1] are clipped, NaN
    becomes 0. ``(H, W)`` is repeated to three channels; uint8 input is kept as is.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    return np.ascontiguousarray(arr)


def display_image(raw: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Raw intensities to a [0, 1] picture for the eye, all channels stretched together.

    Unlike :func:`mm_core.transforms.normalize` (per channel, for the engines), one pair
    of percentiles is used for every channel, so colours keep their balance and a nearly
    empty channel is not blown up into noise.
    """
    arr = np.nan_to_num(np.asarray(raw, np.float32))
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    lo, hi = np.percentile(arr, [low, high]) if arr.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros_like(arr)
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0)


def label_colors(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3)`` uint8 distinct bright colours (golden-ratio hue steps)."""
    hues = (seed * 0.137 + np.arange(n) * 0.618033988749895) % 1.0
    sats = 0.65 + 0.3 * ((np.arange(n) * 7) % 3) / 2.0
    return np.array(
        [[int(255 * c) for c in colorsys.hsv_to_rgb(h, s, 1.0)] for h, s in zip(hues, sats)], dtype=np.uint8
    ).reshape(n, 3)


def colors_for_ids(ids: np.ndarray) -> np.ndarray:
    """A colour per integer id that depends only on the id (stable across frames)."""
    ids = np.asarray(ids, dtype=np.int64)
    hues = (ids * 0.618033988749895) % 1.0
    vals = 0.8 + 0.2 * ((ids * 5) % 2)
    return np.array(
        [[int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, v)] for h, v in zip(hues, vals)], dtype=np.uint8
    ).reshape(len(ids), 3)


def overlay_labels(
    image: np.ndarray,
    labels: np.ndarray,
    opacity: float = 0.45,
    outline: bool = True,
    colors: np.ndarray | None = None,
    outline_color: Sequence[int] | None = None,
) -> np.ndarray:
    """Colour instances over an image, with outlines.

    Parameters
    ----------
    image : ndarray
        ``(H, W)`` or ``(H, W, 3)`` normalised image (or uint8 RGB).
    labels : ndarray
        ``(H, W)`` integer labels, 0 = background.
    opacity : float
        Fill opacity in [0, 1]; 0 shows only outlines.
    outline : bool
        Draw each object's inner boundary at full strength.
    colors : ndarray, optional
        ``(max_label + 1, 3)`` lookup table; default: :func:`label_colors` by rank.
    outline_color : sequence of int, optional
        One colour for all outlines; default: the object's own colour.

    Returns
    -------
    ndarray
        ``(H, W, 3)`` uint8.
    """
    rgb = to_rgb8(image)
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {rgb.shape[:2]} differ in size")
    opacity = float(np.clip(opacity, 0.0, 1.0))
    if colors is None:
        ids = np.unique(labels[labels > 0])
        colors = np.zeros((int(labels.max(initial=0)) + 1, 3), np.uint8)
        colors[ids] = label_colors(len(ids))
    fg = labels > 0
    out = rgb.astype(np.float32)
    lut = colors[labels]
    out[fg] = (1.0 - opacity) * out[fg] + opacity * lut[fg]
    if outline:
        edge = find_boundaries(labels, mode="inner") & fg
        out[edge] = lut[edge] if outline_color is None else np.asarray(outline_color, np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def heat_colors(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to ``(..., 3)`` uint8 heat-map colours."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    i = np.minimum(v.astype(np.int64), len(_HEAT_ANCHORS) - 2)
    f = (v - i)[..., None]
    return ((1.0 - f) * _HEAT_ANCHORS[i] + f * _HEAT_ANCHORS[i + 1]).round().astype(np.uint8)


def scale_unit(values: np.ndarray, high_percentile: float = 99.5) -> np.ndarray:
    """Scale a non-negative map to [0, 1] by its ``high_percentile`` (0 stays 0)."""
    v = np.nan_to_num(np.asarray(values, np.float32))
    v = v - min(0.0, float(v.min(initial=0.0)))
    hi = float(np.percentile(v, high_percentile)) if v.size else 0.0
    if hi <= 0:
        hi = float(v.max(initial=0.0))
    return np.clip(v / hi, 0.0, 1.0) if hi > 0 else np.zeros_like(v)


def overlay_heatmap(
    image: np.ndarray, values: np.ndarray, opacity: float = 0.6, scale: bool = True
) -> np.ndarray:
    """Blend a heat-map of ``values`` (``(H, W)``) over ``image``.

    Transparency follows the value too (alpha = ``opacity`` x scaled value), so empty
    regions keep the image visible.
    """
    rgb = to_rgb8(image)
    vals = np.asarray(values, np.float32)
    if vals.shape != rgb.shape[:2]:
        raise ValueError(f"map {vals.shape} and image {rgb.shape[:2]} differ in size")
    unit = scale_unit(vals) if scale else np.clip(vals, 0, 1)
    alpha = (float(np.clip(opacity, 0.0, 1.0)) * unit)[..., None]
    out = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat_colors(unit).astype(np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def draw_points(
    rgb: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    radius: float = 2.5,
    color: Sequence[int] = (0, 255, 255),
    border: Sequence[int] | None = (0, 0, 0),
) -> np.ndarray:
    """Return a copy of ``rgb`` with a filled dot at every ``(row, col)``."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    shape = out.shape[:2]
    for r, c in zip(np.asarray(rows, float), np.asarray(cols, float)):
        if not (np.isfinite(r) and np.isfinite(c)):
            continue
        if border is not None:
            out[disk((r, c), radius + 1.0, shape=shape)] = border
        out[disk((r, c), radius, shape=shape)] = color
    return out


def draw_boxes(
    rgb: np.ndarray, boxes: np.ndarray | None, color: Sequence[int] = (255, 255, 0), width: int = 2
) -> np.ndarray:
    """Return a copy of ``rgb`` with ``x0, y0, x1, y1`` boxes drawn (x1/y1 exclusive)."""
    out = np.array(rgb, dtype=np.uint8, copy=True)
    if boxes is None:
        return out
    h, w = out.shape[:2]
    for x0, y0, x1, y1 in np.asarray(boxes, float).reshape(-1, 4):
        c0, r0 = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        c1, r1 = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
        if c1 <= c0 or r1 <= r0:
            continue
        k = max(1, min(width, (c1 - c0 + 1) // 2, (r1 - r0 + 1) // 2))
        out[r0 : r0 + k, c0:c1] = color
        out[r1 - k : r1, c0:c1] = color
        out[r0:r1, c0 : c0 + k] = color
        out[r0:r1, c1 - k : c1] = color
    return out


def upscale_nearest(rgb: np.ndarray, min_side: int = 384) -> np.ndarray:
    """Enlarge a small picture by a whole factor (pixel replication).

    The longest side then reaches ``min_side``; larger pictures are returned unchanged.
    """
    rgb = np.asarray(rgb)
    side = max(rgb.shape[:2])
    k = int(np.ceil(min_side / side)) if 0 < side < min_side else 1
    return rgb if k == 1 else np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


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
    tail: int = 10,
    opacity: float = 0.4,
) -> np.ndarray:
    """One frame of a tracking result: per-track colours, outlines and trajectory tails.

    Parameters
    ----------
    image : ndarray
        Frame ``t``, normalised, ``(H, W)`` or ``(H, W, 3)``.
    masks_t : ndarray
        ``(H, W)`` track labels of frame ``t``.
    t : int
        Frame index.
    paths : dict
        Output of :func:`track_centroids` for the whole sequence.
    tail : int
        Number of past frames drawn as a trajectory line.
    opacity : float
        Fill opacity of the objects.
    """
    masks_t = np.asarray(masks_t)
    top = int(max(masks_t.max(initial=0), max(paths, default=0)))
    lut = np.zeros((top + 1, 3), np.uint8)
    ids = np.arange(1, top + 1)
    lut[1:] = colors_for_ids(ids)
    out = overlay_labels(image, masks_t, opacity=opacity, colors=lut)
    h, w = out.shape[:2]
    for lab, path in paths.items():
        seg = path[(path[:, 0] <= t) & (path[:, 0] >= t - tail)]
        if len(seg) < 2 or seg[-1, 0] != t:
            continue
        col = lut[lab].astype(np.float32)
        for (_, r0, c0), (_, r1, c1) in zip(seg[:-1], seg[1:]):
            rr, cc, val = line_aa(int(round(r0)), int(round(c0)), int(round(r1)), int(round(c1)))
            ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
            rr, cc, val = rr[ok], cc[ok], val[ok][:, None]
            out[rr, cc] = (out[rr, cc] * (1 - val) + col * val).round().astype(np.uint8)
    return out


def render_tracks(
    frames: Sequence[np.ndarray], masks: np.ndarray, tail: int = 10, opacity: float = 0.4
) -> list[np.ndarray]:
    """All frames of a tracking result drawn with :func:`render_track_frame`."""
    paths = track_centroids(masks)
    return [
        render_track_frame(f, m, t, paths, tail=tail, opacity=opacity)
        for t, (f, m) in enumerate(zip(frames, masks))
    ]


def write_animation(
    path: str | Path, frames: Sequence[np.ndarray], fps: float = 4.0, max_side: int | None = 512
) -> Path:
    """Write uint8 RGB frames as a looping GIF (Pillow); returns the path.

    Frames larger than ``max_side`` are downsampled (nearest neighbour) to keep
    the file small enough for a browser.
    """
    from PIL import Image

    if len(frames) == 0:
        raise ValueError("no frames to write")
    path = Path(path)
    imgs = []
    for f in frames:
        im = Image.fromarray(to_rgb8(f))
        if max_side and max(im.size) > max_side:
            k = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.NEAREST)
        imgs.append(im.convert("P", palette=Image.ADAPTIVE, colors=255))
    imgs[0].save(
        path,
        save_all=True,
        append_images=imgs[1:],
        duration=int(round(1000 / fps)),
        loop=0,
        optimize=False,
        disposal=1,
    )
    return path


def match_map(maps, name: str | None = None) -> tuple[np.ndarray, str]:
    """The map to show for "show match map": ``(values at input size, its name)``.

    ``name`` picks a key of ``maps.display``; by default the first display map
    (e.g. the LDM engine's self-cross attention), else ``foreground``.
    """
    if name is None:
        name = next(iter(maps.display), "foreground") if getattr(maps, "display", None) else "foreground"
    return maps.at_input(name), name


def match_map_image(image: np.ndarray, maps, name: str | None = None, opacity: float = 0.75) -> np.ndarray:
    """Heat-map of the engine's match map over the image (uint8 RGB)."""
    values, _ = match_map(maps, name)
    return overlay_heatmap(image, values, opacity=opacity)


__all__ = [
    "colors_for_ids",
    "display_image",
    "draw_boxes",
    "draw_points",
    "heat_colors",
    "label_colors",
    "match_map",
    "match_map_image",
    "overlay_heatmap",
    "overlay_labels",
    "render_track_frame",
    "render_tracks",
    "scale_unit",
    "to_rgb8",
    "track_centroids",
    "upscale_nearest",
    "write_animation",
]
