"""Large images in the app: a zoomed view to draw boxes on, and results shrunk for display.

On a 4000² image shown 1024 pixels wide a nucleus is a few screen pixels: too small to
box. :func:`zoomed` puts a window of the image (``1/zoom`` of each side, centred where the
user chose) into the annotator instead; :func:`boxes_in_image` maps boxes drawn on that
view back to full-image pixels. :func:`shrink` makes what a run keeps for display at most
:data:`DISPLAY_SIDE` pixels a side (the downloads keep full resolution). No Gradio here.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mm_core.app import helpers as au

#: Zoom factors offered (1: the whole image).
ZOOMS = (1, 2, 4, 8, 16)
#: Longest side of a result picture on screen; larger results are shown subsampled.
DISPLAY_SIDE = 2048


def window(shape: tuple[int, int], zoom: float, cx: float, cy: float) -> tuple[int, int, int, int]:
    """The part of an image ``(H, W)`` a zoomed view shows: ``(x0, y0, x1, y1)``, x1/y1 exclusive.

    Parameters
    ----------
    shape : (int, int)
        Image height and width.
    zoom : float
        1 shows the whole image, 4 a quarter of each side.
    cx, cy : float
        Centre of the view as fractions of the width and height (0 to 1); the view is
        moved inside the image when it would cross an edge.
    """
    h, w = int(shape[0]), int(shape[1])
    zoom = max(1.0, float(zoom))
    vw, vh = max(1, math.ceil(w / zoom)), max(1, math.ceil(h / zoom))
    x0 = int(np.clip(round(float(cx) * w - vw / 2), 0, w - vw))
    y0 = int(np.clip(round(float(cy) * h - vh / 2), 0, h - vh))
    return x0, y0, x0 + vw, y0 + vh


def zoomed(loaded, zoom: float, cx: float, cy: float):
    """``loaded`` with its annotator picture replaced by the zoomed view (boxes drawn on it are
    mapped back by :func:`boxes_in_image`). The picture is written into the upload's folder."""
    x0, y0, x1, y1 = window(loaded.shape, zoom, cx, cy)
    crop = np.asarray(loaded.frames[0][y0:y1, x0:x1])
    path, scale = _write_view(crop, loaded.folder / f"view_{x0}_{y0}_{x1}_{y1}.png")
    info = dict(loaded.info, view_offset=(x0, y0), view_window=(x0, y0, x1, y1))
    return dataclasses.replace(loaded, preview=str(path), preview_scale=scale, info=info)


def _write_view(crop: np.ndarray, path, side: int = au.PREVIEW_SIDE):
    """The crop as a PNG ``side`` pixels on its long side (enlarged with square pixels, or reduced)."""
    from PIL import Image

    from mm_core import viz

    im = Image.fromarray(viz.to_rgb8(viz.display_image(crop)))
    scale = side / max(im.size)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    im.resize(size, Image.NEAREST if scale > 1 else Image.BILINEAR).save(path)
    return path, size[0] / im.width


def boxes_in_image(value, loaded) -> np.ndarray | None:
    """Exemplar boxes in full-image pixels from an annotator value drawn on ``loaded``'s view."""
    boxes = au.boxes_from_annotation(value, loaded.preview_scale)
    x0, y0 = (getattr(loaded, "info", None) or {}).get("view_offset", (0, 0))
    if boxes is None or (x0, y0) == (0, 0):
        return boxes
    return (boxes + np.asarray([x0, y0, x0, y0], np.float32)).astype(np.float32)


def view_line(loaded) -> str:
    """Where the view is, in words, for the line under the zoom controls."""
    h, w = loaded.shape
    x0, y0, x1, y1 = (getattr(loaded, "info", None) or {}).get("view_window", (0, 0, w, h))
    if (x1 - x0, y1 - y0) == (w, h):
        return "Showing the whole image."
    return (f"Showing x {x0}–{x1 - 1}, y {y0}–{y1 - 1} of {w}×{h} px; boxes drawn here are placed "
            "there in the whole image. Changing the view clears the boxes.")


def step(shape: tuple[int, ...], side: int = DISPLAY_SIDE) -> int:
    """Subsampling step that brings ``shape`` to at most ``side`` pixels a side."""
    return max(1, math.ceil(max(shape[:2]) / side))


def shrink(result, display: np.ndarray, boxes: np.ndarray | None, k: int):
    """A result and its boxes subsampled by ``k`` for the screen (``(result, display, boxes)``);
    ``display`` is the picture already subsampled by ``k``.

    Labels are subsampled, the density summed over blocks (the count is kept), the centres
    and boxes divided by the step. ``k == 1`` returns them as they are.
    """
    if k == 1:
        return result, display, boxes
    changes = {}
    if getattr(result, "labels", None) is not None:
        changes["labels"] = result.labels[::k, ::k]
    if getattr(result, "density", None) is not None:
        from skimage.measure import block_reduce

        changes["density"] = block_reduce(np.asarray(result.density, np.float32), (k, k), np.sum)
        pts = result.points.copy()
        pts["x"], pts["y"] = pts["x"] / k, pts["y"] / k
        changes["points"] = pts
    maps = result.maps
    if maps is not None:
        changes["maps"] = dataclasses.replace(maps, scale=float(maps.scale or 0) / k or maps.scale)
    small = display
    if "density" in changes:
        small = small[: changes["density"].shape[0], : changes["density"].shape[1]]
    boxes = None if boxes is None else np.asarray(boxes, np.float32) / k
    return dataclasses.replace(result, **changes), small, boxes
