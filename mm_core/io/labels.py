"""Reading ground truth and results: instance label images, point CSVs, CTC folders.

Every reader raises :class:`mm_core.errors.InputError` with the file's name for
anything it cannot use.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

from mm_core.errors import InputError
from mm_core.io.limits import IMAGE_EXTENSIONS

#: File names of CTC masks: ``maskTTT.tif`` (results) or ``man_trackTTT.tif`` (ground truth).
CTC_MASK_RE = re.compile(r"^(mask|man_track)(\d+)\.tif$")
#: Columns of a CTC track table (``res_track.txt``/``man_track.txt``: ``L B E P``).
TRACK_COLUMNS = ["label", "begin", "end", "parent"]

#: Largest label id that fits the uint16 TIFFs ImageJ and the CTC format expect.
UINT16_MAX = 65535

__all__ = ["CTC_MASK_RE", "TRACK_COLUMNS", "UINT16_MAX", "label_dtype", "read_ctc", "read_labels", "read_points"]


def label_dtype(labels: np.ndarray | int) -> np.dtype:
    """Storage dtype of a label image: uint16 if the largest id is <= 65,535, else uint32.

    The one rule for every label file (TIFF, BigTIFF, the GEFF segmentation). It is on the
    largest label id (not on the number of objects), so ids are never renumbered and stay
    linked to the measurements table and ROI names. ``labels`` is the image, or its largest
    id when the image is not in memory (a whole slide labelled ``1..n``).
    """
    arr = np.asarray(labels)
    top = int(arr.max()) if arr.size else 0
    if top <= UINT16_MAX:
        return np.dtype(np.uint16)
    if top <= np.iinfo(np.uint32).max:
        return np.dtype(np.uint32)
    raise InputError(f"label id {top} is too large to store (at most {np.iinfo(np.uint32).max})")


def read_labels(path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Instance labels ``(H, W)`` int32 from a TIFF or PNG mask.

    Parameters
    ----------
    path : str or Path
        Label image (0 = background); RGB-coded masks are refused.
    shape : tuple of int, optional
        Expected ``(H, W)``; another size is refused, naming both.

    Returns
    -------
    ndarray, (H, W) int32
    """
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            arr = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im)
    except Exception as err:  # noqa: BLE001 - the decoders raise many types on corrupt files
        raise InputError(f"cannot read the label image {path.name}: {err}") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise InputError(f"{path.name}: expected a 2-D label image, got shape {arr.shape}")
    if shape is not None and arr.shape != tuple(shape):
        raise InputError(f"{path.name} is {arr.shape[-1]}x{arr.shape[0]} pixels (shape {arr.shape}) but its "
                         f"ground truth is {shape[-1]}x{shape[0]}")
    return arr.astype(np.int32)


def read_points(path) -> np.ndarray:
    """Points ``(N, 2)`` as ``(row, col)``.

    Parameters
    ----------
    path : str or Path
        A CSV with columns ``x, y`` (x = column, any case), or a label image whose
        objects' centroids are the points.

    Returns
    -------
    ndarray, (N, 2) float
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        from skimage.measure import regionprops_table

        props = regionprops_table(read_labels(path), properties=("centroid",))
        return np.stack([props["centroid-0"], props["centroid-1"]], 1).reshape(-1, 2)
    try:
        df = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path.name} could not be read as CSV ({exc})") from None
    cols = {c.lower().strip(): c for c in df.columns}
    if "x" not in cols or "y" not in cols:
        raise InputError(f"{path.name} needs columns x and y, has {', '.join(map(str, df.columns))}")
    return np.stack([df[cols["y"]].to_numpy(float), df[cols["x"]].to_numpy(float)], 1).reshape(-1, 2)


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
        m = CTC_MASK_RE.match(p.name)
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
