"""One input of a batch: read it, segment or count it (in tiles when large) or track it, write its files.

:func:`process` is what a batch runs per image (or per time-lapse for ``track``), in this process
or on a Dask worker; it never raises: a failure becomes the input's manifest row. Results are
written under a temporary name and renamed when complete, so :func:`outputs` present on disk
mean a finished input.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mm_core.errors import InputWarning, MMError, printable
from mm_core.io.atomic import clear_name
from mm_core.io.calibration import resolve_pixel_size
from mm_core.batching.tiled import DEFAULT_TILE

#: TIFF planes with more pixels than this (and every zarr) are read lazily, never whole.
LAZY_FROM_PIXELS = 4096 * 4096
#: The tasks a batch runs and the manifest column of each one's result.
VALUE_COLUMNS = {"segment": "objects", "count": "count", "track": "tracks"}


@dataclass(frozen=True)
class Item:
    """One image of a batch."""

    path: str
    base: str  #: output file stem, unique in the batch
    boxes: tuple | None = None
    folder: str = ""  #: subfolder of the output folder its files go to ("": the output folder)

    def out_dir(self, out) -> Path:
        """The folder this input's files are written to."""
        return Path(out) / self.folder if self.folder else Path(out)


@dataclass(frozen=True)
class TaskOptions:
    """What every task of a batch shares."""

    task: str
    out: str
    engine: str = "auto"
    head: str | None = None
    channels: tuple | None = None
    tile: int = DEFAULT_TILE
    overlap: int | None = None
    show_tiles: bool = False  #: a progress bar over the tiles of a large image (runs in this process)
    pixel_size: float | None = None  #: µm per pixel given for every image (None: each file's own)
    tile_progress: object = None  #: ``progress(fraction, "tile i/n")`` of a tiled image (in this process)


class Model:
    """The :class:`mm_core.Matcher` of one process, built once and reused for every image."""

    def __init__(self, options: TaskOptions, matcher=None):
        """``matcher``: one already built (the app's, or the CLI's), reused instead of a new one."""
        from mm_core.models import Matcher

        track = options.task == "track"  # one checkpoint serves its own task: segmentation or linking
        self.matcher = matcher if matcher is not None else Matcher(
            engine=options.engine, head=options.head if track else {options.task: options.head})
        self.engine_note = self.matcher.engine_note
        self.head_note = self.matcher.track_heads()[2] if track else self.matcher.head_notes()[options.task]

    def tile_fn(self, task: str, boxes=None):
        """The per-tile runner of :mod:`mm_core.batching.tiled` for ``task`` (the mode's head: ``boxes`` or not)."""
        from mm_core.models import mode_of
        from mm_core.batching.tiled import tile_fn

        return tile_fn(self.matcher.engine, self.matcher.head(task, mode_of(boxes)), task)


# --------------------------------------------------------------------------- outputs
#: What a tracking result holds besides its masks, in the order :func:`mm_core.export.save` writes them.
TRACK_OUTPUTS = ["res_track.txt", "ctc.zip", "tracks.csv", "tracks.zarr", "tracks_geff.zip"]


def outputs(task: str, base: str, lazy: bool = False) -> list[str]:
    """File names a complete result of ``base`` has (the last one is written last).

    For ``track`` the names are inside the input's folder (:meth:`Item.out_dir`).
    """
    if task == "track":
        return list(TRACK_OUTPUTS)
    if task == "segment":
        return [f"{base}.tif"] + ([f"{base}.ome.zarr"] if lazy else []) + [f"{base}.csv"]
    return [f"{base}_density.tif", f"{base}_points.csv"]


def _pixel_size_text(size: float | None, source: str) -> str:
    """The manifest's ``pixel_size``: ``"0.24 µm (from file)"``, or ``"unknown: pixels"``."""
    return source if size is None else f"{size:.4g} µm ({source})"


def _partial(path: Path) -> Path:
    """The name ``path`` is written under until complete (whatever was there, a link too, removed)."""
    return clear_name(path.with_name(path.name + ".partial"))


def _commit(path: Path) -> None:
    """Move ``<path>.partial`` to ``path`` (replacing a file or folder there)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    os.replace(path.with_name(path.name + ".partial"), path)


def is_lazy(path: str) -> bool:
    """True for a zarr folder, or a TIFF whose plane is above :data:`LAZY_FROM_PIXELS`."""
    from mm_core.io.lazy import is_zarr, tiff_plane_pixels

    if is_zarr(path):
        return True
    if Path(path).suffix.lower() not in (".tif", ".tiff", ".btf", ".tf8"):
        return False
    n = tiff_plane_pixels(path)
    return n is not None and n > LAZY_FROM_PIXELS


def _bar(s: TaskOptions, item: Item):
    """``progress(fraction, description)`` over the tiles: the caller's, a progress bar, or None."""
    if s.tile_progress is not None:
        return s.tile_progress
    if not s.show_tiles:
        return None
    from tqdm import tqdm

    bar = tqdm(total=100, desc=printable(Path(item.path).name), unit="%", file=sys.stderr, leave=False,
               bar_format="{l_bar}{bar}| {postfix} [{elapsed}<{remaining}]")

    def progress(frac: float, desc: str) -> None:
        bar.n = min(100, int(round(100 * frac)))
        bar.set_postfix_str(desc)
        if frac >= 1:
            bar.close()

    return progress


def _tiled_boxes(item: Item, shape: tuple[int, int]) -> np.ndarray | None:
    """The item's exemplar boxes, validated against the whole image (None: automatic mode)."""
    from mm_core.batching.whole import exemplar_boxes

    return exemplar_boxes(item.boxes, shape)


#: How a failed write (a full disk) starts its manifest message: the CLI exits 2 on it.
WRITE_FAILED = "cannot write the result into"


def _save(result, out: Path, base: str, intensity, last: str | None = None) -> None:
    """:func:`mm_core.export.save` into a scratch folder, then each file moved into ``out``.

    Plots (:func:`mm_core.viz.plots.write_result_plots`) go with them. ``counts.csv`` is left
    out (the batch writes it once from the manifest); the files are moved with ``last``
    (default: the tables, ``*.csv``) at the end, so a complete set is recognisable
    (:func:`outputs`). A write that fails (a full disk) leaves no partial result.
    """
    from mm_core import export
    from mm_core.viz.plots import write_result_plots

    stem = f".{glob.escape(base)}."
    for left in [*out.glob(stem + "partial"), *out.glob(stem + "[a-z0-9_]" * 8 + ".partial")]:
        clear_name(left)  # a killed run's scratch (mkdtemp's 8 characters), or a link planted there
    scratch = Path(tempfile.mkdtemp(prefix=f".{base}.", suffix=".partial", dir=out))  # fresh: no planted link
    try:
        files = [f for f in export.save(result, scratch, base, intensity=intensity) if f.name != "counts.csv"]
        files += write_result_plots(result, scratch, base)
        files.sort(key=lambda f: f.name == last if last else f.suffix == ".csv")
        for f in files:
            target = out / f.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(f, target)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise MMError(f"{WRITE_FAILED} {out} ({exc.strerror or exc}); the incomplete "
                      "files were removed, nothing there is a partial result") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _lazy_segment(model: Model, item: Item, s: TaskOptions, out: Path) -> tuple[float, str]:
    from mm_core.export import label_dtype
    from mm_core.export.large import create_ome_zarr, object_table, write_bigtiff
    from mm_core.io.lazy import open_lazy
    from mm_core.batching.tiled import segment_tiled

    tif, zpath, tab = out / f"{item.base}.tif", out / f"{item.base}.ome.zarr", out / f"{item.base}.csv"
    with open_lazy(item.path, s.channels) as img:
        size, source = resolve_pixel_size(s.pixel_size, img.pixel_size)
        boxes = _tiled_boxes(item, img.shape)
        lab = create_ome_zarr(_partial(zpath), img, pixel_size=size)
        runner = model.tile_fn("segment", boxes)
        summary = segment_tiled(img, lab, runner, s.tile, s.overlap, _bar(s, item), boxes)
        write_bigtiff(_partial(tif), lab, label_dtype(summary.n_objects))  # ids 1..n
        object_table(lab, pixel_size=size).to_csv(_partial(tab), index=False)
    for p in (tif, zpath, tab):
        _commit(p)
    return float(summary.n_objects), _pixel_size_text(size, source)


def _lazy_count(model: Model, item: Item, s: TaskOptions, out: Path) -> tuple[float, str]:
    from mm_core import export
    from mm_core.export.large import create_zarr_array, write_bigtiff
    from mm_core.io.lazy import open_lazy
    from mm_core.batching.tiled import count_tiled

    dens_p, pts_p = out / f"{item.base}_density.tif", out / f"{item.base}_points.csv"
    scratch = Path(tempfile.mkdtemp(prefix=f".{item.base}_density.", suffix=".zarr.partial", dir=out))
    try:
        with open_lazy(item.path, s.channels) as img:
            size, source = resolve_pixel_size(s.pixel_size, img.pixel_size)
            boxes = _tiled_boxes(item, img.shape)
            dens = create_zarr_array(scratch, img.shape, np.float32)
            runner = model.tile_fn("count", boxes)
            summary = count_tiled(img, dens, runner, s.tile, s.overlap, _bar(s, item), boxes)
            write_bigtiff(_partial(dens_p), dens, np.float32)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    export.write_points(_partial(pts_p), summary.points)
    for p in (dens_p, pts_p):
        _commit(p)
    return float(summary.count), _pixel_size_text(size, source)


def _run_image(model: Model, item: Item, s: TaskOptions, out: Path) -> tuple[float, list[str], str]:
    """Segment or count one image, write its files; return the objects or the count, the warnings
    and the pixel size used (as the manifest writes it)."""
    from mm_core.batching.whole import run_image
    from mm_core.io import read_image

    if s.task == "track":
        return _run_sequence(model, item, s, out)
    if is_lazy(item.path):
        value, size_text = (_lazy_segment if s.task == "segment" else _lazy_count)(model, item, s, out)
        return value, [], size_text
    img_data = read_image(item.path, channels=s.channels, pixel_size=s.pixel_size)
    res = run_image(model.matcher, s.task, img_data, item.boxes, _bar(s, item), tile=s.tile, overlap=s.overlap)
    data = img_data.data
    _save(res, out, item.base, data)
    value = float(res.n_objects) if s.task == "segment" else float(res.count)
    return value, list(getattr(res, "warnings", []) or []), _pixel_size_text(res.pixel_size, res.pixel_size_source)


def _run_sequence(model: Model, item: Item, s: TaskOptions, out: Path) -> tuple[float, list[str], str]:
    """Track one time-lapse and write its files into :meth:`Item.out_dir`; the tracks, the warnings
    and the pixel size used."""
    from mm_core.io import read_sequence

    seq = read_sequence(item.path, channels=s.channels, pixel_size=s.pixel_size)
    res = model.matcher.track(seq, boxes=item.boxes, progress=_bar(s, item))  # with the file's calibration
    item.out_dir(out).mkdir(parents=True, exist_ok=True)
    _save(res, item.out_dir(out), "", None, last=TRACK_OUTPUTS[-1])  # a complete result ends with it
    return float(res.n_tracks), list(res.warnings), _pixel_size_text(res.pixel_size, res.pixel_size_source)


def process(model: Model, item: Item, options: TaskOptions) -> dict:
    """Run one image and write its outputs; never raises (failures become the record).

    Returns
    -------
    dict
        The manifest row: ``image, output, status ("done" | "failed"), value, pixel_size, seconds,
        message`` (for a done image, its self-check warnings, ``warning: ...`` joined by `` | ``;
        ``pixel_size`` as ``"0.24 µm (from file)"`` or ``"unknown: pixels"``).
    """
    t0 = time.perf_counter()
    out, size_text = Path(options.out), ""
    try:
        with warnings.catch_warnings(record=True) as caught:  # the boxes' warnings (swapped corners, ...)
            warnings.simplefilter("always", InputWarning)
            value, checks, size_text = _run_image(model, item, options, out)
        told = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
        status, msg = "done", " | ".join(f"warning: {w}" for w in told + checks)
    except MMError as exc:
        value, status, msg = float("nan"), "failed", str(exc)
    except MemoryError:
        value, status, msg = float("nan"), "failed", "out of memory (try a smaller --tile)"
    except Exception as exc:  # noqa: BLE001 - one image's failure must not end the batch
        value, status, msg = float("nan"), "failed", f"{type(exc).__name__}: {exc}"
    return {"image": item.path, "output": item.base, "status": status, "value": value,
            "pixel_size": size_text, "seconds": round(time.perf_counter() - t0, 3), "message": msg}


