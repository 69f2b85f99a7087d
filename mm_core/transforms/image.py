"""Array transforms shared by every engine, head and task.

Numpy in, numpy out. This is the one place for percentile normalisation, map
resizing and exemplar-box validation.
"""

from __future__ import annotations

import warnings

import numpy as np
from skimage.transform import resize

from mm_core.errors import InputError, InputWarning

#: Default percentiles of :func:`normalize` (as in Cellpose and StarDist).
DEFAULT_PERCENTILES = (1.0, 99.8)
#: Background holes smaller than this fraction of the typical object area count as object
#: (organelles inside EM cells, dark nucleoli). Shared by the classic engine's foreground
#: and the segmentation heads.
HOLE_AREA_FRAC = 0.5


def normalize(image: np.ndarray, low: float = DEFAULT_PERCENTILES[0],
              high: float = DEFAULT_PERCENTILES[1]) -> np.ndarray:
    """Percentile-normalise an image, per channel.

    The ``low`` percentile maps to 0 and the ``high`` one to 1; values are not
    clipped. A constant channel (or one whose percentiles coincide) becomes all
    zeros instead of dividing by zero. NaN and inf are treated as missing and
    set to 0 after normalisation.

    Parameters
    ----------
    image : ndarray
        ``(H, W)`` or ``(H, W, C)`` array of any real dtype.
    low, high : float
        Percentiles in [0, 100], ``low < high``.

    Returns
    -------
    ndarray
        float32 array of the same shape.
    """
    if not 0 <= low < high <= 100:
        raise InputError(f"normalisation percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    img = np.asarray(image, dtype=np.float32)
    if img.ndim not in (2, 3):
        raise InputError(f"expected a 2-D image (H, W) or (H, W, C), got an array of shape {img.shape}")
    chans = img[..., None] if img.ndim == 2 else img
    out = np.zeros_like(chans, dtype=np.float32)
    for c in range(chans.shape[-1]):
        out[..., c] = rescale(chans[..., c], *percentile_bounds(chans[..., c], low, high))
    return out[..., 0] if img.ndim == 2 else out


def percentile_bounds(values: np.ndarray, low: float = DEFAULT_PERCENTILES[0],
                      high: float = DEFAULT_PERCENTILES[1]) -> tuple[float, float]:
    """The ``low`` and ``high`` percentiles of the finite ``values`` (``(0, 0)`` when there are none)."""
    v = np.asarray(values)
    v = v[np.isfinite(v)]
    return tuple(np.percentile(v, [low, high])) if v.size else (0.0, 0.0)


def rescale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(values - lo) / (hi - lo)`` as float32; all zeros when ``hi`` and ``lo`` coincide, NaN/inf -> 0.

    The one place percentile bounds are applied: :func:`normalize`, the engine's grey
    projection and the tiles of a large image (bounds measured once on the whole image).
    """
    v = np.asarray(values, np.float32)
    out = np.zeros(v.shape, np.float32)
    if hi - lo > 1e-12 * max(1.0, abs(hi)):
        out[...] = (v - lo) / (hi - lo)
    out[~np.isfinite(v)] = 0.0
    return out


def to_gray(image: np.ndarray) -> np.ndarray:
    """Return a single-channel float32 view: the channel mean for ``(H, W, C)``."""
    img = np.asarray(image, dtype=np.float32)
    return img if img.ndim == 2 else img.mean(axis=-1)


def resize_map(arr: np.ndarray, shape: tuple[int, int], order: int = 1) -> np.ndarray:
    """Resize a ``(h, w)`` or ``(C, h, w)`` map to ``shape`` = ``(H, W)`` (float32)."""
    arr = np.asarray(arr, dtype=np.float32)
    shape = tuple(int(s) for s in shape)
    if arr.shape[-2:] == shape:
        return arr
    out_shape = shape if arr.ndim == 2 else (arr.shape[0], *shape)
    return resize(arr, out_shape, order=order, mode="edge", anti_aliasing=False,
                  preserve_range=True).astype(np.float32)


#: Share of the image area above which an exemplar box is "the whole image" (warned about).
WHOLE_IMAGE_FRAC = 0.9


def _box_array(boxes) -> np.ndarray:
    """``boxes`` as a float64 array, or an InputError saying what was given instead."""
    if isinstance(boxes, (str, bytes, dict, set)) or np.isscalar(boxes):
        raise InputError(f"exemplar boxes must be a list of [x0, y0, x1, y1], got {type(boxes).__name__} "
                         f"{str(boxes)[:40]!r}")
    try:
        arr = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise InputError("exemplar boxes must be a list of [x0, y0, x1, y1] with 4 numbers each, got "
                         f"{str(boxes)[:60]!r}") from None
    return arr


def prepare_boxes(boxes, image_shape: tuple[int, int], min_size: float = 2.0,
                  max_boxes: int | None = None) -> np.ndarray | None:
    """Validate exemplar boxes and clip them to the image.

    Parameters
    ----------
    boxes : array-like of shape (N, 4) or (4,), or None
        ``x0, y0, x1, y1`` in pixels (``x`` = column, ``y`` = row; ``x1``/``y1``
        exclusive). ``None`` or an empty list means automatic mode.
    image_shape : tuple of int
        ``(H, W)`` of the image the boxes were drawn on.
    min_size : float
        Smallest accepted width and height after clipping, in pixels.
    max_boxes : int, optional
        Most boxes accepted (the pipelines pass ``MM_MAX_BOXES``); ``None`` = no cap.

    Returns
    -------
    ndarray or None
        ``(N, 4)`` float32 array of clipped boxes, or ``None`` for automatic mode.

    Raises
    ------
    InputError
        A box that is malformed, lies outside the image or is smaller than
        ``min_size`` once clipped, or more than ``max_boxes`` boxes.

    Warns
    -----
    InputWarning
        A box given with swapped corners (``x1 < x0`` or ``y1 < y0``; it is used
        with the corners put in order) or one covering most of the image.
    """
    if boxes is None:
        return None
    arr = _box_array(boxes)
    if arr.size == 0:
        return None
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise InputError(f"exemplar boxes must be given as x0, y0, x1, y1; got an array of shape {np.shape(boxes)}")
    if max_boxes is not None and len(arr) > max_boxes:
        raise InputError(f"{len(arr):,} exemplar boxes were given; at most {max_boxes} are allowed per image "
                         "(MM_MAX_BOXES); one to a few boxes around typical objects are enough")
    if not np.isfinite(arr).all():
        raise InputError("an exemplar box has a missing or non-numeric coordinate")
    h, w = image_shape[:2]
    out = []
    for x0, y0, x1, y1 in arr:
        given = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if x1 < x0 or y1 < y0:
            warnings.warn(f"exemplar box {given} has its corners swapped (x1 < x0 or y1 < y0); it was "
                          "read with the corners put in order", InputWarning, stacklevel=2)
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        desc = f"({x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
            raise InputError(f"exemplar box {desc} lies outside the {w}x{h} image")
        cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
        if cx1 - cx0 < min_size or cy1 - cy0 < min_size:
            raise InputError(f"exemplar box {desc} is empty or smaller than {min_size:g} pixels inside the {w}x{h} image")
        if (cx1 - cx0) * (cy1 - cy0) >= WHOLE_IMAGE_FRAC * h * w:
            warnings.warn(f"exemplar box {desc} covers {100 * (cx1 - cx0) * (cy1 - cy0) / (h * w):.0f}% of the "
                          f"{w}x{h} image, so the whole image is the example; draw a box around one "
                          "typical object instead", InputWarning, stacklevel=2)
        out.append((cx0, cy0, cx1, cy1))
    return np.asarray(out, dtype=np.float32)


def boxes_cut_by_edge(boxes: np.ndarray, image_shape: tuple[int, int], edge: float = 1.0) -> np.ndarray:
    """Whether each box reaches the image's edges, where its object is probably cut.

    Returns ``(N, 2)`` bool: column 0 the left or right edge, column 1 the top or bottom one,
    within ``edge`` pixels, for ``x0, y0, x1, y1`` boxes on an image of ``image_shape``.
    """
    b = np.asarray(boxes, float).reshape(-1, 4)
    h, w = image_shape[:2]
    return np.stack([(b[:, 0] <= edge) | (b[:, 2] >= w - edge), (b[:, 1] <= edge) | (b[:, 3] >= h - edge)], 1)


def box_diameters(boxes: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    """Object diameter each exemplar box shows: the geometric mean of its sides.

    A box on the image's edge holds an object the edge cuts (a user boxes the cell they
    see, half of it outside): its side across that edge is read as at least its other side,
    as for a round object. A box on a corner is read as a square on its longer side.

    Parameters
    ----------
    boxes : ndarray, (N, 4)
        ``x0, y0, x1, y1`` in pixels of the image (clipped to it, as :func:`prepare_boxes` does).
    image_shape : tuple of int
        ``(H, W)`` of the image.

    Returns
    -------
    ndarray, (N,)
    """
    b = np.asarray(boxes, float).reshape(-1, 4)
    bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    cut = boxes_cut_by_edge(b, image_shape)
    longer = np.maximum(bw, bh)
    return np.sqrt(np.where(cut[:, 0], longer, bw) * np.where(cut[:, 1], longer, bh))


def scale_boxes(boxes: np.ndarray | None, factor_yx: tuple[float, float]) -> np.ndarray | None:
    """Scale ``x0, y0, x1, y1`` boxes by ``(fy, fx)`` (e.g. when an image is resized)."""
    if boxes is None:
        return None
    fy, fx = factor_yx
    return np.asarray(boxes, np.float32) * np.array([fx, fy, fx, fy], np.float32)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill background holes enclosed by objects with the nearest object's label.

    Parameters
    ----------
    labels : ndarray, (H, W) int
        Instance labels, 0 = background.

    Returns
    -------
    ndarray
        A copy of ``labels`` (or ``labels`` itself when nothing is enclosed).
    """
    from scipy import ndimage as ndi

    fg = labels > 0
    holes = ndi.binary_fill_holes(fg) & ~fg
    if not holes.any():
        return labels
    _, (iy, ix) = ndi.distance_transform_edt(~fg, return_indices=True)
    out = labels.copy()
    out[holes] = labels[iy[holes], ix[holes]]
    return out
