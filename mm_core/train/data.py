"""Training-data readers: find (image, ground truth) pairs in common folder layouts.

Segmentation:
- ``<root>/images/<base>.*`` + ``<root>/masks/<base>.*`` (the ``../shared/data/seg`` layout);
- Cellpose folders: ``<base>_img.png`` + ``<base>_masks.png`` (any extension ``tif``/``png``);
- CTC folders: ``<SEQ>/tNNN.tif`` + ``<SEQ>_GT/SEG/man_segNNN.tif`` (frames with SEG ground truth).

Counting: ``<root>/images/<base>.*`` + ``<root>/points/<base>.csv`` (header ``x,y``; x = column),
or ``<base>.<ext>`` beside ``<base>.csv`` / ``<base>_dots.csv`` in one folder; segmentation
folders also serve, with the objects' centroids as points.

Tracking: CTC folders ``<SEQ>/tNNN.tif`` + ``<SEQ>_GT/TRA/man_trackNNN.tif`` + ``man_track.txt``.

A folder given to a reader may be one dataset or a parent of several (searched
one level down). Images are read with :func:`mm_core.io.read_image` and
normalised by :func:`mm_core.transforms.normalize`, as the pipelines do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mm_core.errors import InputError
from mm_core.io import IMAGE_EXTENSIONS as IMAGE_EXTS
from mm_core.io.labels import read_ctc, read_labels, read_points

@dataclass
class Sample:
    """One training image and where its ground truth is.

    ``kind`` is ``"labels"`` (instance mask file), ``"points"`` (CSV of x, y) or
    ``"ctc"`` (a CTC sequence folder; ``target`` is its ``_GT`` folder).
    """

    image: Path
    target: Path
    kind: str
    dataset: str
    name: str
    extra: dict = field(default_factory=dict)


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _match_stem(folder: Path, stem: str, suffixes=IMAGE_EXTS) -> Path | None:
    for ext in suffixes:
        for cand in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if cand.is_file():
                return cand
    return None


def _candidates(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"training data folder {root} does not exist")
    return [root] + sorted(p for p in root.iterdir() if p.is_dir())


def find_segmentation(root) -> list[Sample]:
    """All (image, instance mask) pairs under ``root`` (see the module docstring for layouts)."""
    out: list[Sample] = []
    for d in _candidates(root):
        if (d / "images").is_dir() and (d / "masks").is_dir():
            for img in _images(d / "images"):
                m = _match_stem(d / "masks", img.stem)
                if m is not None:
                    out.append(Sample(img, m, "labels", d.name, img.stem))
        for img in sorted(d.glob("*_img.*")):
            m = _match_stem(d, img.stem[: -len("_img")] + "_masks")
            if m is not None and img.suffix.lower() in IMAGE_EXTS:
                out.append(Sample(img, m, "labels", d.name, img.stem[: -len("_img")]))
        for gt in sorted(d.glob("*_GT")):
            seq = d / gt.name[: -len("_GT")]
            for m in sorted((gt / "SEG").glob("man_seg*.tif")) if (gt / "SEG").is_dir() else []:
                num = re.sub(r"\D", "", m.stem.replace("man_seg", ""))
                img = _match_stem(seq, f"t{num}")
                if img is not None:
                    out.append(Sample(img, m, "labels", f"{d.name}/{seq.name}", f"{seq.name}_t{num}"))
    return _dedupe(out, root, "segmentation", "images/ + masks/, *_img + *_masks or CTC <SEQ>_GT/SEG")


def find_counting(root) -> list[Sample]:
    """All (image, point CSV) pairs under ``root``.

    Folders in the segmentation layout (``images/`` + ``masks/``) count too: their
    points are the centres of the ground-truth objects (see :func:`load_points`).
    """
    out: list[Sample] = []
    for d in _candidates(root):
        if (d / "images").is_dir() and (d / "masks").is_dir() and not (d / "points").is_dir():
            out += [s for s in find_segmentation(d) if s.dataset == d.name]
        if (d / "images").is_dir() and (d / "points").is_dir():
            for img in _images(d / "images"):
                csv = d / "points" / f"{img.stem}.csv"
                if csv.is_file():
                    out.append(Sample(img, csv, "points", d.name, img.stem))
        for img in _images(d):
            for csv in (d / f"{img.stem}.csv", d / f"{img.stem}_dots.csv"):
                if csv.is_file():
                    out.append(Sample(img, csv, "points", d.name, img.stem))
                    break
    return _dedupe(out, root, "counting", "images/ + points/*.csv or <image> + <image>.csv")


def find_tracking(root) -> list[Sample]:
    """All CTC sequences with TRA ground truth under ``root`` (one Sample per sequence)."""
    out: list[Sample] = []
    for d in _candidates(root):
        for gt in sorted(d.glob("*_GT")):
            seq = d / gt.name[: -len("_GT")]
            if (gt / "TRA" / "man_track.txt").is_file() and seq.is_dir():
                out.append(Sample(seq, gt, "ctc", d.name, seq.name))
    return _dedupe(out, root, "tracking", "CTC <SEQ>/ + <SEQ>_GT/TRA/man_track.txt")


def _dedupe(samples: list[Sample], root, task: str, layouts: str) -> list[Sample]:
    seen, out = set(), []
    for s in samples:
        key = (s.image.resolve(), s.target.resolve())
        if key not in seen:
            seen.add(key)
            out.append(s)
    if not out:
        raise InputError(f"no {task} training data found in {root} (expected {layouts})")
    return out


# ----------------------------------------------------------------------------- loading
def load_image(path: Path) -> np.ndarray:
    """Read and normalise an image as the pipelines do (``(H, W)`` or ``(H, W, 3)`` float32)."""
    from mm_core.io import read_image
    from mm_core.transforms import normalize

    arr = np.asarray(read_image(path).data, np.float32)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] != 3:
        arr = arr[..., :3] if arr.shape[-1] > 3 else arr.mean(-1)
    return normalize(arr)


load_labels = read_labels
load_points = read_points


def load_ctc(seq: Path, gt: Path) -> tuple[list[np.ndarray], np.ndarray, pd.DataFrame]:
    """Frames (normalised), TRA masks ``(T, H, W)`` and the ``man_track.txt`` table of a CTC sequence."""
    masks, tracks = read_ctc(gt / "TRA")
    files = sorted(p for p in seq.iterdir() if p.suffix.lower() in (".tif", ".tiff") and p.stem.startswith("t"))
    if len(files) != len(masks):
        raise InputError(f"{seq} has {len(files)} frames but {gt / 'TRA'} has {len(masks)} masks")
    return [load_image(f) for f in files], np.asarray(masks), tracks
