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

:func:`write_geff_zip` writes the same as one zip (a zarr ``ZipStore``) for downloads;
:func:`read_geff` reads a graph back as node and edge tables.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from mm_core.errors import InputError

GRAPH_GROUP = "tracks"
SEG_GROUP = "segmentation"


def _nodes(masks: np.ndarray) -> pd.DataFrame:
    from scipy import ndimage as ndi

    rows = []
    for t, frame in enumerate(masks):
        ids = np.unique(frame[frame > 0])
        if not len(ids):
            continue
        area = ndi.sum_labels(np.ones_like(frame, np.int64), frame, ids)
        cy, cx = np.asarray(ndi.center_of_mass(frame > 0, frame, ids), float).reshape(-1, 2).T
        rows.append(pd.DataFrame({"t": t, "y": cy, "x": cx, "area": area.astype(np.int64), "seg_id": ids}))
    nodes = (
        pd.concat(rows, ignore_index=True)
        if rows
        else pd.DataFrame(columns=["t", "y", "x", "area", "seg_id"])
    )
    nodes["track_id"] = nodes["seg_id"]
    nodes.index = np.arange(1, len(nodes) + 1)  # node ids
    return nodes


def _axes(pixel_size: float | None) -> tuple[list[dict], list[float]]:
    """OME axes ``t, y, x`` and their scale: µm when the pixel size is known, else pixels."""
    unit, s = ("pixel", 1.0) if pixel_size is None else ("micrometer", float(pixel_size))
    return ([{"name": "t", "type": "time", "unit": "frame"}, {"name": "y", "type": "space", "unit": unit},
             {"name": "x", "type": "space", "unit": unit}], [1.0, s, s])


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
    import networkx as nx

    from mm_core.measure import check_tracks, tracks_from_masks

    m = np.asarray(masks)
    if m.ndim != 3:
        raise InputError(f"tracking masks must be (T, H, W), got shape {m.shape}")
    tr = check_tracks(tracks) if tracks is not None else tracks_from_masks(m)
    nodes = _nodes(m)
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
    for _, r in tr.iterrows():
        p, c = int(r["parent"]), int(r["label"])
        if p > 0 and p in last and c in first:
            g.add_edge(last[p], first[c])
    return g


def _write(store: str, masks, tracks, pixel_size: float | None = None) -> None:
    import geff
    import zarr

    m = np.asarray(masks)
    g = tracks_graph(m, tracks, pixel_size)
    root = zarr.open_group(store, mode="w", zarr_format=2)
    axes, scale = _axes(pixel_size)
    seg = root.create_group(SEG_GROUP)
    seg.attrs["multiscales"] = [
        {
            "version": "0.4",
            "name": SEG_GROUP,
            "axes": axes,
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
            ],
        }
    ]
    seg.attrs["image-label"] = {"version": "0.4"}
    dtype = np.uint16 if m.max(initial=0) <= 65535 else np.uint32
    arr = seg.create_array("0", shape=m.shape, chunks=(1, *m.shape[1:]), dtype=dtype, fill_value=0)
    arr[:] = m.astype(dtype)
    target = f"{store}/{GRAPH_GROUP}"
    geff.write(
        g,
        target,
        axis_names=["t", "y", "x"],
        axis_types=["time", "space", "space"],
        axis_units=[a["unit"] for a in axes],
        zarr_format=2,
    )
    meta = geff.GeffMetadata.read(target)
    meta = geff.GeffMetadata.model_validate(
        {
            **meta.model_dump(exclude_none=True),
            "related_objects": [{"type": "labels", "path": f"../{SEG_GROUP}", "node_prop": "seg_id"}],
            "track_node_props": {"tracklet": "track_id"},
        }
    )
    meta.write(target)


def write_geff(out_dir, masks, tracks=None, name: str = "tracks.zarr", pixel_size: float | None = None) -> Path:
    """Write the tracking graph (GEFF) and the segmentation into ``out_dir/name``.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write into (created); only ``out_dir/name`` is written.
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
    out = Path(out_dir) / name
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        shutil.rmtree(out)
    _write(str(out), masks, tracks, pixel_size)
    return out


def write_geff_zip(zip_path, masks, tracks=None, pixel_size: float | None = None) -> Path:
    """Write what :func:`write_geff` writes as one zip file (a zarr ZipStore), for downloads."""
    import tempfile

    zp = Path(zip_path)
    zp.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=zp.parent) as tmp:
        folder = write_geff(tmp, masks, tracks, pixel_size=pixel_size)
        with zipfile.ZipFile(zp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    zf.write(f, f.relative_to(folder).as_posix())
    return zp


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
