"""Pictures of results: numpy in, ``uint8`` RGB numpy out.

Everything the app (and anyone else) shows is drawn here: instance overlays with
outlines, density and match-map heat-maps, centre dots and numbers, exemplar boxes, and
the GIF writer for time-lapses (tracking results: :mod:`mm_core.viz.tracks`). No function
here changes a result; they only draw it.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from skimage.draw import disk
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
    image: np.ndarray, values: np.ndarray, opacity: float = 0.6, scale: bool = True, gamma: float = 1.0
) -> np.ndarray:
    """Blend a heat-map of ``values`` (``(H, W)``) over ``image``.

    Transparency follows the value too (alpha = ``opacity`` x scaled value ** ``gamma``),
    so empty regions keep the image visible; ``gamma`` < 1 makes low values show more
    (the colours stay linear in the value, as in the legend).
    """
    rgb = to_rgb8(image)
    vals = np.asarray(values, np.float32)
    if vals.shape != rgb.shape[:2]:
        raise ValueError(f"map {vals.shape} and image {rgb.shape[:2]} differ in size")
    unit = scale_unit(vals) if scale else np.clip(vals, 0, 1)
    alpha = (float(np.clip(opacity, 0.0, 1.0)) * unit ** float(gamma))[..., None]
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


def draw_texts(
    rgb: np.ndarray, rows, cols, texts, zoom: int = 1, size: int = 13, offset: tuple[float, float] = (0, 0)
) -> np.ndarray:
    """Return a copy of ``rgb`` with white, black-edged ``texts`` drawn on it.

    ``rows``, ``cols`` are positions in the picture before a ``zoom`` times enlargement
    (``offset``: ``(dx, dy)`` in display pixels).
    """
    from PIL import Image, ImageDraw, ImageFont

    pic = Image.fromarray(np.asarray(rgb, np.uint8))
    draw, font = ImageDraw.Draw(pic), ImageFont.load_default(size=size)
    for r, c, txt in zip(np.asarray(rows, float), np.asarray(cols, float), texts):
        x, y = zoom_xy(r, c, zoom)
        draw.text((x + offset[0], y + offset[1]), str(txt), fill=(255, 255, 255), font=font, anchor="lm",
                  stroke_width=2, stroke_fill=(0, 0, 0))
    return np.asarray(pic)


def zoom_factor(shape, min_side: int = 384) -> int:
    """The whole factor :func:`upscale_nearest` enlarges a picture of ``shape`` by."""
    side = max(shape[:2])
    return int(np.ceil(min_side / side)) if 0 < side < min_side else 1


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
    k = zoom_factor(rgb.shape, min_side)
    return rgb if k == 1 else np.repeat(np.repeat(rgb, k, axis=0), k, axis=1)


def zoom_xy(r: float, c: float, zoom: int) -> tuple[float, float]:
    """Pixel ``(row, col)`` of the input to ``(x, y)`` of a picture enlarged ``zoom`` times."""
    return c * zoom + (zoom - 1) / 2.0, r * zoom + (zoom - 1) / 2.0


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
    "draw_texts",
    "heat_colors",
    "label_colors",
    "match_map",
    "match_map_image",
    "overlay_heatmap",
    "overlay_labels",
    "scale_unit",
    "to_rgb8",
    "upscale_nearest",
    "write_animation",
    "zoom_factor",
    "zoom_xy",
]
