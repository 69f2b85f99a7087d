"""Write (and read back) the results of the three tasks in formats biologists use.

* instance labels: TIFF, uint16 (uint32 when a label id exceeds 65,535), for Fiji and napari;
* per-object measurements: :func:`skimage.measure.regionprops_table` as a table / CSV;
* ImageJ ROI sets: a zip of polygon ROIs written with :mod:`roifile`, for Fiji's ROI Manager;
* tracks: :mod:`mm_core.export.tracks` (CTC result, per-object-per-frame CSV) and
  :mod:`mm_core.export.geff` (GEFF graph);
* counting: the density map as float32 TIFF, counts as CSV (``image,count``) and
  detected points as CSV (``x,y``; x = column, y = row, in pixels).

:func:`save` writes every file of a task result (what the CLI and the app both
write). Every writer writes only at the path it is given (creating that path's missing
parent folders) or, for a folder result, only inside ``out_dir``, and returns the
path written. Files are written to a temporary name and moved into place
(:func:`mm_core.io.atomic.atomic_write`), so a symlink already at the path is
replaced, never written through. Bad arrays raise :class:`mm_core.errors.InputError`.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from mm_core.errors import InputError
from mm_core.export.common import object_contour
from mm_core.io.atomic import atomic_path, atomic_write, out_path
from mm_core.io.labels import label_dtype
from mm_core.measure import as_labels, measurements_table


# --------------------------------------------------------------------------- helpers
def _tiff_bytes(arr: np.ndarray, imagej: bool) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, imagej=imagej, compression="zlib",
                     metadata={"axes": "TYX" if arr.ndim == 3 else "YX"} if imagej else {})
    return buf.getvalue()


# --------------------------------------------------------------------------- labels
def write_labels(path, labels) -> Path:
    """Write instance labels as a TIFF that Fiji and napari open as a label image.

    Parameters
    ----------
    path : str or Path
        Output ``.tif`` file.
    labels : ndarray
        ``(H, W)`` (or ``(T, H, W)``) integer labels, 0 = background.

    Returns
    -------
    Path
        The file written: zlib-compressed uint16 ImageJ TIFF when every id is
        <= 65,535, otherwise a plain uint32 TIFF (ImageJ has no uint32 type; Fiji
        opens it through Bio-Formats, napari and tifffile read it directly).
    """
    arr = as_labels(labels, (2, 3))
    dtype = label_dtype(arr)
    out = out_path(path)
    atomic_write(out, _tiff_bytes(arr.astype(dtype), imagej=dtype == np.uint16))
    return out


# --------------------------------------------------------------------------- measurements
def write_measurements(path, labels, intensity=None, pixel_size: float | None = None,
                       table: pd.DataFrame | None = None) -> Path:
    """Write :func:`measurements_table` (or the given ``table``) as CSV (comma-separated, header row, no index)."""
    table = measurements_table(labels, intensity, pixel_size) if table is None else table
    out = out_path(path)
    atomic_write(out, table.to_csv(index=False))
    return out


# --------------------------------------------------------------------------- ImageJ ROIs
def write_imagej_rois(path, labels) -> Path:
    """Write one polygon ROI per object to an ImageJ ROI-set zip (Fiji's ROI Manager).

    Parameters
    ----------
    path : str or Path
        Output ``.zip`` file (overwritten).
    labels : ndarray
        ``(H, W)`` integer labels, 0 = background.

    Returns
    -------
    Path
        The zip; each ROI is named by its label id, zero-padded to a common width
        so the ROI Manager lists them in order (``0001``, ``0002``, ...). An image
        without objects gives an empty zip.
    """
    from roifile import ROI_TYPE, ImagejRoi, roiwrite
    from skimage.measure import regionprops

    lab = as_labels(labels).astype(np.int64, copy=False)
    width = max(4, len(str(int(lab.max()) if lab.size else 0)))
    rois = []
    for region in regionprops(lab):
        y0, x0 = region.bbox[:2]
        xy = object_contour(region.image) + [x0, y0]
        roi = ImagejRoi.frompoints(xy.astype(np.float32), name=f"{region.label:0{width}d}")
        roi.roitype = ROI_TYPE.POLYGON
        rois.append(roi)
    out = out_path(path)
    with atomic_path(out) as tmp:
        if rois:
            roiwrite(tmp, rois, mode="w")
        else:
            zipfile.ZipFile(tmp, "w").close()
    return out


# --------------------------------------------------------------------------- counting
def write_density(path, density) -> Path:
    """Write a density map (its sum is the count) as a float32 ImageJ TIFF."""
    arr = np.asarray(density)
    if arr.ndim != 2 or arr.dtype.kind not in "fiub":
        raise InputError(f"a density map must be a 2-D numeric array, got shape {arr.shape} "
                         f"dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise InputError("the density map contains NaN or infinite values")
    out = out_path(path)
    atomic_write(out, _tiff_bytes(arr, imagej=True))
    return out


def write_counts(path, rows: Iterable[tuple[str, float]], merge: bool = False) -> Path:
    """Write per-image counts as CSV with header ``image,count`` (the one writer of ``counts.csv``).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    rows : iterable of (str, float)
        ``(image, count)`` rows, written in this order.
    merge : bool
        Keep the other images' rows of an existing file: each given image's row is
        replaced or added, and the rows are sorted by image. A file that cannot be
        read as counts is replaced.

    Returns
    -------
    Path
    """
    checked = {}
    for row in rows:
        if len(row) != 2:
            raise InputError(f"a count row must be (image, count), got {row!r}")
        name, value = row
        try:
            checked[str(name)] = float(value)
        except (TypeError, ValueError):
            raise InputError(f"the count of {name} is not a number: {value!r}") from None
    out = out_path(path)
    if merge:
        checked = dict(sorted({**_read_counts(out), **checked}.items()))
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["image", "count"])
    writer.writerows((n, str(int(v)) if v.is_integer() else f"{v:.6g}") for n, v in checked.items())
    atomic_write(out, buf.getvalue())
    return out


def _read_counts(path: Path) -> dict[str, float]:
    """The rows of an existing ``counts.csv`` ({} when absent, damaged or not ours)."""
    if not path.is_file():
        return {}
    try:
        old = pd.read_csv(path, dtype={"image": str})
        return dict(zip(old["image"].astype(str), old["count"].astype(float)))
    except (ValueError, KeyError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return {}


def write_points(path, points) -> Path:
    """Write object centres as CSV with header ``x,y`` (x = column, y = row).

    With an ``n`` column (the objects each centre counts; their sum is the count) it is written too.
    """
    df = pd.DataFrame(points)
    if not {"x", "y"} <= set(df.columns):
        raise InputError(f"points need the columns x and y, got {list(df.columns)}")
    out = out_path(path)
    cols = ["x", "y", "n"] if "n" in df.columns else ["x", "y"]
    df = df[cols].astype({"x": float, "y": float})
    if "n" in cols:
        df["n"] = df["n"].astype(int)
    atomic_write(out, df.to_csv(index=False))
    return out


# --------------------------------------------------------------------------- one save layer
def save(result, out_dir, stem: str = "", intensity=None) -> list[Path]:
    """Write every file of a result into ``out_dir``; the CLI and the app both call this.

    Parameters
    ----------
    result : SegmentationResult, CountResult or TrackResult
        What :class:`mm_core.Matcher` returned.
    out_dir : str or Path
        Output folder (created if missing); nothing is written elsewhere.
    stem : str
        Name prefix of the files, usually the input's name without extension
        (needed for images; optional for a time-lapse).
    intensity : ndarray, optional
        Raw image measured in the segmentation table (default: the normalised
        image of the result).

    Returns
    -------
    list of Path
        The files written:

        - segmentation: ``<stem>.tif`` (labels), ``<stem>.csv`` (measurements, in µm too when
          the result's pixel size is known), ``<stem>.geojson`` (QuPath objects with the same
          measurements: :mod:`mm_core.export.geojson`), ``<stem>_rois.zip`` (ImageJ ROIs, when
          there are objects);
        - counting: ``<stem>_density.tif``, ``<stem>_points.csv`` and
          ``counts.csv`` (``image,count``; this image's row added or replaced);
        - tracking: the CTC result ``maskTTT.tif`` ... + ``res_track.txt``,
          ``<stem>_ctc.zip`` (the same under ``01_RES/``),
          ``<stem>_tracks.csv``, ``<stem>_tracks.zarr`` (GEFF graph + segmentation, a
          folder: :mod:`mm_core.export.geff`; spatial axes in µm when the pixel size is known) and ``<stem>_tracks_geff.zip`` (the same
          zipped); without a stem ``ctc.zip``, ``tracks.csv``, ``tracks.zarr``, ``tracks_geff.zip``.
    """
    out = Path(out_dir)
    size = getattr(result, "pixel_size", None)
    if hasattr(result, "labels"):
        if not stem:
            raise InputError("saving a segmentation needs a file name stem")
        from mm_core.export.geojson import write_geojson

        table = measurements_table(result.labels, result.image if intensity is None else intensity, size)
        files = [write_labels(out / f"{stem}.tif", result.labels),
                 write_measurements(out / f"{stem}.csv", result.labels, table=table),
                 write_geojson(out / f"{stem}.geojson", result.labels, table)]
        if result.n_objects:
            files.append(write_imagej_rois(out / f"{stem}_rois.zip", result.labels))
        return files
    if hasattr(result, "density"):
        if not stem:
            raise InputError("saving a count needs a file name stem")
        return [write_density(out / f"{stem}_density.tif", result.density),
                write_points(out / f"{stem}_points.csv", result.points),
                write_counts(out / "counts.csv", [(stem, float(result.count))], merge=True)]
    if hasattr(result, "masks") and hasattr(result, "tracks"):
        from mm_core.export.tracks import save_tracks

        return save_tracks(out, result.masks, result.tracks, stem, pixel_size=size)
    raise InputError(f"cannot save a {type(result).__name__}: expected a segmentation, count or tracking result")
