"""Objects as GeoJSON for QuPath: a FeatureCollection of polygons with their measurements.

QuPath (File > Import objects, or drag and drop the ``.geojson`` onto the image) reads one
``Feature`` per object: ``geometry`` a ``Polygon`` in image pixel coordinates (x = column,
y = row, a pixel ``(col, row)`` covering the square ``[col, col+1) x [row, row+1)``, as
QuPath and ImageJ draw pixels), ``properties.objectType`` ``"detection"`` (QuPath's light
objects for many cells; ``"annotation"`` for a few editable regions), ``properties.name``
the object's label id, and ``properties.measurements`` a name -> number mapping (the
columns of :func:`mm_core.measure.measurements_table`, with µm when the pixel size is known).

Each outline follows the object's pixel edges exactly (the marching-squares contour of
:func:`mm_core.export.common.object_contour` with its cut corners put back), so the polygon's
area is the object's pixel count (for an object without holes; a hole is filled and, for
an object in several pieces, only the largest piece is outlined).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from mm_core.errors import InputError
from mm_core.export.common import object_contour
from mm_core.io.atomic import out_path
from mm_core.io.atomic import atomic_write
from mm_core.measure import as_labels, measurements_table

#: QuPath object types a feature may have.
OBJECT_TYPES = ("detection", "annotation")

__all__ = ["OBJECT_TYPES", "geojson_features", "pixel_outline", "polygon_area", "write_geojson"]


def pixel_outline(mask: np.ndarray) -> np.ndarray:
    """Outline of a binary object along its pixel edges, as a closed ``(N, 2)`` ring of ``x, y``.

    The marching-squares contour at level 0.5 passes through the midpoints of the
    object's boundary pixel edges and cuts each pixel corner diagonally; the corner
    (the lattice point shared by the two edges) is put back, then points on straight
    runs are dropped. Coordinates are relative to the mask's top-left corner.
    """
    xy = object_contour(mask)
    nxt = np.roll(xy, -1, axis=0)
    ring = []
    for p, q in zip(xy, nxt):
        ring.append(p)
        if p[0] != q[0] and p[1] != q[1]:  # a diagonal cut: insert the shared pixel corner
            corner = (p[0] if float(p[0]).is_integer() else q[0], p[1] if float(p[1]).is_integer() else q[1])
            ring.append(np.asarray(corner, float))
    pts = np.asarray(ring)
    prev, nxt = np.roll(pts, 1, axis=0), np.roll(pts, -1, axis=0)
    cross = (pts[:, 0] - prev[:, 0]) * (nxt[:, 1] - pts[:, 1]) - (pts[:, 1] - prev[:, 1]) * (nxt[:, 0] - pts[:, 0])
    pts = pts[np.abs(cross) > 1e-9]
    return np.vstack([pts, pts[:1]])


def polygon_area(ring) -> float:
    """Area enclosed by a closed ring of ``x, y`` points (shoelace formula)."""
    xy = np.asarray(ring, float)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0)


def _number(v):
    v = v.item() if hasattr(v, "item") else v
    return v if isinstance(v, int) else (float(v) if np.isfinite(v) else None)


def geojson_features(labels, table: pd.DataFrame | None = None, object_type: str = "detection") -> dict:
    """The GeoJSON FeatureCollection (a dict) of the objects of a label image.

    Parameters
    ----------
    labels : ndarray
        ``(H, W)`` integer labels, 0 = background.
    table : DataFrame, optional
        Measurements with a ``label`` column (default :func:`measurements_table` of ``labels``);
        every other numeric column becomes a measurement of its object.
    object_type : {"detection", "annotation"}
        QuPath object type of every feature.

    Returns
    -------
    dict
    """
    from skimage.measure import regionprops

    if object_type not in OBJECT_TYPES:
        raise InputError(f"QuPath objects are {' or '.join(OBJECT_TYPES)}, got {object_type!r}")
    lab = as_labels(labels).astype(np.int64, copy=False)
    table = measurements_table(lab) if table is None else table
    rows = {int(r["label"]): r for r in table.to_dict("records")} if "label" in table.columns else {}
    features = []
    for region in regionprops(lab):
        y0, x0 = region.bbox[:2]
        ring = pixel_outline(region.image) + [x0, y0]
        meas = {k: _number(v) for k, v in rows.get(region.label, {}).items()
                if k != "label" and isinstance(v, (int, float, np.number))}
        features.append({"type": "Feature", "id": f"object-{region.label}",
                         "geometry": {"type": "Polygon", "coordinates": [ring.round(3).tolist()]},
                         "properties": {"objectType": object_type, "name": str(region.label),
                                        "isLocked": False, "measurements": meas}})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path, labels, table: pd.DataFrame | None = None, object_type: str = "detection"):
    """Write :func:`geojson_features` to ``path`` (a ``.geojson`` file QuPath imports).

    Returns
    -------
    Path
        The file written.
    """
    doc = geojson_features(labels, table, object_type)
    out = out_path(path)
    atomic_write(out, json.dumps(doc, allow_nan=False))
    return out
