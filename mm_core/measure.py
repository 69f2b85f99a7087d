"""Measurements of results: per-object properties and per-object-per-frame track tables.

Numbers only (pandas tables from :func:`skimage.measure.regionprops_table`);
:mod:`mm_core.export` writes them to files, the results' ``table()`` methods call
them directly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mm_core.errors import InputError
from mm_core.io.labels import TRACK_COLUMNS

#: Columns of :func:`tracks_table` (``area_um2`` follows ``area_px`` when the pixel size is known).
TRACK_TABLE_COLUMNS = ["track_id", "frame", "x", "y", "area_px", "parent"]

__all__ = ["SUMMARY_COLUMNS", "TRACK_COLUMNS", "TRACK_TABLE_COLUMNS", "add_physical", "as_labels",
           "checked_tracks", "measurements_table", "object_rows", "objects_per_frame", "summary_table", "tracks_from_masks",
           "tracks_table", "validate_track_table"]


def as_labels(labels, ndims: tuple[int, ...] = (2,), what: str = "label image") -> np.ndarray:
    """Check an integer label array (0 = background) and return it as an ndarray.

    Parameters
    ----------
    labels : array-like
        Integer (or whole-valued float, or bool) object ids.
    ndims : tuple of int
        Accepted numbers of dimensions.
    what : str
        Name of the array in error messages.

    Returns
    -------
    ndarray
        Integer labels (bool becomes uint8, float becomes int64).

    Raises
    ------
    InputError
        Wrong dimensions, fractional/NaN values or negative ids.
    """
    arr = np.asarray(labels)
    if arr.ndim not in ndims:
        raise InputError(f"the {what} must have {' or '.join(map(str, ndims))} dimensions, "
                         f"got an array of shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise InputError(f"the {what} must hold whole numbers (object ids), got fractional or NaN values")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind not in "iu":
        raise InputError(f"the {what} must be an integer array, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise InputError(f"the {what} has negative object ids (min {arr.min()}); ids must be >= 0")
    return arr


_PROPS = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "eccentricity")
_INTENSITY_PROPS = ("intensity_mean", "intensity_min", "intensity_max")
_RENAME = {"centroid-0": "centroid_y", "centroid-1": "centroid_x", "area": "area_px",
           "bbox-0": "bbox_y0", "bbox-1": "bbox_x0", "bbox-2": "bbox_y1", "bbox-3": "bbox_x1",
           "equivalent_diameter_area": "equivalent_diameter_px"}


def add_physical(table: pd.DataFrame, pixel_size: float | None) -> pd.DataFrame:
    """Add ``area_um2`` and ``equivalent_diameter_um`` after their pixel columns (``pixel_size`` in µm).

    A table without ``equivalent_diameter_px`` gets it from ``area_px``. Without a pixel
    size the table is returned with pixel columns only.
    """
    from mm_core.io.calibration import check_pixel_size

    size = check_pixel_size(pixel_size)
    out = table.copy()
    if "equivalent_diameter_px" not in out.columns and "area_px" in out.columns:
        out["equivalent_diameter_px"] = np.sqrt(4.0 * out["area_px"].to_numpy(float) / np.pi)
    if size is None or "area_px" not in out.columns:
        return out
    cols = list(out.columns)
    out["area_um2"] = out["area_px"].to_numpy(float) * size**2
    out["equivalent_diameter_um"] = out["equivalent_diameter_px"].to_numpy(float) * size
    cols.insert(cols.index("area_px") + 1, "area_um2")
    cols.insert(cols.index("equivalent_diameter_px") + 1, "equivalent_diameter_um")
    return out[cols]


def measurements_table(labels, intensity=None, pixel_size: float | None = None) -> pd.DataFrame:
    """Per-object measurements from :func:`skimage.measure.regionprops_table`.

    Parameters
    ----------
    labels : ndarray
        ``(H, W)`` integer labels, 0 = background.
    intensity : ndarray, optional
        ``(H, W)`` or ``(H, W, C)`` image measured inside each object.
    pixel_size : float, optional
        µm per pixel: adds ``area_um2`` and ``equivalent_diameter_um``.

    Returns
    -------
    pandas.DataFrame
        One row per object, sorted by label, with columns ``label``, ``area_px``
        (and ``area_um2``), ``centroid_x``, ``centroid_y`` (pixels; x = column, y = row),
        ``bbox_x0``, ``bbox_y0``, ``bbox_x1``, ``bbox_y1`` (pixels, x1/y1 exclusive, as the
        exemplar boxes), ``equivalent_diameter_px`` (of the circle with the same
        area; and ``equivalent_diameter_um``), ``eccentricity`` and, with ``intensity``, ``mean_intensity``,
        ``min_intensity``, ``max_intensity`` (for ``C > 1`` channels one column
        per channel: ``mean_intensity_ch0``, ...).
    """
    from skimage.measure import regionprops_table

    lab = as_labels(labels).astype(np.int64, copy=False)
    props = list(_PROPS)
    img = None
    if intensity is not None:
        img = np.asarray(intensity, dtype=np.float64)
        if img.ndim == 3 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim not in (2, 3) or img.shape[:2] != lab.shape:
            raise InputError(f"the intensity image has shape {img.shape} but the label image is {lab.shape}")
        props += _INTENSITY_PROPS
    table = pd.DataFrame(regionprops_table(lab, intensity_image=img, properties=props))
    rename = dict(_RENAME)
    for stat in ("mean", "min", "max"):
        rename[f"intensity_{stat}"] = f"{stat}_intensity"
        for c in range(img.shape[-1] if img is not None and img.ndim == 3 else 0):
            rename[f"intensity_{stat}-{c}"] = f"{stat}_intensity_ch{c}"
    first = ["label", "area_px", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]
    table = table.rename(columns=rename).astype({c: np.int64 for c in first if "centroid" not in c})
    table = table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)
    return add_physical(table, pixel_size)


def tracks_from_masks(masks) -> pd.DataFrame:
    """Track table of a ``(T, H, W)`` label stack without lineage.

    Each label's first and last frame, parent 0.
    """
    return _tracks_of(as_labels(masks, (3,), "mask stack"))


def _tracks_of(arr: np.ndarray) -> pd.DataFrame:
    rows: dict[int, list[int]] = {}
    for t, frame in enumerate(arr):
        for lab in np.unique(frame[frame > 0]):
            rows.setdefault(int(lab), [int(lab), t, t, 0])[2] = t
    return pd.DataFrame(sorted(rows.values()), columns=TRACK_COLUMNS, dtype=np.int64)


def checked_tracks(masks, tracks=None) -> tuple[np.ndarray, pd.DataFrame]:
    """Check a mask stack and its track table once, for the writers that share them.

    Parameters
    ----------
    masks : array-like, (T, H, W)
        Integer labels; a label is a track id in every frame.
    tracks : DataFrame or (N, 4) array, optional
        CTC table ``label, begin, end, parent``; ``None`` derives one without lineage
        (:func:`tracks_from_masks`).

    Returns
    -------
    masks : ndarray
        The labels as an integer array.
    table : DataFrame
        The track table, int64 columns ``label, begin, end, parent``.
    """
    arr = as_labels(masks, (3,), "mask stack")
    return arr, (_tracks_of(arr) if tracks is None else validate_track_table(tracks))


def tracks_table(masks, tracks=None, pixel_size: float | None = None) -> pd.DataFrame:
    """One row per object per frame: ``track_id, frame, x, y, area_px, parent``.

    ``x``, ``y`` are the object's centroid in pixels (x = column, y = row) in that frame,
    ``area_px`` its pixels (followed by ``area_um2`` when ``pixel_size``, µm per pixel,
    is given) and ``parent`` the track it divided from (0 = none). Sorted by track, then frame.
    """
    return object_rows(*checked_tracks(masks, tracks), pixel_size)


def object_rows(masks: np.ndarray, table: pd.DataFrame, pixel_size: float | None = None) -> pd.DataFrame:
    """:func:`tracks_table` of inputs already checked by :func:`checked_tracks` (not checked again).

    (Per-frame totals, objects and divisions in each frame, are :func:`objects_per_frame`.)
    """
    from skimage.measure import regionprops_table

    parts = []
    for t, frame in enumerate(masks):
        if frame.any():
            p = regionprops_table(frame.astype(np.int64), properties=("label", "centroid", "area"))
            parts.append(pd.DataFrame({"track_id": p["label"], "frame": t, "x": p["centroid-1"],
                                       "y": p["centroid-0"], "area_px": p["area"]}))
    cols = TRACK_TABLE_COLUMNS
    if not parts:
        out = pd.DataFrame(columns=cols)
    else:
        out = pd.concat(parts, ignore_index=True)
        parent = dict(zip(table["label"], table["parent"]))
        out["parent"] = out["track_id"].map(parent).fillna(0).astype(np.int64)
        out[["track_id", "area_px"]] = out[["track_id", "area_px"]].astype(np.int64)
        out = out[cols].sort_values(["track_id", "frame"], ignore_index=True)
    out = add_physical(out, pixel_size)
    return out.drop(columns=["equivalent_diameter_px", "equivalent_diameter_um"], errors="ignore")


def validate_track_table(tracks) -> pd.DataFrame:
    """Check the format of a track table; return its ``label, begin, end, parent`` columns as int64.

    A DataFrame with those columns or an (N, 4) array; ``None`` gives an empty table. (The
    self-check of a tracking *result* is :func:`mm_core.checks.check_tracks`.)
    """
    if tracks is None:
        return pd.DataFrame(columns=TRACK_COLUMNS, dtype=np.int64)
    if isinstance(tracks, pd.DataFrame):
        df = tracks
    else:
        arr = np.asarray(tracks)
        if arr.size % 4:
            raise InputError("a track table needs 4 numbers per track (label, begin, end, parent), "
                             f"got an array of shape {arr.shape}")
        df = pd.DataFrame(arr.reshape(-1, 4), columns=TRACK_COLUMNS)
    missing = [c for c in TRACK_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"the track table lacks the column(s) {', '.join(missing)}")
    try:
        return df[TRACK_COLUMNS].astype(np.int64).reset_index(drop=True)
    except (TypeError, ValueError) as err:
        raise InputError(f"the track table must hold whole numbers: {err}") from None


#: Columns :func:`summary_table` summarises, when present (in this order).
SUMMARY_COLUMNS = ("area_px", "area_um2", "equivalent_diameter_px", "equivalent_diameter_um", "mean_intensity")


def summary_table(table: pd.DataFrame, columns=None) -> pd.DataFrame:
    """Count, mean and spread of the per-object measurements.

    Parameters
    ----------
    table : DataFrame
        Per-object measurements (:func:`measurements_table`; any table with those columns).
    columns : sequence of str, optional
        Columns to summarise (default: those of :data:`SUMMARY_COLUMNS` the table has, then
        ``mean_intensity_ch*``).

    Returns
    -------
    pandas.DataFrame
        One row per measurement (``measurement`` column, the unit in its name: ``area_um2``)
        with ``count``, ``mean``, ``std`` (sample standard deviation; NaN for one object),
        ``median``, ``min``, ``max``; NaN statistics when there are no objects.
    """
    if columns is None:
        columns = [c for c in SUMMARY_COLUMNS if c in table.columns]
        columns += [c for c in table.columns if c.startswith("mean_intensity_ch")]
    rows = []
    for c in columns:
        if c not in table.columns:
            raise InputError(f"the table has no column {c!r} to summarise")
        v = pd.to_numeric(table[c], errors="coerce").dropna().to_numpy(float)
        stats = (v.mean(), v.std(ddof=1) if len(v) > 1 else np.nan, np.median(v), v.min(), v.max()) if len(v) \
            else (np.nan,) * 5
        rows.append((c, len(v), *stats))
    return pd.DataFrame(rows, columns=["measurement", "count", "mean", "std", "median", "min", "max"])


def objects_per_frame(masks, tracks=None) -> pd.DataFrame:
    """Objects and divisions in each frame of a tracking result.

    Parameters
    ----------
    masks : ndarray, (T, H, W)
        Labels; a label is a track id in every frame.
    tracks : DataFrame, optional
        ``label, begin, end, parent`` (divisions: daughters' first frames; default: from the
        masks, no divisions).

    Returns
    -------
    pandas.DataFrame
        One row per frame (the per-object rows are :func:`object_rows`): columns ``frame``,
        ``objects`` (distinct labels in the frame), ``divisions`` (parents
        whose daughters begin in that frame) and ``cumulative_divisions``.
    """
    arr, tr = checked_tracks(masks, tracks)
    counts = [len(np.unique(f[f > 0])) for f in arr]
    div = np.zeros(len(arr), np.int64)
    daughters = tr[tr["parent"] > 0]
    for _, grp in daughters.groupby("parent"):
        if len(grp) >= 2:
            t = int(grp["begin"].min())
            if 0 <= t < len(arr):
                div[t] += 1
    return pd.DataFrame({"frame": np.arange(len(arr)), "objects": np.asarray(counts, np.int64), "divisions": div,
                         "cumulative_divisions": np.cumsum(div)})
