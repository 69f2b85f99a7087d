"""Many files in one run, for the app: a list of images or a zip of them -> one summary table and one zip.

:func:`run_files` unpacks zips of images (safely: :mod:`mm_core.io.archive`'s limits), runs
:func:`mm_core.batching.run.batch` in this process with the caller's :class:`~mm_core.Matcher`
(its outputs are the CLI's: per image ``<name>.tif``, ``<name>.csv``, ``<name>.geojson``, ... and
``manifest.csv``), reports one progress over the files (and the tiles of a large one), and
returns a summary table and the zip of every output. A file that is refused is one row with its
message; the others go on.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mm_core.batching.run import MANIFEST, batch
from mm_core.errors import InputError

#: Name of the zip of all outputs (inside the output folder) and of the summary table.
ZIP_NAME, SUMMARY_NAME = "results.zip", "summary.csv"
#: Folder (inside the output folder) that zips of images are unpacked into.
UNPACKED = "_inputs"

ProgressFn = Callable[[float, str], None]

__all__ = ["FilesResult", "run_files"]


@dataclass
class FilesResult:
    """What :func:`run_files` made."""

    summary: pd.DataFrame  #: one row per image: image, status, count, mean area, pixel size, warnings
    zip_path: Path  #: every output, in the CLI's layout
    out: Path  #: the output folder
    manifest: pd.DataFrame  #: the batch's manifest (output names, seconds)


def _unpack(items: Iterable, out: Path) -> list[Path]:
    """Image paths: files as given, zips of images unpacked into ``out/_inputs/<zip name>/``."""
    from mm_core.io.archive import member_name, open_zip, read_member
    from mm_core.io.decode import read_head, sniff
    from mm_core.io.limits import Limits

    paths: list[Path] = []
    for item in items:
        p = Path(item)
        try:
            is_zip = p.is_file() and sniff(read_head(p), p.name) == "ZIP"
        except InputError:
            is_zip = False  # not an image either: the batch records the reader's message
        if not is_zip:
            paths.append(p)
            continue
        limits = Limits.resolve()
        zf, members = open_zip(p, limits)
        dest = out / UNPACKED / p.stem
        dest.mkdir(parents=True, exist_ok=True)
        budget = [limits.max_zip_bytes]
        with zf:
            for m in members:
                target = dest / member_name(m)  # a bare file name: nothing lands outside dest
                target.write_bytes(read_member(zf, m, p.name, budget))
                paths.append(target)
    return paths


def _mean_area(out: Path, base: str, task: str) -> tuple[float, float]:
    """Mean ``area_px`` and ``area_um2`` of an image's measurements (NaN when absent)."""
    if task != "segment" or not (out / f"{base}.csv").is_file():
        return float("nan"), float("nan")
    t = pd.read_csv(out / f"{base}.csv")
    return tuple(float(t[c].mean()) if c in t.columns and len(t) else float("nan") for c in ("area_px", "area_um2"))


def _summary(manifest: pd.DataFrame, out: Path, task: str) -> pd.DataFrame:
    value = "objects" if task == "segment" else "count"
    rows = []
    for _, r in manifest.iterrows():
        done = r["status"] == "done"
        area_px, area_um2 = _mean_area(out, r["output"], task) if done else (np.nan, np.nan)
        rows.append({"image": Path(r["image"]).name, "status": r["status"],
                     "count": pd.to_numeric(r.get(value, ""), errors="coerce"),
                     "mean_area_px": area_px, "mean_area_um2": area_um2, "pixel_size": r.get("pixel_size", ""),
                     "warnings": r["message"] if done else "", "message": "" if done else r["message"]})
    return pd.DataFrame(rows, columns=["image", "status", "count", "mean_area_px", "mean_area_um2", "pixel_size",
                                       "warnings", "message"])


def _zip_outputs(out: Path) -> Path:
    """Zip everything under ``out`` (but the unpacked inputs and the zip itself) into ``out/results.zip``."""
    from mm_core.io.atomic import atomic_path

    target = out / ZIP_NAME
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted(out.rglob("*")):
            rel = f.relative_to(out)
            if f.is_file() and rel.parts[0] not in (UNPACKED, ZIP_NAME) and not any(
                    part.startswith(".") for part in rel.parts):  # not the zip being written, nor partials
                zf.write(f, rel.as_posix())
    return target


def run_files(inputs, task: str, out, matcher=None, boxes: dict | None = None, progress: ProgressFn | None = None,
              pixel_size=None, channels=None, tile: int | None = None) -> FilesResult:
    """Segment or count many image files (or zips of images) in one run.

    Parameters
    ----------
    inputs : sequence of str or Path
        Image files and zips of image files (each zip's images are unpacked into
        ``out/_inputs/``; a file that is not an image is refused in its own row).
    task : {"segment", "count"}
    out : str or Path
        Output folder (created); every output, ``manifest.csv``, ``summary.csv`` and
        ``results.zip`` go here.
    matcher : Matcher, optional
        The model (default: a weight-free ``Matcher(engine="classic")``).
    boxes : dict, optional
        ``{file name or stem: [[x0, y0, x1, y1], ...]}``.
    progress : callable, optional
        ``progress(fraction, description)`` over all the files: once per finished file
        (``"3/20 images: a.tif"``) and per tile of a tiled one.
    pixel_size : float, optional
        µm per pixel of every image (default: each file's calibration, else pixels).
    channels : None, int or list of int
        As in :func:`mm_core.io.read_image`.
    tile : int, optional
        Images larger than this on a side run in tiles (default
        :data:`mm_core.batching.tiled.DEFAULT_TILE`).

    Returns
    -------
    FilesResult

    Raises
    ------
    InputError
        No input, an unknown task, a bad pixel size or a zip refused as a whole.
    """
    from mm_core.batching.tiled import DEFAULT_TILE

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = _unpack(list(inputs), out)
    if not paths:
        raise InputError("no input images were given")
    if matcher is None:
        from mm_core.models import Matcher

        matcher = Matcher(engine="classic")
    n, done = len(paths), [0]

    def tick(frac: float, desc: str) -> None:
        if progress is not None:
            progress(min(1.0, (done[0] + frac) / n), f"image {min(done[0] + 1, n)}/{n}: {desc}")

    def finished(row: dict) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0] / n, f"{done[0]}/{n} images: {Path(row['image']).name}")

    manifest = batch(paths, task=task, out=out, progress=False, on_result=finished, boxes=boxes,
                     channels=channels, tile=tile or DEFAULT_TILE, pixel_size=pixel_size, tile_progress=tick,
                     matcher=matcher)
    summary = _summary(manifest, out, task)
    summary.to_csv(out / SUMMARY_NAME, index=False)
    shutil.rmtree(out / UNPACKED, ignore_errors=True)
    return FilesResult(summary=summary, zip_path=_zip_outputs(out), out=out, manifest=manifest)


#: The batch's manifest file name (re-exported for callers that read it).
MANIFEST_NAME = MANIFEST
