"""Whole images of any size: segmentation and counting tile by tile, in bounded memory.

An image larger than ``tile`` pixels on a side is cut into overlapping tiles
(:func:`mm_core.tiling.tile_grid`); each tile is read from disk on its own
(:class:`mm_core.io.lazy.LazyImage`), normalised with percentiles measured once on a
subsample of the whole image (so every tile sees the same intensity scale), matched
by the engine and turned into labels or a density map by the head. Label tiles are
stitched across tile borders (:class:`mm_core.tiling.LabelStitcher`: an object cut by
a border is one object); density tiles are cut to their cores, so nothing is counted
twice. Results go straight into a writable array (numpy or zarr), so only a few
tiles are ever in memory.

The tiles are engine-agnostic: the weight-free and the LDM engine are called the same
way (``tile_fn(image, diameter) -> result``), exemplar boxes are not supported on tiled images.
The overlap is chosen from the object scale measured on a probe tile at the image
centre (:func:`auto_overlap`) unless given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mm_core.engines import Engine
from mm_core.io.lazy import LazyImage
from mm_core.tiling import LabelStitcher, Tile, tile_grid
from mm_core.transforms import DEFAULT_PERCENTILES

#: Default tile side in pixels: images larger than this on a side are tiled.
DEFAULT_TILE = 2048
#: Overlap bounds (pixels) and object diameters of overlap chosen by :func:`auto_overlap`.
MIN_OVERLAP, OVERLAP_DIAMETERS = 128, 3.0

ProgressFn = Callable[[float, str], None]


@dataclass
class TiledSummary:
    """What a tiled run did."""

    shape: tuple[int, int]
    tiles: int
    overlap: int
    scale: float  #: object diameter measured on the probe tile
    n_objects: int = 0
    count: float = 0.0
    points: pd.DataFrame | None = None


def needs_tiling(shape: tuple[int, ...], tile: int = DEFAULT_TILE) -> bool:
    """True when an image of ``shape`` (H, W, ...) is larger than one tile."""
    return max(int(shape[0]), int(shape[1])) > int(tile)


class Normaliser:
    """Percentile normalisation with percentiles measured once on the whole image."""

    def __init__(
        self, img: LazyImage, low: float = DEFAULT_PERCENTILES[0], high: float = DEFAULT_PERCENTILES[1]
    ):
        sample = img.sample()
        chans = sample[..., None] if sample.ndim == 2 else sample
        self.lo, self.span = [], []
        for c in range(chans.shape[-1]):
            v = chans[..., c][np.isfinite(chans[..., c])]
            lo, hi = np.percentile(v, [low, high]) if v.size else (0.0, 0.0)
            self.lo.append(float(lo))
            self.span.append(float(hi - lo) if hi - lo > 1e-12 * max(1.0, abs(hi)) else 0.0)

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Normalise a raw float32 tile (NaN/inf -> 0)."""
        out = np.zeros(raw.shape, np.float32)
        chans = raw[..., None] if raw.ndim == 2 else raw
        o = out[..., None] if raw.ndim == 2 else out
        for c, (lo, span) in enumerate(zip(self.lo, self.span)):
            if span > 0:
                o[..., c] = (chans[..., c] - lo) / span
        out[~np.isfinite(out)] = 0.0
        return out


def is_blank(tile_img: np.ndarray) -> bool:
    """A tile with nothing to analyse (constant)."""
    return float(np.ptp(tile_img)) <= 1e-6


def probe_scale(
    img: LazyImage, norm: Normaliser, scale_fn: Callable[[np.ndarray], float], tile: int
) -> float:
    """Object diameter measured on the tile at the image centre (0 when it is blank)."""
    h, w = img.shape
    y0, x0 = max(0, (h - tile) // 2), max(0, (w - tile) // 2)
    probe = norm(img.read(y0, min(h, y0 + tile), x0, min(w, x0 + tile)))
    return float(scale_fn(probe)) if not is_blank(probe) else 0.0


def auto_overlap(scale: float, tile: int) -> int:
    """:data:`OVERLAP_DIAMETERS` object diameters, at least :data:`MIN_OVERLAP`, at most half a tile."""
    return int(np.clip(np.ceil(OVERLAP_DIAMETERS * scale), MIN_OVERLAP, tile // 2))


def _grid(img, norm, scale_fn, tile, overlap) -> tuple[list[Tile], int, float]:
    scale = probe_scale(img, norm, scale_fn, tile)
    overlap = auto_overlap(scale, tile) if overlap is None else int(overlap)
    return tile_grid(img.shape, tile, overlap), overlap, scale


def _tick(progress, i, n, what):
    if progress is not None:
        progress(i / n, f"tile {i}/{n} {what}")


def segment_tiled(
    img: LazyImage,
    out,
    tile_fn: Callable[[np.ndarray], tuple[np.ndarray, float]],
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    progress: ProgressFn | None = None,
) -> TiledSummary:
    """Instance labels of a whole image, tile by tile, written into ``out``.

    Parameters
    ----------
    img : LazyImage
        The image (read one tile at a time).
    out : array-like, (H, W), uint32
        Zero-filled writable array (numpy, or zarr for images that do not fit memory).
    tile_fn : callable
        ``tile_fn(normalised_tile, diameter) -> (labels, scale)`` (see :func:`engine_tile_fns`);
        called first on the centre tile with ``diameter=None`` to measure the object
        scale, then on every tile with that diameter.
    tile : int
        Tile side in pixels.
    overlap : int, optional
        Tile overlap in pixels; default from the object scale (:func:`auto_overlap`).
    progress : callable, optional
        ``progress(fraction, description)``.

    Returns
    -------
    TiledSummary
        With ``n_objects``.
    """
    norm = Normaliser(img)
    tiles, overlap, scale = _grid(img, norm, lambda t: tile_fn(t, None)[1], tile, overlap)
    st = LabelStitcher(out, tiles)
    for i, t in enumerate(tiles):
        _tick(progress, i, len(tiles), "segmenting")
        x = norm(img.read(t.y0, t.y1, t.x0, t.x1))
        labels = np.zeros(x.shape[:2], np.uint32) if is_blank(x) else tile_fn(x, scale or None)[0]
        st.add(t, labels)
    _tick(progress, len(tiles), len(tiles), "stitching")
    n = st.finish()
    return TiledSummary(shape=img.shape, tiles=len(tiles), overlap=overlap, scale=scale, n_objects=n)


def count_tiled(
    img: LazyImage,
    out,
    tile_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, float]],
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    progress: ProgressFn | None = None,
) -> TiledSummary:
    """Density map and count of a whole image, tile by tile; each tile keeps only its core.

    Parameters
    ----------
    img : LazyImage
    out : array-like, (H, W), float32
        Writable array for the density map.
    tile_fn : callable
        ``tile_fn(normalised_tile, diameter) -> (density, points (N, 2) row/col, scale)``.
    tile, overlap, progress
        As in :func:`segment_tiled`.

    Returns
    -------
    TiledSummary
        With ``count`` (sum of the density map) and ``points`` (columns ``x``, ``y``).
    """
    norm = Normaliser(img)
    tiles, overlap, scale = _grid(img, norm, lambda t: tile_fn(t, None)[2], tile, overlap)
    total, pts = 0.0, []
    for i, t in enumerate(tiles):
        _tick(progress, i, len(tiles), "counting")
        x = norm(img.read(t.y0, t.y1, t.x0, t.x1))
        if is_blank(x):
            continue
        dens, points, _ = tile_fn(x, scale or None)
        ys, xs = t.core_in_tile
        core = np.asarray(dens[ys, xs], np.float32)
        out[t.core] = core
        total += float(core.sum(dtype=np.float64))
        p = np.asarray(points, float).reshape(-1, 2)
        keep = (p[:, 0] >= ys.start) & (p[:, 0] < ys.stop) & (p[:, 1] >= xs.start) & (p[:, 1] < xs.stop)
        pts.append(p[keep] + [t.y0, t.x0])
    p = np.concatenate(pts) if pts else np.zeros((0, 2))
    return TiledSummary(
        shape=img.shape,
        tiles=len(tiles),
        overlap=overlap,
        scale=scale,
        count=total,
        points=pd.DataFrame({"x": p[:, 1], "y": p[:, 0]}),
    )


def tile_fn(engine: Engine, head, task: str) -> Callable:
    """The per-tile function of :func:`segment_tiled` (``task="segment"``) or :func:`count_tiled`.

    Parameters
    ----------
    engine : Engine
        Any engine (weight-free or LDM): each tile is one ``engine.match`` call. The
        weight-free engine is given the object diameter measured on the probe tile,
        so that every tile is matched at one scale; the LDM engine measures it per tile.
    head : object
        The task's head (``predict(maps, image)``, see :mod:`mm_core.heads.selection`).
    task : {"segment", "count"}

    Returns
    -------
    callable
        ``fn(normalised_tile, diameter) -> (labels, scale)`` or ``(density, points, scale)``.
    """
    fixed = getattr(engine, "name", "") == "classic"

    def run(x: np.ndarray, diameter: float | None = None):
        maps = engine.match(x, None, diameter=diameter) if fixed and diameter else engine.match(x, None)
        out = head.predict(maps, x)
        if task == "segment":
            return np.asarray(out), maps.scale
        density, points = out
        return density, np.asarray(points).reshape(-1, 2), maps.scale

    return run


def segment_large(
    image: np.ndarray,
    matcher=None,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    progress: ProgressFn | None = None,
) -> tuple[np.ndarray, TiledSummary]:
    """Tiled segmentation of an in-memory image; returns ``(labels, summary)``.

    Parameters
    ----------
    image : ndarray, (H, W) or (H, W, 3)
        Raw intensities.
    matcher : Matcher, optional
        Engine and heads (default: ``Matcher(engine="classic")``).
    tile, overlap, progress
        As in :func:`segment_tiled`.
    """
    from mm_core.models import Matcher

    matcher = matcher if matcher is not None else Matcher(engine="classic")
    arr = np.asarray(image, np.float32)
    img = LazyImage(arr, "YX" if arr.ndim == 2 else "YXC", "the image")
    out = np.zeros(arr.shape[:2], np.uint32)
    fn = tile_fn(matcher.engine, matcher.head("segment"), "segment")
    return out, segment_tiled(img, out, fn, tile, overlap, progress)
