"""Overlapping tiles, their blending weights and the stitching of label tiles: the one tiler.

Numpy in, numpy out, below the engines and the heads (no imports from the rest of
:mod:`mm_core`). Used wherever an image (or a working grid) is processed window by
window: the LDM engine's tiled matching (:mod:`mm_core.engines.ldm.tiled_maps`), the learned
heads' tiled inference (:meth:`mm_core.heads.learned.base.LearnedHead.predict_dense`)
and whole images processed tile by tile (:mod:`mm_core.batching.tiled`).

- :func:`tile_starts` spreads overlapping windows evenly over one axis;
- :func:`blend_window` is the linear-ramp weight used to blend overlapping map tiles;
- :func:`tile_grid` lays out the tiles of a 2-D image with their *cores* (each pixel of
  the image lies in the core of exactly one tile: the seams run through the middle of
  every overlap);
- :class:`LabelStitcher` pastes instance labels tile by tile into any writable array
  (numpy or zarr) and merges the objects that a seam cuts, so an object lying across
  a tile border comes out as one object, never two.

Stitching rule: two neighbouring tiles both see their overlap strip. An object of one
tile and an object of the other are the same object when, inside the overlap strip,
they share at least :data:`MERGE_FRACTION` of the smaller one's pixels there. The
final labels take every pixel from the tile whose core holds it, and the merged ids
are joined (union-find) and numbered 1..n in a last pass over the output.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["LabelStitcher", "Tile", "blend_window", "same_objects", "stitch_labels", "tile_grid",
           "tile_starts"]

#: Two tiles' objects are one object when their overlap covers this fraction of the
#: smaller one's pixels inside the overlap strip.
MERGE_FRACTION = 0.5
#: Rows per block in the final relabelling pass (bounded memory).
BLOCK_ROWS = 1024

def tile_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Evenly spread starts of ``tile``-long windows covering ``length``.

    Parameters
    ----------
    length : int
        Size of the axis to cover.
    tile : int
        Window size.
    overlap : int
        Smallest overlap between neighbouring windows.
    align : int
        Starts are multiples of ``align`` (``length - tile`` should be one too).

    Returns
    -------
    list of int
        Sorted starts; ``[0]`` when one window covers the axis. The last window
        ends exactly at ``length``.
    """
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    n = int(np.ceil((length - tile) / step)) + 1
    return sorted({round(i * (length - tile) / (n - 1) / align) * align for i in range(n)})


def blend_window(shape: tuple[int, int], overlap: int) -> np.ndarray:
    """Weights for blending overlapping tiles, ramping linearly over ``overlap`` pixels.

    Parameters
    ----------
    shape : tuple of int
        ``(h, w)`` of one tile.
    overlap : int
        Ramp length at each edge (capped at half the tile side).

    Returns
    -------
    ndarray, (h, w) float32
        Outer product of two 1-D ramps; > 0 everywhere, 1 in the tile's interior.
    """
    ramps = []
    for n in shape:
        ov = min(int(overlap), n // 2)
        ramp = np.ones(n, np.float32)
        if ov > 0:
            edge = (np.arange(ov, dtype=np.float32) + 0.5) / ov
            ramp[:ov] = np.minimum(ramp[:ov], edge)
            ramp[-ov:] = np.minimum(ramp[-ov:], edge[::-1])
        ramps.append(ramp)
    return np.outer(ramps[0], ramps[1])


@dataclass(frozen=True)
class Tile:
    """One window of a :func:`tile_grid`, with the core it owns (half-open pixel ranges)."""

    row: int
    col: int
    y0: int
    y1: int
    x0: int
    x1: int
    cy0: int  #: core rows cy0:cy1 and columns cx0:cx1, in image coordinates
    cy1: int
    cx0: int
    cx1: int

    @property
    def window(self) -> tuple[slice, slice]:
        """The tile in image coordinates."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def core(self) -> tuple[slice, slice]:
        """The core in image coordinates."""
        return slice(self.cy0, self.cy1), slice(self.cx0, self.cx1)

    @property
    def core_in_tile(self) -> tuple[slice, slice]:
        """The core in tile coordinates."""
        return slice(self.cy0 - self.y0, self.cy1 - self.y0), slice(self.cx0 - self.x0, self.cx1 - self.x0)


def _cores(starts: list[int], tile: int, length: int) -> list[tuple[int, int]]:
    ends = [min(s + tile, length) for s in starts]
    cuts = [0] + [(ends[i] + starts[i + 1]) // 2 for i in range(len(starts) - 1)] + [length]
    return [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[Tile]:
    """Overlapping tiles covering a ``(height, width)`` image, in raster order.

    Parameters
    ----------
    shape : (int, int)
        Image height and width.
    tile : int
        Tile side (tiles at the image edge are clipped to the image).
    overlap : int
        Smallest overlap of neighbouring tiles, in pixels (``< tile``).

    Returns
    -------
    list of Tile
    """
    h, w = int(shape[0]), int(shape[1])
    overlap = int(min(max(0, overlap), tile - 1))
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    cys, cxs = _cores(ys, tile, h), _cores(xs, tile, w)
    return [Tile(r, c, y0, min(y0 + tile, h), x0, min(x0 + tile, w), *cys[r], *cxs[c])
            for r, y0 in enumerate(ys) for c, x0 in enumerate(xs)]


class _UnionFind:
    def __init__(self):
        self.parent = np.zeros(1, np.int64)  # id 0 = background

    def grow(self, n: int) -> None:
        old = len(self.parent)
        if n > old:
            self.parent = np.concatenate([self.parent, np.arange(old, n, dtype=np.int64)])

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return int(root)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        p = self.parent.copy()  # a root is its own parent; follow parents until nothing moves
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p
            p = q


def same_objects(a: np.ndarray, b: np.ndarray, fraction: float = MERGE_FRACTION) -> list[tuple[int, int]]:
    """Pairs ``(id in a, id in b)`` that are one object seen by two tiles.

    Parameters
    ----------
    a, b : ndarray of int, same shape
        The two tiles' labels over their common overlap strip.
    fraction : float
        Shared pixels needed, as a fraction of the smaller object's pixels in the strip.

    Returns
    -------
    list of (int, int)
    """
    a = np.asarray(a).ravel().astype(np.int64)
    b = np.asarray(b).ravel().astype(np.int64)
    both = (a > 0) & (b > 0)
    if not both.any():
        return []
    ida, na = np.unique(a[a > 0], return_counts=True)
    idb, nb = np.unique(b[b > 0], return_counts=True)
    area_a, area_b = dict(zip(ida.tolist(), na.tolist())), dict(zip(idb.tolist(), nb.tolist()))
    pairs, inter = np.unique(np.stack([a[both], b[both]], 1), axis=0, return_counts=True)
    return [(int(p), int(q)) for (p, q), n in zip(pairs, inter)
            if n >= fraction * min(area_a[int(p)], area_b[int(q)])]


class LabelStitcher:
    """Paste label tiles (in :func:`tile_grid` order) into ``out`` and merge cut objects.

    Parameters
    ----------
    out : array-like, (height, width), unsigned integer
        Writable output (numpy array or zarr array), zero-filled.
    tiles : list of Tile
        The grid the label tiles come from (:func:`tile_grid`).

    Notes
    -----
    Only the overlap strips that later tiles need are kept in memory, so memory stays
    bounded by a few tiles whatever the image size. Call :meth:`add` once per tile, in
    order, then :meth:`finish`.
    """

    def __init__(self, out, tiles: list[Tile]):
        self.out, self.tiles = out, tiles
        self.next_id = 1
        self.uf = _UnionFind()
        self._strips: dict[tuple[int, int], tuple[Tile, np.ndarray]] = {}
        self._kept: list[np.ndarray] = []  # provisional ids with pixels in a core

    def _neighbour_strips(self, t: Tile, glob: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for key in ((t.row, t.col - 1), (t.row - 1, t.col)):
            if key not in self._strips:
                continue
            n, nlab = self._strips[key]
            ys, xs = slice(max(t.y0, n.y0), min(t.y1, n.y1)), slice(max(t.x0, n.x0), min(t.x1, n.x1))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                continue
            yield (nlab[ys.start - n.y0:ys.stop - n.y0, xs.start - n.x0:xs.stop - n.x0],
                   glob[ys.start - t.y0:ys.stop - t.y0, xs.start - t.x0:xs.stop - t.x0])

    def add(self, tile: Tile, labels: np.ndarray) -> None:
        """Add the labels of one tile (any integer ids, 0 = background)."""
        lab = np.asarray(labels)
        if lab.shape != (tile.y1 - tile.y0, tile.x1 - tile.x0):
            raise ValueError(f"tile labels of shape {lab.shape} do not fit tile {tile}")
        ids, inv = np.unique(lab, return_inverse=True)
        has_bg = ids[0] == 0
        n = len(ids) - int(has_bg)
        lut = np.zeros(len(ids), np.int64)
        lut[int(has_bg):] = np.arange(self.next_id, self.next_id + n)
        glob = lut[inv.reshape(lab.shape)].astype(np.uint32)
        self.next_id += n
        self.uf.grow(self.next_id)
        for prev, cur in self._neighbour_strips(tile, glob):
            for p, q in same_objects(prev, cur):
                self.uf.union(p, q)
        ys, xs = tile.core_in_tile
        core = glob[ys, xs]
        self.out[tile.core] = core.astype(self.out.dtype)
        self._kept.append(np.unique(core))
        self._strips[(tile.row, tile.col)] = (tile, glob)
        # keep only what the next tiles need: the rest of the previous row and this row
        done = [k for k in self._strips if k[0] < tile.row - 1 or (k[0] == tile.row - 1 and k[1] <= tile.col)]
        for key in done:
            del self._strips[key]

    def lookup(self) -> np.ndarray:
        """Final id of every provisional id: merged objects share one, numbered 1..n.

        Objects seen only outside the cores (in an overlap that another tile owns,
        without a match there) get no id, so the numbering has no gaps.
        """
        roots = self.uf.roots()
        kept = np.unique(np.concatenate([np.zeros(1, np.int64)] + [k.astype(np.int64) for k in self._kept]))
        present = np.unique(roots[kept])  # includes 0 (background)
        lut = np.zeros(len(roots), np.int64)
        final = np.zeros(int(roots.max()) + 1, np.int64)
        final[present] = np.arange(len(present))
        lut[:] = final[roots]
        return lut

    def finish(self, block_rows: int = BLOCK_ROWS) -> int:
        """Relabel ``out`` in place, block by block; return the number of objects."""
        lut = self.lookup()
        self._strips.clear()
        h = self.out.shape[0]
        for y in range(0, h, block_rows):
            blk = np.asarray(self.out[y:y + block_rows])
            self.out[y:y + block_rows] = lut[blk].astype(self.out.dtype)
        return int(lut.max()) if len(lut) else 0


def stitch_labels(tiles: list[Tile], label_tiles, shape: tuple[int, int], dtype=np.uint32) -> np.ndarray:
    """Stitch label tiles into one in-memory label image (see :class:`LabelStitcher`).

    Parameters
    ----------
    tiles : list of Tile
    label_tiles : iterable of ndarray
        One label array per tile, in the order of ``tiles``.
    shape : (int, int)
    dtype : numpy dtype

    Returns
    -------
    ndarray
        Labels numbered 1..n.
    """
    out = np.zeros(shape, dtype)
    st = LabelStitcher(out, tiles)
    for t, lab in zip(tiles, label_tiles):
        st.add(t, lab)
    st.finish()
    return out
