"""Write (and read back) the results of the three tasks in formats biologists use.

* instance labels: TIFF, uint16 (uint32 when a label id exceeds 65,535), for Fiji and napari;
* per-object measurements: :func:`skimage.measure.regionprops_table` as a table / CSV;
* ImageJ ROI sets: a zip of polygon ROIs written with :mod:`roifile`, for Fiji's ROI Manager;
* tracks: a per-object-per-frame CSV; a Cell Tracking Challenge (CTC) result
  folder or zip, ``maskTTT.tif`` + ``res_track.txt``; a reader for CTC ground truth
  (``man_trackTTT.tif`` + ``man_track.txt``) and results;
* counting: the density map as float32 TIFF, counts as CSV (``image,count``) and
  detected points as CSV (``x,y``; x = column, y = row, in pixels).

Every writer writes only at the path it is given (creating that path's missing
parent folders) or, for :func:`write_ctc`, only inside ``out_dir``, and returns the
path written. Bad arrays raise :class:`mm_core.errors.InputError`.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from mm_core.errors import InputError

#: Largest label id that fits the uint16 TIFFs ImageJ and the CTC format expect.
UINT16_MAX = 65535
#: Columns of a CTC track table (``res_track.txt``: ``L B E P``).
TRACK_COLUMNS = ["label", "begin", "end", "parent"]


# --------------------------------------------------------------------------- helpers
def _out_path(path) -> Path:
    """Return ``path`` as a Path, creating its missing parent folders."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise InputError(f"cannot write the file {p}: a folder of that name exists")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def _as_labels(labels, ndims: tuple[int, ...] = (2,), what: str = "label image") -> np.ndarray:
    """Check an integer label array (0 = background) and return it as an ndarray."""
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
    arr = _as_labels(labels, (2, 3))
    dtype = label_dtype(arr)
    out = _out_path(path)
    out.write_bytes(_tiff_bytes(arr.astype(dtype), imagej=dtype == np.uint16))
    return out


# --------------------------------------------------------------------------- measurements
_PROPS = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "eccentricity")
_INTENSITY_PROPS = ("intensity_mean", "intensity_min", "intensity_max")
_RENAME = {"centroid-0": "centroid_y", "centroid-1": "centroid_x",
           "bbox-0": "bbox_y0", "bbox-1": "bbox_x0", "bbox-2": "bbox_y1", "bbox-3": "bbox_x1",
           "equivalent_diameter_area": "equivalent_diameter"}


def measurements_table(labels, intensity=None) -> pd.DataFrame:
    """Per-object measurements from :func:`skimage.measure.regionprops_table`.

    Parameters
    ----------
    labels : ndarray
        ``(H, W)`` integer labels, 0 = background.
    intensity : ndarray, optional
        ``(H, W)`` or ``(H, W, C)`` image measured inside each object.

    Returns
    -------
    pandas.DataFrame
        One row per object, sorted by label, with columns ``label``, ``area``
        (pixels), ``centroid_x``, ``centroid_y`` (x = column, y = row),
        ``bbox_x0``, ``bbox_y0``, ``bbox_x1``, ``bbox_y1`` (x1/y1 exclusive, as the
        exemplar boxes), ``equivalent_diameter`` (of the circle with the same
        area), ``eccentricity`` and, with ``intensity``, ``mean_intensity``,
        ``min_intensity``, ``max_intensity`` (for ``C > 1`` channels one column
        per channel: ``mean_intensity_ch0``, ...).
    """
    from skimage.measure import regionprops_table

    lab = _as_labels(labels).astype(np.int64, copy=False)
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
    first = ["label", "area", "centroid_x", "centroid_y", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]
    table = table.rename(columns=rename).astype({c: np.int64 for c in first if "centroid" not in c})
    return table[first + [c for c in table.columns if c not in first]].reset_index(drop=True)


def write_measurements(path, labels, intensity=None) -> Path:
    """Write :func:`measurements_table` as CSV (comma-separated, header row, no index)."""
    table = measurements_table(labels, intensity)
    out = _out_path(path)
    table.to_csv(out, index=False)
    return out


# --------------------------------------------------------------------------- ImageJ ROIs
def object_contour(mask: np.ndarray) -> np.ndarray:
    """Outline of a binary object as an ``(N, 2)`` float array of ImageJ ``x, y``.

    :func:`skimage.measure.find_contours` at level 0.5 on the mask padded by one
    pixel (so objects touching the border are closed); the longest contour (the
    outer boundary of the largest fragment) is kept. ImageJ puts pixel ``(col,
    row)`` in the square ``[col, col+1) x [row, row+1)``, so coordinates are
    shifted by +0.5 from skimage's pixel-centre convention.
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)
    contours = find_contours(padded, 0.5)
    if not contours:
        raise InputError("cannot outline an empty object")
    rc = max(contours, key=len)[:-1]  # closed contour: last point repeats the first
    return np.stack([rc[:, 1] - 0.5, rc[:, 0] - 0.5], axis=1)


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

    lab = _as_labels(labels).astype(np.int64, copy=False)
    width = max(4, len(str(int(lab.max()) if lab.size else 0)))
    rois = []
    for region in regionprops(lab):
        y0, x0 = region.bbox[:2]
        xy = object_contour(region.image) + [x0, y0]
        roi = ImagejRoi.frompoints(xy.astype(np.float32), name=f"{region.label:0{width}d}")
        roi.roitype = ROI_TYPE.POLYGON
        rois.append(roi)
    out = _out_path(path)
    if rois:
        roiwrite(out, rois, mode="w")
    else:
        zipfile.ZipFile(out, "w").close()
    return out


# --------------------------------------------------------------------------- Cell Tracking Challenge
def ctc_frame_name(t: int, n_frames: int, prefix: str = "mask") -> str:
    """CTC file name of frame ``t``: 3 digits (``mask007.tif``), 4 past 1000 frames."""
    digits = 3 if n_frames <= 1000 else 4
    return f"{prefix}{int(t):0{digits}d}.tif"


def tracks_from_masks(masks) -> pd.DataFrame:
    """Track table of a ``(T, H, W)`` label stack without lineage: each label's first
    and last frame, parent 0."""
    arr = _as_labels(masks, (3,), "mask stack")
    rows: dict[int, list[int]] = {}
    for t, frame in enumerate(arr):
        for lab in np.unique(frame[frame > 0]):
            rows.setdefault(int(lab), [int(lab), t, t, 0])[2] = t
    return pd.DataFrame(sorted(rows.values()), columns=TRACK_COLUMNS, dtype=np.int64)


def tracks_table(masks, tracks=None) -> pd.DataFrame:
    """One row per object per frame: ``track_id, frame, x, y, area, parent``.

    ``x``, ``y`` are the object's centroid (x = column, y = row) in that frame,
    ``area`` its pixels and ``parent`` the track it divided from (0 = none).
    Sorted by track, then frame.
    """
    from skimage.measure import regionprops_table

    arr = _as_labels(masks, (3,), "mask stack")
    table = _check_tracks(tracks)
    parts = []
    for t, frame in enumerate(arr):
        if frame.any():
            p = regionprops_table(frame.astype(np.int64), properties=("label", "centroid", "area"))
            parts.append(pd.DataFrame({"track_id": p["label"], "frame": t, "x": p["centroid-1"],
                                       "y": p["centroid-0"], "area": p["area"]}))
    cols = ["track_id", "frame", "x", "y", "area", "parent"]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = pd.concat(parts, ignore_index=True)
    parent = dict(zip(table["label"], table["parent"]))
    out["parent"] = out["track_id"].map(parent).fillna(0).astype(np.int64)
    out[["track_id", "area"]] = out[["track_id", "area"]].astype(np.int64)
    return out[cols].sort_values(["track_id", "frame"], ignore_index=True)


def write_tracks_csv(path, masks, tracks=None) -> Path:
    """Write :func:`tracks_table` as CSV (positions with 2 decimals)."""
    table = tracks_table(masks, tracks)
    out = _out_path(path)
    table.to_csv(out, index=False, float_format="%.2f")
    return out


def _check_tracks(tracks) -> pd.DataFrame:
    """The ``label, begin, end, parent`` columns of a track table (DataFrame or (N, 4) array) as int64."""
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


def _ctc_members(masks, tracks) -> Iterator[tuple[str, bytes]]:
    """Yield ``(file name, bytes)`` of a CTC result: every ``maskTTT.tif``, then ``res_track.txt``."""
    arr = _as_labels(masks, (3,), "mask stack")
    if arr.shape[0] == 0:
        raise InputError("the mask stack has no frames")
    if arr.size and arr.max() > UINT16_MAX:
        raise InputError("the Cell Tracking Challenge format stores 16-bit labels; "
                         f"label {arr.max()} is too large")
    table = tracks_from_masks(arr) if tracks is None else _check_tracks(tracks)
    for t, frame in enumerate(arr):
        buf = io.BytesIO()
        tifffile.imwrite(buf, frame.astype(np.uint16), compression="zlib")
        yield ctc_frame_name(t, arr.shape[0]), buf.getvalue()
    text = "".join(f"{r.label} {r.begin} {r.end} {r.parent}\n" for r in table.itertuples())
    yield "res_track.txt", text.encode("ascii")


_CTC_MASK = re.compile(r"^(mask|man_track)(\d+)\.tif$")


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
        if old.is_file() and _CTC_MASK.match(old.name) and old.name.startswith("mask"):
            old.unlink()
    for name, data in members:
        (out / name).write_bytes(data)
    return out


def write_ctc_zip(zip_path, masks, tracks=None, folder: str = "01_RES") -> Path:
    """Write the same CTC result as :func:`write_ctc` into a zip, under ``folder/``."""
    members = list(_ctc_members(masks, tracks))  # validate everything before writing
    out = _out_path(zip_path)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(f"{folder}/{name}" if folder else name, data)
    return out


def read_ctc(folder) -> tuple[np.ndarray, pd.DataFrame]:
    """Read a CTC ground-truth or result folder.

    Parameters
    ----------
    folder : str or Path
        A result folder (``maskTTT.tif`` + ``res_track.txt``), a ground-truth
        ``TRA`` folder (``man_trackTTT.tif`` + ``man_track.txt``) or the
        ``<SEQ>_GT`` folder holding it.

    Returns
    -------
    masks : ndarray
        ``(T, H, W)`` labels as stored (uint16 in the CTC format).
    tracks : pandas.DataFrame
        Columns ``label, begin, end, parent`` (int64).
    """
    root = Path(folder)
    if (root / "TRA").is_dir():
        root = root / "TRA"
    if not root.is_dir():
        raise InputError(f"{folder} is not a folder")
    files = {}
    for p in root.iterdir():
        m = _CTC_MASK.match(p.name)
        if m and p.is_file():
            files[int(m.group(2))] = p
    txt = next((root / n for n in ("res_track.txt", "man_track.txt") if (root / n).is_file()), None)
    if not files or txt is None:
        raise InputError(f"{folder} is not a Cell Tracking Challenge folder: it needs mask000.tif ... "
                         "with res_track.txt, or man_track000.tif ... with man_track.txt")
    missing = sorted(set(range(max(files) + 1)) - set(files))
    if missing:
        raise InputError(f"{folder}: frame {missing[0]} is missing (frames must be numbered 0, 1, 2, ...)")
    frames = []
    for t in range(len(files)):
        try:
            frames.append(tifffile.imread(files[t]))
        except Exception as err:  # noqa: BLE001 - tifffile raises many types on corrupt files
            raise InputError(f"cannot read {files[t].name}: {err}") from None
        if frames[-1].shape != frames[0].shape or frames[-1].ndim != 2:
            raise InputError(f"{files[t].name} is {frames[-1].shape}, expected a 2-D mask like "
                             f"{files[0].name} {frames[0].shape}")
    try:
        raw = [line.split() for line in txt.read_text().splitlines() if line.strip()]
        tracks = pd.DataFrame([[int(v) for v in r] for r in raw], columns=TRACK_COLUMNS, dtype=np.int64)
    except ValueError:
        raise InputError(f"{txt.name} must have 4 whole numbers per line (L B E P)") from None
    return np.stack(frames), tracks


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
    out.write_bytes(_tiff_bytes(arr, imagej=True))
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
    with open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "count"])
        writer.writerows(checked)
    return out


def write_points(path, points) -> Path:
    """Write detected object centres as CSV with header ``x,y`` (x = column, y = row), plus
    ``count`` (each centre's share of the count) when the points carry it."""
    df = pd.DataFrame(points)
    if not {"x", "y"} <= set(df.columns):
        raise InputError(f"points need the columns x and y, got {list(df.columns)}")
    out = _out_path(path)
    df[[c for c in ("x", "y", "count") if c in df.columns]].astype(float).to_csv(out, index=False)
    return out
