"""Write (and read back) the results of the three tasks in formats biologists use.

* instance labels: TIFF, uint16 (uint32 when a label id exceeds 65,535), for Fiji and napari;
* per-object measurements: :func:`skimage.measure.regionprops_table` as a table / CSV;
* ImageJ ROI sets: a zip of polygon ROIs written with :mod:`roifile`, for Fiji's ROI Manager;
* tracks: a per-object-per-frame CSV; a Cell Tracking Challenge (CTC) result
  folder or zip, ``maskTTT.tif`` + ``res_track.txt`` (read back with
  :func:`mm_core.io.read_ctc`);
* counting: the density map as float32 TIFF, counts as CSV (``image,count``) and
  detected points as CSV (``x,y``; x = column, y = row, in pixels).

:func:`save` writes every file of a task result (what the CLI and the app both
write). Every writer writes only at the path it is given (creating that path's missing
parent folders) or, for :func:`write_ctc`, only inside ``out_dir``, and returns the
path written. Files are written to a temporary name and moved into place
(:func:`mm_core.io.atomic.atomic_write`), so a symlink already at the path is
replaced, never written through. Bad arrays raise :class:`mm_core.errors.InputError`.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from mm_core.errors import InputError
from mm_core.export.common import object_contour
from mm_core.export.common import out_path as _out_path
from mm_core.io.atomic import atomic_path, atomic_write
from mm_core.io.labels import CTC_MASK_RE
from mm_core.measure import (
    as_labels,
    check_tracks,
    measurements_table,
    tracks_from_masks,
    tracks_table,
)

#: Largest label id that fits the uint16 TIFFs ImageJ and the CTC format expect.
UINT16_MAX = 65535


# --------------------------------------------------------------------------- helpers
def label_dtype(labels: np.ndarray) -> np.dtype:
    """Storage dtype of a label image: uint16 if the largest id is <= 65,535, else uint32.

    The rule is on the largest label id (not on the number of objects), so ids are
    never renumbered and stay linked to the measurements table and ROI names. An
    image with more than 65,535 objects necessarily has an id above 65,535.
    """
    top = int(labels.max()) if labels.size else 0
    if top <= UINT16_MAX:
        return np.dtype(np.uint16)
    if top <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    raise InputError(f"label id {top} is too large to store (at most {np.iinfo(np.uint32).max})")


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
    out = _out_path(path)
    atomic_write(out, _tiff_bytes(arr.astype(dtype), imagej=dtype == np.uint16))
    return out


# --------------------------------------------------------------------------- measurements
def write_measurements(path, labels, intensity=None, pixel_size: float | None = None,
                       table: pd.DataFrame | None = None) -> Path:
    """Write :func:`measurements_table` (or the given ``table``) as CSV (comma-separated, header row, no index)."""
    table = measurements_table(labels, intensity, pixel_size) if table is None else table
    out = _out_path(path)
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
    out = _out_path(path)
    with atomic_path(out) as tmp:
        if rois:
            roiwrite(tmp, rois, mode="w")
        else:
            zipfile.ZipFile(tmp, "w").close()
    return out


# --------------------------------------------------------------------------- Cell Tracking Challenge
def ctc_frame_name(t: int, n_frames: int, prefix: str = "mask") -> str:
    """CTC file name of frame ``t``: 3 digits (``mask007.tif``), 4 past 1000 frames."""
    digits = 3 if n_frames <= 1000 else 4
    return f"{prefix}{int(t):0{digits}d}.tif"


def write_tracks_csv(path, masks, tracks=None, pixel_size: float | None = None) -> Path:
    """Write :func:`tracks_table` as CSV (positions with 2 decimals)."""
    table = tracks_table(masks, tracks, pixel_size)
    out = _out_path(path)
    atomic_write(out, table.to_csv(index=False, float_format="%.2f"))
    return out


def _ctc_members(masks, tracks) -> Iterator[tuple[str, bytes]]:
    """Yield ``(file name, bytes)`` of a CTC result: every ``maskTTT.tif``, then ``res_track.txt``."""
    arr = as_labels(masks, (3,), "mask stack")
    if arr.shape[0] == 0:
        raise InputError("the mask stack has no frames")
    if arr.size and arr.max() > UINT16_MAX:
        raise InputError("the Cell Tracking Challenge format stores 16-bit labels; "
                         f"label {arr.max()} is too large")
    table = tracks_from_masks(arr) if tracks is None else check_tracks(tracks)
    for t, frame in enumerate(arr):
        buf = io.BytesIO()
        tifffile.imwrite(buf, frame.astype(np.uint16), compression="zlib")
        yield ctc_frame_name(t, arr.shape[0]), buf.getvalue()
    text = "".join(f"{r.label} {r.begin} {r.end} {r.parent}\n" for r in table.itertuples())
    yield "res_track.txt", text.encode("ascii")


def write_ctc(out_dir, masks, tracks=None) -> Path:
    """Write a Cell Tracking Challenge result folder.

    Parameters
    ----------
    out_dir : str or Path
        Result folder (e.g. ``01_RES``), created if missing. Stale ``maskTTT.tif``
        files from an earlier run are removed from it; nothing else there is touched.
    masks : ndarray
        ``(T, H, W)`` integer labels; a label is a track id in every frame
        (at most 65,535, the format is 16-bit).
    tracks : pandas.DataFrame, optional
        Columns ``label, begin, end, parent`` (frames 0-based, parent 0 = none);
        one row per track. ``None`` derives tracks without lineage from ``masks``.

    Returns
    -------
    Path
        ``out_dir``, holding ``mask000.tif`` ... (4 digits past 1000 frames,
        uint16) and ``res_track.txt`` (one ``L B E P`` line per track).
    """
    out = Path(out_dir)
    members = list(_ctc_members(masks, tracks))  # validate everything before writing
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        if old.is_file() and CTC_MASK_RE.match(old.name) and old.name.startswith("mask"):
            old.unlink()
    for name, data in members:
        atomic_write(out / name, data)
    return out


def write_ctc_zip(zip_path, masks, tracks=None, folder: str = "01_RES") -> Path:
    """Write the same CTC result as :func:`write_ctc` into a zip, under ``folder/``."""
    members = list(_ctc_members(masks, tracks))  # validate everything before writing
    out = _out_path(zip_path)
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(f"{folder}/{name}" if folder else name, data)
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
    out = _out_path(path)
    atomic_write(out, _tiff_bytes(arr, imagej=True))
    return out


def write_counts(path, rows: Iterable[tuple[str, float]]) -> Path:
    """Write per-image counts as CSV with header ``image,count``."""
    checked = []
    for row in rows:
        if len(row) != 2:
            raise InputError(f"a count row must be (image, count), got {row!r}")
        name, value = row
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError(f"the count of {name} is not a number: {value!r}") from None
        checked.append((str(name), f"{value:.6g}" if not value.is_integer() else str(int(value))))
    out = _out_path(path)
    buf = io.StringIO(newline="")
    writer = csv.writer(buf)
    writer.writerow(["image", "count"])
    writer.writerows(checked)
    atomic_write(out, buf.getvalue())
    return out


def write_points(path, points) -> Path:
    """Write object centres as CSV with header ``x,y`` (x = column, y = row).

    With an ``n`` column (the objects each centre counts; their sum is the count) it is written too.
    """
    df = pd.DataFrame(points)
    if not {"x", "y"} <= set(df.columns):
        raise InputError(f"points need the columns x and y, got {list(df.columns)}")
    out = _out_path(path)
    cols = ["x", "y", "n"] if "n" in df.columns else ["x", "y"]
    df = df[cols].astype({"x": float, "y": float})
    if "n" in cols:
        df["n"] = df["n"].astype(int)
    atomic_write(out, df.to_csv(index=False))
    return out


# --------------------------------------------------------------------------- one save layer
def _upsert_count(path: Path, name: str, value: float) -> Path:
    """Write ``counts.csv`` with ``name``'s row replaced (or added); other images' rows are kept."""
    rows: dict[str, float] = {}
    if path.is_file():
        try:
            old = pd.read_csv(path, dtype={"image": str})
            rows = dict(zip(old["image"].astype(str), old["count"].astype(float)))
        except (ValueError, KeyError, pd.errors.ParserError):
            rows = {}  # not ours or damaged: rewritten
    rows[name] = value
    return write_counts(path, sorted(rows.items()))


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
                _upsert_count(out / "counts.csv", stem, float(result.count))]
    if hasattr(result, "masks") and hasattr(result, "tracks"):
        prefix = f"{stem}_" if stem else ""
        folder = write_ctc(out, result.masks, result.tracks)
        ctc = sorted(p for p in folder.iterdir() if CTC_MASK_RE.match(p.name) or p.name == "res_track.txt")
        from mm_core.export.geff import write_geff, write_geff_zip

        return [*ctc, write_ctc_zip(out / f"{prefix}ctc.zip", result.masks, result.tracks),
                write_tracks_csv(out / f"{prefix}tracks.csv", result.masks, result.tracks, size),
                write_geff(out, result.masks, result.tracks, name=f"{prefix}tracks.zarr", pixel_size=size),
                write_geff_zip(out / f"{prefix}tracks_geff.zip", result.masks, result.tracks, size)]
    raise InputError(f"cannot save a {type(result).__name__}: expected a segmentation, count or tracking result")
