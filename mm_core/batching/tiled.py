"""Whole images of any size: segmentation and counting tile by tile, in bounded memory.

An image larger than ``tile`` pixels on a side is cut into overlapping tiles
(:func:`mm_core.transforms.tiles.tile_grid`); each tile is read from disk on its own
(:class:`mm_core.io.lazy.LazyImage`), normalised with percentiles measured once on a
subsample of the whole image (so every tile sees the same intensity scale), matched
by the engine and turned into labels or a density map by the head. Label tiles are
stitched across tile borders (:class:`mm_core.transforms.tiles.LabelStitcher`: an object cut by
a border is one object); density tiles are cut to their cores, so nothing is counted
twice. Results go straight into a writable array (numpy or zarr), so only a few
tiles are ever in memory.

Every tile is matched alike (:class:`TileRunner`): the weight-free engine measures
what matching needs (grey projection, polarity, object scale, its pixel classifier,
exemplar templates, centre-evidence normalisation) once, on a :data:`FIT_SIDE` window at the
image centre or around the exemplar boxes (:func:`probe_window`), and applies it to
every tile, so a tiled result agrees with the untiled one; the LDM engine matches
each tile on its own (automatic mode only). The overlap is chosen from the object
scale measured on that window (:func:`auto_overlap`) unless given.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mm_core.engines import Engine
from mm_core.errors import InputError, InputWarning
from mm_core.io.lazy import LazyImage
from mm_core.progress import ProgressFn, tick
from mm_core.transforms.tiles import LabelStitcher, Tile, tile_grid
from mm_core.transforms import DEFAULT_PERCENTILES, percentile_bounds, rescale

#: Default tile side in pixels: images larger than this on a side are tiled.
DEFAULT_TILE = 2048
#: Side of the window (pixels) matching is fitted on for a tiled image (:func:`probe_window`),
#: whatever the tile size: an image up to this size is fitted whole, as when untiled.
FIT_SIDE = 2048
#: Overlap bounds (pixels) and object diameters of overlap chosen by :func:`auto_overlap`.
MIN_OVERLAP, OVERLAP_DIAMETERS = 128, 3.0

@dataclass
class TiledSummary:
    """What a tiled run did."""

    shape: tuple[int, int]
    tiles: int
    overlap: int
    scale: float  #: object diameter measured on the probe window
    n_boxes: int = 0  #: exemplar boxes used (0: automatic mode)
    n_objects: int = 0
    count: int = 0  #: whole-number count (see count_tiled)
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
        self.bounds = [percentile_bounds(chans[..., c], low, high) for c in range(chans.shape[-1])]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        """Normalise a raw float32 tile (NaN/inf -> 0)."""
        if raw.ndim == 2:
            return rescale(raw, *self.bounds[0])
        return np.stack([rescale(raw[..., c], *b) for c, b in enumerate(self.bounds)], -1)


def is_blank(tile_img: np.ndarray) -> bool:
    """A tile with nothing to analyse (constant)."""
    return float(np.ptp(tile_img)) <= 1e-6


def probe_window(shape: tuple[int, int], tile: int = FIT_SIDE,
                 boxes: np.ndarray | None = None) -> tuple[int, int, int, int]:
    """``(y0, y1, x0, x1)``: the ``tile``-sided window matching is fitted on.

    Centred on the image, or on the middle of the exemplar boxes when there are any.
    """
    h, w = shape
    cy, cx = h / 2, w / 2
    if boxes is not None and len(boxes):
        b = np.asarray(boxes, float)
        cy, cx = float(np.median((b[:, 1] + b[:, 3]) / 2)), float(np.median((b[:, 0] + b[:, 2]) / 2))
    y0 = int(np.clip(round(cy - tile / 2), 0, max(0, h - tile)))
    x0 = int(np.clip(round(cx - tile / 2), 0, max(0, w - tile)))
    return y0, min(h, y0 + tile), x0, min(w, x0 + tile)


def boxes_in_window(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """The boxes lying wholly inside ``window``, in its coordinates."""
    y0, y1, x0, x1 = window
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    inside = (b[:, 0] >= x0) & (b[:, 2] <= x1) & (b[:, 1] >= y0) & (b[:, 3] <= y1)
    return b[inside] - np.array([x0, y0, x0, y0], np.float32)


def auto_overlap(scale: float, tile: int) -> int:
    """:data:`OVERLAP_DIAMETERS` object diameters, at least :data:`MIN_OVERLAP`, at most half a tile."""
    return int(np.clip(np.ceil(OVERLAP_DIAMETERS * scale), MIN_OVERLAP, tile // 2))


def _grid(img, norm, runner, tile, overlap, boxes) -> tuple[list[Tile], int, float, int]:
    window = probe_window(img.shape, FIT_SIDE if runner.fits else tile, boxes)
    inside = boxes_in_window(boxes, window) if boxes is not None and len(boxes) else None
    if boxes is not None and len(boxes) and not len(inside):
        raise InputError(f"the exemplar boxes are spread over more than {FIT_SIDE} pixels; draw them "
                         f"within one {FIT_SIDE} x {FIT_SIDE} region of the image")
    if inside is not None and len(inside) < len(boxes):
        warnings.warn(f"{len(boxes) - len(inside)} of {len(boxes)} exemplar boxes lie outside the "
                      f"{FIT_SIDE} x {FIT_SIDE} region around their middle and were not used", InputWarning,
                      stacklevel=3)
    probe = norm(img.read(*window))
    scale = 0.0 if is_blank(probe) else float(runner.prepare(probe, inside))
    overlap = auto_overlap(scale, tile) if overlap is None else int(overlap)
    return tile_grid(img.shape, tile, overlap), overlap, scale, 0 if inside is None else len(inside)


def _tick(progress: ProgressFn | None, i: int, n: int, what: str) -> None:
    tick(progress, i / n, f"tile {i}/{n} {what}")


def segment_tiled(
    img: LazyImage,
    out,
    runner: TileRunner,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    progress: ProgressFn | None = None,
    boxes: np.ndarray | None = None,
) -> TiledSummary:
    """Instance labels of a whole image, tile by tile, written into ``out``.

    Parameters
    ----------
    img : LazyImage
        The image (read one tile at a time).
    out : array-like, (H, W), uint32
        Zero-filled writable array (numpy, or zarr for images that do not fit memory).
    runner : TileRunner
        Engine and head (:func:`tile_fn`): prepared once on a tile-sized window
        (:func:`probe_window`), then run on every tile.
    tile : int
        Tile side in pixels.
    overlap : int, optional
        Tile overlap in pixels; default from the object scale (:func:`auto_overlap`).
    progress : callable, optional
        ``progress(fraction, description)``.
    boxes : ndarray, (N, 4), optional
        Exemplar boxes ``x0, y0, x1, y1`` in image pixels; those inside the
        :data:`FIT_SIDE` window around their middle are used (``summary.n_boxes``).

    Returns
    -------
    TiledSummary
        With ``n_objects``.
    """
    norm = Normaliser(img)
    tiles, overlap, scale, n_boxes = _grid(img, norm, runner, tile, overlap, boxes)
    st = LabelStitcher(out, tiles)
    for i, t in enumerate(tiles):
        _tick(progress, i, len(tiles), "segmenting")
        x = norm(img.read(t.y0, t.y1, t.x0, t.x1))
        labels = np.zeros(x.shape[:2], np.uint32) if is_blank(x) else runner(x)[0]
        st.add(t, labels)
    _tick(progress, len(tiles), len(tiles), "stitching")
    n = st.finish()
    return TiledSummary(shape=img.shape, tiles=len(tiles), overlap=overlap, scale=scale, n_boxes=n_boxes,
                        n_objects=n)


def count_tiled(
    img: LazyImage,
    out,
    runner: TileRunner,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    progress: ProgressFn | None = None,
    boxes: np.ndarray | None = None,
) -> TiledSummary:
    """Density map and count of a whole image, tile by tile; each tile keeps only its core.

    Parameters
    ----------
    img : LazyImage
    out : array-like, (H, W), float32
        Writable array for the density map.
    runner : TileRunner
        Engine and counting head (:func:`tile_fn`); a tile gives ``(density, points (N, 2) row/col)``.
    tile, overlap, progress, boxes
        As in :func:`segment_tiled`.

    Returns
    -------
    TiledSummary
        With ``count`` (the density map's integral, rounded to a whole number) and ``points``
        (columns ``x``, ``y``, ``n``): each tile's core shares its part of the count among its
        centres as an untiled image does (:func:`mm_core.pipelines.count_from_density`), so the
        ``n`` column sums to the count.
    """
    from mm_core.pipelines import count_from_density

    norm = Normaliser(img)
    tiles, overlap, scale, n_boxes = _grid(img, norm, runner, tile, overlap, boxes)
    total, mass, tables = 0, 0.0, []
    for i, t in enumerate(tiles):
        _tick(progress, i, len(tiles), "counting")
        x = norm(img.read(t.y0, t.y1, t.x0, t.x1))
        if is_blank(x):
            continue
        dens, points = runner(x)
        ys, xs = t.core_in_tile
        core = np.asarray(dens[ys, xs], np.float32)
        out[t.core] = core
        p = np.asarray(points, float).reshape(-1, 2) - [ys.start, xs.start]
        mass += float(core.sum(dtype=np.float64))
        share = int(np.floor(mass + 0.5)) - total  # running rounding: the tiles' counts sum to the rounded total
        n, table = count_from_density(core, p[(p >= 0).all(1) & (p < core.shape).all(1)], scale or 1.0, share)
        total += n
        tables.append(table.assign(x=table["x"] + t.cx0, y=table["y"] + t.cy0))
    points = pd.concat(tables, ignore_index=True) if tables else count_from_density(np.zeros((1, 1)), [], 1.0)[1]
    return TiledSummary(shape=img.shape, tiles=len(tiles), overlap=overlap, scale=scale, n_boxes=n_boxes,
                        count=int(total), points=points)


class TileRunner:
    """One engine and one head run on the tiles of one image, matched alike.

    :meth:`prepare` is called once on the window of :func:`probe_window` (:data:`FIT_SIDE`
    wide, or one tile for an engine that cannot fit): a head with its own size search
    (``fit_scale``, the generalist head) reads the object size there too; an engine that can
    (``engine.fit``, the weight-free engine) measures there what matching needs (grey
    projection, polarity, object scale, pixel classifier, exemplar templates) and
    applies it to every tile; another engine (LDM) matches each tile on its own, in
    automatic mode. Calling the runner on a normalised tile gives the head's output:
    labels (``task="segment"``) or ``(density, points)`` (``task="count"``).
    """

    def __init__(self, engine: Engine, head, task: str):
        self.engine, self.head, self.task = engine, head, task
        self.fit = None
        self.head_scale = None  #: object size of a head with its own size search, measured once

    @property
    def fits(self) -> bool:
        """True when the engine measures once and applies to every tile (it has ``fit``)."""
        return callable(getattr(self.engine, "fit", None))

    def prepare(self, probe: np.ndarray, boxes: np.ndarray | None = None) -> float:
        """Fit on the normalised window ``probe`` (``boxes`` in its pixels); return the object diameter.

        The diameter is the head's when it reads the size itself (``fit_scale``), else the engine's.
        """
        if self.fits:
            self.fit = self.engine.fit(probe, boxes)
            if callable(getattr(self.head, "fit_scale", None)):  # a learned head reads the size itself
                self.head_scale = self.head.fit_scale(self.engine.match(probe, fit=self.fit), probe)
            return float(self.head_scale or self.fit.object_diameter)
        if boxes is not None and len(boxes):
            raise InputError(f"exemplar boxes on an image processed in tiles need the weight-free engine "
                             f"(--engine classic); the {getattr(self.engine, 'name', 'chosen')} engine matches "
                             "each tile on its own")
        return float(self.engine.match(probe, None).scale)

    def __call__(self, x: np.ndarray):
        """The head's output for one normalised tile."""
        maps = self.engine.match(x, fit=self.fit) if self.fit is not None else self.engine.match(x, None)
        extra = {} if self.head_scale is None else {"scale": self.head_scale}
        out = self.head.predict(maps, x, **extra)
        if self.task == "segment":
            return (np.asarray(out),)
        density, points = out
        return density, np.asarray(points).reshape(-1, 2)


def tile_fn(engine: Engine, head, task: str) -> TileRunner:
    """The :class:`TileRunner` of :func:`segment_tiled` (``task="segment"``) or :func:`count_tiled`.

    Parameters
    ----------
    engine : Engine
        Any engine (weight-free or LDM): each tile is one ``engine.match`` call.
    head : object
        The task's head (``predict(maps, image)``, see :mod:`mm_core.heads.registry`).
    task : {"segment", "count"}

    Returns
    -------
    TileRunner
    """
    return TileRunner(engine, head, task)


def segment_large(
    image: np.ndarray,
    matcher=None,
    tile: int = DEFAULT_TILE,
    overlap: int | None = None,
    progress: ProgressFn | None = None,
    boxes: np.ndarray | None = None,
) -> tuple[np.ndarray, TiledSummary]:
    """Tiled segmentation of an in-memory image; returns ``(labels, summary)``.

    Parameters
    ----------
    image : ndarray, (H, W) or (H, W, 3)
        Raw intensities.
    matcher : Matcher, optional
        Engine and heads (default: ``Matcher(engine="classic")``).
    tile, overlap, progress, boxes
        As in :func:`segment_tiled`.
    """
    from mm_core.models import Matcher, mode_of

    matcher = matcher if matcher is not None else Matcher(engine="classic")
    arr = np.asarray(image, np.float32)
    img = LazyImage(arr, "YX" if arr.ndim == 2 else "YXC", "the image")
    out = np.zeros(arr.shape[:2], np.uint32)
    fn = tile_fn(matcher.engine, matcher.head("segment", mode_of(boxes)), "segment")
    return out, segment_tiled(img, out, fn, tile, overlap, progress, boxes)
