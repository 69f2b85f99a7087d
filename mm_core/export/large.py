"""Results of whole images that do not fit memory: OME-Zarr with a ``labels`` group, BigTIFF.

- :func:`create_ome_zarr` makes ``<name>.ome.zarr`` (OME-NGFF 0.4, zarr format 2, which
  napari's ome-zarr reader, Fiji's MoBIE/BigDataViewer and QuPath open): the image at
  full resolution (copied block by block from the input, raw values) and an empty
  label image ``labels/<label_name>`` that the tiled pipeline fills tile by tile;
- :func:`write_bigtiff` writes any 2-D array (numpy or zarr) as a tiled, zlib-compressed
  BigTIFF one tile at a time;
- :func:`object_table` measures every object (area, centroid, bounding box) block by block.

Every writer writes only at the path it is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mm_core.errors import InputError
from mm_core.measure import add_physical

#: Chunk side of the zarr arrays written here.
CHUNK = 1024
#: Tile side of the BigTIFFs written here.
TIFF_TILE = 512
#: Name of the label image inside ``labels/``.
LABEL_NAME = "segmentation"


def _multiscales(axes: list[dict], name: str, pixel_size: float | None = None) -> list[dict]:
    scale = [1.0 if a["type"] != "space" or pixel_size is None else float(pixel_size) for a in axes]
    return [{"version": "0.4", "name": name, "axes": axes,
             "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}]}]


def _space_axes(pixel_size: float | None) -> list[dict]:
    unit = "pixel" if pixel_size is None else "micrometer"
    return [{"name": "y", "type": "space", "unit": unit}, {"name": "x", "type": "space", "unit": unit}]


def create_ome_zarr(path, image, label_name: str = LABEL_NAME, dtype=np.uint32, chunk: int = CHUNK,
                    pixel_size: float | None = None):
    """Create an OME-Zarr image with an empty label image; return the label array.

    Parameters
    ----------
    path : str or Path
        The ``.ome.zarr`` folder to create (an existing one is replaced).
    image : LazyImage
        The input, copied into level ``0`` block by block (raw values, ``c`` axis for RGB).
    label_name : str
        Name of the label image (``labels/<label_name>``).
    dtype : numpy dtype
        Label dtype.
    chunk : int
        Chunk side.
    pixel_size : float, optional
        µm per pixel: the image and the labels get that ``scale`` on ``y``/``x``, unit
        ``micrometer`` (default: the image's own calibration, else unit ``pixel``, scale 1).

    Returns
    -------
    zarr.Array
        ``labels/<label_name>/0``, zero-filled, ``(H, W)``.
    """
    import shutil

    import zarr

    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    h, w = image.shape
    root = zarr.open_group(str(p), mode="w", zarr_format=2)
    if pixel_size is None:
        pixel_size = getattr(image, "pixel_size", None)
    yx = _space_axes(pixel_size)
    rgb = image.n_channels == 3
    axes = ([{"name": "c", "type": "channel"}] if rgb else []) + yx
    root.attrs["multiscales"] = _multiscales(axes, p.name, pixel_size)
    shape, chunks = ((3, h, w), (1, chunk, chunk)) if rgb else ((h, w), (chunk, chunk))
    img0 = root.create_array("0", shape=shape, chunks=chunks, dtype=image.dtype, fill_value=0,
                             chunk_key_encoding={"name": "v2", "separator": "/"})
    for y in range(0, h, chunk):
        band = image.read(y, min(h, y + chunk), 0, w).astype(image.dtype)
        img0[..., y:y + chunk, :] = np.moveaxis(band, -1, 0) if rgb else band
    labels = root.create_group("labels")
    labels.attrs["labels"] = [label_name]
    lab = labels.create_group(label_name)
    lab.attrs["multiscales"] = _multiscales(yx, label_name, pixel_size)
    lab.attrs["image-label"] = {"version": "0.4", "source": {"image": "../../"}}
    return lab.create_array("0", shape=(h, w), chunks=(chunk, chunk), dtype=dtype, fill_value=0,
                            chunk_key_encoding={"name": "v2", "separator": "/"})


def create_zarr_array(path, shape: tuple[int, int], dtype, chunk: int = CHUNK):
    """A zero-filled 2-D zarr array on disk (scratch space for a tiled run)."""
    import shutil

    import zarr

    p = Path(path)
    if p.exists():
        shutil.rmtree(p)
    return zarr.create_array(str(p), shape=tuple(shape), chunks=(chunk, chunk), dtype=dtype, fill_value=0,
                             zarr_format=2)


def _tiles(arr, tile: int):
    h, w = arr.shape
    for y in range(0, h, tile):
        band = np.asarray(arr[y:y + tile])
        for x in range(0, w, tile):
            t = band[:, x:x + tile]
            if t.shape != (tile, tile):
                t = np.pad(t, ((0, tile - t.shape[0]), (0, tile - t.shape[1])))
            yield t


def write_bigtiff(path, arr, dtype=None, tile: int = TIFF_TILE) -> Path:
    """Write a 2-D array (numpy or zarr) as a tiled zlib BigTIFF, one tile at a time.

    Parameters
    ----------
    path : str or Path
    arr : array-like, (H, W)
    dtype : numpy dtype, optional
        Stored dtype (default: the array's).
    tile : int
        TIFF tile side (a multiple of 16).

    Returns
    -------
    Path
    """
    import tifffile

    if len(arr.shape) != 2:
        raise InputError(f"a BigTIFF is written from a 2-D array, got shape {tuple(arr.shape)}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    dt = np.dtype(dtype or arr.dtype)
    tiles = (t.astype(dt, copy=False) for t in _tiles(arr, tile))
    tifffile.imwrite(p, tiles, shape=tuple(arr.shape), dtype=dt, tile=(tile, tile), bigtiff=True,
                     compression="zlib", metadata={"axes": "YX"})
    return p


def object_table(arr, block_rows: int = 512, pixel_size: float | None = None) -> pd.DataFrame:
    """Area, centroid and bounding box of every object of a label array, block by block.

    Parameters
    ----------
    arr : array-like, (H, W), integer labels numbered 1..n
    block_rows : int
        Rows read at a time.
    pixel_size : float, optional
        µm per pixel: adds ``area_um2`` and ``equivalent_diameter_um``.

    Returns
    -------
    pandas.DataFrame
        Columns ``label, area_px, centroid_x, centroid_y, bbox_x0, bbox_y0, bbox_x1, bbox_y1,
        equivalent_diameter_px`` (as :func:`mm_core.export.measurements_table`; x1/y1 exclusive),
        plus the µm columns with a pixel size.
    """
    h, w = arr.shape
    n = 0
    acc = None
    for y in range(0, h, block_rows):
        blk = np.asarray(arr[y:y + block_rows]).astype(np.int64)
        top = int(blk.max()) if blk.size else 0
        if acc is None or top + 1 > len(acc["area"]):
            size = max(top + 1, 2 * (len(acc["area"]) if acc else 1))
            new = {"area": np.zeros(size), "sy": np.zeros(size), "sx": np.zeros(size),
                   "y0": np.full(size, np.iinfo(np.int64).max), "x0": np.full(size, np.iinfo(np.int64).max),
                   "y1": np.zeros(size, np.int64), "x1": np.zeros(size, np.int64)}
            if acc is not None:
                for k in new:
                    new[k][:len(acc[k])] = acc[k]
            acc = new
        n = max(n, top)
        lab = blk.ravel()
        yy, xx = np.divmod(np.arange(lab.size), w)
        yy = yy + y
        m = lab > 0
        lab, yy, xx = lab[m], yy[m], xx[m]
        size = len(acc["area"])
        acc["area"] += np.bincount(lab, minlength=size)
        acc["sy"] += np.bincount(lab, yy, minlength=size)
        acc["sx"] += np.bincount(lab, xx, minlength=size)
        np.minimum.at(acc["y0"], lab, yy)
        np.minimum.at(acc["x0"], lab, xx)
        np.maximum.at(acc["y1"], lab, yy + 1)
        np.maximum.at(acc["x1"], lab, xx + 1)
    if acc is None or n == 0:
        empty = pd.DataFrame(columns=["label", "area_px", "centroid_x", "centroid_y",
                                      "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"], dtype=float)
        return add_physical(empty, pixel_size)
    ids = np.nonzero(acc["area"][: n + 1])[0]
    ids = ids[ids > 0]
    area = acc["area"][ids]
    table = pd.DataFrame({"label": ids, "area_px": area.astype(np.int64),
                          "centroid_x": acc["sx"][ids] / area, "centroid_y": acc["sy"][ids] / area,
                          "bbox_x0": acc["x0"][ids], "bbox_y0": acc["y0"][ids],
                          "bbox_x1": acc["x1"][ids], "bbox_y1": acc["y1"][ids]})
    return add_physical(table, pixel_size)
