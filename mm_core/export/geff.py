"""Tracks as GEFF, the graph exchange format that napari, TrackMate and traccuracy read.

:func:`write_geff` writes one zarr folder (``tracks.zarr`` by default) holding

- ``tracks``: the tracking graph, written with the :mod:`geff` package (directed; one
  node per object per frame with the properties ``t``, ``y``, ``x`` (centroid: in µm, the
  axes' unit ``micrometer``, when the pixel size is known, else in pixels, unit ``pixel``),
  ``area`` (pixels; ``area_um2`` too with a pixel size), ``seg_id`` (the object's id in that frame of the segmentation,
  which is also its CTC track id) and ``track_id``; one edge from each object to the
  same track's next appearance, and from a parent's last object to the first object
  of each daughter);
- ``segmentation``: the ``(T, Y, X)`` label images (OME-Zarr 0.4 axes ``t, y, x``, with the
  pixel size as the ``y``/``x`` scale so that the graph and the labels overlay),
  referenced from the graph's metadata as a related ``labels`` object whose
  ``seg_id`` node property identifies each node's pixels.

:func:`zip_geff` zips that folder and :func:`write_geff_zip` writes the same zip directly, for
downloads; both are atomic (:mod:`mm_core.io.atomic`);
:func:`read_geff` reads a graph back as node and edge tables.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from mm_core.io.atomic import atomic_dir, atomic_path, out_path
from mm_core.io.labels import label_dtype
from mm_core.measure import checked_tracks, object_rows

GRAPH_GROUP = "tracks"
SEG_GROUP = "segmentation"


def _axes(pixel_size: float | None) -> tuple[list[dict], list[float]]:
    """OME axes ``t, y, x`` and their scale: µm when the pixel size is known, else pixels."""
    unit, s = ("pixel", 1.0) if pixel_size is None else ("micrometer", float(pixel_size))
    return ([{"name": "t", "type": "time", "unit": "frame"}, {"name": "y", "type": "space", "unit": unit},
             {"name": "x", "type": "space", "unit": unit}], [1.0, s, s])


def _nodes(objects: pd.DataFrame) -> pd.DataFrame:
    """Graph nodes of :func:`mm_core.measure.object_rows`: one per object per frame, ids from 1."""
    nodes = objects.sort_values(["frame", "track_id"], ignore_index=True)
    nodes = pd.DataFrame({"t": nodes["frame"], "y": nodes["y"], "x": nodes["x"], "area": nodes["area_px"],
                          "seg_id": nodes["track_id"], "track_id": nodes["track_id"]})
    nodes.index = np.arange(1, len(nodes) + 1)
    return nodes


def _graph(objects: pd.DataFrame, table: pd.DataFrame, pixel_size: float | None = None):
    import networkx as nx

    nodes = _nodes(objects)
    s = 1.0 if pixel_size is None else float(pixel_size)
    g = nx.DiGraph()
    for nid, r in nodes.iterrows():
        extra = {} if pixel_size is None else {"area_um2": float(r.area) * s * s}
        g.add_node(int(nid), t=int(r.t), y=float(r.y) * s, x=float(r.x) * s, area=int(r.area),
                   seg_id=int(r.seg_id), track_id=int(r.track_id), **extra)
    first, last = {}, {}
    for lab, grp in nodes.groupby("seg_id"):
        ids = grp.sort_values("t").index.to_list()
        g.add_edges_from(zip(ids[:-1], ids[1:]))
        first[int(lab)], last[int(lab)] = ids[0], ids[-1]
    for p, c in zip(table["parent"], table["label"]):
        if p > 0 and int(p) in last and int(c) in first:
            g.add_edge(last[int(p)], first[int(c)])
    return g


def tracks_graph(masks, tracks=None, pixel_size: float | None = None):
    """The tracking graph of CTC masks and track table, as a :class:`networkx.DiGraph`.

    Parameters
    ----------
    masks : ndarray, (T, H, W)
        Labels; a label is a track id in every frame.
    tracks : DataFrame, optional
        CTC table ``label, begin, end, parent`` (default: from the masks, no divisions).
    pixel_size : float, optional
        µm per pixel: node ``y``, ``x`` in µm and an ``area_um2`` property.

    Returns
    -------
    networkx.DiGraph
    """
    arr, table = checked_tracks(masks, tracks)
    return _graph(object_rows(arr, table), table, pixel_size)


def _write(store: str, masks: np.ndarray, table: pd.DataFrame, objects: pd.DataFrame,
           pixel_size: float | None = None) -> None:
    import geff
    import zarr

    root = zarr.open_group(store, mode="w", zarr_format=2)
    axes, scale = _axes(pixel_size)
    seg = root.create_group(SEG_GROUP)
    seg.attrs["multiscales"] = [{
        "version": "0.4", "name": SEG_GROUP, "axes": axes,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
    }]
    seg.attrs["image-label"] = {"version": "0.4"}
    dtype = label_dtype(masks)
    arr = seg.create_array("0", shape=masks.shape, chunks=(1, *masks.shape[1:]), dtype=dtype, fill_value=0)
    arr[:] = masks.astype(dtype)
    target = f"{store}/{GRAPH_GROUP}"
    geff.write(_graph(objects, table, pixel_size), target, axis_names=[a["name"] for a in axes],
               axis_types=[a["type"] for a in axes], axis_units=[a["unit"] for a in axes], zarr_format=2)
    meta = geff.GeffMetadata.read(target)
    meta = geff.GeffMetadata.model_validate({
        **meta.model_dump(exclude_none=True),
        "related_objects": [{"type": "labels", "path": f"../{SEG_GROUP}", "node_prop": "seg_id"}],
        "track_node_props": {"tracklet": "track_id"},
    })
    meta.write(target)


def write_geff_checked(path, masks: np.ndarray, table: pd.DataFrame, objects: pd.DataFrame,
                       pixel_size: float | None = None) -> Path:
    """Write the GEFF zarr folder at ``path`` from inputs already checked and measured.

    ``masks, table`` as returned by :func:`mm_core.measure.checked_tracks`, ``objects`` by
    :func:`mm_core.measure.object_rows` (what :func:`mm_core.export.save_tracks` shares
    with the CSV); ``pixel_size`` (µm per pixel) puts the spatial axes in ``micrometer``.
    The folder is written under a temporary name and swapped in whole.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        _write(str(tmp), masks, table, objects, pixel_size)
    return out


def write_geff(out_dir, masks, tracks=None, name: str = "tracks.zarr",
               pixel_size: float | None = None) -> Path:
    """Write the tracking graph (GEFF) and the segmentation into ``out_dir/name``.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into (created); only ``out_dir/name`` is written, atomically
        (a folder, file or link there is replaced only once the new folder is complete).
    masks : ndarray, (T, H, W)
    tracks : DataFrame, optional
        CTC table ``label, begin, end, parent``.
    name : str
        Name of the zarr folder.
    pixel_size : float, optional
        µm per pixel: spatial axes in ``micrometer`` (node positions and the labels' scale).

    Returns
    -------
    Path
        The zarr folder; the GEFF graph is its ``tracks`` group.
    """
    arr, table = checked_tracks(masks, tracks)
    return write_geff_checked(Path(out_dir) / name, arr, table, object_rows(arr, table), pixel_size)


def zip_geff(folder, zip_path) -> Path:
    """Zip a GEFF folder written by :func:`write_geff` (paths relative to it), atomically."""
    src, out = Path(folder), out_path(zip_path)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(src).as_posix())
    return out


def write_geff_zip(zip_path, masks, tracks=None, pixel_size: float | None = None) -> Path:
    """Write what :func:`write_geff` writes as one zip file, for downloads."""
    import tempfile

    zp = out_path(zip_path)
    with tempfile.TemporaryDirectory(dir=zp.parent, prefix=f".{zp.name[:80]}.") as tmp:
        return zip_geff(write_geff(tmp, masks, tracks, pixel_size=pixel_size), zp)


def read_geff(path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a GEFF graph written here (folder, its ``tracks`` group, or the zip) with :mod:`geff`.

    Returns
    -------
    nodes : DataFrame
        Index = node id; columns ``t, y, x, area, seg_id, track_id``.
    edges : DataFrame
        Columns ``source, target``.
    """
    import tempfile

    import geff

    p = Path(path)
    if p.is_file():
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(p) as zf:
            zf.extractall(tmp)
            return read_geff(tmp)
    g, _ = geff.read(str(p / GRAPH_GROUP) if (p / GRAPH_GROUP).exists() else str(p))
    nodes = pd.DataFrame.from_dict(dict(g.nodes(data=True)), orient="index").sort_index()
    edges = pd.DataFrame(list(g.edges()), columns=["source", "target"])
    return nodes, edges
